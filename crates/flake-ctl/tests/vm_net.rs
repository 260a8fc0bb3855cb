// SPDX-License-Identifier: MIT
//! VM networking end to end: a QEMU guest configured only by the seed's static `ip=` boot
//! argument (the kernel's own configuration, nothing run in the guest) reaches the host
//! side of its TAP device `tap-NAME`, with a ping answered by the host and a TCP connection
//! to a listener there, for an admin's device, for a device the call makes (gone after the
//! call), for a resume VM (its device kept while it runs, gone with `%remove`) and for an
//! unprivileged user. The devices are those of the launcher's own namespace, however it was
//! put there (`ip netns exec`, or `nsenter --net`, which leaves sysfs showing another
//! namespace); a device a call made is removed only from the namespace it was made in, and
//! calls in two namespaces do not share a device lock.
//!
//! Every launcher runs inside a network namespace the test makes, and every device,
//! address and listener is in it: the host's own network is never touched, and deleting
//! the namespace takes whatever a failed test left in it along. Needs root (and the user
//! `flaketest` for the user's test) and a fixture kernel with `CONFIG_VIRTIO_NET` and
//! `CONFIG_IP_PNP` (`make vm-fixtures`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use util::netns::{Entry, Netns};
use util::vm::{as_user_via, net_flake_on, running_vm, vm_world, KillVms, UserFlake, UserKit};
use util::World;

/// Port of the test's listener on the host side.
const PORT: u16 = 7207;
/// How long the guest's answers may take under software emulation.
const WAIT: Duration = Duration::from_secs(90);

/// The namespace's subnet `172.31.N.0/24`: the host side is `.1`, the guest `.2`.
struct Subnet(u8);

impl Subnet {
    fn host(&self) -> String {
        format!("172.31.{}.1", self.0)
    }

    fn host_cidr(&self) -> String {
        format!("{}/24", self.host())
    }

    /// The seed's static configuration of the guest's `eth0`.
    fn boot_arg(&self) -> String {
        format!(
            "ip=172.31.{}.2::{}:255.255.255.0::eth0:off",
            self.0,
            self.host()
        )
    }

    /// What the guest runs: ping the host side until it answers (a device the call makes
    /// gets its address only once it exists), then send `token` over TCP to the listener
    /// (again while it refuses: it may still be starting).
    fn reach_script(&self, token: &str) -> String {
        let host = self.host();
        format!(
            "n=0; until busybox ping -c1 -W1 {host} >/dev/null 2>&1; do \
             n=$((n+1)); [ $n -lt 40 ] || exit 3; sleep 1; done; \
             n=0; until echo {token} | busybox nc {host} {PORT} 2>/dev/null; do \
             n=$((n+1)); [ $n -lt 10 ] || exit 4; sleep 1; done; echo reached"
        )
    }
}

/// A VM world whose kernel can carry the network; `None` (after saying why) otherwise.
fn net_world() -> Option<(KillVms, World, PathBuf, PathBuf)> {
    if !util::is_root() {
        util::skip("network namespaces and TAP devices need root");
        return None;
    }
    let world = vm_world()?;
    net_kernel(&world.2)?;
    Some(world)
}

/// Whether the fixture kernel has the guest network driver and the `ip=` configuration;
/// a kernel without them fails a run that requires VM tests, with the fix.
fn net_kernel(fixtures: &Path) -> Option<()> {
    let config = fixtures.join("kernel/config");
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    let missing: Vec<&str> = ["CONFIG_VIRTIO_NET", "CONFIG_IP_PNP"]
        .into_iter()
        .filter(|option| !text.lines().any(|l| l == format!("{option}=y")))
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    let why = format!(
        "the fixture kernel {} lacks {} (no guest network): rerun make vm-fixtures",
        config.display(),
        missing.join(" and ")
    );
    let required = std::env::var("FLAKE_TEST_REQUIRE_VM").is_ok_and(|v| v == "1");
    assert!(!required, "{why}");
    util::note_skip(&why);
    None
}

/// A flake name unique among concurrent runs whose device `tap-NAME` fits 15 characters.
fn flake_name(tag: &str) -> String {
    format!("{tag}{}", std::process::id() % 10_000_000)
}

/// Starts `app ARGS` in `ns` (entered through `ip netns exec`).
fn spawn(ns: &Netns, w: &World, app: &Path, args: &[&str]) -> Child {
    spawn_by(Entry::Exec, ns, w, app, args)
}

