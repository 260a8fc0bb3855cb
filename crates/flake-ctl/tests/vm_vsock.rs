// SPDX-License-Identifier: MIT
//! QEMU VMs on vsock (`FLAKE_QEMU_CHANNEL=vsock`): the `vhost-device-vsock` process each VM
//! gets lives exactly as long as its VMM, whichever way the VM ends, and the guest is
//! reached through it the way Firecracker's guests are. (`make test` also runs the whole
//! behaviour suite of `vm_qemu.rs` over vsock.)
//!
//! Needs the VM fixtures with their `vhost-device-vsock` (`FLAKE_VM_FIXTURES`) and the
//! static `sci` (`FLAKE_SCI`); required when `FLAKE_TEST_REQUIRE_VM=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::vm::{vm_flake, vm_flake_with, vm_world};
use util::World;

/// `app` called with `args`, every VM on vsock.
fn on_vsock(w: &World, app: &Path, args: &[&str]) -> Command {
    let mut cmd = w.command(app);
    cmd.args(args).env("FLAKE_QEMU_CHANNEL", "vsock");
    cmd
}

fn call(w: &World, app: &Path, script: &str) -> String {
    let out = on_vsock(w, app, &["-c", script]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pids of this world's running VMMs, each with its children.
fn vmms_and_devices(w: &World) -> Vec<(u32, Vec<u32>)> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("qemu-system.*{}", w.dir.path().display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|pid| {
            let children = Command::new("pgrep").args(["-P", pid]).output().unwrap();
            let children = String::from_utf8_lossy(&children.stdout)
                .lines()
                .map(|c| c.parse().unwrap())
                .collect();
            (pid.parse().unwrap(), children)
        })
        .collect()
}

/// The one VMM of the world and its vsock device, checked to be its child.
fn the_vmm_and_device(w: &World) -> (u32, u32) {
    let found = vmms_and_devices(w);
    assert_eq!(found.len(), 1, "one VMM: {found:?}");
    let (vmm, children) = &found[0];
    assert_eq!(children.len(), 1, "one child of the VMM: {children:?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", children[0])).unwrap();
    assert!(comm.starts_with("vhost-device-vs"), "{comm}");
    (*vmm, children[0])
}

/// Waits up to `within` for processes `pids` to be gone (zombies count as gone).
fn wait_gone(pids: &[u32], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, s)| !s.starts_with('Z'))
        })
    };
    while pids.iter().any(alive) {
        assert!(Instant::now() < deadline, "{what}: {pids:?} still run");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_vsock_device_is_the_vms_child_and_ends_with_it_on_every_path() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    // A resume VM that powers off on its own: nobody is left to stop the device.
    let idle = vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "vsidle",
        &["--resume", "--idle-timeout", "2"],
        "",
    );
    let channel = call(&w, &idle, "cat /proc/cmdline");
    assert!(channel.contains("sci_channel=vsock"), "{channel}");
    assert_eq!(call(&w, &idle, "echo warm"), "warm\n");
    let (vmm, device) = the_vmm_and_device(&w);
    wait_gone(&[vmm, device], Duration::from_secs(60), "idle power-off");

    // `%remove` of a resume VM.
    assert_eq!(call(&w, &idle, "echo again"), "again\n");
    let (vmm, device) = the_vmm_and_device(&w);
    let removed = on_vsock(&w, &idle, &["%remove", "-c", "true"])
        .status()
        .unwrap();
    assert!(removed.success());
    wait_gone(&[vmm, device], Duration::from_secs(15), "%remove");

    // A one-shot launcher killed with SIGKILL mid-call.
    let oneshot = vm_flake(&w, &fixtures, &sci, "vskill");
    let mut launcher = on_vsock(&w, &oneshot, &["-c", "echo started; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(launcher.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    let (vmm, device) = the_vmm_and_device(&w);
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    wait_gone(
        &[vmm, device],
        Duration::from_secs(15),
        "kill -9 of the launcher",
    );

    // A one-shot call that ends normally leaves neither.
    assert_eq!(call(&w, &oneshot, "echo done"), "done\n");
    assert!(vmms_and_devices(&w).is_empty());
}

#[test]
fn a_resume_vm_is_called_on_the_channel_it_started_with() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(&w, &fixtures, &sci, "vsmixed", &["--resume"], "");
    let script = "read -r l < /proc/cmdline; case $l in *sci_channel=vsock*) echo vsock;; *) echo ports;; esac";
    // Started on vsock, called by a caller whose environment would choose ports.
    assert_eq!(call(&w, &app, script), "vsock\n");
    let plain = w.app(&app, &["-c", script], None);
    plain.success();
    assert_eq!(plain.stdout(), "vsock\n");
    w.app(&app, &["%remove", "-c", "true"], None).success();
    assert!(
        vmms_and_devices(&w).is_empty(),
        "%remove reached the vsock VM"
    );
    // And the other way round.
    let ports = w.app(&app, &["-c", script], None);
    ports.success();
    assert_eq!(ports.stdout(), "ports\n");
    assert_eq!(call(&w, &app, script), "ports\n");
    let removed = on_vsock(&w, &app, &["%remove", "-c", "true"])
        .status()
        .unwrap();
    assert!(removed.success());
    assert!(vmms_and_devices(&w).is_empty());
}
