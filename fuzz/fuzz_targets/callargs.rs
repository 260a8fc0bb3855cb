// SPDX-License-Identifier: MIT
//! A launcher's call arguments (`@NAME`, `%option`, `--`), NUL-separated in the input.
//! Besides not panicking: the app gets exactly the arguments the convention says, in order,
//! and a leading `--` hands every later argument to the app untouched.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use flake_pilot_fuzz as _;
use flakes::callargs::PilotOptions;
use flakes::{CallArgs, InstanceName};
use libfuzzer_sys::fuzz_target;

/// The app's arguments as the documented convention has them.
fn expected_app_args(args: &[OsString]) -> Vec<OsString> {
    if args.first().is_some_and(|a| a.as_bytes() == b"--") {
        return args[1..].to_vec();
    }
    let mut out = Vec::new();
    let mut escaped = false;
    for arg in args {
        escaped |= arg.as_bytes() == b"--";
        if escaped || !matches!(arg.as_bytes().first(), Some(b'@' | b'%')) {
            out.push(arg.clone());
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    match CallArgs::parse(args.clone()) {
        Ok(call) => {
            assert_eq!(call.app_args, expected_app_args(&args));
            if let Some(instance) = &call.instance {
                assert!(InstanceName::new(instance.as_str()).is_ok());
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
    let mut escaped = vec![OsString::from("--")];
    escaped.extend(args.iter().cloned());
    let call = CallArgs::parse(escaped).expect("an escaped call always parses");
    assert_eq!(call.app_args, args);
    assert_eq!(call.instance, None);
    assert_eq!(call.options, PilotOptions::default());
});