/// Starts `app ARGS` in `ns`, entered the `entry` way.
fn spawn_by(entry: Entry, ns: &Netns, w: &World, app: &Path, args: &[&str]) -> Child {
    ns.command(w, entry, app)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Exit code, stdout and stderr of a call.
fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the call `child` makes the device `tap` for: waits for the device, gives it the
/// host address of `net`, and lets the call finish.
fn call_making(ns: &Netns, net: &Subnet, tap: &str, mut child: Child) -> (i32, String, String) {
    let appeared = ns.wait_link(tap, WAIT, || child.try_wait().unwrap().is_none());
    if !appeared {
        let (code, out, err) = finish(child);
        panic!("the call made no device {tap} (exit {code}): {out}{err}");
    }
    ns.address(tap, &net.host_cidr());
    finish(child)
}

/// Says on stderr how long a call took (shown with `--nocapture`).
fn took(what: &str, since: Instant) {
    eprintln!("{what}: {:.1} s", since.elapsed().as_secs_f64());
}

#[test]
fn a_guest_reaches_the_admins_device_through_its_ip_boot_argument() {
    admins_device(Entry::Exec, "na");
}

/// Launched in the namespace the way `nsenter --net`, `unshare --net` or a service's
/// private network do it, the launcher finds the admin's device of its own namespace (not
/// a device of that name elsewhere, nor a missing one it would then make again).
#[test]
fn a_launcher_entered_into_a_namespace_uses_the_admins_device_there() {
    admins_device(Entry::Enter, "ne");
}

/// A guest reaches the admin's device of the namespace the launcher was put in by `entry`.
fn admins_device(entry: Entry, tag: &str) {
    let Some((_vms, w, fixtures, sci)) = net_world() else {
        return;
    };
    let ns = Netns::new(tag);
    let net = Subnet(71);
    let name = flake_name(tag);
    let tap = format!("tap-{name}");
    // The seed's recipe: the admin makes the device and gives it the host's address.
    ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    ns.address(&tap, &net.host_cidr());
    let app = net_flake_on(&w, &fixtures, &sci, &name, "qemu", &[], &net.boot_arg());
    let listener = ns.listen(PORT);
    let before = ns.rx_packets(&tap);
    let token = format!("guest-{name}");
    let start = Instant::now();
    let call = spawn_by(entry, &ns, &w, &app, &["-c", &net.reach_script(&token)]);
    let (code, out, err) = finish(call);
    took("one-shot call over the admin's device", start);
    assert_eq!((code, out.as_str()), (0, "reached\n"), "{err}");
    assert_eq!(
        listener.received(Duration::from_secs(10)),
        format!("{token}\n")
    );
    let after = ns.rx_packets(&tap);
    assert!(
        after > before,
        "the host side got the guest's packets: {before} -> {after}"
    );
    assert!(ns.has_link(&tap), "the admin's device is left alone");
}

#[test]
fn a_device_the_call_makes_carries_the_guests_packets_and_goes_with_the_call() {
    made_device(Entry::Exec, "nb");
}

/// The device a launcher entered into a namespace makes there is the one it removes when
/// the call ends, whatever `/sys/class/net` shows it.
#[test]
fn a_launcher_entered_into_a_namespace_removes_the_device_it_made_there() {
    made_device(Entry::Enter, "nm");
}

/// A call in the namespace the launcher was put in by `entry` makes the device, the guest
/// reaches it, and the device goes with the call.
fn made_device(entry: Entry, tag: &str) {
    let Some((_vms, w, fixtures, sci)) = net_world() else {
        return;
    };
    let ns = Netns::new(tag);
    let net = Subnet(72);
    let name = flake_name(tag);
    let tap = format!("tap-{name}");
    assert!(!ns.has_link(&tap));
    let app = net_flake_on(&w, &fixtures, &sci, &name, "qemu", &[], &net.boot_arg());
    let listener = ns.listen(PORT);
    let token = format!("guest-{name}");
    let start = Instant::now();
    let call = spawn_by(entry, &ns, &w, &app, &["-c", &net.reach_script(&token)]);
    let (code, out, err) = call_making(&ns, &net, &tap, call);
    took("one-shot call over a device it made", start);
    assert_eq!((code, out.as_str()), (0, "reached\n"), "{err}");
    assert_eq!(
        listener.received(Duration::from_secs(10)),
        format!("{token}\n")
    );
    assert!(!ns.has_link(&tap), "the device the call made is gone");
}

#[test]
fn a_resume_vm_keeps_its_device_while_it_runs_and_remove_takes_it() {
    let Some((_vms, w, fixtures, sci)) = net_world() else {
        return;
    };
    let ns = Netns::new("nr");
    let net = Subnet(73);
    let name = flake_name("nr");
    let tap = format!("tap-{name}");
    let app = net_flake_on(
        &w,
        &fixtures,
        &sci,
        &name,
        "qemu",
        &["--resume"],
        &net.boot_arg(),
    );
    for (round, what) in ["first resume call (boots)", "warm resume call"]
        .into_iter()
        .enumerate()
    {
        let listener = ns.listen(PORT);
        let token = format!("guest-{name}-{round}");
        let start = Instant::now();
        let call = spawn(&ns, &w, &app, &["-c", &net.reach_script(&token)]);
        let (code, out, err) = if round == 0 {
            call_making(&ns, &net, &tap, call)
        } else {
            finish(call)
        };
        took(what, start);
        assert_eq!((code, out.as_str()), (0, "reached\n"), "{what}: {err}");
        assert_eq!(
            listener.received(Duration::from_secs(10)),
            format!("{token}\n")
        );
        assert!(
            running_vm(&w, &name).is_some(),
            "the VM runs on after {what}"
        );
        assert!(ns.has_link(&tap), "the device stays while the VM runs");
    }
    let (code, _, err) = finish(spawn(&ns, &w, &app, &["%remove", "-c", "true"]));
    assert_eq!(code, 0, "{err}");
    assert!(running_vm(&w, &name).is_none(), "%remove stops the VM");
    assert!(
        !ns.has_link(&tap),
        "%remove takes the device the VM was given"
    );
}

/// A device a call made is removed only in the namespace it was made in: a later call of
/// the instance from another namespace, whose own device of that name is the admin's
/// (`%remove` here; the same goes for collecting a killed call's leftovers), leaves that
/// one alone.
#[test]
fn a_call_from_another_namespace_never_removes_the_device_of_that_name_there() {
    let Some((_vms, w, fixtures, sci)) = net_world() else {
        return;
    };
    let (made_in, other) = (Netns::new("nx"), Netns::new("ny"));
    let net = Subnet(74);
    let name = flake_name("nx");
    let tap = format!("tap-{name}");
    let app = net_flake_on(
        &w,
        &fixtures,
        &sci,
        &name,
        "qemu",
        &["--resume"],
        &net.boot_arg(),
    );
    let call = spawn(&made_in, &w, &app, &["-c", "echo up"]);
    let (code, out, err) = call_making(&made_in, &net, &tap, call);
    assert_eq!((code, out.as_str()), (0, "up\n"), "{err}");
    other.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    other.address(&tap, &net.host_cidr());
    let (code, _, err) = finish(spawn(&other, &w, &app, &["%remove", "-c", "true"]));
    assert_eq!(code, 0, "{err}");
    assert!(running_vm(&w, &name).is_none(), "%remove stops the VM");
    assert!(
        other.has_link(&tap),
        "the admin's device of the other namespace stays"
    );
}

/// The same for the leftovers of a call killed with `kill -9` in one namespace, which the
/// next call collects: from another namespace, that call's device there (the admin's) is
/// not the killed call's, and the guest reaches it.
#[test]
fn a_killed_calls_device_is_collected_only_in_its_namespace() {
    let Some((_vms, w, fixtures, sci)) = net_world() else {
        return;
    };
    let (made_in, other) = (Netns::new("nk"), Netns::new("nl"));
    let net = Subnet(75);
    let name = flake_name("nk");
    let tap = format!("tap-{name}");
    let app = net_flake_on(&w, &fixtures, &sci, &name, "qemu", &[], &net.boot_arg());
    let mut killed = spawn(&made_in, &w, &app, &["-c", "sleep 60"]);
    let mark = w.path(&format!("ids/0/.vm/{name}#{}/tap.created", killed.id()));
    let deadline = Instant::now() + WAIT;
    while !mark.exists() {
        assert!(killed.try_wait().unwrap().is_none(), "the call ended early");
        assert!(Instant::now() < deadline, "the call made no device");
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    other.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    other.address(&tap, &net.host_cidr());
    let listener = other.listen(PORT);
    let token = format!("guest-{name}");
    let call = spawn(&other, &w, &app, &["-c", &net.reach_script(&token)]);
    let (code, out, err) = finish(call);
    assert_eq!((code, out.as_str()), (0, "reached\n"), "{err}");
    assert_eq!(
        listener.received(Duration::from_secs(10)),
        format!("{token}\n")
    );
    assert!(
        other.has_link(&tap),
        "the admin's device of the other namespace stays"
    );
    assert!(!mark.exists(), "the killed call's leftovers are collected");
}

/// An unprivileged user's launcher entered into a namespace judges the devices there by
/// the kernel's rule: one made for another user is refused in one line that names the
/// command making it for them (not the VMM's bare "Operation not permitted"), and through
/// the seed's device, made for no user and so open to all, the guest reaches the host.
#[test]
fn a_users_launcher_in_a_namespace_is_refused_another_users_device_and_uses_the_seeds() {
    let Some((_vms, _w, fixtures, sci)) = net_world() else {
        return;
    };
    let kit = UserKit::new(&fixtures, &sci);
    let ns = Netns::new("nu");
    let net = Subnet(76);
    let name = flake_name("nu");
    let tap = format!("tap-{name}");
    let image = format!("netimg{}", std::process::id());
    let setup = format!(
        "{}sed -i 's/ip=dhcp/{}/' \"$HOME/.config/flakes/{name}.yaml\" || exit 92\nid -u\n",
        kit.register(&name, &image),
        net.boot_arg()
    );
    let Some(out) = as_user_via(&[], &setup) else {
        return;
    };
    let _registered = UserFlake(kit.unregister(&name, &image));
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{out:?}");
    let enter = format!("--net=/run/netns/{}", ns.name());
    let token = format!("guest-{name}");
    let call = format!(
        "{}\n\"$app\" -c '{}'\necho \"status $?\"\n",
        kit.env(&name),
        net.reach_script(&token)
    );
    // Made for another user (root).
    ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap", "user", "0"]);
    ns.address(&tap, &net.host_cidr());
    let out = as_user_via(&["nsenter", &enter], &call).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("status 125"), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("may not open it (it is user root's)")
            && stderr.contains(&format!("ip tuntap add {tap} mode tap user {uid}")),
        "{stderr}"
    );
    // The seed's `ip tuntap add NAME mode tap`: for no user, so for every user.
    ns.ip(&["link", "delete", &tap]);
    ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    ns.address(&tap, &net.host_cidr());
    let listener = ns.listen(PORT);
    let out = as_user_via(&["nsenter", &enter], &call).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(stdout, "reached\nstatus 0\n", "{stderr}");
    assert_eq!(
        listener.received(Duration::from_secs(10)),
        format!("{token}\n")
    );
    assert!(ns.has_link(&tap), "the admin's device is left alone");
}

/// Calls of one flake in two namespaces at once each use their own namespace's device: a
/// call holding the device it made in one namespace neither makes a call in another wait
/// nor sends it to a device of its own there (one without the admin's address).
#[test]
fn calls_in_two_namespaces_at_once_each_use_their_namespaces_device() {
    let Some((_vms, w, fixtures, sci)) = net_world() else {
        return;
    };
    let (first_ns, second_ns) = (Netns::new("nc"), Netns::new("nd"));
    let net = Subnet(77);
    let name = flake_name("nc");
    let tap = format!("tap-{name}");
    let app = net_flake_on(&w, &fixtures, &sci, &name, "qemu", &[], &net.boot_arg());
    let mut first = spawn(&first_ns, &w, &app, &["-c", "sleep 5; echo first"]);
    // Held by the first call, which made the device (its lock file says so).
    let vms = w.path("ids/0/.vm");
    let deadline = Instant::now() + WAIT;
    while !holds_made_device(&vms, &tap) {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first call ended early"
        );
        assert!(Instant::now() < deadline, "the first call made no device");
        std::thread::sleep(Duration::from_millis(20));
    }
    second_ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    second_ns.address(&tap, &net.host_cidr());
    let listener = second_ns.listen(PORT);
    let token = format!("guest-{name}");
    let second = spawn(&second_ns, &w, &app, &["-c", &net.reach_script(&token)]);
    let (code, out, err) = finish(second);
    assert_eq!((code, out.as_str()), (0, "reached\n"), "{err}");
    assert_eq!(
        listener.received(Duration::from_secs(10)),
        format!("{token}\n")
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the second call did not wait"
    );
    let (code, out, err) = finish(first);
    assert_eq!((code, out.as_str()), (0, "first\n"), "{err}");
    assert!(
        !first_ns.has_link(&tap),
        "the device the first call made is gone"
    );
    assert!(second_ns.has_link(&tap), "the admin's device is left alone");
}

/// Whether a device lock file of `tap` in the VM directory `vms` says its holder made it.
fn holds_made_device(vms: &Path, tap: &str) -> bool {
    std::fs::read_dir(vms).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!(".{tap}"))
                && std::fs::read(entry.path()).is_ok_and(|text| text == b"created\n")
        })
    })
}
