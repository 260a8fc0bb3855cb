// SPDX-License-Identifier: MIT
//! VM networking as the seed's recipe sets it up: the TAP device `tap-NAME` (or the short
//! form `flake-ctl firecracker register` prints for a long name) is the one the VMM opens,
//! a device the launcher made goes with its call, concurrent one-shot calls never share a
//! device, and a user who cannot make the device is told the command that does.
//!
//! Real QEMU guests; the host side is checked here, from the VMM's command line and the
//! device its open file is attached to (`/proc/PID/fdinfo` `iff:`), while `vm_net.rs`
//! sends packets through the device. Needs root for the devices; every device a test
//! makes is deleted again, and no address or route is set on the host.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::vm::{as_user_via, inputs, net_flake_on, set_boot_ip, KillVms, UserFlake, UserKit};
use util::World;

/// The seed's static network setup, replacing `ip=dhcp`.
const SEED_IP: &str = "ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off";

/// A TAP device this test made (or expects the launcher to make), deleted when dropped.
struct Device(String);

impl Device {
    /// Makes `name` as the seed tells the admin (`ip tuntap add NAME mode tap`), up.
    fn admin(name: &str) -> Self {
        Self::admin_with(name, &[])
    }

    /// [`Device::admin`] with more `ip tuntap add` words (`user UID`).
    fn admin_with(name: &str, more: &[&str]) -> Self {
        let device = Device(name.to_string());
        assert!(!link_exists(name), "{name} exists before the test");
        ip(&[&["tuntap", "add", "dev", name, "mode", "tap"][..], more].concat());
        ip(&["link", "set", name, "up"]);
        device
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            let _ = Command::new("ip")
                .args(["link", "delete", &self.0])
                .status();
        }
    }
}

/// Deletes, when dropped (before the world goes), every device the launcher marked as made
/// in the world's instance directories: a failed test's calls leave none behind.
struct MadeTaps(PathBuf);

