// SPDX-License-Identifier: MIT
//! The preparation of a component rootfs (the mount points the guest init needs) without
//! root or loop mounts, and the marker saying which protocol its guest init speaks.

use std::path::{Path, PathBuf};

use super::limited::{self, FileMode};
use super::{io, PullError};

/// Mount points the guest init uses; created in an ext2/3/4 rootfs when missing.
const MOUNT_POINTS: [&str; 6] = ["/overlayroot", "/proc", "/sys", "/dev", "/dev/pts", "/mnt"];
/// Where the guest init lives in a rootfs.
pub const SCI_PATH: &str = "/usr/sbin/sci";

/// Prepares an ext2/3/4 component rootfs with `debugfs -w`, which edits the image file
/// directly (no root, no loop mount): adds the missing mount points and installs `sci` (the
/// static binary at `sci`) unless the image has one. Other file systems are left as they are.
pub fn prepare_rootfs(rootfs: &Path, name: &str, sci: Option<&Path>) -> Result<(), PullError> {
    if !is_ext(rootfs)? {
        return Ok(());
    }
    let fail = |reason: String| PullError::Prepare {
        name: name.to_string(),
        reason,
    };
    let path = Some(std::ffi::OsStr::new("/usr/sbin:/sbin:/usr/bin:/bin"));
    let bin = flakes::process::resolve("debugfs", path)
        .map_err(|e| fail(format!("{e} (package e2fsprogs)")))?;
    let fs = Debugfs { bin, image: rootfs };
    for dir in MOUNT_POINTS.iter().chain(&["/usr", "/usr/sbin"]) {
        if !fs.exists(dir).map_err(&fail)? {
            fs.write_request(&format!("mkdir {dir}")).map_err(&fail)?;
        }
    }
    if fs.exists(SCI_PATH).map_err(&fail)? {
        return Ok(());
    }
    let sci = sci.ok_or_else(|| {
        fail("sci was not found; install flake-pilot with make install or set FLAKE_SCI".into())
    })?;
    let bytes =
        std::fs::read(sci).map_err(|e| fail(format!("cannot read {}: {e}", sci.display())))?;
    if !flakes::elf::is_static(&bytes) {
        return Err(fail(format!(
            "{} is not a static binary; build it with make agent",
            sci.display()
        )));
    }
    fs.write_request(&format!("write {} {SCI_PATH}", sci.display()))
        .map_err(&fail)?;
    fs.write_request(&format!("sif {SCI_PATH} mode 0100755"))
        .map_err(&fail)
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

/// Writes [`GUEST_CHANNEL_FILE`] into `dir` when the ext rootfs there carries a guest init
/// that speaks the protocol (its binary holds `proto::GUEST_MARKER`).
pub fn mark_guest_channel(dir: &Path) -> Result<(), PullError> {
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
    let init = fs
        .request(&format!("cat {SCI_PATH}"), false)
        .unwrap_or_default();
    if init.contains(flake_agent::proto::GUEST_MARKER) {
        let marker = dir.join(GUEST_CHANNEL_FILE);
        let mut features = String::new();
        for (marker, feature) in [
            (flake_agent::proto::GUEST_CONSOLE_MARKER, CONSOLE_FEATURE),
            (flake_agent::proto::GUEST_RESYNC_MARKER, RESYNC_FEATURE),
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

/// `debugfs` on one image file.
struct Debugfs<'a> {
    bin: PathBuf,
    image: &'a Path,
}

impl Debugfs<'_> {
    fn request(&self, request: &str, write: bool) -> Result<String, String> {
        let mut cmd = flakes::process::Cmd::new(&self.bin);
        if write {
            cmd = cmd.arg("-w");
        }
        cmd.args(["-R", request])
            .arg(self.image)
            .stdout()
            .map_err(|e| e.to_string())
    }

    fn write_request(&self, request: &str) -> Result<(), String> {
        self.request(request, true).map(|_| ())
    }

    /// True when `path` exists in the image (`ls -p` of its parent lists `/name/`).
    fn exists(&self, path: &str) -> Result<bool, String> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = if parent.is_empty() { "/" } else { parent };
        let listing = self.request(&format!("ls -p {parent}"), false)?;
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
