// SPDX-License-Identifier: MIT
//! The VM engine of flake-pilot: where VM images live, and (to come) the Firecracker and
//! QEMU microvm backends behind one `Vmm` trait, the guest channel and instance lifecycle.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use flakes::{Mode, Settings};

/// File in a VM instance's directory holding the VMM's process id.
pub const PID_FILE: &str = "vmm.pid";

/// Where the VM instances of a user live: `<ids_dir>/<uid>/.vm/<flake>@<pid>/` (hidden, so
/// podman instance listings never mistake it for a container instance).
pub fn instances_dir(user_dir: &Path) -> PathBuf {
    user_dir.join(".vm")
}

/// Whether the VMM of the instance in `dir` still runs: its recorded pid must be alive *and*
/// its command line must name this instance's directory, so a reused pid is not mistaken
/// for the VM.
pub fn instance_running(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline)
        .contains(needle.as_ref())
        .then_some(pid)
}

/// Root of the system VM image registry.
pub const SYSTEM_REGISTRY: &str = "/var/lib/firecracker";

pub mod firecracker;
pub mod pull;
pub mod qemu;

/// The directory holding the VM images of `mode`: `/var/lib/firecracker/images` for the
/// system, `<user flakes_dir>/firecracker/images` for a user.
pub fn images_dir(settings: &Settings, mode: Mode) -> PathBuf {
    match mode {
        Mode::System => Path::new(SYSTEM_REGISTRY).join("images"),
        Mode::User => settings.flakes_dir(Mode::User).join("firecracker/images"),
    }
}

/// The files of one pulled VM image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmImage {
    /// Root filesystem.
    pub rootfs: PathBuf,
    /// Kernel.
    pub kernel: PathBuf,
    /// Initrd, when the image has one.
    pub initrd: Option<PathBuf>,
}

/// Errors about VM images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image name cannot be a directory name.
    #[error("'{name}' cannot be a VM image name: use letters, digits, '.', '_' and '-'")]
    BadName {
        /// The name given.
        name: String,
    },
    /// A required file of the image is missing.
    #[error("VM image '{name}' has no {what} ({}); pull it with flake-ctl firecracker pull --name {name} ...", path.display())]
    Missing {
        /// The image name.
        name: String,
        /// `rootfs` or `kernel`.
        what: &'static str,
        /// The path looked for.
        path: PathBuf,
    },
}

/// The directory of image `name` below `images_dir`; the name must be a plain file name.
pub fn image_dir(images_dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(ImageError::BadName {
            name: name.to_string(),
        });
    }
    Ok(images_dir.join(name))
}

/// Finds image `name` below `images_dir`, requiring a rootfs and a kernel.
pub fn find_image(images_dir: &Path, name: &str) -> Result<VmImage, ImageError> {
    let dir = image_dir(images_dir, name)?;
    let required = |what: &'static str| {
        let path = dir.join(what);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ImageError::Missing {
                name: name.to_string(),
                what,
                path,
            })
        }
    };
    let rootfs = required("rootfs")?;
    let kernel = required("kernel")?;
    let initrd = Some(dir.join("initrd")).filter(|p| p.is_file());
    Ok(VmImage {
        rootfs,
        kernel,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_need_rootfs_and_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("leap");
        std::fs::create_dir_all(&image).unwrap();
        let err = find_image(dir.path(), "leap").unwrap_err().to_string();
        assert!(err.contains("rootfs") && err.contains("pull"), "{err}");
        std::fs::write(image.join("rootfs"), "").unwrap();
        assert!(find_image(dir.path(), "leap")
            .unwrap_err()
            .to_string()
            .contains("kernel"));
        std::fs::write(image.join("kernel"), "").unwrap();
        assert_eq!(find_image(dir.path(), "leap").unwrap().initrd, None);
        std::fs::write(image.join("initrd"), "").unwrap();
        assert!(find_image(dir.path(), "leap").unwrap().initrd.is_some());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(
                matches!(find_image(dir.path(), bad), Err(ImageError::BadName { .. })),
                "{bad}"
            );
        }
    }
}
