// SPDX-License-Identifier: MIT
//! Attach mode: the first call starts the instance with its entry command; while it runs,
//! later calls attach to it.
//!
//! An attaching call cannot change the command that is already running, so its arguments
//! are not used; the launcher says so on stderr instead of dropping them silently as the
//! original did. Creation happens under the instance lock, so two first calls start one
//! instance; the lock is released before the launcher turns into `podman start --attach`
//! or `podman attach`, so it never blocks the calls that attach later.

use flakes::config::ContainerFlake;
use flakes::{CallArgs, PilotExit};

use crate::oneshot::{instance_args, Terminal};
use crate::resume::Instance;
use crate::PodmanError;

/// Runs one call of an attach flake; returns only on failure.
pub fn call(
    instance: &Instance<'_>,
    flake: &ContainerFlake,
    call: &CallArgs,
    terminal: Terminal,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PilotExit, PodmanError> {
    let podman = || instance.engine.podman();
    let lock = instance.state.lock()?;
    let running = instance.engine.container_running(&instance.container)?;
    if running {
        drop(lock);
        if !call.app_args.is_empty() {
            eprintln!(
                "podman-pilot: {} is already running; attaching to it, the arguments of this call are not used",
                instance.key.label()
            );
        }
        return Err(podman().args(["attach", &instance.container]).exec().into());
    }
    instance.engine.remove_container(&instance.container)?;
    let args = instance_args(
        &instance.key.flake,
        flake,
        call,
        instance.engine,
        terminal,
        lookup,
    )?;
    podman()
        .args(["create", "--rm", "--name", &instance.container])
        .args(args)
        .stdout()?;
    drop(lock);
    let start = podman().args(["start", "--attach", "--interactive", &instance.container]);
    Err(start.exec().into())
}
