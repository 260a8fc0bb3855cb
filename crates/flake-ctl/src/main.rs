// SPDX-License-Identifier: MIT
//! `flake-ctl`: register, list and remove flake applications and fetch their images.
//!
//! Parses the command line, resolves the [`context::Context`] once, dispatches to the
//! command's module and reports an error once, here. Exit codes: 0 success, 1 failure, 2 usage
//! error; `podman pull/load` pass podman's own status through; a VM image pull ended by
//! SIGINT, SIGTERM or SIGHUP removes its staging directory and exits with 128 + the signal.

mod cli;
mod commands;
mod context;
mod output;
mod template;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    flakes::logging::init(
        std::env::var(flakes::logging::LOG_LEVEL_ENV)
            .ok()
            .as_deref(),
    );
    let cli = cli::Cli::parse();
    let result = context::Context::from_env().and_then(|ctx| commands::dispatch(cli.command, &ctx));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("flake-ctl: {}", flakes::report::one_line(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
