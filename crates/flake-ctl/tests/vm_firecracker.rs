// SPDX-License-Identifier: MIT
//! VM flakes under the real Firecracker binary (v1.12.1 from the VM fixtures).
//!
//! What runs everywhere with a `/dev/kvm`: the launcher writes a configuration Firecracker
//! accepts (the VM starts, its vsock socket appears, `show` lists it as running) and it
//! cleans up when the VMM dies or fails. Calls into a Firecracker guest run only where a
//! boot probe shows guests can boot: the software nested hypervisor of the build machines
//! cannot run a Linux guest (see docs/architecture.md, Testing), and those tests say so when
//! they skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use util::vm::{inputs, running_vm, vm_flake_on, KillVms};
use util::World;

/// Fixtures, sci and a usable `/dev/kvm`; `None` (with a skip line) otherwise.
fn fc_inputs() -> Option<(PathBuf, PathBuf)> {
    let (fixtures, sci) = inputs()?;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm || !fixtures.join("bin/firecracker").is_file() {
        util::note_skip("needs the Firecracker fixture and a usable /dev/kvm");
        return None;
    }
    Some((fixtures, sci))
}

/// [`vm_world`](util::vm::vm_world) for Firecracker tests.
fn fc_world() -> Option<(KillVms, World, PathBuf, PathBuf)> {
    let (fixtures, sci) = fc_inputs()?;
    let w = World::new();
    Some((KillVms(w.dir.path().to_path_buf()), w, fixtures, sci))
}

/// `PATH` with the fixture's firecracker first.
fn path_with(fixtures: &Path) -> OsString {
    let mut path = fixtures.join("bin").into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// Whether a Linux guest boots under Firecracker on this machine, probed once: the fixture
/// rootfs prints a marker from its init.
fn guests_boot(fixtures: &Path) -> bool {
    static BOOTS: OnceLock<bool> = OnceLock::new();
    let boots = *BOOTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("probe.json");
        let json = serde_json::json!({
            "boot-source": {
                "kernel_image_path": fixtures.join("kernel/vmlinux"),
                "boot_args": "console=ttyS0 reboot=k panic=-1 root=/dev/vda ro quiet"
            },
            "drives": [{
                "drive_id": "rootfs",
                "path_on_host": fixtures.join("rootfs.ext4"),
                "is_root_device": true,
                "is_read_only": true
            }],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}
        });
        std::fs::write(&config, json.to_string()).unwrap();
        let mut vmm = Command::new(fixtures.join("bin/firecracker"))
            .arg("--no-api")
            .arg("--config-file")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = vmm.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = out.read_to_end(&mut text);
            String::from_utf8_lossy(&text).contains("FLAKE-GUEST-UP")
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(vmm.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = vmm.kill();
        let _ = vmm.wait();
        reader.join().unwrap_or(false)
    });
    if !boots {
        // Noted for every test that stops here, not only the one that ran the probe.
        util::note_skip(
            "no Linux guest boots under Firecracker on this machine within 20 s \
             (no hardware virtualisation); guest calls are tested under QEMU instead",
        );
    }
    boots
}

