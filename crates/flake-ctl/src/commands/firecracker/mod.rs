// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker ...`: the VM engine's actions.

pub mod pull;
pub mod register;
pub mod remove;
pub mod show;
pub mod update;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{FirecrackerAction, FirecrackerArgs};
use crate::context::Context;

/// Runs one VM action.
pub fn run(args: FirecrackerArgs, ctx: &Context) -> Result<ExitCode> {
    let mode = Context::mode(args.user);
    match args.action {
        FirecrackerAction::Pull(a) => pull::run(&a, mode, ctx),
        FirecrackerAction::Register(a) => register::run(&a, mode, ctx),
        FirecrackerAction::Remove(a) => remove::run(&a, mode, ctx),
        FirecrackerAction::Show(a) => show::run(&a, ctx),
        FirecrackerAction::Update(a) => update::run(&a, mode, ctx),
    }
}
