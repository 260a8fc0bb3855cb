// SPDX-License-Identifier: MIT
//! `firecracker-pilot`: the launcher VM flakes' app paths point to.
//!
//! Loads the flake it was called as and runs one call in a fresh VM. The QEMU microvm
//! backend (`vm.runtime.vmm: qemu`) boots the guest and talks to its init `sci`; arguments
//! travel as a list over the guest channel, stdin/stdout/stderr stream, and the exit code is
//! the app's. The Firecracker backend is not wired up yet and says so (exit 125).

use std::path::Path;
use std::process::ExitCode;

use flakes::config::vm::Vmm;
use flakes::config::{Engine, Target};
use flakes::instance::user_dir;
use flakes::{CallArgs, FlakeName, PilotExit, Settings};
use vm_pilot::qemu::{QemuCall, ACCEL_ENV};

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
    if vm.runtime.vmm == Vmm::Firecracker {
        return Err(format!(
            "flake '{name}' uses Firecracker, which this release cannot boot yet; register it with \
             --vmm qemu to run it under QEMU ({})",
            flake.path.display()
        ));
    }
    let program = match &vm.target {
        Target::Program(path) => path.clone(),
        _ => name.to_string(),
    };
    let mut argv = vec![program.into_bytes()];
    argv.extend(
        call.app_args
            .iter()
            .map(|a| std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()).to_vec()),
    );
    let ids = settings.firecracker_ids_dir();
    let user = user_dir(&ids, settings.caller.uid).map_err(|e| e.to_string())?;
    let workdir = vm_pilot::instances_dir(&user).join(format!("{name}@{}", std::process::id()));
    std::fs::create_dir_all(&workdir)
        .map_err(|e| format!("cannot create {}: {e}", workdir.display()))?;
    let qemu = flakes::process::resolve("qemu-system-x86_64", std::env::var_os("PATH").as_deref())
        .map_err(|e| e.to_string())?;
    let run = QemuCall {
        qemu,
        flake_name: name.as_str(),
        flake: &vm,
        workdir: workdir.clone(),
        accel: std::env::var(ACCEL_ENV).ok(),
    };
    let result = run.run(argv).map_err(|e| e.to_string());
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    let status = result?;
    Ok(PilotExit::App(status.code()))
}
