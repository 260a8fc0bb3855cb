// SPDX-License-Identifier: MIT
//! The preparation of a component rootfs (the mount points the guest init needs) without
//! root or loop mounts, and the marker saying which protocol its guest init speaks.
//!
//! The rootfs is the download's, so whatever `debugfs` prints from it is bounded: the guest
//! init is looked at (`stat`) before it is read and refused over [`INIT_MAX`] (a sparse
//! file of terabytes costs the archive nothing), every answer is read through a limit, and
//! the output of the requests that change the image is discarded.

use std::path::{Path, PathBuf};

use super::limited::{self, FileMode};
use super::{io, PullError};

/// Mount points the guest init uses; created in an ext2/3/4 rootfs when missing.
const MOUNT_POINTS: [&str; 6] = ["/overlayroot", "/proc", "/sys", "/dev", "/dev/pts", "/mnt"];
/// Where the guest init lives in a rootfs.
pub const SCI_PATH: &str = "/usr/sbin/sci";
/// The largest guest init read for its markers (a static `sci` is under 4 MiB).
pub const INIT_MAX: u64 = 64 << 20;
/// The most bytes read of a `debugfs` answer other than a file's content (a `stat`, the
/// listing of one directory).
const ANSWER_MAX: u64 = 4 << 20;

/// Prepares an ext2/3/4 component rootfs with `debugfs -w`, which edits the image file
/// directly (no root, no loop mount): adds the missing mount points and installs `sci` (the
/// static binary at `sci`) unless the image has one. Other file systems are left as they are.
pub fn prepare_rootfs(rootfs: &Path, name: &str, sci: Option<&Path>) -> Result<(), PullError> {
    if !is_ext(rootfs)? {
        return Ok(());
    }
    let fail = |reason: &dyn std::fmt::Display| PullError::Prepare {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let path = Some(std::ffi::OsStr::new("/usr/sbin:/sbin:/usr/bin:/bin"));
    let bin = flakes::process::resolve("debugfs", path)
        .map_err(|e| fail(&format!("{e} (package e2fsprogs)")))?;
    let fs = Debugfs { bin, image: rootfs };
    for dir in MOUNT_POINTS.iter().chain(&["/usr", "/usr/sbin"]) {
        if !fs.exists(dir).map_err(|e| fail(&e))? {
            fs.write_request(&format!("mkdir {dir}"))
                .map_err(|e| fail(&e))?;
        }
    }
    if fs.exists(SCI_PATH).map_err(|e| fail(&e))? {
        return Ok(());
    }
    let sci = sci.ok_or_else(|| {
        fail(&"sci was not found; install flake-pilot with make install or set FLAKE_SCI")
    })?;
    let bytes =
        std::fs::read(sci).map_err(|e| fail(&format!("cannot read {}: {e}", sci.display())))?;
    if !flakes::elf::is_static(&bytes) {
        return Err(fail(&format!(
            "{} is not a static binary; build it with make agent",
            sci.display()
        )));
    }
    fs.write_request(&format!("write {} {SCI_PATH}", sci.display()))
        .map_err(|e| fail(&e))?;
    fs.write_request(&format!("sif {SCI_PATH} mode 0100755"))
        .map_err(|e| fail(&e))
}

/// File in an image directory saying its guest init speaks the flake-pilot protocol;
/// images without it (the original's init) are run in serial mode. It lists the init's
/// optional features, one per line.
pub const GUEST_CHANNEL_FILE: &str = "guest-channel";
/// The feature line of an init that serves a one-shot call over the plain virtio console.
pub const CONSOLE_FEATURE: &str = "console-acks";
/// The feature line of an init that takes a `Resync`: its one-shot VMs may be restored
/// from a saved state.
pub const RESYNC_FEATURE: &str = "resync";
/// The feature line of an init that announces its vsock listener (see
/// `proto::GUEST_ANNOUNCE_MARKER`): the host waits for that before it connects.
pub const ANNOUNCE_FEATURE: &str = "vsock-announce";

/// Writes [`GUEST_CHANNEL_FILE`] into `dir` when the ext rootfs there carries a guest init
/// that speaks the protocol (its binary holds `proto::GUEST_MARKER`). A guest init over
/// [`INIT_MAX`] bytes fails the pull of image `name`.
pub fn mark_guest_channel(dir: &Path, name: &str) -> Result<(), PullError> {
    let rootfs = dir.join("rootfs");
    if !is_ext(&rootfs)? {
        return Ok(());
    }
    let path = Some(std::ffi::OsStr::new("/usr/sbin:/sbin:/usr/bin:/bin"));
    let Ok(bin) = flakes::process::resolve("debugfs", path) else {
        return Ok(());
    };
    let fs = Debugfs {
        bin,
        image: &rootfs,
    };
    let fail = |reason: DebugfsError| PullError::Prepare {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let Some(init) = fs.read_init().map_err(fail)? else {
        return Ok(());
    };
    if init.contains(flake_protocol::proto::GUEST_MARKER) {
        let marker = dir.join(GUEST_CHANNEL_FILE);
        let mut features = String::new();
        for (marker, feature) in [
            (flake_protocol::proto::GUEST_CONSOLE_MARKER, CONSOLE_FEATURE),
            (flake_protocol::proto::GUEST_RESYNC_MARKER, RESYNC_FEATURE),
            (
                flake_protocol::proto::GUEST_ANNOUNCE_MARKER,
                ANNOUNCE_FEATURE,
            ),
        ] {
            if init.contains(marker) {
                features.push_str(feature);
                features.push('\n');
            }
        }
        limited::write_bytes(&marker, features.as_bytes(), FileMode::Data)
            .map_err(io("write", &marker))?;
    }
    Ok(())
}

/// What `debugfs stat` says of a path: whether it is a regular file, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    regular: bool,
    size: u64,
}

impl Stat {
    /// Parses `stat` output (`Inode: 12   Type: regular ... Size: 35664`); `None` when the
    /// path does not exist (debugfs then prints nothing on stdout).
    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let mut regular = None;
        let mut size = None;
        while let Some(word) = words.next() {
            match word {
                "Type:" if regular.is_none() => regular = Some(words.next() == Some("regular")),
                "Size:" if size.is_none() => size = words.next().and_then(|w| w.parse().ok()),
                _ => {}
            }
        }
        Some(Stat {
            regular: regular?,
            size: size?,
        })
    }
}

