// SPDX-License-Identifier: MIT
//! A flake's `runtime.podman` options with `%VAR` placeholders, expanded from an
//! environment: the input's lines up to the first empty one are the environment
//! (`NAME=value`), the rest are the options. Expansion must end, within its bounds, whatever
//! the values hold.

#![no_main]

use std::collections::HashMap;

use flake_pilot_fuzz as _;
use libfuzzer_sys::fuzz_target;
use podman_pilot::options::{engine_options, OptionPolicy, MAX_EXPANDED};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (env, entries) = text.split_once("\n\n").unwrap_or(("", &text));
    let env: HashMap<String, String> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.replace("\\n", "\n")))
        .collect();
    let lookup = |key: &str| env.get(key).cloned();
    let entries: Vec<String> = entries.lines().map(str::to_string).collect();
    let policy = OptionPolicy {
        ignore_missing_volume_path: true,
    };
    match engine_options(&entries, policy, &lookup) {
        Ok(options) => {
            assert!(options.len() <= entries.len());
            for option in &options {
                assert!(!option.flag.is_empty());
                assert!(option.args().all(|arg| arg.len() <= MAX_EXPANDED));
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
