// SPDX-License-Identifier: MIT
//! Copies host files into a staging directory without any write leaving it.
//!
//! The names copied come from images (`/removed`, `/systemfiles`) and flake files, so they
//! are hostile until proven otherwise. Every destination is opened relative to the staging
//! root's descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`,
//! one component at a time, and files are created with `O_EXCL`: no `..`, no symbolic link
//! (one staged by an earlier entry included) and no existing file can redirect a write or
//! truncate what is there. The source is opened once with `O_PATH | O_NOFOLLOW`, its type is
//! taken from that descriptor, and a regular file is read through that same descriptor
//! (reopened via `/proc/self/fd`), so the file read is the file that was examined; a symbolic
//! link is copied as a link, never followed, and devices, FIFOs and sockets are refused
//! before they are ever opened for reading. Files an image asks for are copied under a
//! [`HostPolicy`] (which files, how large); see [`super::policy`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::policy::{copied_mode, HostPolicy};

/// How every destination below the root is resolved.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Errors while staging one host entry.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The destination is not a plain relative path.
    #[error("{} is not a relative path of plain components", path.display())]
    NotBeneath {
        /// The destination as given.
        path: PathBuf,
    },
    /// The destination leads through a symbolic link (staged by an earlier entry).
    #[error("{} lies below a symbolic link, which staging never follows", path.display())]
    ThroughLink {
        /// The staged path met as a link.
        path: PathBuf,
    },
    /// The source is neither a regular file, a directory nor a symbolic link.
    #[error("{} is a {kind}; only regular files, directories and symbolic links are copied", path.display())]
    Unsupported {
        /// The source.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A regular file was expected.
    #[error("{} is a {kind}, not a regular file", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The host policy for files an image asks for refuses the entry (see the `policy` module).
    #[error("{} is refused: {reason}", path.display())]
    Refused {
        /// The source.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A system call failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl StageError {
    /// True when the source does not exist.
    pub fn is_missing_source(&self) -> bool {
        matches!(self, StageError::Io { action: "read", source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

type Result<T> = std::result::Result<T, StageError>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(rustix::io::Errno) -> StageError {
    let path = path.to_path_buf();
    move |errno| StageError::Io {
        action,
        path,
        source: errno.into(),
    }
}

fn std_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StageError {
    let path = path.to_path_buf();
    move |source| StageError::Io {
        action,
        path,
        source,
    }
}

/// A directory that host files are copied into.
#[derive(Debug)]
pub struct Staging {
    root: OwnedFd,
    path: PathBuf,
}

impl Staging {
    /// Creates (if needed) and opens the staging directory `path`.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(std_err("create", path))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = rustix::fs::open(path, flags, Mode::empty()).map_err(io_err("open", path))?;
        Ok(Staging {
            root,
            path: path.to_path_buf(),
        })
    }

    /// Copies host entry `source` to `dest` below the root: a regular file with its content
    /// and mode, a symbolic link as a link, a directory as a directory (with its contents
    /// only when `recursive`). Missing parents of `dest` are created with the modes of the
    /// host's directories of the same names (`/` + the parent path), as `rsync -R` does.
    /// With a `policy` (files an image asks for), the entry must pass it first and regular
    /// files count against its byte budget.
    pub fn copy(
        &self,
        source: &Path,
        dest: &Path,
        recursive: bool,
        policy: Option<&HostPolicy>,
    ) -> Result<()> {
        let (parents, name) = split(dest)?;
        let src = open_path(rustix::fs::CWD, source, source)?;
        if let Some(policy) = policy {
            policy
                .admit(&src)
                .map_err(|reason| refused(source, reason))?;
        }
        let parent = self.parents(&parents)?;
        copy_entry(&src, source, parent.as_fd(), &name, recursive, policy)
    }

    /// Puts regular file `source` at `name` in the root: a hard link when the file system
    /// allows one (large archives are not copied), else a copy.
    pub fn link_or_copy(&self, source: &Path, name: &str) -> Result<()> {
        let (parents, leaf) = split(Path::new(name))?;
        if !parents.is_empty() {
            return Err(StageError::NotBeneath { path: name.into() });
        }
        let src = open_path(rustix::fs::CWD, source, source)?;
        require_regular(&src, source)?;
        // `ln FROM TO` through the descriptor (needs CAP_DAC_READ_SEARCH), else a copy.
        let empty = rustix::fs::AtFlags::EMPTY_PATH;
        match rustix::fs::linkat(&src, "", &self.root, leaf.as_os_str(), empty) {
            Ok(()) => Ok(()),
            Err(_) => copy_file(&src, source, self.root.as_fd(), &leaf, None),
        }
    }

    /// Writes a new file `name` in the root.
    pub fn write_new(&self, name: &str, text: &str) -> Result<()> {
        let path = self.path.join(name);
        let mut file = create_file(self.root.as_fd(), OsStr::new(name), &path)?;
        io::Write::write_all(&mut file, text.as_bytes()).map_err(std_err("write", &path))
    }

    /// Opens (creating where missing) the directory `parents` below the root.
    fn parents(&self, parents: &[OsString]) -> Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut dir = rustix::fs::openat2(&self.root, ".", flags, Mode::empty(), RESOLVE)
            .map_err(io_err("open", &self.path))?;
        let mut host = PathBuf::from("/");
        let mut staged = self.path.clone();
        for component in parents {
            host.push(component);
            staged.push(component);
            let mode = std::fs::metadata(&host).map_or(0o755, |m| dir_mode(m.mode()));
            match rustix::fs::mkdirat(&dir, component.as_os_str(), Mode::from_raw_mode(mode)) {
                Ok(()) => {
                    let opened = open_dir(dir.as_fd(), component, &staged)?;
                    set_mode(&opened, mode, &staged)?;
                    dir = opened;
                }
                Err(rustix::io::Errno::EXIST) => dir = open_dir(dir.as_fd(), component, &staged)?,
                Err(errno) => return Err(io_err("create", &staged)(errno)),
            }
        }
        Ok(dir)
    }
}

/// The mode of a staged directory: the host's, with the owner's `rwx` so that later
/// entries can be staged inside it by a caller without `CAP_DAC_OVERRIDE`.
fn dir_mode(host: u32) -> u32 {
    (host & 0o7777) | 0o700
}

/// Splits a relative destination into its parent components and its last one.
fn split(dest: &Path) -> Result<(Vec<OsString>, OsString)> {
    let not_beneath = || StageError::NotBeneath { path: dest.into() };
    let mut names = Vec::new();
    // Raw components: `Path::components` would quietly drop `.` and repeated slashes.
    for component in dest.as_os_str().as_bytes().split(|b| *b == b'/') {
        match component {
            b"" | b"." | b".." => return Err(not_beneath()),
            name => names.push(OsStr::from_bytes(name).to_os_string()),
        }
    }
    let last = names.pop().ok_or_else(not_beneath)?;
    Ok((names, last))
}

/// `O_PATH | O_NOFOLLOW`: a handle on the entry itself, whatever it is, without opening it.
fn open_path(dir: BorrowedFd<'_>, name: impl rustix::path::Arg, path: &Path) -> Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(io_err("read", path))
}

fn open_dir(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::openat2(parent, name, flags, Mode::empty(), RESOLVE)
        .map_err(beneath_err("open", path))
}

fn create_file(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
    let fd = rustix::fs::openat2(parent, name, flags, Mode::from_raw_mode(0o600), RESOLVE)
        .map_err(beneath_err("create", path))?;
    Ok(File::from(fd))
}

/// Like [`io_err`], but a link met on the way (`ELOOP`) is named as such.
fn beneath_err(action: &'static str, path: &Path) -> impl FnOnce(rustix::io::Errno) -> StageError {
    let path = path.to_path_buf();
    move |errno| match errno {
        rustix::io::Errno::LOOP => StageError::ThroughLink { path },
        errno => io_err(action, &path)(errno),
    }
}

fn set_mode(fd: &OwnedFd, mode: u32, path: &Path) -> Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io_err("chmod", path))
}

fn kind(fd: &OwnedFd, path: &Path) -> Result<rustix::fs::FileType> {
    let stat = rustix::fs::fstat(fd).map_err(io_err("inspect", path))?;
    Ok(rustix::fs::FileType::from_raw_mode(stat.st_mode))
}

fn kind_name(kind: rustix::fs::FileType) -> &'static str {
    match kind {
        rustix::fs::FileType::RegularFile => "regular file",
        rustix::fs::FileType::Directory => "directory",
        rustix::fs::FileType::Symlink => "symbolic link",
        rustix::fs::FileType::Fifo => "FIFO",
        rustix::fs::FileType::Socket => "socket",
        rustix::fs::FileType::CharacterDevice => "character device",
        rustix::fs::FileType::BlockDevice => "block device",
        rustix::fs::FileType::Unknown => "special file",
    }
}

