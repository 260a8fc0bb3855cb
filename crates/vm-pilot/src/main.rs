// SPDX-License-Identifier: MIT
//! `firecracker-pilot`: the launcher VM flakes' app paths point to.
//!
//! It resolves the flake it was called as and the caller's world once
//! ([`flakes::launcher::resolve`], shared with `podman-pilot`), picks the VMM the flake
//! names (Firecracker, or QEMU microvm), and hands the call to [`vm_pilot::launch`]; the exit
//! status is the app's, its own failures exit 125 (see `flakes::exit`). Its diagnostics are
//! `podman-pilot`'s ([`flakes::launcher::init_logging`]): `tracing` on stderr at
//! `FLAKE_LOG_LEVEL`, and with `PILOT_DEBUG` set every command line it runs, while the
//! guest init logs to the instance's console log.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

use flakes::callargs::Terminal;
use flakes::config::vm::{VmFlake, Vmm as VmmKind};
use flakes::instance::InstanceKey;
use flakes::launcher::{self, LaunchError, Launcher, Resolved};
use flakes::process::{resolve, ProcessError};
use flakes::{Mode, PilotExit, Settings};
use vm_pilot::entry::GuestCommand;
use vm_pilot::firecracker::Firecracker;
use vm_pilot::launch::{GuestInit, Launch};
use vm_pilot::qemu::{ChannelChoice, Qemu, ACCEL_ENV, CHANNEL_ENV};
use vm_pilot::vmm::Vmm;
use vm_pilot::VmError;

/// Why `firecracker-pilot` could not run a call.
#[derive(Debug, thiserror::Error)]
enum PilotError {
    /// The call names no VM flake.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The VMM the flake names cannot be found.
    #[error(transparent)]
    Vmm(#[from] ProcessError),
    /// `FLAKE_QEMU_CHANNEL` names no guest channel.
    #[error(transparent)]
    Channel(#[from] vm_pilot::qemu::ChannelError),
    /// The launch itself failed.
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl From<&PilotError> for PilotExit {
    fn from(err: &PilotError) -> Self {
        match err {
            PilotError::Launch(err) => err.into(),
            // The app's own status comes back as the launch's result; every failure of the
            // launcher or its VMM is 125.
            PilotError::Vmm(_) | PilotError::Channel(_) | PilotError::Vm(_) => {
                PilotExit::LauncherFailure
            }
        }
    }
}

fn main() -> ExitCode {
    launcher::init_logging(Launcher::Firecracker);
    match run() {
        Ok(exit) => exit.into(),
        Err(err) => {
            eprintln!("firecracker-pilot: {}", flakes::report::one_line(&err));
            PilotExit::from(&err).into()
        }
    }
}

fn run() -> Result<PilotExit, PilotError> {
    let flake = launcher::resolve::<VmFlake, _>(std::env::args_os(), Settings::from_env)?;
    // Before anything is read from the image or started: files another user may have
    // changed refuse the call, and so may the image's record.
    vm_pilot::trust::check_vm(&flake.engine).map_err(VmError::from)?;
    let command = GuestCommand::for_flake(&flake.engine, flake.name.as_str(), &flake.config)
        .map_err(VmError::from)?;
    let path = tools_path(std::env::var_os("PATH"));
    let vmm = backend(&flake.engine, &path)?;
    Ok(launch(&flake, vmm.as_ref(), path, command).run()?)
}

/// The launch of one call of `flake` on `vmm`, with the caller's world it needs.
fn launch<'a>(
    flake: &'a Resolved<VmFlake>,
    vmm: &'a dyn Vmm,
    path: OsString,
    command: GuestCommand,
) -> Launch<'a> {
    let settings = &flake.settings;
    Launch {
        key: InstanceKey {
            flake: flake.name.clone(),
            instance: flake.call.instance.clone(),
        },
        flake: &flake.engine,
        include: &flake.include,
        call: &flake.call,
        command,
        vmm,
        ids_dir: settings.firecracker_ids_dir(),
        storage_dir: settings.flakes_dir(Mode::User).join("firecracker/storage"),
        states_dir: vm_pilot::saved::enabled().then(|| vm_pilot::states_dir(settings)),
        uid: settings.caller.uid,
        terminal: Terminal::detect(),
        term: std::env::var_os("TERM").map(OsString::into_vec),
        tools: vm_pilot::tools::Tools::new(path),
        debug: launcher::debug(),
        guest: GuestInit::of(&flake.engine),
        announces: GuestInit::announces(&flake.engine),
    }
}

/// The caller's `PATH` with the sbin directories after it, so that the VMMs, `mkfs` and `ip`
/// are found for users whose `PATH` lacks them.
fn tools_path(path: Option<OsString>) -> OsString {
    let mut path = path.unwrap_or_default();
    path.push(":/usr/local/sbin:/usr/sbin:/sbin");
    path
}

/// The VMM the flake asks for, found on `path`.
fn backend(vm: &VmFlake, path: &OsString) -> Result<Box<dyn Vmm>, PilotError> {
    Ok(match vm.runtime.vmm {
        VmmKind::Qemu => Box::new(Qemu {
            binary: resolve("qemu-system-x86_64", Some(path))?,
            accel: std::env::var(ACCEL_ENV).ok(),
            channel: ChannelChoice::parse(&std::env::var(CHANNEL_ENV).unwrap_or_default())?,
            device: vm_pilot::qemu::device::find(path),
        }),
        VmmKind::Firecracker => Box::new(Firecracker {
            binary: resolve("firecracker", Some(path))?,
        }),
    })
}
