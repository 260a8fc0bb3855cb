// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker remove` and `show` (and `podman show`) as root, against instance
//! directories in a shared base (`firecracker_ids_dir`/`podman_ids_dir` in `/tmp`) that
//! another local user (`flaketest`) prepared: nothing they plant may make root delete,
//! read or hang on anything but the instances' own state.
//!
//! Needs root and the user `flaketest` (skipped otherwise, saying so); the VM test also
//! needs the VM fixtures and the static `sci` (see `util::vm`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::vm::{vm_flake_with, vm_world};
use util::World;

/// The test user that plays the attacker.
const ATTACKER: &str = "flaketest";

/// The attacker's uid, when the tests can act as them (root, with `runuser`).
fn attacker_uid() -> Option<u32> {
    let out = Command::new("id").args(["-u", ATTACKER]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    if !is_root() || uid.is_none() {
        util::skip(&format!("needs root and the user {ATTACKER}"));
        return None;
    }
    uid
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// A name for a directory in `/tmp` unique to this test process and call.
fn unique_base() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!("/tmp/flake-vmstate-{}-{n}", std::process::id()))
}

/// Runs `script` with `sh` as the attacker.
fn as_attacker(script: &str) {
    let status = Command::new("runuser")
        .args(["-u", ATTACKER, "--", "sh", "-ec", script])
        .status()
        .unwrap();
    assert!(status.success(), "as {ATTACKER}: {script}");
}

/// A base shared like the original `/tmp/flakes` (root's, 1777), directly in `/tmp`; it
/// and the bases made beside it (`<base>-<uid>`) go when dropped.
struct SharedBase(PathBuf);

impl SharedBase {
    fn new() -> Self {
        let base = unique_base();
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        SharedBase(base)
    }