fn unsupported(path: &Path, kind: rustix::fs::FileType) -> StageError {
    StageError::Unsupported {
        path: path.into(),
        kind: kind_name(kind),
    }
}

/// Fails unless the `O_PATH` handle `src` is a regular file.
fn require_regular(src: &OwnedFd, path: &Path) -> Result<()> {
    match kind(src, path)? {
        rustix::fs::FileType::RegularFile => Ok(()),
        other => Err(StageError::NotRegular {
            path: path.into(),
            kind: kind_name(other),
        }),
    }
}

/// Copies the entry behind the `O_PATH` handle `src` to `name` in directory `parent`.
fn copy_entry(
    src: &OwnedFd,
    source: &Path,
    parent: BorrowedFd<'_>,
    name: &OsStr,
    recursive: bool,
    policy: Option<&HostPolicy>,
) -> Result<()> {
    match kind(src, source)? {
        rustix::fs::FileType::RegularFile => copy_file(src, source, parent, name, policy),
        rustix::fs::FileType::Symlink => {
            let target =
                rustix::fs::readlinkat(src, "", Vec::new()).map_err(io_err("read link", source))?;
            rustix::fs::symlinkat(target.as_c_str(), parent, name)
                .map_err(io_err("create link", source))
        }
        rustix::fs::FileType::Directory => copy_dir(src, source, parent, name, recursive, policy),
        other => Err(unsupported(source, other)),
    }
}