impl Drop for MadeTaps {
    fn drop(&mut self) {
        let Ok(instances) = std::fs::read_dir(self.0.join("0/.vm")) else {
            return;
        };
        for instance in instances.filter_map(Result::ok) {
            if let Ok(mark) = std::fs::read_to_string(instance.path().join("tap.created")) {
                // The device's name, then the namespace it was made in.
                drop(Device(mark.lines().next().unwrap_or_default().to_string()));
            }
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Root with the VM inputs; `None` (after saying why) otherwise.
fn tap_world() -> Option<(KillVms, World, PathBuf, PathBuf)> {
    let (fixtures, sci) = inputs()?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !root {
        util::skip("TAP devices need root");
        return None;
    }
    let w = World::new();
    Some((KillVms(w.dir.path().to_path_buf()), w, fixtures, sci))
}

/// A one-shot QEMU flake with a network and the seed's static `ip=` boot argument.
fn net_flake(w: &World, fixtures: &Path, sci: &Path, name: &str) -> PathBuf {
    net_flake_on(w, fixtures, sci, name, "qemu", &[], SEED_IP)
}

/// The pid and command line of the world's running VMM (`vmm`: its program name) and the
/// devices its open TAP files are attached to; waits up to a minute for it while `call`
/// runs.
fn vmm_of(w: &World, vmm: &str, call: &mut Child) -> (u32, String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let needle = w.dir.path().display().to_string();
    loop {
        for pid in pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(vmm) && cmdline.contains(&needle) {
                let taps = attached_taps(pid);
                if !taps.is_empty() {
                    return (pid, cmdline, taps);
                }
            }
        }
        assert!(
            call.try_wait().unwrap().is_none(),
            "the call ended before its VMM was seen"
        );
        assert!(Instant::now() < deadline, "no VMM with a TAP device");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `iff:` of every TUN/TAP file process `pid` holds: the device it is attached to.
fn attached_taps(pid: u32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("iff:").map(|d| d.trim().to_string()))
        })
        .collect()
}

fn spawn(w: &World, app: &Path, args: &[&str]) -> Child {
    w.command(app)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The tap lock files left in the world's VM directory.
fn tap_locks(w: &World) -> Vec<String> {
    std::fs::read_dir(w.path("ids/0/.vm"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(".tap-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_admins_tap_name_is_the_device_the_vmm_opens_one_call_at_a_time() {
    let Some((_vms, w, fixtures, sci)) = tap_world() else {
        return;
    };
    let _made = MadeTaps(w.path("ids"));
    let name = format!("vt{}", std::process::id() % 10_000_000);
    let device = Device::admin(&format!("tap-{name}"));
    let app = net_flake(&w, &fixtures, &sci, &name);
    let mut first = spawn(&w, &app, &["-c", "sleep 5; echo first"]);
    let (_, cmdline, taps) = vmm_of(&w, "qemu-system", &mut first);
    assert!(
        cmdline.contains(&format!("ifname={},", device.0)),
        "{cmdline}"
    );
    assert!(cmdline.contains(SEED_IP), "the seed's boot args: {cmdline}");
    assert_eq!(
        taps,
        std::slice::from_ref(&device.0),
        "the VMM's open device"
    );
    // A second call of the same flake waits for the device instead of sharing it.
    let second = spawn(&w, &app, &["%progress", "-c", "echo second"]);
    let (code, out, err) = finish(first);
    assert_eq!((code, out.as_str()), (0, "first\n"), "{err}");
    let (code, out, err) = finish(second);
    assert_eq!((code, out.as_str()), (0, "second\n"), "{err}");
    assert!(
        err.contains(&format!("waiting for tap device {}", device.0)),
        "{err}"
    );
    assert!(link_exists(&device.0), "the admin's device is left alone");
    assert!(tap_locks(&w).is_empty(), "{:?}", tap_locks(&w));
}

#[test]
fn a_long_flake_name_uses_the_device_register_and_show_name_and_a_made_one_goes() {
    let Some((_vms, w, fixtures, sci)) = tap_world() else {
        return;
    };
    let _made = MadeTaps(w.path("ids"));
    let name = format!("longnetflake{}", std::process::id());
    let app = net_flake(&w, &fixtures, &sci, &name);
    // Registering again prints which device the admin must make.
    let app_s = app.display().to_string();
    let again = w.ctl(&[
        "firecracker",
        "--user",
        "register",
        "--vm",
        "guest",
        "--app",
        &app_s,
        "--target",
        "/bin/sh",
        "--vmm",
        "qemu",
        "--force",
    ]);
    again.success();
    let shown = again
        .stdout()
        .split_whitespace()
        .find(|w| w.starts_with("tap-") && !w.contains(&name))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no device named: {again}"));
    assert_eq!(shown.len(), 12, "{again}");
    assert!(
        again
            .stdout()
            .contains(&format!("ip tuntap add {shown} mode tap user UID")),
        "{again}"
    );
    set_boot_ip(&w, &name, SEED_IP);
    // Not made by an admin: root's call makes it, uses it, and removes it.
    let made = Device(shown.clone());
    assert!(!link_exists(&made.0));
    let mut call = spawn(&w, &app, &["-c", "sleep 3; echo done"]);
    let (_, cmdline, taps) = vmm_of(&w, "qemu-system", &mut call);
    assert!(cmdline.contains(&format!("ifname={shown},")), "{cmdline}");
    assert_eq!(taps, std::slice::from_ref(&shown));
    let show = w.ctl(&["firecracker", "show", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str().is_some_and(|n| n.starts_with(&name)))
        .unwrap_or_else(|| panic!("{show}"));
    assert_eq!(row["tap"], shown, "{show}");
    let (code, out, err) = finish(call);
    assert_eq!((code, out.as_str()), (0, "done\n"), "{err}");
    assert!(!link_exists(&shown), "the device the call made is gone");
    assert!(tap_locks(&w).is_empty(), "{:?}", tap_locks(&w));
}

#[test]
fn firecracker_is_given_the_admins_tap_name_too() {
    let Some((_vms, w, fixtures, sci)) = tap_world() else {
        return;
    };
    let firecracker = fixtures.join("bin/firecracker");
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm || !firecracker.is_file() {
        util::note_skip("needs the Firecracker fixture and a usable /dev/kvm");
        return;
    }
    let _made = MadeTaps(w.path("ids"));
    let name = format!("vf{}", std::process::id() % 10_000_000);
    let device = Device::admin(&format!("tap-{name}"));
    let app = net_flake_on(&w, &fixtures, &sci, &name, "firecracker", &[], SEED_IP);
    let mut path = fixtures.join("bin").into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let mut call = w
        .command(&app)
        .env("PATH", path)
        .args(["-c", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (pid, cmdline, taps) = vmm_of(&w, "firecracker", &mut call);
    assert_eq!(taps, std::slice::from_ref(&device.0), "{cmdline}");
    let config = cmdline
        .split_whitespace()
        .find(|word| word.ends_with("/vm.json"))
        .unwrap_or_else(|| panic!("{cmdline}"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], device.0);
    let boot = config["boot-source"]["boot_args"].as_str().unwrap();
    assert!(boot.contains(SEED_IP), "{boot}");
    // No guest boots under Firecracker here: the VMM is stopped, the call fails.
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let (code, _, err) = finish(call);
    assert_eq!(code, 125, "{err}");
    assert!(link_exists(&device.0), "the admin's device is left alone");
    assert!(tap_locks(&w).is_empty(), "{:?}", tap_locks(&w));
}

#[test]
fn a_user_without_the_device_is_told_how_to_make_it_in_one_line() {
    let Some((_vms, w, fixtures, sci)) = tap_world() else {
        return;
    };
    let kit = UserKit::new(&fixtures, &sci);
    drop(w);
    let name = format!("vu{}", std::process::id() % 10_000_000);
    let device = Device(format!("tap-{name}"));
    assert!(!link_exists(&device.0));
    let image = format!("tapimg{}", std::process::id());
    let setup = format!(
        "{}\n\"$app\" -c true\necho \"status $?\"\nid -u\n",
        kit.register(&name, &image)
    );
    let Some(out) = as_user_via(&[], &setup) else {
        return;
    };
    let _registered = UserFlake(kit.unregister(&name, &image));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let uid = stdout.lines().last().unwrap_or_default();
    assert!(stdout.contains("status 125"), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("ip tuntap add {} mode tap user {uid}", device.0)),
        "{stderr}"
    );
    assert!(!link_exists(&device.0), "nothing made for the user");
    let call = format!("{}\n\"$app\" -c true\necho \"status $?\"\n", kit.env(&name));
    // Made for another user (root): the user is told the command that makes it theirs.
    let made = Device::admin_with(&device.0, &["user", "0"]);
    let out = as_user_via(&[], &call).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("status 125"), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("may not open it (it is user 0's)")
            && stderr.contains(&format!("ip tuntap add {} mode tap user {uid}", made.0)),
        "{stderr}"
    );
    drop(made);
    // Made as the seed writes it (no `user`): the kernel lets every user open it.
    let made = Device::admin(&device.0);
    let out = as_user_via(&[], &call).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("status 0"), "{stdout}{stderr}");
    assert!(link_exists(&made.0), "the admin's device is left alone");
}
