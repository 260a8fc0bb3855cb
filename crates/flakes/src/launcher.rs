// SPDX-License-Identifier: MIT
//! The front half both launchers share: from the name they were called as to a loaded flake
//! of their engine.
//!
//! `podman-pilot` and `firecracker-pilot` begin the same way: the file name of `argv[0]` is
//! the flake's name (a launcher called under its own name refuses, with the command that
//! registers an app for it), the rest of argv are the call's arguments, the global
//! configuration says where registrations live, the first registry holding the flake loads
//! it, and the flake must be one of the launcher's engine. [`resolve`] does all of it in
//! that order, so both launchers refuse the same inputs with the same one-line errors and
//! the same exit code ([`LaunchError`] maps to [`PilotExit`] in one place);
//! [`init_logging`] gives both the same diagnostics.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::callargs::{CallArgError, CallArgs};
use crate::config::vm::VmFlake;
use crate::config::{ContainerFlake, Engine, Include};
use crate::exit::PilotExit;
use crate::global::GlobalConfigError;
use crate::host::{Mode, Settings};
use crate::names::{FlakeName, NameError};
use crate::register::PILOT_NAMES;
use crate::registry::{self, RegistryError};

/// Environment variable of the launchers' debug mode: every external command line they
/// run is printed on stderr, masked (and a VM's guest init logs to its console).
pub const DEBUG_ENV: &str = "PILOT_DEBUG";

/// One of the two launcher binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `podman-pilot`, for container flakes.
    Podman,
    /// `firecracker-pilot`, for VM flakes (Firecracker or QEMU).
    Firecracker,
}

impl Launcher {
    /// The binary's file name, which prefixes its messages.
    pub fn program(self) -> &'static str {
        match self {
            Launcher::Podman => "podman-pilot",
            Launcher::Firecracker => "firecracker-pilot",
        }
    }

    /// The `flake-ctl` subcommand that registers its flakes ([`Engine::label`] of them).
    pub fn engine(self) -> &'static str {
        match self {
            Launcher::Podman => "podman",
            Launcher::Firecracker => "firecracker",
        }
    }
}

/// The settings of the engine a launcher runs: the part of a flake's [`Engine`] it takes.
pub trait LaunchedBy: Sized {
    /// The launcher of flakes with these settings.
    const LAUNCHER: Launcher;

    /// The settings, or the [`Engine::label`] of the flake's engine when it is another
    /// launcher's.
    fn take(engine: Engine) -> Result<Self, &'static str>;
}

impl LaunchedBy for ContainerFlake {
    const LAUNCHER: Launcher = Launcher::Podman;

    fn take(engine: Engine) -> Result<Self, &'static str> {
        match engine {
            Engine::Container(container) => Ok(container),
            other => Err(other.label()),
        }
    }
}

impl LaunchedBy for VmFlake {
    const LAUNCHER: Launcher = Launcher::Firecracker;

    fn take(engine: Engine) -> Result<Self, &'static str> {
        match engine {
            Engine::Vm(vm) => Ok(vm),
            other => Err(other.label()),
        }
    }
}

/// Why a launcher cannot start a call.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The launcher was called under a launcher's name instead of a flake's.
    #[error(
        "{} is a launcher: call it through an app registered with `flake-ctl {} register`",
        launcher.program(), launcher.engine()
    )]
    CalledDirectly {
        /// The launcher that was called.
        launcher: Launcher,
    },
    /// The name it was called as is not a flake name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The call arguments are invalid.
    #[error(transparent)]
    CallArgs(#[from] CallArgError),
    /// The global configuration is broken.
    #[error(transparent)]
    Global(#[from] GlobalConfigError),
    /// The flake cannot be found or loaded.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The flake is for the other launcher.
    #[error("flake '{name}' is a {engine} flake; register it again with flake-ctl {engine}")]
    WrongEngine {
        /// The flake name.
        name: FlakeName,
        /// Its engine ([`Engine::label`]).
        engine: &'static str,
    },
}

impl From<&LaunchError> for PilotExit {
    fn from(_: &LaunchError) -> Self {
        // Nothing has run yet: every refusal is the launcher's own failure.
        PilotExit::LauncherFailure
    }
}

/// A call resolved to a flake of the launcher's engine `E`.
#[derive(Debug, Clone)]
pub struct Resolved<E> {
    /// The flake's name (the app's file name).
    pub name: FlakeName,
    /// The call's `@NAME`, `%option`s and app arguments.
    pub call: CallArgs,
    /// The caller and the global configuration.
    pub settings: Settings,
    /// The registrations that hold the flake (system ones shadow a user's).
    pub mode: Mode,
    /// The flake's main configuration file.
    pub config: PathBuf,
    /// Host files provisioned into the instance.
    pub include: Include,
    /// The flake's engine settings.
    pub engine: E,
}

/// Resolves a launcher call: `argv` is the whole command line (`argv[0]` included) and
/// `settings` reads the caller and the global configuration, after argv passed.
///
/// # Example
/// ```
/// use flakes::config::ContainerFlake;
/// use flakes::launcher::{resolve, LaunchError};
///
/// let argv = ["/usr/bin/podman-pilot", "--help"].map(std::ffi::OsString::from);
/// let err = resolve::<ContainerFlake, _>(argv, flakes::Settings::from_env).unwrap_err();
/// assert!(matches!(err, LaunchError::CalledDirectly { .. }));
/// ```
pub fn resolve<E, S>(
    argv: impl IntoIterator<Item = OsString>,
    settings: S,
) -> Result<Resolved<E>, LaunchError>
where
    E: LaunchedBy,
    S: FnOnce() -> Result<Settings, GlobalConfigError>,
{
    let mut argv = argv.into_iter();
    let name = flake_name(E::LAUNCHER, &argv.next().unwrap_or_default())?;
    let call = CallArgs::parse(argv)?;
    let settings = settings()?;
    let registries = settings.lookup_order();
    let registry = registry::holder(&registries, &name)?;
    let flake = registry.load(&name)?;
    let engine = E::take(flake.engine).map_err(|engine| LaunchError::WrongEngine {
        name: name.clone(),
        engine,
    })?;
    Ok(Resolved {
        mode: registry.mode(),
        name,
        call,
        settings,
        config: flake.path,
        include: flake.include,
        engine,
    })
}

/// The flake name is the file name the launcher was called as; a launcher's own name is
/// refused, whichever launcher it names.
fn flake_name(launcher: Launcher, argv0: &OsString) -> Result<FlakeName, LaunchError> {
    let base = Path::new(argv0)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    if PILOT_NAMES.contains(&base.as_ref()) {
        return Err(LaunchError::CalledDirectly { launcher });
    }
    Ok(FlakeName::new(&base)?)
}

/// Sets up a launcher's diagnostics on stderr: `tracing` at the level of
/// [`FLAKE_LOG_LEVEL`](crate::logging::LOG_LEVEL_ENV) (`warn` by default), and with
/// [`DEBUG_ENV`] set, every external command line it runs, prefixed with its name.
pub fn init_logging(launcher: Launcher) {
    crate::logging::init(std::env::var(crate::logging::LOG_LEVEL_ENV).ok().as_deref());
    if debug() {
        crate::process::trace_commands(launcher.program());
    }
}

/// True when [`DEBUG_ENV`] is set.
pub fn debug() -> bool {
    std::env::var_os(DEBUG_ENV).is_some()
}

#[cfg(test)]
mod tests;
