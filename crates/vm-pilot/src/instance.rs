// SPDX-License-Identifier: MIT
//! VM instances on the host: where their state lives, whether their VMM runs, and which
//! guest channel port a call may use.
//!
//! ```text
//! <firecracker_ids_dir>/<uid>/.vm/<flake>[@NAME]/        a resume VM (one per @NAME)
//! <firecracker_ids_dir>/<uid>/.vm/<flake>[@NAME]#<pid>/  a one-shot VM of launcher <pid>
//!   lock          flock: held while the VM is started or removed
//!   vmm.pid       the VMM's pid and start time ("PID START")
//!   port-N.lock   flock: held by the call using guest channel port N (marked until it
//!                 hangs up cleanly)
//!   channel-N.sock, vsock.sock, vm.json, console.log, vmm.log, overlay.ext4 (one-shot)
//! ```
//!
//! One-shot instances carry their launcher's pid, so concurrent calls of one flake never
//! share a VM. `#` cannot appear in a flake or instance name, so the two kinds never
//! collide. A VM counts as running only if its recorded process is alive (the pid names a
//! process that started at the recorded time) *and* that process's command line names the
//! instance directory, so a reused pid is never taken for the VM.
//! A dead VM's files are removed by the next call (or `flake-ctl firecracker show`
//! reports them as stale); the overlay of a resume VM lives elsewhere and survives.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use flakes::instance::Dir;

use crate::error::{io, Result, VmError};

/// File in a VM instance's directory holding the VMM's process id.
pub const PID_FILE: &str = "vmm.pid";

/// The label of a one-shot instance of `key_label` started by launcher `pid`.
pub fn one_shot_label(key_label: &str, pid: u32) -> String {
    format!("{key_label}#{pid}")
}

/// Program names a VMM runs as (the file name of its `argv[0]`, or its start).
const VMM_PROGRAMS: [&str; 2] = ["qemu-system-", "firecracker"];

/// Whether the VMM of the instance in `dir` (the caller's own) still runs; its pid if so.
///
/// The recorded pid answers at once, if that process started when recorded. When it does
/// not name the VMM (no file, or one that was truncated or garbled), the running VMMs are
/// searched for one whose command line names the directory: a VM taken for stopped while
/// it runs would get a second VM started beside it, on the same overlay, and would itself
/// be left running.
pub fn running(dir: &Path) -> Option<u32> {
    running_at(dir, dir)
}

/// [`running`] for the instance directory `dir` held open (another user's, for a
/// listing): its files are read through the descriptor.
pub fn running_in(dir: &Dir) -> Option<u32> {
    running_at(&dir.fd_path(), dir.path())
}

/// Whether the VMM of the instance whose files are in `files` and whose VMM names it as
/// `named` still runs. It runs as the directory's owner (who started it), so another
/// user's process is never taken for it, whatever its command line says.
fn running_at(files: &Path, named: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(files).ok()?.uid();
    // With the slash: `.vm/app/` must not match the VMM of `.vm/app@work/`.
    let needle = format!("{}/", named.display());
    recorded(files)
        .filter(|vmm| vmm.is_alive() && names_dir(vmm.pid, &needle, false))
        .map(|vmm| vmm.pid)
        .filter(|pid| runs_as(*pid) == Some(owner))
        .or_else(|| search_vmm(&needle, owner))
}

/// The real uid of process `pid` (from `/proc/PID/status`, which shows it also for
/// processes that made themselves non-dumpable, unlike the owner of `/proc/PID`).
fn runs_as(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().next()?.parse().ok()
}

/// A VMM process as recorded in `vmm.pid`: its pid and its start time, so that another
/// process that got the pid later is never taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmId {
    /// Process id.
    pub pid: u32,
    /// Start time (field 22 of `/proc/PID/stat`, clock ticks after boot).
    pub start: u64,
}

