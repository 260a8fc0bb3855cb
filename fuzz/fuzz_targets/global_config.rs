// SPDX-License-Identifier: MIT
//! The global configuration (`/etc/flakes.yml`, `~/.config/flakes.yml`): any text either
//! parses or is refused with an error, and what parses reads back the same once written.

#![no_main]

use std::path::Path;

use flake_pilot_fuzz as _;
use flakes::global::GlobalConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/flakes.yml");
    match GlobalConfig::parse(path, &text) {
        Ok(config) => {
            let written = yaml_serde::to_string(&config).expect("a parsed config is written");
            let read_back =
                GlobalConfig::parse(path, &written).expect("a written config reads back");
            assert_eq!(read_back, config, "written as:\n{written}");
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
