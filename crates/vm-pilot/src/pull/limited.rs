// SPDX-License-Identifier: MIT
//! Every file a pull writes goes through here: created afresh (never over an existing file
//! or through a link) with mode 0644, or 0755 when its source marked it executable, whatever
//! the umask or the archive says, and filled from a stream that may not pass a byte budget.
//! So neither a hostile archive nor a hostile server can leave a world-writable or setuid
//! file in an image a VM boots, or fill the disk before a checksum is looked at: besides the
//! budget, a file stops growing when its file system gets down to its last 5 % (at most
//! 1 GiB), which stays free for the rest of the system even under the default size limit.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::PullError;

/// How a written file may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// 0644.
    Data,
    /// 0755: its source had an execute bit.
    Executable,
}

impl FileMode {
    /// The mode for a source mode: any execute bit makes it executable; nothing else
    /// (setuid, setgid, sticky, group or world write) is kept.
    pub fn from_source(mode: u32) -> Self {
        if mode & 0o111 == 0 {
            FileMode::Data
        } else {
            FileMode::Executable
        }
    }

    fn bits(self) -> u32 {
        match self {
            FileMode::Data => 0o644,
            FileMode::Executable => 0o755,
        }
    }
}

/// Bytes written between two looks at the free space.
const SPACE_CHECK_EVERY: u64 = 1 << 20;
/// The most free space a pull leaves untouched (less on a file system under 20 GiB).
const RESERVE_MAX: u64 = 1 << 30;

/// Why a copy stopped.
#[derive(Debug)]
pub enum CopyError {
    /// The source went past the budget.
    TooLarge,
    /// The file system is down to its reserve (bytes).
    NoSpace(u64),
    /// Reading the source failed.
    Read(std::io::Error),
    /// Creating or writing the destination failed.
    Write(std::io::Error),
}

impl CopyError {
    /// The pull's error for a copy to `dest`: `too_large` and `read` say what the source
    /// was; a full file system or a failed write are the same for every source.
    pub fn into_pull(
        self,
        dest: &Path,
        too_large: impl FnOnce() -> PullError,
        read: impl FnOnce(std::io::Error) -> PullError,
    ) -> PullError {
        match self {
            CopyError::TooLarge => too_large(),
            CopyError::Read(e) => read(e),
            CopyError::NoSpace(reserve) => PullError::NoSpace {
                dir: dest.parent().unwrap_or(dest).to_path_buf(),
                reserve,
            },
            CopyError::Write(e) => PullError::Io {
                action: "write",
                path: dest.to_path_buf(),
                source: e,
            },
        }
    }
}

/// Copies `source` into `sink`, failing as soon as it passes `budget` bytes; returns the
/// bytes copied. `progress` counts them on a terminal.
pub fn copy(
    source: &mut dyn Read,
    sink: &mut dyn Write,
    budget: u64,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<u64, CopyError> {
    copy_within(source, sink, budget, progress, None)
}

/// [`copy`], also stopping when the file system of `space` gets down to its reserve.
fn copy_within(
    source: &mut dyn Read,
    sink: &mut dyn Write,
    budget: u64,
    progress: Option<&indicatif::ProgressBar>,
    space: Option<&File>,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    let mut unchecked = SPACE_CHECK_EVERY;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let len = u64::try_from(n).unwrap_or(u64::MAX);
        copied = copied.saturating_add(len);
        if copied > budget {
            return Err(CopyError::TooLarge);
        }
        if let Some(file) = space.filter(|_| unchecked >= SPACE_CHECK_EVERY) {
            unchecked = 0;
            short_of_space(file)?;
        }
        unchecked += len;
        sink.write_all(&buf[..n]).map_err(CopyError::Write)?;
        if let Some(bar) = progress {
            bar.inc(len);
        }
    }
}

