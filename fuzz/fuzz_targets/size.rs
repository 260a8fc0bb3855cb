// SPDX-License-Identifier: MIT
//! Byte sizes (`20GiB`, `1.5GB`, ...): any text is a size or an error, and a size reads
//! back the same from its own display and from its plain number of bytes.

#![no_main]

use flake_pilot_fuzz as _;
use flakes::size::ByteSize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match ByteSize::parse(&text) {
        Ok(size) => {
            assert_eq!(ByteSize::parse(&size.to_string()), Ok(size));
            assert_eq!(ByteSize::parse(&size.bytes().to_string()), Ok(size));
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