    /// A base the attacker made themselves (theirs, 0777) in the same place.
    fn theirs() -> Self {
        let base = unique_base();
        as_attacker(&format!("mkdir -m 0777 {}", base.display()));
        SharedBase(base)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Makes `w`'s VM instances live in this base.
    fn configure(&self, w: &World) {
        configure(w, &w.path("ids"), &self.0);
    }
}

/// Makes `w`'s container instances live in `podman` and its VM instances in `vms`.
fn configure(w: &World, podman: &Path, vms: &Path) {
    let text = format!(
        "generic:\n  flakes_dir: {}\n  podman_ids_dir: {}\n  firecracker_ids_dir: {}\n",
        w.flakes.display(),
        podman.display(),
        vms.display()
    );
    std::fs::write(&w.config, text).unwrap();
}

impl SharedBase {}

impl Drop for SharedBase {
    fn drop(&mut self) {
        let name = self.0.file_name().unwrap().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/tmp").unwrap().flatten() {
            let entry_name = entry.file_name().to_string_lossy().into_owned();
            if entry_name == name || entry_name.starts_with(&format!("{name}-")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A pulled-looking VM image and flake `name` on it, registered by root for itself.
fn fake_flake(w: &World, name: &str) -> String {
    let image = w.home.join(".config/flakes/firecracker/images/leap");
    std::fs::create_dir_all(&image).unwrap();
    for file in ["rootfs", "kernel"] {
        std::fs::write(image.join(file), file).unwrap();
    }
    let app = w.bin.join(name).display().to_string();
    w.ctl(&[
        "firecracker",
        "--user",
        "register",
        "--vm",
        "leap",
        "--app",
        &app,
    ])
    .success();
    app
}

/// A directory root owns that the attacker would like root to delete, with the entries a
/// removal of flake `flake` looks for.
fn victim(flake: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
    let victim = tempfile::Builder::new()
        .prefix("flake-victim-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(victim.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let entries: Vec<PathBuf> = [flake.to_string(), format!("{flake}@x")]
        .iter()
        .map(|name| victim.path().join(name))
        .collect();
    for entry in &entries {
        std::fs::create_dir(entry).unwrap();
        std::fs::write(entry.join("precious"), "keep").unwrap();
    }
    (victim, entries)
}

/// Root's `firecracker remove` never follows what another user planted in a shared base:
/// neither a `.vm` symlink in a per-user directory they made for root, nor one in a base
/// they made themselves. The flake is removed (root's VMs live in a directory of its own
/// beside theirs) or refused with one line; nothing outside is deleted.
#[test]
fn remove_never_follows_a_planted_vm_directory() {
    if attacker_uid().is_none() {
        return;
    }
    let flake = util::unique("vmrm");
    for base in [SharedBase::new(), SharedBase::theirs()] {
        let w = World::new();
        base.configure(&w);
        let app = fake_flake(&w, &flake);
        let (victim, entries) = victim(&flake);
        // Root's per-user directory, made by the attacker, with `.vm` pointing at the victim.
        as_attacker(&format!(
            "mkdir -p {base}/0 && ln -s {victim} {base}/0/.vm",
            base = base.path().display(),
            victim = victim.path().display()
        ));
        let remove = w.ctl(&["firecracker", "--user", "remove", "--app", &app]);
        if remove.code() == 0 {
            assert!(!Path::new(&app).is_symlink(), "{remove}");
        } else {
            assert_eq!(remove.stderr().lines().count(), 1, "one line: {remove}");
        }
        for entry in &entries {
            assert!(
                entry.join("precious").is_file(),
                "{} was deleted: {remove}",
                entry.display()
            );
        }
        assert!(
            base.path().join("0/.vm").is_symlink(),
            "theirs is left alone"
        );
    }
}

/// Whether network device `name` exists.
fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A network device made for the test (a dummy, or a bridge where the kernel has no dummy
/// driver), deleted when dropped.
struct Device(String);

impl Device {
    fn new(name: &str) -> Option<Self> {
        let made = ["dummy", "bridge"].iter().any(|kind| {
            Command::new("ip")
                .args(["link", "add", name, "type", kind])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !made {
            util::note_skip(&format!("cannot make network device {name}"));
            return None;
        }
        Some(Device(name.to_string()))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.0])
            .status();
    }
}

/// `tap.created` is a file in the instance directory: whatever device it names (the
/// loopback, a device of the host, or a device under the instance's own TAP name that is
/// not a TAP device), root's removal deletes none of them. (The unit tests of
/// `vm_pilot::tap` add `eth0` with a fake `ip`: a real run must never risk the host's
/// network.)
#[test]
fn remove_deletes_no_device_a_mark_names_but_the_instances_own_tap() {
    if !is_root() {
        util::skip("needs root to make network devices");
        return;
    }
    let flake = format!("vt{}", std::process::id() % 100_000);
    let Some(host_device) = Device::new(&format!("fkh{}", std::process::id() % 100_000)) else {
        return;
    };
    let Some(same_name) = Device::new(&format!("tap-{flake}")) else {
        return;
    };
    for marked in ["lo", host_device.0.as_str(), same_name.0.as_str()] {
        let w = World::new();
        let app = fake_flake(&w, &flake);
        let instance = w.path(&format!("ids/0/.vm/{flake}"));
        std::fs::create_dir_all(&instance).unwrap();
        std::fs::write(instance.join("tap.created"), marked).unwrap();
        w.ctl(&["firecracker", "--user", "remove", "--app", &app])
            .success();
        assert!(!instance.exists(), "the instance goes");
        for device in ["lo", &host_device.0, &same_name.0] {
            assert!(
                link_exists(device),
                "{device} deleted for a mark naming {marked}"
            );
        }
    }
}

/// Runs root's `firecracker show` in `w`, ended after `limit` and with its memory bounded
/// (so a read that never ends fails the test instead of the machine).
fn bounded_show(w: &World, limit: Duration) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let output = w
        .command("timeout")
        .arg(limit.as_secs().to_string())
        .args(["sh", "-c", "ulimit -v 1000000; exec \"$@\"", "sh"])
        .arg(util::bin_dir().join("flake-ctl"))
        .args(["firecracker", "show", "--format", "csv"])
        .output()
        .unwrap();
    (output, started.elapsed())
}

/// Another user's `vmm.pid` or `tap.created` that is a symlink to `/dev/zero` or a FIFO
/// makes their instance stale in root's listing, at once.
#[test]
fn show_lists_instances_with_hostile_state_files_as_stale_at_once() {
    let Some(uid) = attacker_uid() else {
        return;
    };
    let base = SharedBase::new();
    let w = World::new();
    base.configure(&w);
    as_attacker(&format!(
        "cd {base} && mkdir -m 0700 {uid} && cd {uid} && mkdir -p .vm/zero .vm/fifo .vm/tap \
         && ln -s /dev/zero .vm/zero/vmm.pid && mkfifo .vm/fifo/vmm.pid \
         && mkfifo .vm/tap/tap.created && ln -s /dev/zero .vm/tap/vmm.pid",
        base = base.path().display()
    ));
    let (output, took) = bounded_show(&w, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{:?} after {took:?}: {stdout}{stderr}",
        output.status
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    for label in ["zero", "fifo", "tap"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{label},{ATTACKER},,stale,"))),
            "{label}: {stdout}"
        );
    }
}

/// Whether a VMM naming `dir` runs.
fn vmm_runs_in(dir: &Path) -> bool {
    Command::new("pgrep")
        .arg("-f")
        .arg(format!("qemu-system.*{}/", dir.display()))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Where root's per-user directory went in `base` after another user took its name:
/// `<base>/0.<hex>`, or, when they took the base itself, `<base>-0/0`.
fn roots_alternative(base: &Path) -> PathBuf {
    let beside = PathBuf::from(format!("{}-0/0", base.display()));
    std::fs::read_dir(base)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("0."))
        .unwrap_or(beside)
}

/// With root's per-user directory (or the whole base) taken by another user, root's VMs
/// live in a directory of its own (`<uid>.<hex>`, or in `<base>-<uid>`): `show` lists
/// them and `remove` stops them.
#[test]
fn remove_stops_a_vm_in_an_alternative_user_directory() {
    if attacker_uid().is_none() {
        return;
    }
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let squatted = SharedBase::new();
    as_attacker(&format!("mkdir -m 0700 {}/0", squatted.path().display()));
    for (i, base) in [squatted, SharedBase::theirs()].into_iter().enumerate() {
        // The VMs name the base, not the world: a failed test must not leave them running.
        let _vms_in_base = util::vm::KillVms(base.path().to_path_buf());
        base.configure(&w);
        let flake = util::unique(&format!("vmalt{i}"));
        let app = vm_flake_with(&w, &fixtures, &sci, &flake, &["--resume"], "");
        w.app(&app, &["-c", "true"], None).success();
        let instance = roots_alternative(base.path()).join(".vm").join(&flake);
        assert!(
            vmm_runs_in(&instance),
            "the resume VM runs in {}",
            instance.display()
        );
        assert!(util::vm::running_vm(&w, &flake).is_some(), "and is listed");
        let app_s = app.display().to_string();
        w.ctl(&["firecracker", "--user", "remove", "--app", &app_s])
            .success();
        let deadline = Instant::now() + Duration::from_secs(10);
        while vmm_runs_in(&instance) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!vmm_runs_in(&instance), "remove stops the VM");
        assert!(!instance.exists(), "and removes its directory");
    }
}

/// Another user's agent socket whose queue they filled (a listener that never accepts)
/// does not hold root's `podman show`: the instance is listed at once.
#[test]
fn podman_show_is_not_held_by_a_listener_with_a_full_queue() {
    let Some(uid) = attacker_uid() else {
        return;
    };
    let base = SharedBase::new();
    let w = World::new();
    configure(&w, base.path(), &w.path("ids"));
    let run = base.path().join(format!("{uid}/held/run"));
    // The listener stays until the test's base is gone.
    let script = format!(
        "import os, socket, time\n\
         os.makedirs('{run}', 0o700)\n\
         path = '{run}/agent.sock'\n\
         listener = socket.socket(socket.AF_UNIX)\n\
         listener.bind(path)\n\
         listener.listen(0)\n\
         queued = []\n\
         while True:\n\
         \x20   client = socket.socket(socket.AF_UNIX)\n\
         \x20   client.setblocking(False)\n\
         \x20   queued.append(client)\n\
         \x20   try:\n\
         \x20       client.connect(path)\n\
         \x20   except BlockingIOError:\n\
         \x20       break\n\
         open('{run}/full', 'w').close()\n\
         while os.path.exists('{run}'):\n\
         \x20   time.sleep(0.2)\n",
        run = run.display()
    );
    let mut holder = Command::new("runuser")
        .args(["-u", ATTACKER, "--", "python3", "-c", &script])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run.join("full").exists() {
        assert!(
            Instant::now() < deadline,
            "the listener never filled its queue"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let output = w
        .command("timeout")
        .arg("30")
        .arg(util::bin_dir().join("flake-ctl"))
        .args(["podman", "show", "--format", "csv"])
        .output()
        .unwrap();
    let took = started.elapsed();
    drop(base);
    let _ = holder.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?} after {took:?}: {stdout}",
        output.status
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("held,{ATTACKER},"))),
        "{stdout}"
    );
}
