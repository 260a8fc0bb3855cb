// SPDX-License-Identifier: MIT
//! `firecracker-pilot`: the launcher VM flakes' app paths point to.
//!
//! This release registers and validates VM flakes but cannot boot them yet: it loads the
//! flake it was called as, so configuration errors show up now, and then says plainly that
//! the VM launch is not available, exiting 125.

use std::path::Path;
use std::process::ExitCode;

use flakes::config::Engine;
use flakes::{FlakeName, PilotExit, Settings};

fn main() -> ExitCode {
    match run() {
        Ok(()) => PilotExit::LauncherFailure.into(),
        Err(message) => {
            eprintln!("firecracker-pilot: {message}");
            PilotExit::LauncherFailure.into()
        }
    }
}

fn run() -> Result<(), String> {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let base = Path::new(&argv0)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if base == "firecracker-pilot" {
        return Err(
            "firecracker-pilot is a launcher: call it through an app registered with \
                    `flake-ctl firecracker register`"
                .into(),
        );
    }
    let name = FlakeName::new(&base).map_err(|e| e.to_string())?;
    let settings = Settings::from_env().map_err(|e| e.to_string())?;
    let flake =
        flakes::registry::find(&settings.lookup_order(), &name).map_err(|e| e.to_string())?;
    match flake.engine {
        Engine::Vm(_) => Err(format!(
            "flake '{name}' is valid, but this release cannot boot VM flakes yet ({})",
            flake.path.display()
        )),
        Engine::Container(_) => Err(format!(
            "flake '{name}' is a podman flake; register it again with flake-ctl podman"
        )),
    }
}
