// SPDX-License-Identifier: MIT
//! `flake-agent serve --socket PATH`: PID 1 of a resumable flake instance.
//!
//! Started by podman-pilot, never by hand. Prints nothing unless it cannot start, in which
//! case one line goes to stderr (the instance's log) and it exits 1.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket = match args.as_slice() {
        [serve, flag, path] if serve == "serve" && flag == "--socket" => PathBuf::from(path),
        _ => {
            eprintln!("flake-agent: usage: flake-agent serve --socket PATH");
            return ExitCode::FAILURE;
        }
    };
    match flake_agent::daemon::serve(&socket) {
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("flake-agent: {err}");
            ExitCode::FAILURE
        }
    }
}