/// Creates `dest` (which must not exist) with `mode` and fills it from `source`, within
/// `budget` bytes, synced to disk; returns the bytes written.
pub fn write_new(
    source: &mut dyn Read,
    dest: &Path,
    mode: FileMode,
    budget: u64,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<u64, CopyError> {
    let file = create(dest, mode).map_err(CopyError::Write)?;
    let written = copy_within(source, &mut &file, budget, progress, Some(&file))?;
    file.sync_all().map_err(CopyError::Write)?;
    Ok(written)
}

/// Fails when the file system holding `file` is down to its reserve: 5 % of its size, at
/// most [`RESERVE_MAX`]. A file system that cannot tell is not held back.
fn short_of_space(file: &File) -> Result<(), CopyError> {
    let Ok(fs) = rustix::fs::fstatvfs(file) else {
        return Ok(());
    };
    let space = Space::of(&fs);
    if space.free < space.reserve.saturating_add(SPACE_CHECK_EVERY) {
        return Err(CopyError::NoSpace(space.reserve));
    }
    Ok(())
}

/// The free space of a file system and the part of it a pull leaves alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes free for the caller.
    pub free: u64,
    /// Bytes a pull leaves free: 5 % of the file system, at most [`RESERVE_MAX`].
    pub reserve: u64,
}

impl Space {
    fn of(fs: &rustix::fs::StatVfs) -> Self {
        let total = fs.f_blocks.saturating_mul(fs.f_frsize);
        Space {
            free: fs.f_bavail.saturating_mul(fs.f_frsize),
            reserve: (total / 20).min(RESERVE_MAX),
        }
    }

    /// Whether `bytes` more fit without touching the reserve.
    pub fn fits(self, bytes: u64) -> bool {
        bytes.saturating_add(self.reserve) <= self.free
    }
}

/// The space of the file system holding `dir`; `None` when it cannot tell.
pub fn space(dir: &Path) -> Option<Space> {
    rustix::fs::statvfs(dir).ok().map(|fs| Space::of(&fs))
}

/// Creates `dest` (which must not exist) with `mode`, holding `bytes`.
pub fn write_bytes(dest: &Path, bytes: &[u8], mode: FileMode) -> std::io::Result<()> {
    let mut file = create(dest, mode)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `open(O_CREAT|O_EXCL|O_NOFOLLOW)` then `fchmod`, so the umask changes nothing.
fn create(dest: &Path, mode: FileMode) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0))
        .open(dest)?;
    file.set_permissions(Permissions::from_mode(mode.bits()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_kept_out_of_what_fits() {
        let small = Space {
            free: 100,
            reserve: 10,
        };
        assert!(small.fits(0) && small.fits(90));
        assert!(!small.fits(91) && !small.fits(u64::MAX));
        let here = space(Path::new("/")).unwrap();
        assert!(here.reserve <= RESERVE_MAX);
    }

    #[test]
    fn modes_keep_only_the_execute_bit() {
        for (source, mode) in [
            (0o777, FileMode::Executable),
            (0o4755, FileMode::Executable),
            (0o100, FileMode::Executable),
            (0o666, FileMode::Data),
            (0o6666, FileMode::Data),
            (0o1000, FileMode::Data),
            (0, FileMode::Data),
        ] {
            assert_eq!(FileMode::from_source(source), mode, "{source:o}");
        }
    }

    #[test]
    fn budget_is_checked_while_streaming() {
        let mut sink = Vec::new();
        let mut zeros = std::io::repeat(0).take(1 << 30);
        assert!(matches!(
            copy(&mut zeros, &mut sink, 1 << 20, None),
            Err(CopyError::TooLarge)
        ));
        assert!(sink.len() <= 1 << 20);
        let mut exact = std::io::repeat(1).take(1000);
        assert_eq!(copy(&mut exact, &mut Vec::new(), 1000, None).unwrap(), 1000);
    }

    #[test]
    fn files_are_new_with_exact_modes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        write_new(&mut &b"abc"[..], &dest, FileMode::Executable, 3, None).unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o7777, 0o755);
        assert!(matches!(
            write_new(&mut &b"abc"[..], &dest, FileMode::Data, 3, None),
            Err(CopyError::Write(_))
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        assert!(write_new(&mut &b""[..], &link, FileMode::Data, 3, None).is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }
}