/// Waits for the one-shot instance directory of `name` to hold a vsock socket.
fn wait_for_vsock(w: &World, name: &str, child: &mut Child) -> PathBuf {
    let vms = w.path("ids/0/.vm");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = std::fs::read_dir(&vms).ok().and_then(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}#"))
            })
        });
        if let Some(dir) = found.filter(|d| d.join("vsock.sock").exists()) {
            return dir;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the launcher ended ({status}) before the vsock appeared: {err}");
        }
        assert!(Instant::now() < deadline, "no vsock socket appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> (i32, String) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        assert!(Instant::now() < deadline, "the launcher did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn firecracker_accepts_the_instance_and_the_launcher_cleans_up_when_it_is_killed() {
    let Some((_vms, w, fixtures, sci)) = fc_world() else {
        return;
    };
    let app = vm_flake_on(
        &w,
        &fixtures,
        &sci,
        "fcapp",
        "firecracker",
        &["--overlay-size", "16MiB"],
        "",
    );
    let mut child = w
        .command(&app)
        .env("PATH", path_with(&fixtures))
        .args(["-c", "echo \"x\" y"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = wait_for_vsock(&w, "fcapp", &mut child);
    let label = dir.file_name().unwrap().to_string_lossy().into_owned();

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vm.json")).unwrap()).unwrap();
    let boot = config["boot-source"]["boot_args"].as_str().unwrap();
    assert!(
        boot.contains("init=/usr/sbin/sci") && boot.contains("sci_channel=vsock"),
        "{boot}"
    );
    assert!(boot.contains("overlay_root=/dev/vdb"), "{boot}");
    assert!(
        !boot.contains('"') && !boot.contains("echo"),
        "no argument on the kernel command line: {boot}"
    );
    assert_eq!(config["drives"][0]["is_read_only"], true);
    assert_eq!(config["drives"][1]["drive_id"], "overlay");
    assert!(
        dir.join("overlay.ext4").is_file(),
        "the overlay disk was made"
    );
    assert!(Path::new(config["logger"]["log_path"].as_str().unwrap()).is_file());
    assert!(
        config.get("network-interfaces").is_none(),
        "--no-net: no device"
    );
    let pid = running_vm(&w, &label).expect("show lists the VM as running");

    Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    let (code, err) = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("stopped before its guest init was ready (it never listened on vsock)"),
        "{err}"
    );
    assert!(
        err.contains(&dir.display().to_string()),
        "the error points at the logs: {err}"
    );
    assert!(dir.join("vmm.log").is_file(), "kept for inspection");
    assert!(
        running_vm(&w, &label).is_none(),
        "shown as stale, not running"
    );
    // That the next launch collects such a directory is checked by
    // a_vmm_that_fails_is_reported_and_blocks_nothing.
}

#[test]
fn a_vmm_that_fails_is_reported_and_blocks_nothing() {
    let Some((_vms, w, fixtures, sci)) = fc_world() else {
        return;
    };
    let bogus = w.path("not-a-kernel");
    std::fs::write(&bogus, "this is no ELF image").unwrap();
    let app = vm_flake_on(&w, &fixtures, &sci, "fcbad", "firecracker", &[], "");
    std::fs::write(
        w.home.join(".config/flakes/fcbad.d/zz-kernel.yaml"),
        format!(
            "vm:\n  runtime:\n    firecracker:\n      kernel_image_path: {}\n",
            bogus.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let run = w
        .command(&app)
        .env("PATH", path_with(&fixtures))
        .args(["-c", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(125), "{err}");
    assert!(err.contains("fcbad") && err.contains("vmm.log"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let kept: Vec<_> = std::fs::read_dir(w.path("ids/0/.vm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the failed instance keeps its logs: {kept:?}"
    );
    let logs = ["vmm.log", "vmm.stderr", "console.log"]
        .iter()
        .map(|f| std::fs::read_to_string(kept[0].join(f)).unwrap_or_default())
        .collect::<String>();
    assert!(
        !logs.trim().is_empty(),
        "Firecracker's complaint is in the logs"
    );
    // A second failing launch collects the first one's directory and keeps only its own.
    let again = w
        .command(&app)
        .env("PATH", path_with(&fixtures))
        .args(["-c", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(125));
    let left: Vec<_> = std::fs::read_dir(w.path("ids/0/.vm")).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!kept[0].exists());
}

#[test]
fn guest_calls_under_firecracker() {
    let Some((fixtures, sci)) = fc_inputs() else {
        return;
    };
    if !guests_boot(&fixtures) {
        return;
    }
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let app = vm_flake_on(&w, &fixtures, &sci, "fcrun", "firecracker", &[], "");
    let run = w
        .command(&app)
        .env("PATH", path_with(&fixtures))
        .args(["-c", "cat; echo \"$1\"; exit 3", "sh", "a \"b\""])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a \"b\"\n");
}
