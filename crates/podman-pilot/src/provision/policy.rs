// SPDX-License-Identifier: MIT
//! What an image may take from the host: the policy for host dependencies.
//!
//! An image names its host dependencies itself (`/removed`, `/systemfiles`), and the copy
//! runs as the caller, for a system flake as root, before the image's app gets the files.
//! Without a policy an image could ask for `/etc/shadow` or a private key and read it
//! inside, or for `/proc/kcore` and fill the build directory at every launch. The original
//! use of host dependencies is sharing what every user of the host sees anyway (shared
//! libraries, public configuration), so that is what is allowed:
//!
//! - only what any local user could read: a regular file must be readable by others
//!   (`mode & 0o004`) and every directory on its real path (links resolved) searchable by
//!   others; a link or a directory (copied without contents) needs the searchable path.
//!   Host dependencies never give an image more than an unprivileged user has;
//! - nothing from pseudo file systems (procfs, sysfs, cgroup, debugfs, ... by `fstatfs` on
//!   the opened entry, and anything below `/dev`): their files are no dependencies, have
//!   no meaningful size and can be endless;
//! - at most [`PER_FILE`] bytes per file and [`TOTAL`] bytes per assembly, checked on the
//!   size before the copy starts and enforced while copying (a file that grows meanwhile);
//! - setuid and setgid bits survive only on files owned by root: the build makes every
//!   copied file root-owned, so a user's setuid program would become a setuid-root one.
//!
//! A refusal names the entry and the reason, and `%ignore_sync_error` does not override
//! it (that flag only forgives a file that is missing). The flake's own includes are
//! chosen by whoever registered the flake and are not held to this policy.

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// Largest host file copied for an image.
pub const PER_FILE: u64 = 1 << 30;
/// Most bytes of host files copied for one assembly.
pub const TOTAL: u64 = 4 << 30;

/// `f_type` values of pseudo file systems (`statfs(2)`, `linux/magic.h`).
const PSEUDO: &[(i64, &str)] = &[
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x7363_6673, "securityfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0xcafe_4a11, "bpf"),
    (0x6265_6570, "configfs"),
    (0xde5e_81e4, "efivarfs"),
    (0x1cd1, "devpts"),
    (0x6165_676c, "pstore"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6573_5543, "fusectl"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x1980_0202, "mqueue"),
    (0x6e73_6673, "nsfs"),
    (0x5049_5045, "pipefs"),
    (0x534f_434b, "sockfs"),
    (0x0904_1934, "anon_inodefs"),
    (0x6368_6172, "bdev"),
    (0x0102_1997, "v9fs"),
];

/// Why a host entry is refused.
pub type Refusal = String;

/// The policy and byte budget for the host files of one assembly.
#[derive(Debug)]
pub struct HostPolicy {
    per_file: u64,
    total: u64,
    left: Cell<u64>,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy::new(PER_FILE, TOTAL)
    }
}

impl HostPolicy {
    /// A policy with the given limits.
    pub fn new(per_file: u64, total: u64) -> Self {
        HostPolicy {
            per_file,
            total,
            left: Cell::new(total),
        }
    }

    /// Whether the entry behind the `O_PATH` handle `src` may be copied at all.
    pub fn admit(&self, src: &OwnedFd) -> Result<(), Refusal> {
        pseudo_fs(src)?;
        let stat = rustix::fs::fstat(src).map_err(|e| format!("it cannot be inspected ({e})"))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::RegularFile && stat.st_mode & 0o004 == 0 {
            return Err("it is not readable by other users (mode lacks o+r)".into());
        }
        reachable_by_others(src, &stat)
    }

    /// Most bytes the next file may have.
    pub fn limit(&self) -> u64 {
        self.per_file.min(self.left.get())
    }

    /// Why a file of `size` bytes cannot be copied, if it cannot.
    pub fn check_size(&self, size: u64) -> Result<(), Refusal> {
        if size > self.per_file {
            return Err(format!(
                "it has {size} bytes, more than the limit of {} per host file",
                self.per_file
            ));
        }
        if size > self.left.get() {
            return Err(format!(
                "the host files of this flake would exceed {} bytes in total",
                self.total
            ));
        }
        Ok(())
    }

    /// Counts `size` copied bytes against the total.
    pub fn spend(&self, size: u64) {
        self.left.set(self.left.get().saturating_sub(size));
    }
}

/// The mode a copied file gets: setuid and setgid only stay on files owned by root.
pub fn copied_mode(mode: u32, owner: u32) -> u32 {
    let mode = mode & 0o7777;
    if owner == 0 {
        mode
    } else {
        mode & !0o6000
    }
}

fn pseudo_fs(src: &OwnedFd) -> Result<(), Refusal> {
    let fs = rustix::fs::fstatfs(src).map_err(|e| format!("it cannot be inspected ({e})"))?;
    #[allow(clippy::useless_conversion)]
    let magic = i64::from(fs.f_type);
    match PSEUDO.iter().find(|(m, _)| *m == magic) {
        Some((_, name)) => Err(format!(
            "it is on a pseudo file system ({name}), not a host file"
        )),
        None => Ok(()),
    }
}

/// Walks the real path of `src` from `/` without following links: every directory on it
/// must be searchable by others, and the walk must end at `src` itself.
fn reachable_by_others(src: &OwnedFd, stat: &rustix::fs::Stat) -> Result<(), Refusal> {
    let changed = || Refusal::from("it changed while it was checked");
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(src));
    let real = rustix::fs::readlink(proc_path.as_str(), Vec::new())
        .map(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
        .map_err(|_| changed())?;
    if !real.is_absolute() || real.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return Err(changed());
    }
    if real == Path::new("/dev") || real.starts_with("/dev/") {
        return Err("it is on the device file system (/dev), not a host file".into());
    }
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir =
        rustix::fs::open("/", flags | OFlags::DIRECTORY, Mode::empty()).map_err(|_| changed())?;
    let mut walked = PathBuf::from("/");
    let names: Vec<_> = real
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    for name in names {
        searchable(&dir, &walked)?;
        dir = rustix::fs::openat(dir.as_fd(), name, flags, Mode::empty()).map_err(|_| changed())?;
        walked.push(name);
    }
    let end = rustix::fs::fstat(&dir).map_err(|_| changed())?;
    if (end.st_dev, end.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(changed());
    }
    Ok(())
}

fn searchable(dir: &OwnedFd, walked: &Path) -> Result<(), Refusal> {
    let stat =
        rustix::fs::fstat(dir).map_err(|e| format!("cannot inspect {} ({e})", walked.display()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err("it changed while it was checked".into());
    }
    if stat.st_mode & 0o001 == 0 {
        return Err(format!(
            "directory {} on its path is not searchable by other users",
            walked.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setuid_stays_only_on_root_owned_files() {
        assert_eq!(copied_mode(0o104_755, 0), 0o4755);
        assert_eq!(copied_mode(0o106_755, 1000), 0o755);
        assert_eq!(copied_mode(0o102_711, 1000), 0o711);
        assert_eq!(copied_mode(0o1777, 1000), 0o1777);
    }

    #[test]
    fn sizes_are_held_to_each_file_and_the_total() {
        let policy = HostPolicy::new(10, 25);
        assert!(policy.check_size(10).is_ok());
        assert!(policy.check_size(11).unwrap_err().contains("per host file"));
        policy.spend(10);
        policy.spend(10);
        assert_eq!(policy.limit(), 5);
        assert!(policy.check_size(6).unwrap_err().contains("in total"));
    }
}
