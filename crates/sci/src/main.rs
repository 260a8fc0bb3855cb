// SPDX-License-Identifier: MIT
//! `sci`: PID 1 of a VM flake's guest.
//!
//! It mounts what a program expects (`/proc`, `/sys`, `/dev`, `/dev/pts`), waits for the
//! guest channel (the virtio console port named `flake`), reads one call (argv as a list:
//! nothing is ever re-split or passed on the kernel command line), runs it with its streams
//! carried as frames (see `flake_agent::framed`), sends the exit status, and powers the VM
//! off. Any failure is one line on the console, followed by the power-off: a broken guest
//! never hangs the caller.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flake_agent::framed;
use flake_agent::proto::{Call, Frame};

/// Name of the virtio console port that carries calls.
const PORT_NAME: &str = "flake";

fn main() -> ExitCode {
    let pid1 = rustix::process::getpid().is_init();
    if let Err(message) = run(pid1) {
        eprintln!("sci: {message}");
    }
    if pid1 {
        power_off();
    }
    ExitCode::SUCCESS
}

fn run(pid1: bool) -> Result<(), String> {
    if pid1 {
        mount_basics();
    }
    let port = find_port(Duration::from_secs(10))?;
    let channel = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(|e| format!("cannot open {}: {e}", port.display()))?;
    let mut reader = channel.try_clone().map_err(|e| e.to_string())?;
    let call = match Frame::read_from(&mut reader) {
        Ok(Some(Frame::Call(call))) => call,
        Ok(_) => return Err("the channel closed before a call arrived".into()),
        Err(e) => return Err(e.to_string()),
    };
    let sink: framed::Sink<File> = Arc::new(Mutex::new(channel));
    framed::run(command(&call), &call, reader, &sink).map_err(|e| e.to_string())?;
    Ok(())
}

/// The call's command; the kernel starts init without `PATH`, so a default is set.
fn command(call: &Call) -> Command {
    let mut command = flake_agent::command::app_command(call);
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    }
    command
}

/// Mounts the kernel file systems; ones already mounted (or missing mount points) are
/// skipped, the program may not need them.
fn mount_basics() {
    use rustix::mount::{mount, MountFlags};
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        let _ = mount(source, target, fstype, MountFlags::empty(), None);
    }
    let _ = std::fs::create_dir_all("/dev/pts");
    let _ = mount("devpts", "/dev/pts", "devpts", MountFlags::empty(), None);
}

/// The device of the virtio console port named [`PORT_NAME`], waiting for it to appear.
fn find_port(timeout: Duration) -> Result<PathBuf, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.filter_map(Result::ok) {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    let device = Path::new("/dev").join(entry.file_name());
                    if device.exists() {
                        return Ok(device);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no virtio console port named '{PORT_NAME}' appeared"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends the VM. A restart, not a power-off: without ACPI (`acpi=off`) a guest cannot power
/// itself off, while both VMMs end the VM on a guest reboot (Firecracker always, QEMU with
/// `-no-reboot`).
fn power_off() {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
}
