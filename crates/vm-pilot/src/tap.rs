// SPDX-License-Identifier: MIT
//! The TAP device of a VM with a network.
//!
//! A call of flake NAME uses the device `tap-NAME`, and a call of `NAME @ID` the device
//! `tap-NAME@ID`, as the seed's networking recipe tells the admin to make them, for every
//! caller and every launch mode. Only where that name does not fit the kernel's
//! 15-character limit on interface names is the short form `tap-<8 hex digits>` (a hash of
//! the instance name) used; `flake-ctl firecracker register` and `show` print it, since the
//! admin must make that device instead (the original let long names fail).
//!
//! A device that exists (made by an admin, for instance with
//! `ip tuntap add NAME mode tap user UID`, then given its address and routes) is used as it
//! is and left alone. A missing one is created by root (marked in the instance directory,
//! so it is removed when the instance ends, and only then); any other caller is told the
//! command that makes it. Routing and addresses stay the admin's business. Devices are
//! those of the launcher's network namespace, however it was put there (`ip netns exec`,
//! `nsenter --net`, a service's private network), never those sysfs happens to show.
//!
//! A device carries one VM at a time (the kernel refuses a second opener), so a one-shot
//! call holds the device's lock file (`<vms dir>/.tap-DEV.netNS.lock`, flock, NS the
//! number of the network namespace the device is in) for its whole call. A second
//! concurrent call of the same flake and instance in the same namespace waits for it, up to
//! [`WAIT`] (saying so with `%progress`) — except a root call while the device is one the
//! first call created for itself (no admin set it up, so it carries no network the admin
//! made): that call gets a device of its own for the call, `tap-<hash>`, as before. The
//! holder writes into the lock file whether it created the device, and removes the file
//! before it lets go, so no lock file outlives its calls.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flakes::instance::Dir;
use flakes::process::Cmd;
use rustix::fs::{flock, FlockOperation};

use crate::error::{Result, VmError};

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_NAME: usize = 15;
/// File in the instance directory that says the launcher created the device.
const CREATED: &str = "tap.created";
/// How long a one-shot call waits for the device another call holds.
pub use crate::timing::TAP_WAIT as WAIT;
/// What a device's lock file holds while its holder uses a device it created.
const HELD_CREATED: &[u8] = b"created\n";
/// What it holds while its holder uses a device that was there.
const HELD_FOUND: &[u8] = b"found\n";