impl VmmId {
    /// The running process `pid`.
    pub fn of(pid: u32) -> Option<Self> {
        Some(VmmId {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether the recorded process still runs (its pid names a process that started at
    /// the recorded time).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// `PID START`; a record of an older launcher (a pid alone) is no record.
    fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let id = VmmId {
            pid: fields.next()?.parse().ok()?,
            start: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(id)
    }
}

/// The VMM recorded in the instance directory `dir`.
pub fn recorded(dir: &Path) -> Option<VmmId> {
    VmmId::parse(&crate::state_file::read_text(&dir.join(PID_FILE))?)
}

/// Field 22 of `/proc/PID/stat`: when process `pid` started.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// Whether process `pid` is a child of the running VMM `vmm` (its parent, and started
/// after it: a process whose parent was another holder of the VMM's pid is not).
pub fn is_child(pid: u32, vmm: &VmmId) -> bool {
    stat_fields(pid).is_some_and(|(parent, start)| parent == vmm.pid && start >= vmm.start)
}

/// Fields 4 (the parent's pid) and 22 (the start time) of `/proc/PID/stat`.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold anything, spaces and parentheses too.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Whether process `pid`'s command line contains `needle` (and, with `vmm`, its program
/// is a VMM's).
fn names_dir(pid: u32, needle: &str, vmm: bool) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let program = Path::new(std::ffi::OsStr::from_bytes(program))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (!vmm || VMM_PROGRAMS.iter().any(|p| program.starts_with(p)))
        && String::from_utf8_lossy(&cmdline).contains(needle)
}

/// The pid of a VMM of user `owner` whose command line contains `needle`.
fn search_vmm(needle: &str, owner: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(std::result::Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| names_dir(*pid, needle, true) && runs_as(*pid) == Some(owner))
}

/// Records `pid` as the VMM of `dir` unless it already is (after [`running`] found it by
/// searching); a failure only costs later calls the search.
pub fn keep_pid(dir: &Path, pid: u32) {
    if recorded(dir).is_none_or(|vmm| vmm.pid != pid || !vmm.is_alive()) {
        let _ = write_pid(dir, pid);
    }
}

/// Removes the one-shot instances in `vms` (the caller's `.vm` directory, held) whose
/// launcher and VMM are both gone (a launcher killed with `kill -9` cannot remove its
/// own), and TAP device lock files no call holds.
pub fn collect_orphans(vms: &Dir, tools: &crate::tools::Tools) {
    let held = vms.fd_path();
    for name in vms.entries().unwrap_or_default() {
        if crate::tap::is_lock_file(std::ffi::OsStr::new(&name)) {
            crate::tap::collect_lock(&held.join(&name));
            continue;
        }
        let Some((_, pid)) = name.rsplit_once('#') else {
            continue;
        };
        let launcher_gone = pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if !launcher_gone {
            continue;
        }
        let Ok(Some(dir)) = vms.open_child(&name) else {
            continue;
        };
        if running_in(&dir).is_none() {
            crate::tap::release_orphan(&dir.fd_path(), &name, &held, tools);
            let _ = vms.remove_tree(&name);
        }
    }
}

/// Whether instance `label` (`flake`, `flake@NAME`, `flake#PID`, `flake@NAME#PID`) is one
/// of flake `flake`'s.
fn of_flake(label: &str, flake: &str) -> bool {
    label
        .strip_prefix(flake)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['@', '#']))
}

/// Stops and removes every instance of flake `flake` in `vms` (the caller's `.vm`
/// directory, held): each running VMM is killed (its root is read-only and its overlay
/// goes with it, so nothing is lost that would be kept), the TAP device the launcher made
/// is deleted, and the directory goes. Each instance is handled under its lock, so no
/// launcher starts a VM in it meanwhile. Everything is reached through the held
/// directory, never by path: an entry that is not a real directory is left alone. Returns
/// the labels removed.
pub fn remove_flake(vms: &Dir, flake: &str, tools: &crate::tools::Tools) -> Vec<String> {
    let mut removed = Vec::new();
    for label in vms.entries().unwrap_or_default() {
        if !of_flake(&label, flake) {
            continue;
        }
        let Ok(Some(dir)) = vms.open_child(&label) else {
            continue;
        };
        let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CREATE;
        let lock = dir.open_file("lock", flags, 0o600);
        if let Ok(lock) = &lock {
            let _ = flock(lock, FlockOperation::LockExclusive);
        }
        kill_vmm(&dir);
        crate::tap::release_at(&dir.fd_path(), &label, tools);
        if vms.remove_tree(&label).is_ok() {
            removed.push(label);
        }
    }
    removed
}

/// Kills the VMM of the instance in `dir`, if it runs, and waits (up to 10 s) until it is
/// gone.
fn kill_vmm(dir: &Dir) {
    let Some(pid) = running_in(dir) else {
        return;
    };
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let deadline = crate::timing::Deadline::after(crate::timing::STOP_WAIT);
    deadline.wait_for(crate::timing::END_POLL, || running_in(dir).is_none());
}

/// Removes the resume overlays (`<label>.ext4`) of flake `flake` in `storage_dir`.
pub fn remove_overlays(storage_dir: &Path, flake: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(storage_dir) else {
        return 0;
    };
    entries
        .filter_map(std::result::Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|f| f.strip_suffix(".ext4"))
                .is_some_and(|label| of_flake(label, flake))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Records the VMM's pid and start time (written beside and renamed, so the file is never
/// seen half written).
pub fn write_pid(dir: &Path, pid: u32) -> Result<()> {
    let path = dir.join(PID_FILE);
    let vmm = VmmId::of(pid).ok_or_else(|| VmError::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("no process {pid}")),
    })?;
    let staged = dir.join(format!("{PID_FILE}.{}", std::process::id()));
    let written =
        crate::state_file::write(&staged, format!("{} {}\n", vmm.pid, vmm.start).as_bytes())
            .and_then(|()| std::fs::rename(&staged, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    written.map_err(io(&path))
}

/// Removes what a dead VM left in `dir` (sockets, logs, pid), keeping the lock files.
///
/// A port's lock file stays, only its mark goes (it spoke of the dead VM's guest): another
/// launcher may hold it or wait for it, and a new file under the same name would let a
/// second launcher claim the same port of the new VM.
pub fn clear_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(std::result::Result::ok) {
        let name = entry.file_name();
        if is_port_lock(&name) {
            if let Ok(lock) = open_lock(&entry.path()) {
                let _ = lock.set_len(0);
            }
        } else if name != "lock" && name != "tap.created" {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether `name` is that of a port's lock file (`port-N.lock`).
fn is_port_lock(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|name| {
        name.strip_prefix("port-")
            .and_then(|rest| rest.strip_suffix(".lock"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A held guest channel port.
///
/// While a call uses the port its lock file holds a mark, cleared when the call has hung
/// up cleanly ([`PortClaim::ended_cleanly`]). A mark found on claiming says the caller
/// before died during its call or ended it otherwise (failed, or could not hang up in
/// time), maybe in the middle of a frame, which QEMU then cut short. The guest ends such a frame when it sees that no host is connected; a next
/// caller that connected before that would have its call taken for the frame's rest. So
/// the claimer of a marked port waits [`PORT_SETTLE`] before it connects (once: its
/// own call marks the port afresh), and free unmarked ports are claimed first. The guest
/// waits less than that for a call's host to show up (sci's `HOST_NEWS_WAIT`), so a call
/// whose launcher is gone is never answered to the next one.
#[derive(Debug)]
pub struct PortClaim {
    /// The port number.
    pub port: usize,
    lock: File,
}

/// How long a call waits before it uses a port its last caller left in a call (see
/// [`PortClaim`]).
pub use crate::timing::PORT_SETTLE;

/// What a port's lock file holds while a call uses the port.
const IN_CALL: &[u8] = b"in call\n";

impl PortClaim {
    /// The claim on `port`, whose lock `lock` is held: waits if the caller before left
    /// the port in a call; then marks the port as in a call.
    fn taken(port: usize, lock: File) -> Self {
        if marked(&lock) {
            std::thread::sleep(PORT_SETTLE);
        }
        let _ = std::os::unix::fs::FileExt::write_all_at(&lock, IN_CALL, 0);
        PortClaim { port, lock }
    }

    /// The call hung up after the other end had read all it sent: the next caller need
    /// not wait.
    pub fn ended_cleanly(&self) {
        let _ = self.lock.set_len(0);
    }
}

fn marked(lock: &File) -> bool {
    lock.metadata().is_ok_and(|m| m.len() > 0)
}

/// Claims a free guest channel port of the instance in `dir` (of `ports`); when all are
/// busy, waits for the one chosen by the caller's pid.
pub fn claim_port(dir: &Path, ports: usize) -> Result<PortClaim> {
    let ports = ports.max(1);
    if let Some(free) = try_claim_port(dir, ports)? {
        return Ok(free);
    }
    let port = usize::try_from(std::process::id()).unwrap_or(0) % ports;
    let path = port_lock(dir, port);
    let file = open_lock(&path)?;
    flock(&file, FlockOperation::LockExclusive).map_err(|e| crate::error::VmError::Io {
        path,
        source: e.into(),
    })?;
    Ok(PortClaim::taken(port, file))
}

/// Claims a free port without waiting for one, an unmarked one if there is; `None` when
/// all are busy.
pub fn try_claim_port(dir: &Path, ports: usize) -> Result<Option<PortClaim>> {
    let mut left_marked = None;
    for port in 0..ports.max(1) {
        let file = open_lock(&port_lock(dir, port))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            if !marked(&file) {
                return Ok(Some(PortClaim::taken(port, file)));
            }
            // Held until an unmarked one turns up (then released) or none does.
            left_marked.get_or_insert((port, file));
        }
    }
    Ok(left_marked.map(|(port, file)| PortClaim::taken(port, file)))
}

fn port_lock(dir: &Path, port: usize) -> PathBuf {
    dir.join(format!("port-{port}.lock"))
}

fn open_lock(path: &Path) -> Result<File> {
    Ok(flakes::instance::lock_file(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running(dir.path()), None);
        // Our own pid is alive, but its command line does not name the directory.
        write_pid(dir.path(), std::process::id()).unwrap();
        assert_eq!(running(dir.path()), None);
        // A VMM names a file in its directory (`--config-file DIR/vm.json`, a socket path).
        let mut vmm = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(dir.path().join("vm.json"))
            .spawn()
            .unwrap();
        write_pid(dir.path(), vmm.id()).unwrap();
        // Until the child has exec'd, its command line is still this test's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running(dir.path()).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(running(dir.path()), Some(vmm.id()));
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        assert_eq!(running(dir.path()), None, "a dead VMM is not running");
        // Another instance whose directory name starts with this one's is not this VM.
        let other = dir.path().with_file_name(format!(
            "{}@work",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        let mut vmm = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(other.join("vm.json"))
            .spawn()
            .unwrap();
        write_pid(dir.path(), vmm.id()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(running(dir.path()), None, "a prefix is not a match");
        vmm.kill().unwrap();
        vmm.wait().unwrap();
    }

    /// A process that names the directory but got the VMM's pid after the VMM started
    /// (the record's start time differs) is not the VM.
    #[test]
    fn a_pid_with_another_start_time_is_not_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(dir.path().join("vm.json"))
            .spawn()
            .unwrap();
        let pid = other.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        write_pid(dir.path(), pid).unwrap();
        while running(dir.path()).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(running(dir.path()), Some(pid), "the recorded process");
        let start = VmmId::of(pid).unwrap().start;
        for record in [
            format!("{pid} {}", start + 1),
            format!("{pid} {}", start - 1),
        ] {
            std::fs::write(dir.path().join(PID_FILE), &record).unwrap();
            assert_eq!(running(dir.path()), None, "{record}");
        }
        other.kill().unwrap();
        other.wait().unwrap();
    }

    /// A VMM-looking process of another user that names the directory (and even has its
    /// pid recorded) is not the VM: the VM runs as the directory's owner.
    #[test]
    fn another_users_process_is_not_the_vm() {
        let is_root = rustix::process::geteuid().is_root();
        let runuser = std::process::Command::new("id")
            .args(["-u", "flaketest"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !is_root || !runuser {
            eprintln!("SKIP: needs root and the user flaketest");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "exec -a qemu-system-x86_64 sh -c 'sleep 30; true' vmm {}",
            dir.path().join("vm.json").display()
        );
        let mut runner = std::process::Command::new("runuser")
            .args(["-u", "flaketest", "--", "bash", "-c", &script])
            .spawn()
            .unwrap();
        let needle = format!("{}/", dir.path().display());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let decoy = loop {
            let found = std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .find(|pid| names_dir(*pid, &needle, true));
            if let Some(pid) = found {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the decoy never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(running(dir.path()), None, "found by searching");
        let id = VmmId::of(decoy).unwrap();
        std::fs::write(
            dir.path().join(PID_FILE),
            format!("{} {}", id.pid, id.start),
        )
        .unwrap();
        assert_eq!(running(dir.path()), None, "recorded");
        let pid = rustix::process::Pid::from_raw(i32::try_from(decoy).unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        runner.wait().unwrap();
    }

    /// `flake-ctl firecracker show` reads other users' instance directories: a pid file
    /// that never ends or never opens must neither hang nor exhaust it.
    #[test]
    fn a_hostile_pid_file_reads_as_none_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let held = Dir::open_base(tmp.path(), rustix::process::getuid().as_raw()).unwrap();
        let dir = held
            .private_child("app", 0o700, rustix::process::getuid().as_raw())
            .unwrap();
        let pid_file = dir.path().join(PID_FILE);
        let started = std::time::Instant::now();
        std::os::unix::fs::symlink("/dev/zero", &pid_file).unwrap();
        assert_eq!(running_in(&dir), None, "/dev/zero");
        std::fs::remove_file(&pid_file).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &pid_file,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert_eq!(running_in(&dir), None, "a FIFO");
        let marker = dir.path().join("tap.created");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &marker,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert_eq!(crate::tap::used_by_in(&dir, "app"), "tap-app");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn removing_a_flake_takes_all_its_instances_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let mine = ["app", "app@work", "app#12", "app@work#13"];
        let others = ["apple", "app.x", "ap", "other@app"];
        for label in mine.iter().chain(&others) {
            std::fs::create_dir_all(dir.path().join(label)).unwrap();
            std::fs::write(dir.path().join(format!("{label}.ext4")), "").unwrap();
        }
        let vms = Dir::open_base(dir.path(), rustix::process::getuid().as_raw()).unwrap();
        let mut removed = remove_flake(&vms, "app", &crate::tools::Tools::default());
        removed.sort_unstable();
        let mut want = mine.map(str::to_string).to_vec();
        want.sort_unstable();
        assert_eq!(removed, want);
        assert_eq!(remove_overlays(dir.path(), "app"), mine.len());
        for label in others {
            assert!(dir.path().join(label).is_dir(), "{label}");
            assert!(
                dir.path().join(format!("{label}.ext4")).is_file(),
                "{label}"
            );
        }
    }

    #[test]
    fn a_vm_whose_pid_file_is_damaged_is_still_found() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let spawn = |program: &str| {
            std::process::Command::new("sh")
                .arg0(program)
                .args(["-c", "sleep 30; true", "vmm"])
                .arg(dir.path().join("vm.json"))
                .spawn()
                .unwrap()
        };
        // Not a VMM's program: never taken for the VM without its pid recorded.
        let mut other = spawn("sh");
        let mut vmm = spawn("qemu-system-x86_64");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running(dir.path()).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(running(dir.path()), Some(vmm.id()), "no pid file");
        let pid = vmm.id().to_string();
        for damaged in [&pid[..pid.len() - 1], "\0garbage", ""] {
            std::fs::write(dir.path().join(PID_FILE), damaged).unwrap();
            assert_eq!(running(dir.path()), Some(vmm.id()), "pid file {damaged:?}");
        }
        keep_pid(dir.path(), vmm.id());
        assert_eq!(
            recorded(dir.path()).map(|v| v.pid),
            Some(vmm.id()),
            "repaired"
        );
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        assert_eq!(running(dir.path()), None, "a dead VMM is not running");
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn orphaned_one_shot_instances_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let orphan = dir.path().join("app#999999999");
        let live = dir.path().join(one_shot_label("app", std::process::id()));
        let resume = dir.path().join("app@work");
        for d in [&orphan, &live, &resume] {
            std::fs::create_dir_all(d).unwrap();
        }
        let left_lock = dir.path().join(".tap-app.lock");
        std::fs::write(&left_lock, "created\n").unwrap();
        let vms = Dir::open_base(dir.path(), rustix::process::getuid().as_raw()).unwrap();
        collect_orphans(&vms, &crate::tools::Tools::default());
        assert!(!left_lock.exists(), "a TAP lock file no call holds");
        assert!(!orphan.exists());
        assert!(live.exists(), "its launcher still runs");
        assert!(resume.exists(), "resume instances are not one-shot orphans");
    }

    #[test]
    fn ports_are_claimed_one_call_each() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim_port(dir.path(), 2).unwrap();
        let second = claim_port(dir.path(), 2).unwrap();
        assert_ne!(first.port, second.port);
        first.ended_cleanly();
        drop(first);
        assert_eq!(
            claim_port(dir.path(), 2).unwrap().port,
            0,
            "a freed port is reused"
        );
    }

    /// A port left by a caller that died during its call is used last, and then only
    /// after a wait.
    #[test]
    fn a_port_left_in_a_call_is_claimed_last_and_after_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        // Port 0's caller dies during its call (its claim is dropped, not ended cleanly);
        // port 1's hangs up cleanly.
        drop(claim_port(dir.path(), 2).unwrap());
        let clean = try_claim_port(dir.path(), 2).unwrap().unwrap();
        assert_eq!(clean.port, 1);
        clean.ended_cleanly();
        drop(clean);
        let started = std::time::Instant::now();
        let next = claim_port(dir.path(), 2).unwrap();
        assert_eq!(next.port, 1, "the clean port first");
        assert!(started.elapsed() < PORT_SETTLE, "and without a wait");
        let last = claim_port(dir.path(), 2).unwrap();
        assert_eq!(last.port, 0);
        assert!(
            started.elapsed() >= PORT_SETTLE,
            "the left port after a wait"
        );
    }

    #[test]
    fn stale_files_go_the_lock_stays() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "lock",
            "vmm.pid",
            "channel-0.sock",
            "console.log",
            "port-x.lock",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        clear_stale(dir.path());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("lock")]);
    }

    #[test]
    fn a_new_vm_keeps_the_port_locks_of_the_dead_one_without_their_marks() {
        let dir = tempfile::tempdir().unwrap();
        // A launcher holds port 0 of a VM that died, and left port 1 marked.
        let held = claim_port(dir.path(), 2).unwrap();
        assert_eq!(held.port, 0);
        std::fs::write(dir.path().join("port-1.lock"), IN_CALL).unwrap();
        clear_stale(dir.path());
        // The same file stays locked, so nobody else gets port 0 of the new VM...
        let started = std::time::Instant::now();
        let next = try_claim_port(dir.path(), 2)
            .unwrap()
            .expect("port 1 is free");
        assert_eq!(next.port, 1);
        // ...and the dead guest's mark costs the new VM's callers no wait.
        assert!(
            started.elapsed() < PORT_SETTLE / 2,
            "{:?}",
            started.elapsed()
        );
        assert!(
            try_claim_port(dir.path(), 2).unwrap().is_none(),
            "both are held"
        );
        drop(held);
        assert_eq!(try_claim_port(dir.path(), 2).unwrap().unwrap().port, 0);
    }
}
