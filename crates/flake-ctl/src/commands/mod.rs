// SPDX-License-Identifier: MIT
//! One module per `flake-ctl` action, each with a single `run` entry point.

pub mod archive;
pub mod completion;
pub mod doctor;
pub mod export;
pub mod firecracker;
pub mod generate;
pub mod import;
pub mod init;
pub mod list;
pub mod podman;
pub mod remote;
pub mod validate;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Command;
use crate::context::Context;

/// Runs the parsed command.
pub fn dispatch(command: Command, ctx: &Context) -> Result<ExitCode> {
    match command {
        Command::Init(args) => init::run(&args, ctx),
        Command::List(args) => list::run(&args, ctx),
        Command::Podman(args) => podman::run(args, ctx),
        Command::Firecracker(args) => firecracker::run(args, ctx),
        Command::Validate(args) => validate::run(&args, ctx),
        Command::Doctor(args) => doctor::run(&args, ctx),
        Command::Export(args) => export::run(&args, ctx),
        Command::Import(args) => import::run(&args, ctx),
        Command::Completion(args) => completion::run(args.shell),
        Command::Generate(args) => generate::run(&args, ctx),
    }
}

/// Converts a child's exit status into flake-ctl's own, passing the code through.
pub fn pass_through(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(flakes::PilotExit::from_status(status).code())
}
