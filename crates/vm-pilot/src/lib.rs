// SPDX-License-Identifier: MIT
//! The VM engine of flake-pilot: where VM images live ([`pull`], [`find_image`]), the
//! Firecracker and QEMU microvm backends behind one [`vmm::Vmm`] trait, instance state
//! ([`instance`], its small files read with [`state_file`]), overlay disks ([`overlay`]),
//! what a call runs in the guest ([`entry`], from the record of an OCI image: [`oci`]),
//! TAP devices ([`tap`]), who may have changed an image's files ([`trust`]), saved one-shot VM states ([`saved`]) and the lifecycle of one
//! call ([`launch`]).

#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use flakes::{Mode, Settings};

pub use instance::{running as instance_running, running_in as instance_running_in, PID_FILE};

/// Where the VM instances of a user live: `<ids_dir>/<uid>/.vm/` (hidden, so podman
/// instance listings never mistake it for a container instance).
pub fn instances_dir(user_dir: &Path) -> PathBuf {
    user_dir.join(".vm")
}

/// Where the caller's saved one-shot VM states live ([`saved`]): beside the resume
/// overlays, under the caller's own flakes directory.
pub fn states_dir(settings: &Settings) -> PathBuf {
    settings.flakes_dir(Mode::User).join("firecracker/states")
}

/// Root of the system VM image registry.
pub const SYSTEM_REGISTRY: &str = "/var/lib/firecracker";

pub mod entry;
pub mod error;
pub mod firecracker;
#[doc(hidden)]
pub mod fuzzing;
pub mod instance;
pub mod launch;
pub mod oci;
pub mod overlay;
pub mod pull;
pub mod qemu;
pub mod saved;
pub mod state_file;
pub mod tap;
pub mod timing;
pub mod tools;
pub mod trust;
pub mod vmm;
pub mod vsock;

pub use error::VmError;

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
