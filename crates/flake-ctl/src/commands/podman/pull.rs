// SPDX-License-Identifier: MIT
//! `flake-ctl podman pull --uri URI`: fetch an image into the flakes' storage.
//!
//! Runs `podman pull` once with its progress output visible and exits with podman's status.
//! The original retried every failure once and pruned all dangling images afterwards; both
//! are left out: a retry doubles the wait on a real error, and pruning touches images that
//! have nothing to do with flakes.

use std::process::ExitCode;

use anyhow::Result;
use flakes::Mode;

use crate::cli::PullArgs;
use crate::commands::pass_through;
use crate::context::Context;

/// Runs the pull.
pub fn run(args: &PullArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let status = ctx.podman(mode)?.pull(&args.uri).status()?;
    Ok(pass_through(status))
}
