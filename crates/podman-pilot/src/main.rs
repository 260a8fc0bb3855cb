// SPDX-License-Identifier: MIT
//! `podman-pilot`: the launcher every podman flake's app path points to.
//!
//! Called as `/usr/bin/aws ec2 help`, it loads flake `aws`, builds the engine command and
//! replaces itself with it. Its own failures exit 125 (see `flakes::exit`).

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use flakes::config::{ContainerFlake, Engine as FlakeEngine, LaunchMode, RunAs};
use flakes::register::PILOT_NAMES;
use flakes::{CallArgs, FlakeName, PilotExit, Settings};
use podman_pilot::oneshot::{self, Terminal};
use podman_pilot::{Engine, PodmanError};

fn main() -> ExitCode {
    flakes::logging::init(
        std::env::var(flakes::logging::LOG_LEVEL_ENV)
            .ok()
            .as_deref(),
    );
    match run() {
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("podman-pilot: {err}");
            PilotExit::from(&err).into()
        }
    }
}

fn run() -> Result<Infallible, PodmanError> {
    let mut argv = std::env::args_os();
    let name = flake_name(&argv.next().unwrap_or_default())?;
    let call = CallArgs::parse(argv)?;
    let settings = Settings::from_env()?;
    let registries = settings.lookup_order();
    let flake = flakes::registry::find(&registries, &name)?;
    let mode = registries
        .iter()
        .find(|r| r.contains(&name))
        .map_or(flakes::Mode::System, |r| r.mode());
    let container = match flake.engine {
        FlakeEngine::Container(container) => container,
        other => {
            return Err(PodmanError::WrongEngine {
                name: name.to_string(),
                engine: other.label(),
            })
        }
    };
    check_supported(&name, &flake.path, &flake.include, &container)?;
    let via_sudo = container.runtime.runas == RunAs::Root && !settings.caller.is_root();
    let engine = Engine::locate(std::env::var_os("PATH").as_deref(), via_sudo)?
        .with_storage_conf(settings.podman_storage_conf(mode));
    let lookup = |key: &str| std::env::var(key).ok();
    let cmd = oneshot::command(
        &name,
        &container,
        &call,
        &engine,
        Terminal::detect(),
        &lookup,
    )?;
    Err(cmd.exec().into())
}

/// The flake name is the file name the launcher was called as.
fn flake_name(argv0: &OsString) -> Result<FlakeName, PodmanError> {
    let base = Path::new(argv0)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    if PILOT_NAMES.contains(&base.as_ref()) {
        return Err(PodmanError::CalledDirectly);
    }
    Ok(FlakeName::new(&base)?)
}

/// Refuses flakes that need what later releases add, instead of silently running them
/// without it.
fn check_supported(
    name: &FlakeName,
    config: &Path,
    include: &flakes::config::Include,
    container: &ContainerFlake,
) -> Result<(), PodmanError> {
    let unsupported = |feature| PodmanError::Unsupported {
        name: name.to_string(),
        config: config.to_path_buf(),
        feature,
    };
    if container.needs_provisioning(include) {
        return Err(unsupported(
            "provisioning (base_container, layers, include or host dependencies)",
        ));
    }
    if container.runtime.mode != LaunchMode::OneShot {
        tracing::warn!(
            flake = %name,
            mode = container.runtime.mode.as_str(),
            "this podman-pilot runs every call as a one-shot instance; state is not kept between calls"
        );
    }
    Ok(())
}
