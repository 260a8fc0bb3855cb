// SPDX-License-Identifier: MIT
//! The checksum record of a kis archive (`<sha256> [<blocks> <blocksize>]`): a record that
//! parses holds 64 lower-case hex digits.

#![no_main]

use flake_pilot_fuzz as _;
use libfuzzer_sys::fuzz_target;
use vm_pilot::fuzzing::checksum_record;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some((sha256, _length)) = checksum_record(&text) {
        assert_eq!(sha256.len(), 64);
        assert!(sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
});
