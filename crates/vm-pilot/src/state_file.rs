// SPDX-License-Identifier: MIT
//! Reading (and writing) the small files of an instance directory (a VMM's pid, a TAP
//! device's mark, a lock's note) without trusting what is there.
//!
//! `flake-ctl firecracker show` and `remove` read these files in directories that may be
//! another user's, and root runs them. Whoever owns the directory can put anything under
//! a file's name: a symlink to `/dev/zero` (a plain read never ends and fills memory), a
//! FIFO (a plain open blocks until someone writes), or a symlink to a file they may not
//! read themselves. So each file is opened without following a symlink and without
//! blocking, must be a regular file, and only its first [`LIMIT`] bytes are looked at;
//! anything else reads as missing.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{fstat, openat, FileType, Mode, OFlags, CWD};

/// The most an instance's small file holds (a pid and a start time, a device name).
pub const LIMIT: usize = 64;

/// The contents of the small regular file `name` in the directory `dir` (a held
/// descriptor); `None` when it is missing, not a regular file, or longer than [`LIMIT`].
pub fn read_at(dir: impl AsFd, name: &str) -> Option<Vec<u8>> {
    read_from(dir, Path::new(name))
}

/// [`read_at`] for a file named by its path (in the caller's own instance directory,
/// or through `/proc/self/fd/N/` of a held one).
pub fn read(path: &Path) -> Option<Vec<u8>> {
    read_from(CWD, path)
}

fn read_from(dir: impl AsFd, path: &Path) -> Option<Vec<u8>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = openat(dir, path, flags, Mode::empty()).ok()?;
    let stat = fstat(&fd).ok()?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return None;
    }
    let mut bytes = Vec::with_capacity(LIMIT + 1);
    std::fs::File::from(fd)
        .take(u64::try_from(LIMIT).ok()? + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() <= LIMIT).then_some(bytes)
}

/// Writes `bytes` into the small file at `path` (created with mode 0600, or truncated),
/// never through a symlink: the counterpart of [`read`] for the launcher's own files.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = i32::try_from(OFlags::NOFOLLOW.bits()).unwrap_or(0);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path)?
        .write_all(bytes)
}

/// [`read`] as trimmed UTF-8 text.
pub fn read_text(path: &Path) -> Option<String> {
    let bytes = read(path)?;
    Some(std::str::from_utf8(&bytes).ok()?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        std::fs::write(at("pid"), "42 7\n").unwrap();
        assert_eq!(read_text(&at("pid")).as_deref(), Some("42 7"));
        assert_eq!(read(&at("missing")), None);
        std::fs::write(at("big"), "1".repeat(LIMIT + 1)).unwrap();
        assert_eq!(read(&at("big")), None, "longer than the limit");
        std::fs::write(at("full"), "1".repeat(LIMIT)).unwrap();
        assert_eq!(read(&at("full")).map(|b| b.len()), Some(LIMIT));
        std::os::unix::fs::symlink(at("pid"), at("link")).unwrap();
        assert_eq!(read(&at("link")), None, "a symlink, even to a good file");
        std::os::unix::fs::symlink("/dev/zero", at("zero")).unwrap();
        assert_eq!(read(&at("zero")), None);
        std::fs::create_dir(at("dir")).unwrap();
        assert_eq!(read(&at("dir")), None);
        rustix::fs::mkfifoat(CWD, at("fifo"), Mode::from_raw_mode(0o600)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(read(&at("fifo")), None, "a FIFO neither blocks nor counts");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        write(&at("new"), b"1 2\n").unwrap();
        assert_eq!(read_text(&at("new")).as_deref(), Some("1 2"));
        assert!(write(&at("link"), b"x").is_err(), "never through a symlink");
        assert_eq!(std::fs::read(at("pid")).unwrap(), b"42 7\n");
        let held = std::fs::File::open(dir.path()).unwrap();
        assert_eq!(read_at(&held, "pid").as_deref(), Some(&b"42 7\n"[..]));
        assert_eq!(read_at(&held, "fifo"), None);
    }
}