/// Reads the regular file `name` directly inside directory `root` (an image's mount point,
/// say) without following any link, at most `limit` bytes of UTF-8.
pub fn read_beneath(root: &Path, name: &str, limit: u64) -> Result<String> {
    let path = root.join(name);
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = rustix::fs::open(root, flags, Mode::empty()).map_err(io_err("read", root))?;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let src = rustix::fs::openat2(&dir, name, flags, Mode::empty(), RESOLVE)
        .map_err(beneath_err("read", &path))?;
    require_regular(&src, &path)?;
    let (reader, _) = reopen(&src, &path)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(reader, limit.saturating_add(1)),
        &mut bytes,
    )
    .map_err(std_err("read", &path))?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        let big = io::Error::other(format!("larger than {limit} bytes"));
        return Err(std_err("read", &path)(big));
    }
    String::from_utf8(bytes).map_err(|e| std_err("read", &path)(io::Error::other(e)))
}

/// Opens the regular file behind the `O_PATH` handle `src` for reading (through
/// `/proc/self/fd`, checked to be the same inode), with the metadata examined.
fn reopen(src: &OwnedFd, source: &Path) -> Result<(File, std::fs::Metadata)> {
    let handle = File::from(src.try_clone().map_err(std_err("open", source))?);
    let examined = handle.metadata().map_err(std_err("inspect", source))?;
    let proc_path = format!("/proc/self/fd/{}", src.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC;
    let reader = rustix::fs::open(proc_path.as_str(), flags, Mode::empty())
        .map_err(io_err("read", source))?;
    let reader = File::from(reader);
    let opened = reader.metadata().map_err(std_err("inspect", source))?;
    if (opened.dev(), opened.ino()) != (examined.dev(), examined.ino()) {
        let changed = io::Error::other("the file changed while it was opened");
        return Err(std_err("read", source)(changed));
    }
    Ok((reader, examined))
}

fn refused(path: &Path, reason: String) -> StageError {
    StageError::Refused {
        path: path.into(),
        reason,
    }
}

/// Reads the regular file behind `src` into a new file `name`, within the policy's size
/// limits when there is one. Setuid and setgid bits stay only on root's files.
fn copy_file(
    src: &OwnedFd,
    source: &Path,
    parent: BorrowedFd<'_>,
    name: &OsStr,
    policy: Option<&HostPolicy>,
) -> Result<()> {
    let (reader, examined) = reopen(src, source)?;
    if let Some(policy) = policy {
        policy
            .check_size(examined.size())
            .map_err(|reason| refused(source, reason))?;
    }
    let limit = policy.map_or(u64::MAX, HostPolicy::limit);
    let mut dest = create_file(parent, name, source)?;
    let copied = copy_bounded(reader, &mut dest, limit).map_err(std_err("copy", source))?;
    if let Some(policy) = policy {
        policy
            .check_size(copied)
            .map_err(|reason| refused(source, format!("{reason} (it grew while copied)")))?;
        policy.spend(copied);
    }
    let mode = std::fs::Permissions::from_mode(copied_mode(examined.mode(), examined.uid()));
    dest.set_permissions(mode)
        .map_err(std_err("chmod", source))?;
    if let Ok(modified) = examined.modified() {
        let _ = dest.set_times(std::fs::FileTimes::new().set_modified(modified));
    }
    Ok(())
}

/// Copies at most `limit + 1` bytes (one more tells that there were more than `limit`),
/// returning how many were copied.
fn copy_bounded(reader: impl io::Read, dest: &mut impl io::Write, limit: u64) -> io::Result<u64> {
    io::copy(&mut reader.take(limit.saturating_add(1)), dest)
}

fn copy_dir(
    src: &OwnedFd,
    source: &Path,
    parent: BorrowedFd<'_>,
    name: &OsStr,
    recursive: bool,
    policy: Option<&HostPolicy>,
) -> Result<()> {
    let mode = File::from(src.try_clone().map_err(std_err("open", source))?)
        .metadata()
        .map_err(std_err("inspect", source))?
        .mode();
    let mode = dir_mode(mode);
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(errno) => return Err(io_err("create", source)(errno)),
    }
    let dest = open_dir(parent, name, source)?;
    if recursive {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let listing =
            rustix::fs::openat(src, ".", flags, Mode::empty()).map_err(io_err("read", source))?;
        let entries = rustix::fs::Dir::read_from(&listing).map_err(io_err("read", source))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read", source))?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let child_name = OsStr::from_bytes(bytes);
            let child_path = source.join(child_name);
            let child = open_path(listing.as_fd(), entry.file_name(), &child_path)?;
            if let Some(policy) = policy {
                policy
                    .admit(&child)
                    .map_err(|reason| refused(&child_path, reason))?;
            }
            copy_entry(&child, &child_path, dest.as_fd(), child_name, true, policy)?;
        }
    }
    set_mode(&dest, mode, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_copy_stops_one_byte_past_the_limit() {
        // A file that grew after its size was checked: the copy reads one byte more than
        // allowed, which tells the caller to refuse it, and never more.
        let endless = io::repeat(b'x');
        let mut out = Vec::new();
        assert_eq!(copy_bounded(endless, &mut out, 1000).unwrap(), 1001);
        assert_eq!(out.len(), 1001);
    }
}