/// Why `debugfs` could not look into or change a rootfs.
#[derive(Debug, thiserror::Error)]
enum DebugfsError {
    /// `debugfs` failed or said too much.
    #[error(transparent)]
    Process(#[from] flakes::process::ProcessError),
    /// The guest init is larger than any guest init may be.
    #[error(
        "its guest init {SCI_PATH} is {size} bytes, more than the {} MiB a guest init may have",
        INIT_MAX >> 20
    )]
    InitTooLarge {
        /// What `stat` says of its size.
        size: u64,
    },
}

/// `debugfs` on one image file.
struct Debugfs<'a> {
    bin: PathBuf,
    image: &'a Path,
}

impl Debugfs<'_> {
    fn command(&self, request: &str, write: bool) -> flakes::process::Cmd {
        let mut cmd = flakes::process::Cmd::new(&self.bin);
        if write {
            cmd = cmd.arg("-w");
        }
        cmd.args(["-R", request]).arg(self.image)
    }

    /// A read-only request, its answer read up to `max` bytes.
    fn request(&self, request: &str, max: u64) -> Result<String, DebugfsError> {
        Ok(self.command(request, false).stdout_limited(max)?)
    }

    /// A request that changes the image; what it prints is discarded.
    fn write_request(&self, request: &str) -> Result<(), DebugfsError> {
        Ok(self.command(request, true).run()?)
    }

    /// The content of the guest init, `None` when there is none or it is not a regular
    /// file; refused when `stat` says it is over [`INIT_MAX`] bytes, and cut off there if
    /// `cat` brings more anyway.
    fn read_init(&self) -> Result<Option<String>, DebugfsError> {
        let stat = self.request(&format!("stat {SCI_PATH}"), ANSWER_MAX)?;
        match Stat::parse(&stat) {
            Some(stat) if stat.regular && stat.size > INIT_MAX => {
                Err(DebugfsError::InitTooLarge { size: stat.size })
            }
            Some(stat) if stat.regular => {
                self.request(&format!("cat {SCI_PATH}"), INIT_MAX).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// True when `path` exists in the image (`ls -p` of its parent lists `/name/`).
    fn exists(&self, path: &str) -> Result<bool, DebugfsError> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = if parent.is_empty() { "/" } else { parent };
        let listing = self.request(&format!("ls -p {parent}"), ANSWER_MAX)?;
        Ok(listing
            .lines()
            .any(|line| line.split('/').nth(5) == Some(name)))
    }
}

/// True when `path` holds an ext2/3/4 file system (magic 0xEF53 at byte 1080).
fn is_ext(path: &Path) -> Result<bool, PullError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut magic = [0u8; 2];
    if file.seek(SeekFrom::Start(1080)).is_err() || file.read_exact(&mut magic).is_err() {
        return Ok(false);
    }
    Ok(magic == [0x53, 0xef])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_answers() {
        let regular = "Inode: 12   Type: regular    Mode:  0755   Flags: 0x80000\n\
                       Generation: 0    Version: 0x00000000:00000000\n\
                       User:     0   Group:     0   Project:     0   Size: 35664\n";
        assert_eq!(
            Stat::parse(regular),
            Some(Stat {
                regular: true,
                size: 35664
            })
        );
        let dir = regular.replace("regular", "directory");
        assert_eq!(Stat::parse(&dir).map(|s| s.regular), Some(false));
        assert_eq!(Stat::parse(""), None);
        assert_eq!(Stat::parse("Type: regular Size: lots"), None);
    }
}