/// The TAP device name of instance `label`.
pub fn name(label: &str) -> String {
    let full = format!("tap-{label}");
    let valid = full
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '%'));
    if full.len() <= MAX_NAME && valid {
        full
    } else {
        let hash = label.bytes().fold(0x811c_9dc5u32, |hash, b| {
            (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        format!("tap-{hash:08x}")
    }
}

/// The device the instance in `dir` (of instance `label`, `NAME[@ID]`, or a one-shot
/// call's `NAME[@ID]#PID`) uses: the one the launcher created for it, else
/// [`name`]`(NAME[@ID])`.
pub fn used_by(dir: &Path, label: &str) -> String {
    created(dir, label).unwrap_or_else(|| name(key_of(label)))
}

/// `NAME[@ID]` of instance `label` (a one-shot call's without its `#PID`).
fn key_of(label: &str) -> &str {
    label.split_once('#').map_or(label, |(key, _)| key)
}

/// [`used_by`] for the instance directory `dir` held open (another user's, for a
/// listing).
pub fn used_by_in(dir: &Dir, label: &str) -> String {
    used_by(&dir.fd_path(), label)
}

/// The device the launcher marked as created in the instance directory `dir` (of
/// instance `label`), if the mark names one this instance may have created.
///
/// The mark is a file in a directory its owner may write, and root removes the device it
/// names: only a name the launcher gives this very instance counts (`tap-LABEL`, or its
/// short form, for the instance or, for a one-shot `NAME[@ID]#PID`, its own call), never
/// another device of the host such as `eth0`.
fn created(dir: &Path, label: &str) -> Option<String> {
    mark(dir, label).map(|(marked, _)| marked)
}

/// The device [`created`] names and the network namespace it was made in (see
/// [`namespace`]; marks of earlier releases do not say).
fn mark(dir: &Path, label: &str) -> Option<(String, Option<String>)> {
    let text = crate::state_file::read_text(&dir.join(CREATED))?;
    let mut lines = text.lines();
    let marked = lines.next()?.to_string();
    let made_in = lines.next().map(str::to_string);
    (marked == name(label) || marked == name(key_of(label))).then_some((marked, made_in))
}

/// The caller's network namespace as the kernel names it (`net:[INODE]`).
///
/// A device belongs to one namespace, and another namespace may have a device of the same
/// name (an admin's): a launcher removes the device a call made only from the namespace it
/// was made in.
fn namespace() -> Option<String> {
    std::fs::read_link("/proc/thread-self/ns/net")
        .ok()?
        .into_os_string()
        .into_string()
        .ok()
}

/// Whether `name` is a TUN/TAP device of the caller's network namespace (the kernel shows
/// `tun_flags` for those alone; where sysfs shows another namespace, `ip` is asked).
fn is_tap(name: &str, tools: &crate::tools::Tools) -> bool {
    if !exists(name) {
        return false;
    }
    match own_sysfs(name) {
        Some(dir) => dir.join("tun_flags").exists(),
        None => tools.ip().is_ok_and(|ip| ip_shows_tap(ip, name)),
    }
}

/// Whether `ip` says `name` is a TAP device.
fn ip_shows_tap(ip: &Path, name: &str) -> bool {
    tun_data(ip, name).is_some_and(|data| data["type"] == "tap")
}

/// The TUN/TAP details of device `name` of the caller's namespace, as
/// `ip -d -j link show dev NAME` gives them (`info_data` of a `tun` device); `None` for
/// another kind of device, none, or an `ip` that does not say.
fn tun_data(ip: &Path, name: &str) -> Option<serde_json::Value> {
    let out = Cmd::new(ip)
        .args(["-d", "-j", "link", "show", "dev", name])
        .stdout_limited(64 * 1024)
        .ok()?;
    let mut links: serde_json::Value = serde_json::from_str(&out).ok()?;
    let info = links.get_mut(0)?.get_mut("linkinfo")?.take();
    (info["info_kind"] == "tun" && info["info_data"].is_object()).then(|| info["info_data"].clone())
}

/// `/sys/class/net/NAME` when it is the caller's device `name`.
///
/// Sysfs shows the devices of the network namespace it was mounted in: for a launcher put
/// into a namespace by `nsenter --net`, `unshare --net` or a service manager's private
/// network (only `ip netns exec` mounts a sysfs of the namespace), `/sys/class/net` is
/// another namespace's, where the same name may be another device or none. Its entry counts
/// only when it has the index the caller's namespace gives the name.
fn own_sysfs(name: &str) -> Option<PathBuf> {
    use rustix::net::{netdevice::name_to_index, socket, AddressFamily, SocketType};
    let dir = Path::new("/sys/class/net").join(name);
    let shown = crate::state_file::read_text(&dir.join("ifindex"))?;
    let probe = socket(AddressFamily::UNIX, SocketType::DGRAM, None).ok()?;
    let own = name_to_index(&probe, name).ok()?;
    (shown.parse::<u32>().ok()? == own).then_some(dir)
}

/// The note `flake-ctl firecracker register` prints for flake `flake` when its device
/// does not take the seed's form `tap-NAME` (the name is too long): which device to make.
pub fn short_form_note(flake: &str) -> Option<String> {
    let device = name(flake);
    (device != format!("tap-{flake}")).then(|| {
        format!(
            "the network device of {flake} is {device} (tap-{flake} does not fit the kernel's \
             {MAX_NAME} characters); create it with `ip tuntap add {device} mode tap user UID`; \
             a call of an instance (@ID) without its device names the one it needs"
        )
    })
}

/// Whether a network device `name` exists in the caller's network namespace.
///
/// `/proc/thread-self/net/dev` lists the devices of the reader's own namespace, whatever
/// namespace sysfs shows (see `own_sysfs`); sysfs is the answer only without it.
pub fn exists(name: &str) -> bool {
    match std::fs::read_to_string("/proc/thread-self/net/dev") {
        Ok(dev) => listed(&dev, name),
        Err(_) => Path::new("/sys/class/net").join(name).exists(),
    }
}

/// Whether the device table `dev` (of `/proc/net/dev`) lists `name`. Its device lines
/// start with the name and a colon, which no device name contains.
fn listed(dev: &str, name: &str) -> bool {
    dev.lines()
        .filter_map(|line| line.split_once(':'))
        .any(|(device, _)| device.trim() == name)
}

/// Makes sure device `name` exists for the instance in `dir`; creates it when missing
/// (then `true`).
pub fn ensure(name: &str, dir: &Path, ip: &Path, uid: u32) -> Result<bool> {
    let root = rustix::process::geteuid().is_root();
    if exists(name) {
        if !root {
            check_owner(name, uid, ip)?;
        }
        return Ok(false);
    }
    if !root {
        return Err(VmError::Tap {
            name: name.into(),
            reason: format!(
                "it does not exist and only root can create it; create it with \
                 `ip tuntap add {name} mode tap user {uid}`, or register the flake with --no-net"
            ),
        });
    }
    Cmd::new(ip)
        .args([
            "tuntap",
            "add",
            "dev",
            name,
            "mode",
            "tap",
            "user",
            &uid.to_string(),
        ])
        .run()?;
    // Marked only once made: a device someone else made meanwhile is not ours to remove.
    let marker = dir.join(CREATED);
    let mark = match namespace() {
        Some(made_in) => format!("{name}\n{made_in}\n"),
        None => name.to_string(),
    };
    crate::state_file::write(&marker, mark.as_bytes()).map_err(crate::error::io(&marker))?;
    Cmd::new(ip).args(["link", "set", name, "up"]).run()?;
    Ok(true)
}

/// Refuses an existing device that user `uid` may not open, by the kernel's rule: a device
/// made for a user (`user UID`) opens for that user alone, one made for a group
/// (`group GID`) for its members alone (for both, when it names both), and one made for
/// neither (the seed's `ip tuntap add NAME mode tap`) for every user. The VMM would fail
/// on a refused one with a bare "Operation not permitted".
fn check_owner(name: &str, uid: u32, ip: &Path) -> Result<()> {
    let Some(whose) = barred_by(name, uid, ip) else {
        return Ok(());
    };
    Err(VmError::Tap {
        name: name.into(),
        reason: format!(
            "user {uid} may not open it (it is {whose}); make it again for the user with \
             `ip link delete {name} && ip tuntap add {name} mode tap user {uid}`, then give it \
             its address again"
        ),
    })
}

/// Whose device `name` is (`user 0's`, `group 27's`) when user `uid` may not open it;
/// `None` when they may, or when it cannot be told (the VMM then says).
fn barred_by(name: &str, uid: u32, ip: &Path) -> Option<String> {
    let Some(dir) = own_sysfs(name) else {
        return barred_by_ip(name, uid, ip);
    };
    let read = |what: &str| {
        crate::state_file::read_text(&dir.join(what)).and_then(|text| text.parse::<i64>().ok())
    };
    let (owner, group) = (read("owner")?, read("group")?);
    if owner != -1 && owner != i64::from(uid) {
        return Some(format!("user {owner}'s"));
    }
    (group != -1 && !in_group(group)).then(|| format!("group {group}'s"))
}

/// [`barred_by`] where sysfs shows another namespace: `ip` names a device's user rather
/// than numbering it, so only a device made for one user and no group, whose name is not
/// the caller's, is told apart.
fn barred_by_ip(name: &str, uid: u32, ip: &Path) -> Option<String> {
    let data = tun_data(ip, name)?;
    if data.get("group").is_some() {
        return None;
    }
    let owner = match data.get("user")? {
        serde_json::Value::Number(number) => number.to_string(),
        serde_json::Value::String(text) => text.clone(),
        _ => return None,
    };
    let own_name = flakes::host::user_name(uid);
    let numbered = own_name == uid.to_string() && owner.parse::<u32>().is_err();
    (owner != own_name && owner != uid.to_string() && !numbered).then(|| format!("user {owner}'s"))
}

/// Whether the caller is in group `gid`.
fn in_group(gid: i64) -> bool {
    use rustix::process::{getegid, getgroups};
    let gid = |g: rustix::process::Gid| i64::from(g.as_raw()) == gid;
    gid(getegid()) || getgroups().is_ok_and(|groups| groups.into_iter().any(gid))
}

/// Removes the device of the instance in `dir` if the launcher created it (`ip` is only
/// looked for then).
pub fn release(dir: &Path, tools: &crate::tools::Tools) {
    let label = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    release_at(dir, label, tools);
}

/// [`release`] for the instance `label` whose files are in `dir` (a path through a held
/// descriptor, `/proc/self/fd/N`). Only a device the launcher marked as created, of a
/// name this instance's launcher gives (see `created`), in the caller's network namespace
/// if it was made there, that is a TAP device, is deleted; a mark naming anything else is
/// dropped. A device made in another namespace stays there (the one of its name here is
/// not it).
pub fn release_at(dir: &Path, label: &str, tools: &crate::tools::Tools) {
    let marker = dir.join(CREATED);
    if marker.symlink_metadata().is_err() {
        return;
    }
    let here = namespace();
    let ours = mark(dir, label).filter(|(name, made_in)| {
        made_in.as_ref().is_none_or(|ns| here.as_ref() == Some(ns)) && is_tap(name, tools)
    });
    let Some((name, _)) = ours else {
        let _ = std::fs::remove_file(marker);
        return;
    };
    // Without `ip` the mark stays, for a launch that has it.
    if let Ok(ip) = tools.ip() {
        let _ = Cmd::new(ip).args(["link", "delete", &name]).run();
        let _ = std::fs::remove_file(marker);
    }
}

/// [`release_at`] for the instance `label` in `dir` whose launcher is gone: its device is
/// left to a live call that holds it by now (that call found it and uses it; the call
/// ends before it goes).
pub fn release_orphan(dir: &Path, label: &str, vms_dir: &Path, tools: &crate::tools::Tools) {
    let marker = dir.join(CREATED);
    let Some((name, made_in)) = mark(dir, label) else {
        let _ = std::fs::remove_file(marker);
        return;
    };
    let made_in = made_in.or_else(namespace);
    match try_hold(&lock_path(vms_dir, &name, made_in.as_deref())) {
        Ok(Some(_held)) => release_at(dir, label, tools),
        _ => {
            let _ = std::fs::remove_file(marker);
        }
    }
}

/// A one-shot call's device and, for `tap-NAME`, the hold on it (released on drop).
#[derive(Debug)]
pub struct TapClaim {
    /// The device the call uses.
    pub name: String,
    held: Option<Held>,
}

/// A held device lock file.
#[derive(Debug)]
struct Held {
    file: File,
    path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Removed while still locked: a waiter that opened it finds it gone (another inode
        // at the path, or none) and opens afresh, so no two calls ever hold "the" lock.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl TapClaim {
    /// Notes in the lock file whether the call created the device (a waiting root call
    /// then takes a device of its own instead of waiting).
    pub fn created(&self, created: bool) {
        if let Some(held) = &self.held {
            let text = if created { HELD_CREATED } else { HELD_FOUND };
            let _ = held.file.set_len(0);
            let _ = held.file.write_all_at(text, 0);
        }
    }
}

/// What [`claim`] needs to know about the call.
#[derive(Debug)]
pub struct ClaimFor<'a> {
    /// The caller's directory of VM instances (holds the lock files).
    pub vms_dir: &'a Path,
    /// The instance's device, `tap-NAME[@ID]` (or its short form).
    pub name: String,
    /// The device of this call alone, for a root call that does not wait.
    pub per_call: String,
    /// The caller is root (can create devices).
    pub root: bool,
    /// How long to wait for the device.
    pub wait: Duration,
    /// Say on stderr that the call waits (`%progress`).
    pub progress: bool,
}

/// Claims the device of a one-shot call (see the module doc for who waits).
pub fn claim(req: ClaimFor<'_>) -> Result<TapClaim> {
    let path = lock_path(req.vms_dir, &req.name, namespace().as_deref());
    let deadline = crate::timing::Deadline::after(req.wait);
    let mut said = false;
    loop {
        if let Some(held) = try_hold(&path)? {
            return Ok(TapClaim {
                name: req.name,
                held: Some(held),
            });
        }
        if req.root && holder_created(&path) {
            return Ok(TapClaim {
                name: req.per_call,
                held: None,
            });
        }
        if deadline.passed() {
            return Err(VmError::Tap {
                name: req.name,
                reason: format!(
                    "another call of this instance still uses it after {} s; call again when \
                     it ends, or call another instance (@ID) with its own device",
                    req.wait.as_secs()
                ),
            });
        }
        if req.progress && !said {
            eprintln!(
                "firecracker-pilot: waiting for tap device {} (another call of this instance \
                 uses it; at most {} s)",
                req.name,
                req.wait.as_secs()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `name` is that of a device's lock file in a VM directory.
pub fn is_lock_file(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with(".tap-") && n.ends_with(".lock"))
}

/// Removes the device lock file at `path` if no call holds it (its holder was killed).
pub fn collect_lock(path: &Path) {
    if let Ok(Some(held)) = try_hold(path) {
        drop(held);
    }
}

/// The lock file of device `name` of network namespace `made_in` (as [`namespace`] names
/// it): calls in different namespaces use different devices of the same name.
fn lock_path(vms_dir: &Path, name: &str, made_in: Option<&str>) -> PathBuf {
    let number = made_in
        .and_then(|ns| ns.strip_prefix("net:[")?.strip_suffix(']'))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    match number {
        Some(number) => vms_dir.join(format!(".{name}.net{number}.lock")),
        None => vms_dir.join(format!(".{name}.lock")),
    }
}

/// Whether the holder of the lock at `path` uses a device it created.
fn holder_created(path: &Path) -> bool {
    crate::state_file::read(path).is_some_and(|text| text == HELD_CREATED)
}

/// Takes the lock file at `path` without waiting; `None` when another call holds it.
fn try_hold(path: &Path) -> Result<Option<Held>> {
    loop {
        let file = flakes::instance::lock_file(path)?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Ok(None);
        }
        // The holder before may have removed the file after this open: then this lock is
        // on a file no one else can find, and the path's current file is the one to take.
        let same = std::fs::symlink_metadata(path)
            .ok()
            .zip(file.metadata().ok())
            .is_some_and(|(at_path, held)| {
                at_path.ino() == held.ino() && at_path.dev() == held.dev()
            });
        if same {
            let _ = file.set_len(0);
            return Ok(Some(Held {
                file,
                path: path.to_path_buf(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dir: &Path, root: bool, wait_ms: u64) -> ClaimFor<'_> {
        ClaimFor {
            vms_dir: dir,
            name: "tap-app".into(),
            per_call: "tap-percall".into(),
            root,
            wait: Duration::from_millis(wait_ms),
            progress: false,
        }
    }

    #[test]
    fn a_second_call_waits_for_the_device_and_its_lock_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(req(dir.path(), true, 0)).unwrap();
        assert_eq!(first.name, "tap-app");
        first.created(false);
        // The device was there (an admin's): every second caller waits, root too.
        for root in [true, false] {
            let err = claim(req(dir.path(), root, 200)).unwrap_err().to_string();
            assert!(
                err.contains("tap-app") && err.contains("another call"),
                "{err}"
            );
        }
        let waiter = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || claim(req(&dir, false, 5_000)).map(|c| c.name))
        };
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
        assert_eq!(waiter.join().unwrap().unwrap(), "tap-app");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "no lock file outlives its calls: {left:?}");
    }

    /// A fake `ip` in a directory of its own that logs its arguments and exits `code`.
    fn fake_ip(code: i32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let ip = dir.path().join("ip");
        let script = format!("#!/bin/sh\necho \"$*\" >> {}\nexit {code}\n", log.display());
        std::fs::write(&ip, script).unwrap();
        std::fs::set_permissions(&ip, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        (dir, log)
    }

    #[test]
    fn a_device_that_could_not_be_made_is_not_marked_as_ours() {
        let (bin, log) = fake_ip(1);
        let instance = tempfile::tempdir().unwrap();
        let name = format!("tap-nx{}", std::process::id() % 100_000);
        assert!(ensure(&name, instance.path(), &bin.path().join("ip"), 4242).is_err());
        assert!(
            !instance.path().join(CREATED).exists(),
            "a device someone else makes meanwhile must not be removed as ours"
        );
        if rustix::process::geteuid().is_root() {
            let calls = std::fs::read_to_string(log).unwrap();
            assert_eq!(calls, format!("tuntap add dev {name} mode tap user 4242\n"));
        }
    }

    /// A network device made for a test (`ip link add NAME type KIND`, or `ip tuntap add`
    /// for `tap`), deleted when dropped; `None` (with a SKIP line) where the test may not
    /// make devices.
    struct TestDevice(String);

    impl TestDevice {
        /// A TAP device (`tap`), or another kind of device (`other`: a dummy, or a bridge
        /// where the kernel has no dummy driver).
        fn new(name: &str, kind: &str) -> Option<Self> {
            let ways: Vec<Vec<&str>> = match kind {
                "tap" => vec![vec!["tuntap", "add", "dev", name, "mode", "tap"]],
                _ => ["dummy", "bridge"]
                    .map(|other| vec!["link", "add", name, "type", other])
                    .to_vec(),
            };
            let made = rustix::process::geteuid().is_root()
                && ways.iter().any(|args| {
                    std::process::Command::new("ip")
                        .args(args)
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                });
            if !made {
                eprintln!("SKIP: cannot make network device {name} ({kind}): needs root and ip");
                return None;
            }
            Some(TestDevice(name.to_string()))
        }
    }

    impl Drop for TestDevice {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "delete", &self.0])
                .status();
        }
    }

    /// A label of this test process whose device name is `tap-<label>` itself.
    fn own_label(prefix: &str) -> String {
        format!("{prefix}{}", std::process::id() % 100_000)
    }

    #[test]
    fn an_orphans_device_is_left_to_the_live_call_that_holds_it() {
        let key = own_label("o");
        let Some(device) = TestDevice::new(&name(&key), "tap") else {
            return;
        };
        let (bin, log) = fake_ip(0);
        let tools = crate::tools::Tools::new(bin.path().as_os_str().to_owned());
        let vms = tempfile::tempdir().unwrap();
        let label = format!("{key}#999999999");
        let orphan = vms.path().join(&label);
        std::fs::create_dir(&orphan).unwrap();
        std::fs::write(orphan.join(CREATED), &device.0).unwrap();
        let held = claim(ClaimFor {
            name: device.0.clone(),
            ..req(vms.path(), false, 0)
        })
        .unwrap();
        release_orphan(&orphan, &label, vms.path(), &tools);
        assert!(!log.exists(), "in use: not deleted");
        assert!(!orphan.join(CREATED).exists());
        drop(held);
        std::fs::write(orphan.join(CREATED), &device.0).unwrap();
        release_orphan(&orphan, &label, vms.path(), &tools);
        assert_eq!(
            std::fs::read_to_string(log).unwrap(),
            format!("link delete {}\n", device.0)
        );
    }

    /// The mark is the instance owner's file: whatever it names, only a TAP device of a
    /// name the launcher gives that instance is ever deleted.
    #[test]
    fn only_the_instances_own_tap_device_is_released() {
        let label = own_label("r");
        let Some(dummy) = TestDevice::new(&name(&label), "other") else {
            return;
        };
        let (bin, log) = fake_ip(0);
        let tools = crate::tools::Tools::new(bin.path().as_os_str().to_owned());
        let vms = tempfile::tempdir().unwrap();
        let dir = vms.path().join(&label);
        std::fs::create_dir(&dir).unwrap();
        let other = own_label("x");
        for marked in [
            "eth0",
            "lo",
            "tap-deadbeef",
            &name(&other),
            &dummy.0,
            "tap-r1/../lo",
        ] {
            std::fs::write(dir.join(CREATED), marked).unwrap();
            assert_eq!(used_by(&dir, &label), name(&label), "{marked}");
            release(&dir, &tools);
            assert!(!log.exists(), "{marked} was deleted");
            assert!(!dir.join(CREATED).exists(), "a bad mark goes: {marked}");
        }
        assert!(exists(&dummy.0), "not a TAP device: never deleted");
        drop(dummy);
        let Some(tap) = TestDevice::new(&name(&label), "tap") else {
            return;
        };
        std::fs::write(dir.join(CREATED), &tap.0).unwrap();
        release(&dir, &tools);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("link delete {}\n", tap.0)
        );
    }

    #[test]
    fn root_takes_its_own_device_beside_one_a_call_created() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(req(dir.path(), true, 0)).unwrap();
        first.created(true);
        let second = claim(req(dir.path(), true, 0)).unwrap();
        assert_eq!(second.name, "tap-percall");
        assert!(claim(req(dir.path(), false, 100)).is_err(), "others wait");
        drop(second);
        drop(first);
        assert_eq!(claim(req(dir.path(), true, 0)).unwrap().name, "tap-app");
    }

    /// A mark says the namespace its device was made in: from any other, the device of
    /// that name is another one and stays.
    #[test]
    fn a_device_is_released_only_in_the_namespace_it_was_made_in() {
        let label = own_label("n");
        let Some(tap) = TestDevice::new(&name(&label), "tap") else {
            return;
        };
        let (bin, log) = fake_ip(0);
        let tools = crate::tools::Tools::new(bin.path().as_os_str().to_owned());
        let vms = tempfile::tempdir().unwrap();
        let dir = vms.path().join(&label);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(CREATED), format!("{}\nnet:[1]\n", tap.0)).unwrap();
        assert_eq!(used_by(&dir, &label), tap.0);
        release(&dir, &tools);
        assert!(!log.exists(), "made in another namespace: not deleted here");
        assert!(!dir.join(CREATED).exists());
        let here = namespace().unwrap();
        std::fs::write(dir.join(CREATED), format!("{}\n{here}\n", tap.0)).unwrap();
        release(&dir, &tools);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("link delete {}\n", tap.0)
        );
    }

    /// Who may open a device, as the kernel rules it (the test process, root, is in group
    /// 0 and not in group 54321).
    #[test]
    fn a_device_bars_only_the_users_the_kernel_bars() {
        let ip = Path::new("/nonexistent/ip");
        let cases: [(&[&str], Option<&str>); 5] = [
            (&[], None),
            (&["user", "4242"], None),
            (&["user", "0"], Some("user 0's")),
            (&["group", "0"], None),
            (&["user", "4242", "group", "54321"], Some("group 54321's")),
        ];
        for (i, (more, barred)) in cases.into_iter().enumerate() {
            let label = own_label(&format!("b{i}"));
            let device = name(&label);
            let made = rustix::process::geteuid().is_root()
                && std::process::Command::new("ip")
                    .args(["tuntap", "add", "dev", &device, "mode", "tap"])
                    .args(more)
                    .status()
                    .is_ok_and(|s| s.success());
            if !made {
                eprintln!("SKIP: cannot make network device {device}: needs root and ip");
                return;
            }
            let _made = TestDevice(device.clone());
            assert_eq!(barred_by(&device, 4242, ip).as_deref(), barred, "{more:?}");
        }
    }

    #[test]
    fn the_device_table_is_read_by_name() {
        let dev = "Inter-|   Receive |  Transmit\n face |bytes    packets|bytes\n    lo: 0 0\n\
                   tap-app@vm1:   12 3\ntap-app2: 0 0\n";
        assert!(listed(dev, "lo") && listed(dev, "tap-app@vm1"));
        assert!(!listed(dev, "tap-app") && !listed(dev, "face") && !listed(dev, "Inter-"));
        assert!(exists("lo") && !exists("tap-nx-none"));
        assert!(
            own_sysfs("lo").is_some(),
            "this test's sysfs is its namespace's"
        );
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        assert_eq!(name("mybash"), "tap-mybash");
        assert_eq!(name("fcapp@vm1"), "tap-fcapp@vm1");
        let long = name("a-rather-long-flake@instance");
        assert_eq!(long.len(), 12);
        assert!(long.starts_with("tap-"));
        assert_ne!(
            long,
            name("a-rather-long-flake@other"),
            "distinct instances"
        );
        assert_eq!(long, name("a-rather-long-flake@instance"), "stable");
        assert_eq!(name("exactly11ch").len(), MAX_NAME);
        assert_ne!(name("exactly12chr"), "tap-exactly12chr");
        assert!(name("a:b").starts_with("tap-") && !name("a:b").contains(':'));
    }
}
