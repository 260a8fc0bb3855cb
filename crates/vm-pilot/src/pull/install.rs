// SPDX-License-Identifier: MIT
//! Staging and atomic installation of a pulled image, and the preparation of a component
//! rootfs (the mount points the guest init needs) without root or loop mounts.

use std::path::{Path, PathBuf};

use super::{io, PullError};

/// A private staging directory next to the image directory; removed unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates `<images_dir>/.pull-<name>-<pid>`.
    pub fn new(images_dir: &Path, name: &str) -> Result<Self, PullError> {
        std::fs::create_dir_all(images_dir).map_err(io("create", images_dir))?;
        let dir = images_dir.join(format!(".pull-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(io("create", &dir))?;
        Ok(Staging {
            dir,
            committed: false,
        })
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the staged image to `target`, replacing an old image only now.
    pub fn commit(mut self, target: &Path) -> Result<(), PullError> {
        let old = target.with_file_name(format!(
            ".old-{}-{}",
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let had_old = target.exists();
        if had_old {
            std::fs::rename(target, &old).map_err(io("move aside", target))?;
        }
        if let Err(err) = std::fs::rename(&self.dir, target) {
            if had_old {
                let _ = std::fs::rename(&old, target);
            }
            return Err(PullError::Io {
                action: "install",
                path: target.to_path_buf(),
                source: err,
            });
        }
        self.committed = true;
        if had_old {
            std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Mount points the guest init uses; created in an ext2/3/4 rootfs when missing.
const MOUNT_POINTS: [&str; 6] = ["/overlayroot", "/proc", "/sys", "/dev", "/dev/pts", "/mnt"];

/// Adds the missing mount points to an ext2/3/4 rootfs with `debugfs -w`, which edits the
/// image file directly: no root, no loop mount. Other file systems are left as they are.
pub fn prepare_rootfs(rootfs: &Path, name: &str) -> Result<(), PullError> {
    if !is_ext(rootfs)? {
        return Ok(());
    }
    let fail = |reason: String| PullError::Prepare {
        name: name.to_string(),
        reason,
    };
    let debugfs = flakes::process::resolve(
        "debugfs",
        Some(std::ffi::OsStr::new("/usr/sbin:/sbin:/usr/bin:/bin")),
    )
    .map_err(|e| fail(format!("{e} (package e2fsprogs)")))?;
    let listing = flakes::process::Cmd::new(&debugfs)
        .args(["-R", "ls -p /"])
        .arg(rootfs)
        .stdout()
        .map_err(|e| fail(e.to_string()))?;
    for point in MOUNT_POINTS {
        let exists = if point == "/dev/pts" {
            let dev = flakes::process::Cmd::new(&debugfs)
                .args(["-R", "ls -p /dev"])
                .arg(rootfs)
                .stdout()
                .unwrap_or_default();
            dev.contains("/pts/")
        } else {
            listing.contains(&format!("/{}/", point.trim_start_matches('/')))
        };
        if !exists {
            let request = format!("mkdir {point}");
            flakes::process::Cmd::new(&debugfs)
                .args(["-w", "-R", &request])
                .arg(rootfs)
                .stdout()
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(())
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
