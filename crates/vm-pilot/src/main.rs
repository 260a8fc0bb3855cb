// SPDX-License-Identifier: MIT
//! `firecracker-pilot`: the launcher VM flakes' app paths point to.
//!
//! It resolves the flake it was called as and the caller's world once, picks the VMM the
//! flake names (Firecracker, or QEMU microvm), and hands the call to
//! [`vm_pilot::launch`]; the exit status is the app's (see `flakes::exit`).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use flakes::callargs::Terminal;
use flakes::config::vm::{VmFlake, Vmm as VmmKind};
use flakes::config::Engine;
use flakes::instance::InstanceKey;
use flakes::process::resolve;
use flakes::{CallArgs, FlakeName, Mode, PilotExit, Settings};
use vm_pilot::firecracker::Firecracker;
use vm_pilot::launch::{GuestInit, Launch};
use vm_pilot::qemu::{ChannelChoice, Qemu, ACCEL_ENV, CHANNEL_ENV};
use vm_pilot::vmm::Vmm;

fn main() -> ExitCode {
    match run() {
        Ok(exit) => exit.into(),
        Err(message) => {
            eprintln!("firecracker-pilot: {message}");
            PilotExit::LauncherFailure.into()
        }
    }
}

fn run() -> Result<PilotExit, String> {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
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
    let call = CallArgs::parse(args).map_err(|e| e.to_string())?;
    let settings = Settings::from_env().map_err(|e| e.to_string())?;
    let flake =
        flakes::registry::find(&settings.lookup_order(), &name).map_err(|e| e.to_string())?;
    let vm = match flake.engine {
        Engine::Vm(vm) => vm,
        Engine::Container(_) => {
            return Err(format!(
                "flake '{name}' is a podman flake; register it again with flake-ctl podman"
            ))
        }
    };
    // Tools in sbin are found for users whose PATH lacks it.
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    path.push(":/usr/local/sbin:/usr/sbin:/sbin");
    let vmm = backend(&vm, &path)?;
    let launch = Launch {
        key: InstanceKey {
            flake: name,
            instance: call.instance.clone(),
        },
        flake: &vm,
        include: &flake.include,
        call: &call,
        vmm: vmm.as_ref(),
        ids_dir: settings.firecracker_ids_dir(),
        storage_dir: settings.flakes_dir(Mode::User).join("firecracker/storage"),
        states_dir: vm_pilot::saved::enabled().then(|| vm_pilot::states_dir(&settings)),
        uid: settings.caller.uid,
        terminal: Terminal::detect(),
        term: std::env::var_os("TERM")
            .map(|t| std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()).to_vec()),
        tools: vm_pilot::tools::Tools::new(path.clone()),
        debug: std::env::var_os("PILOT_DEBUG").is_some(),
        guest: GuestInit::of(&vm),
        announces: GuestInit::announces(&vm),
    };
    launch.run().map_err(|e| e.to_string())
}

/// The VMM the flake asks for, found on `path`.
fn backend(vm: &VmFlake, path: &OsString) -> Result<Box<dyn Vmm>, String> {
    Ok(match vm.runtime.vmm {
        VmmKind::Qemu => Box::new(Qemu {
            binary: resolve("qemu-system-x86_64", Some(path)).map_err(|e| e.to_string())?,
            accel: std::env::var(ACCEL_ENV).ok(),
            channel: ChannelChoice::parse(&std::env::var(CHANNEL_ENV).unwrap_or_default())?,
            device: vm_pilot::qemu::device::find(path),
        }),
        VmmKind::Firecracker => Box::new(Firecracker {
            binary: resolve("firecracker", Some(path)).map_err(|e| e.to_string())?,
        }),
    })
}
