// SPDX-License-Identifier: MIT
//! Directories resolved once, by descriptor, from a checked base.
//!
//! A path is resolved anew by every system call that takes it, so a level that another user
//! can rename or replace lets them redirect an instance's lock, socket or files between two
//! calls (swapping a directory for a symlink with `renameat2(RENAME_EXCHANGE)` in a loop
//! wins such races often enough). So each level is opened with `O_NOFOLLOW | O_DIRECTORY`
//! relative to the level above, checked on the descriptor (`fstat`), created with `mkdirat`
//! when missing and then opened and checked like any other. Everything later is done
//! relative to the held descriptor, or through `/proc/self/fd/N/...` where a call needs a
//! path (connecting a unix socket).
//!
//! The walk from `/` also proves that nobody but root and the caller can rename any level:
//! each one is owned by root or the caller, and writable by others only when sticky (then
//! the next level is again owned by root or the caller, which others cannot move). The
//! plain path therefore stays good for programs that resolve it in their own process
//! (podman's `--volume` source, a VMM's socket and log paths).

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{chmod, fstat, mkdirat, openat, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::{InstanceError, Result};

/// The largest record [`Dir::read_file`] reads.
pub const RECORD_MAX: u64 = 64 * 1024;

/// An open directory and the path it was reached by (for messages and for programs that
/// need a path; see the module doc for why that path stays valid).
#[derive(Debug, Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

/// The sticky bit.
const STICKY: u32 = 0o1000;

impl Dir {
    /// Opens `path` level by level from `/`, refusing symlinks and any level that someone
    /// other than root or `uid` could rename; missing levels are created and checked like
    /// the others. The last level, when created, is shared like the original `/tmp/flakes`
    /// (1777) if it is made in a directory others may write to, else private (0700); the
    /// levels above it get 0755.
    pub fn open_base(path: &Path, uid: u32) -> Result<Dir> {
        let names = base_components(path)?;
        let root = openat(CWD, "/", dir_flags(), Mode::empty()).map_err(io("open", "/"))?;
        let mut dir = Dir {
            fd: Arc::new(root),
            path: PathBuf::from("/"),
        };
        dir.check_trusted(uid)?;
        let last = names.len().saturating_sub(1);
        for (i, name) in names.iter().enumerate() {
            let create = match dir.owner_and_mode()?.1 {
                _ if i != last => 0o755,
                parent if parent & 0o002 != 0 => 0o1777,
                _ => 0o700,
            };
            dir = dir.step(name, create, uid)?;
            dir.check_trusted(uid)?;
        }
        Ok(dir)
    }

    /// The private subdirectory `name` of `uid`, created with `mode` when missing; an
    /// existing one must belong to `uid` and gets `mode` if its permissions differ.
    pub fn private_child(&self, name: &str, mode: u32, uid: u32) -> Result<Dir> {
        let child = self.step(OsStr::new(name), mode, uid)?;
        child.check_owner(uid)?;
        child.set_mode(mode)?;
        Ok(child)
    }

    /// The existing subdirectory `name`, if it is a real directory; `None` when missing.
    pub fn open_child(&self, name: &str) -> Result<Option<Dir>> {
        match openat(&*self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Ok(Some(self.with(fd, name))),
            Err(Errno::NOENT) => Ok(None),
            Err(err) => Err(self.refusal(name, err)),
        }
    }

    /// The path the directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `/proc/self/fd/N`: a path to this very directory for calls in this process, whatever
    /// happened to the path since (and short, whatever the path's length).
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Connects to the Unix socket `name` in this directory, never through a link put in
    /// its place: the entry is opened `O_PATH|O_NOFOLLOW`, must be a socket, and is
    /// connected to through that descriptor (`/proc/self/fd/N`).
    pub fn connect_socket(&self, name: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(&*self.fd, name, flags, Mode::empty())?;
        let kind = rustix::fs::FileType::from_raw_mode(fstat(&fd)?.st_mode);
        if kind != rustix::fs::FileType::Socket {
            return Err(std::io::Error::other(format!(
                "{} is not a socket",
                self.path.join(name).display()
            )));
        }
        std::os::unix::net::UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// The directory's owner and mode (`fstat` of the descriptor).
    pub fn owner_and_mode(&self) -> Result<(u32, u32)> {
        let stat = fstat(&*self.fd).map_err(io("inspect", &self.path))?;
        Ok((stat.st_uid, stat.st_mode & 0o7777))
    }

    /// Opens (or reaches) subdirectory `name`, creating it with `mode` when missing.
    fn step(&self, name: &OsStr, mode: u32, uid: u32) -> Result<Dir> {
        match openat(&*self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => return Ok(self.with(fd, name)),
            Err(Errno::NOENT) => {}
            Err(err) => return Err(self.refusal(name, err)),
        }
        match mkdirat(&*self.fd, name, Mode::from_raw_mode(mode & 0o777)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(err) => return Err(io("create", &self.path.join(name))(err)),
        }
        let fd = openat(&*self.fd, name, dir_flags(), Mode::empty())
            .map_err(|err| self.refusal(name, err))?;
        let child = self.with(fd, name);
        // Created by us (the umask may have cut the mode), or by a racing call of ours.
        if child.owner_and_mode()?.0 == uid {
            child.set_mode(mode)?;
        }
        Ok(child)
    }

    fn with(&self, fd: OwnedFd, name: impl AsRef<Path>) -> Dir {
        Dir {
            fd: Arc::new(fd),
            path: self.path.join(name),
        }
    }

    /// Explains an `openat` failure of `name`: a symlink or a file is a refusal.
    fn refusal(&self, name: impl AsRef<Path>, err: Errno) -> InstanceError {
        let path = self.path.join(name);
        match err {
            Errno::LOOP | Errno::NOTDIR => InstanceError::Unsafe {
                path,
                reason: "it is not a directory (or is a symlink); remove it, or name the \
                         real directory in the configuration"
                    .into(),
            },
            other => io("open", &path)(other),
        }
    }

    /// Owned by root or `uid`, and writable by others only when sticky.
    fn check_trusted(&self, uid: u32) -> Result<()> {
        let (owner, mode) = self.owner_and_mode()?;
        if owner != 0 && owner != uid {
            return Err(self.unsafe_dir(format!(
                "it belongs to uid {owner}, who could replace what is in it; an admin \
                 should remove it, or set podman_ids_dir/firecracker_ids_dir to a \
                 directory of root or uid {uid}"
            )));
        }
        // Group-writable counts too: any member of the group could rename what is in it.
        if mode & 0o022 != 0 && mode & STICKY == 0 {
            return Err(self.unsafe_dir(
                "it is writable by others without the sticky bit; run chmod 1777 on it (or \
                 chmod go-w)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_owner(&self, uid: u32) -> Result<()> {
        let owner = self.owner_and_mode()?.0;
        if owner == uid {
            return Ok(());
        }
        Err(self.unsafe_dir(format!("it belongs to uid {owner}, not {uid}; remove it")))
    }

    fn set_mode(&self, mode: u32) -> Result<()> {
        if self.owner_and_mode()?.1 != mode {
            // `chmod /proc/self/fd/N`: the descriptor is `O_PATH`, which `fchmod` refuses.
            chmod(self.fd_path(), Mode::from_raw_mode(mode)).map_err(io("chmod", &self.path))?;
        }
        Ok(())
    }

    fn unsafe_dir(&self, reason: String) -> InstanceError {
        InstanceError::Unsafe {
            path: self.path.clone(),
            reason,
        }
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The names below `/` of an absolute path without `.` or `..` levels.
fn base_components(path: &Path) -> Result<Vec<&OsStr>> {
    let refuse = || InstanceError::Unsafe {
        path: path.into(),
        reason: "a state directory must be an absolute path without `..`; fix \
                 podman_ids_dir/firecracker_ids_dir"
            .into(),
    };
    if !path.is_absolute() {
        return Err(refuse());
    }
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) if !name.as_bytes().is_empty() => names.push(name),
            _ => return Err(refuse()),
        }
    }
    Ok(names)
}

/// A directory, never through a symlink; `O_PATH` so that levels the caller may only
/// traverse (mode 0711) can be walked too.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn io(action: &'static str, path: impl AsRef<Path>) -> impl FnOnce(Errno) -> InstanceError {
    let path = path.as_ref().to_path_buf();
    move |err| InstanceError::Io {
        action,
        path,
        source: err.into(),
    }
}

/// Work on the entries of a held directory, never through a symlink.
impl Dir {
    /// The names of the entries (not `.` and `..`), sorted; names that are not UTF-8 are
    /// left out.
    pub fn entries(&self) -> Result<Vec<String>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = openat(&*self.fd, ".", flags, Mode::empty()).map_err(io("list", &self.path))?;
        let mut dir = rustix::fs::Dir::new(fd).map_err(io("list", &self.path))?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(io("list", &self.path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                if let Ok(name) = std::str::from_utf8(name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Creates subdirectory `name` with `mode`; false if something of that name exists.
    pub fn create_child(&self, name: &str, mode: u32) -> Result<bool> {
        match mkdirat(&*self.fd, name, Mode::from_raw_mode(mode & 0o777)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(err) => Err(io("create", self.path.join(name))(err)),
        }
    }

    /// Opens file `name` (never through a symlink) with `flags`, creating it with `mode`
    /// when `flags` say so.
    pub fn open_file(&self, name: &str, flags: OFlags, mode: u32) -> Result<std::fs::File> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        openat(&*self.fd, name, flags, Mode::from_raw_mode(mode))
            .map(std::fs::File::from)
            .map_err(io("open", self.path.join(name)))
    }

    /// The contents of file `name`; `None` when it is missing. Only a regular file of at most
    /// `RECORD_MAX` bytes is read (a record of this directory is a line or two): anything
    /// else planted under its name (a FIFO, which would block the open, a device, a huge
    /// file) is an error, found without waiting.
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let flags = OFlags::RDONLY | OFlags::NONBLOCK;
        let file = match self.open_file(name, flags, 0) {
            Ok(file) => file,
            Err(InstanceError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(err) => return Err(err),
        };
        let refuse = |what: &str| InstanceError::Io {
            action: "read",
            path: self.path.join(name),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
        };
        let meta = file.metadata().map_err(|source| InstanceError::Io {
            action: "read",
            path: self.path.join(name),
            source,
        })?;
        if !meta.is_file() {
            return Err(refuse("not a regular file"));
        }
        let mut bytes = Vec::new();
        file.take(RECORD_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| InstanceError::Io {
                action: "read",
                path: self.path.join(name),
                source,
            })?;
        if bytes.len() as u64 > RECORD_MAX {
            return Err(refuse("larger than a record can be"));
        }
        Ok(Some(bytes))
    }

    /// Replaces file `name` with `bytes` (mode 0600), atomically: readers see the old or
    /// the new contents, never a part. Writers of one name must hold a lock (the instance
    /// lock): they share one temporary file, which is also why a writer killed halfway
    /// leaves nothing that the next one does not reuse.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let tmp = format!(".{name}.tmp");
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
        let mut file = self.open_file(&tmp, flags, 0o600)?;
        file.write_all(bytes).map_err(|source| InstanceError::Io {
            action: "write",
            path: self.path.join(&tmp),
            source,
        })?;
        rustix::fs::renameat(&*self.fd, &tmp, &*self.fd, name)
            .map_err(io("rename", self.path.join(name)))
    }

    /// Removes file (or socket) `name`; a missing one is fine.
    pub fn remove_file(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(&*self.fd, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(io("remove", self.path.join(name))(err)),
        }
    }

    /// Removes subdirectory `name` and everything in it (never following a symlink);
    /// a missing one is fine.
    pub fn remove_tree(&self, name: &str) -> Result<()> {
        // std's `remove_dir_all` opens each level with O_NOFOLLOW (CVE-2022-21658); the
        // start is this held directory, whatever happened to its path.
        match std::fs::remove_dir_all(self.fd_path().join(name)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(InstanceError::Io {
                action: "remove",
                path: self.path.join(name),
                source: err,
            }),
            _ => Ok(()),
        }
    }
}
