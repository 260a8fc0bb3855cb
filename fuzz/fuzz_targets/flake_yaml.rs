// SPDX-License-Identifier: MIT
//! The flake YAML loader: `NAME.yaml` and its `NAME.d/` fragments, merged and validated as
//! a launcher does. The input is the main document, then each fragment, separated by NUL
//! bytes. A document that parses must read back the same after being written the way
//! `flake-ctl` writes a registration.

#![no_main]

use std::path::{Path, PathBuf};

use flake_pilot_fuzz as _;
use flakes::config::load::parse_raw;
use flakes::config::validate_raw;
use flakes::FlakeName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0).map(String::from_utf8_lossy);
    let main = parts.next().unwrap_or_default();
    let fragments: Vec<(PathBuf, String)> = parts
        .take(8)
        .enumerate()
        .map(|(i, text)| {
            (
                format!("/flakes/app.d/{i:02}.yaml").into(),
                text.into_owned(),
            )
        })
        .collect();
    let path = Path::new("/flakes/app.yaml");
    let raw = match parse_raw(path, &main, &fragments) {
        Ok(raw) => raw,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let written = format!(
        "---\n{}",
        yaml_serde::to_string(&raw).expect("a parsed flake is written")
    );
    let read_back = parse_raw(path, &written, &[]).expect("a written flake reads back");
    assert_eq!(read_back, raw, "written as:\n{written}");
    let name = FlakeName::new("app").expect("a valid name");
    if let Err(err) = validate_raw(name, path, raw) {
        let _ = err.to_string();
    }
});
