// SPDX-License-Identifier: MIT
//! `flake-ctl podman ...`: the container engine's actions.

pub mod inspect;
pub mod load;
pub mod pull;
pub mod register;
pub mod remove;
pub mod show;
pub mod update;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{PodmanAction, PodmanArgs};
use crate::context::Context;

/// Runs one podman action.
pub fn run(args: PodmanArgs, ctx: &Context) -> Result<ExitCode> {
    let mode = Context::mode(args.user);
    match args.action {
        PodmanAction::Pull(a) => pull::run(&a, mode, ctx),
        PodmanAction::Load(a) => load::run(&a, mode, ctx),
        PodmanAction::Register(a) => register::run(&a, mode, ctx),
        PodmanAction::Remove(a) => remove::run(&a, mode, ctx),
        PodmanAction::Show(a) => show::run(&a, mode, ctx),
        PodmanAction::Update(a) => update::run(&a, mode, ctx),
    }
}
