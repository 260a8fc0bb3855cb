// SPDX-License-Identifier: MIT
//! Preparing the guest for the app, and ending the VM.
//!
//! The kernel starts `sci` with only the read-only root mounted. It mounts what programs
//! expect (`/proc`, `/sys`, `/dev`, `/dev/pts`, a tmpfs on `/run`) and, when the launcher
//! attached an overlay disk, makes the root writable: the disk (ext4, prepared on the host
//! with the flake's includes in `rootfs_upper/`) is mounted on `/overlayroot`, an overlay
//! of `/` and `rootfs_upper` is mounted beside it and becomes the root with `pivot_root`.
//! Changes then land on the disk, which is what lets a resume VM keep them across calls
//! and restarts.

use std::ffi::CStr;

use rustix::io::Errno;
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

/// Where the overlay disk is mounted (a mount point every image has; `pull` adds it).
const OVERLAY_MOUNT: &str = "/overlayroot";
/// The overlay's mount options: the read-only root below, the disk's layers above (under
/// [`OVERLAY_MOUNT`]).
const OVERLAY_OPTIONS: &CStr =
    c"lowerdir=/,upperdir=/overlayroot/rootfs_upper,workdir=/overlayroot/rootfs_work";

/// Mounts the kernel file systems; ones already mounted (or missing mount points) are
/// skipped, the program may not need them.
pub fn mount_basics() {
    mount_early();
    mount_rest();
}

/// Mounts what `sci` itself needs first: `/proc` (its settings) and `/dev` (the console).
pub fn mount_early() {
    for (source, target, fstype) in [("proc", "/proc", "proc"), ("devtmpfs", "/dev", "devtmpfs")] {
        let _ = mount(source, target, fstype, MountFlags::NOSUID, None);
    }
}

/// Mounts the kernel file systems only programs need.
pub fn mount_rest() {
    for (source, target, fstype) in [("sysfs", "/sys", "sysfs"), ("tmpfs", "/run", "tmpfs")] {
        let _ = mount(source, target, fstype, MountFlags::NOSUID, None);
    }
    let _ = std::fs::create_dir_all("/dev/pts");
    let _ = mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"ptmxmode=0666,mode=0620"),
    );
}

/// Why the overlay disk could not become the root. Each names the disk; the guest keeps
/// its read-only root and the call is answered with the message.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The disk would not mount.
    #[error(
        "overlay {device}: cannot mount it on {OVERLAY_MOUNT}: {source}; it must be a \
         writable ext4 disk and the guest kernel must support ext4"
    )]
    MountDisk {
        /// The overlay disk.
        device: String,
        /// Underlying error.
        source: Errno,
    },
    /// A directory of the overlay could not be made on the disk.
    #[error("overlay {device}: cannot create {path}: {source}")]
    CreateDir {
        /// The overlay disk.
        device: String,
        /// The directory.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The overlay file system would not mount.
    #[error(
        "overlay {device}: cannot mount the overlay on {OVERLAY_MOUNT}/rootfs: {source}; the \
         guest kernel needs overlayfs"
    )]
    MountOverlay {
        /// The overlay disk.
        device: String,
        /// Underlying error.
        source: Errno,
    },
    /// The new root could not be entered.
    #[error("overlay {device}: cannot change into {path}: {source}")]
    Enter {
        /// The overlay disk.
        device: String,
        /// The directory.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `pivot_root` or `chroot` refused.
    #[error("overlay {device}: {call} failed: {source}")]
    Switch {
        /// The overlay disk.
        device: String,
        /// `pivot_root` or `chroot`.
        call: &'static str,
        /// Underlying error.
        source: Errno,
    },
}

/// Makes `device` the writable upper layer of the root and switches into the overlay.
pub fn overlay_root(device: &str) -> Result<(), BootError> {
    let owned = || device.to_string();
    mount(device, OVERLAY_MOUNT, "ext4", MountFlags::NOATIME, None).map_err(|source| {
        BootError::MountDisk {
            device: owned(),
            source,
        }
    })?;
    for dir in ["rootfs", "rootfs_upper", "rootfs_work"] {
        create_dir(device, &format!("{OVERLAY_MOUNT}/{dir}"))?;
    }
    let merged = format!("{OVERLAY_MOUNT}/rootfs");
    mount(
        "overlay",
        merged.as_str(),
        "overlay",
        MountFlags::empty(),
        Some(OVERLAY_OPTIONS),
    )
    .map_err(|source| BootError::MountOverlay {
        device: owned(),
        source,
    })?;
    switch_root(device, &merged)
}

/// Makes `path` (and its parents) on the overlay disk `device`.
fn create_dir(device: &str, path: &str) -> Result<(), BootError> {
    std::fs::create_dir_all(path).map_err(|source| BootError::CreateDir {
        device: device.to_string(),
        path: path.to_string(),
        source,
    })
}

/// Makes the overlay mounted on `merged` the root: `pivot_root . mnt`, then the old root
/// (with the first /proc and /dev) is detached.
fn switch_root(device: &str, merged: &str) -> Result<(), BootError> {
    let enter = |path: &str| {
        std::env::set_current_dir(path).map_err(|source| BootError::Enter {
            device: device.to_string(),
            path: path.to_string(),
            source,
        })
    };
    let switch = |call| {
        move |source| BootError::Switch {
            device: device.to_string(),
            call,
            source,
        }
    };
    enter(merged)?;
    create_dir(device, &format!("{merged}/mnt"))?;
    rustix::process::pivot_root(".", "mnt").map_err(switch("pivot_root"))?;
    rustix::process::chroot(".").map_err(switch("chroot"))?;
    enter("/")?;
    let _ = unmount("/mnt", UnmountFlags::DETACH);
    Ok(())
}

/// Ends the VM. A restart, not a power-off: without ACPI (`acpi=off`) a guest cannot power
/// itself off, while both VMMs end the VM on a guest reboot (Firecracker always, QEMU with
/// `-no-reboot`).
pub fn power_off() {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_options_name_the_layers_on_the_disk() {
        let options = OVERLAY_OPTIONS.to_str().unwrap();
        let upper = format!("upperdir={OVERLAY_MOUNT}/rootfs_upper");
        let work = format!("workdir={OVERLAY_MOUNT}/rootfs_work");
        assert_eq!(options, format!("lowerdir=/,{upper},{work}"));
    }

    #[test]
    fn overlay_errors_name_the_disk_the_step_and_the_fix() {
        let device = || "/dev/vdb".to_string();
        let cases = [
            (
                BootError::MountDisk {
                    device: device(),
                    source: Errno::NODEV,
                },
                "overlay /dev/vdb: cannot mount it on /overlayroot: No such device (os error 19); \
                 it must be a writable ext4 disk and the guest kernel must support ext4",
            ),
            (
                BootError::CreateDir {
                    device: device(),
                    path: "/overlayroot/rootfs_work".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                "overlay /dev/vdb: cannot create /overlayroot/rootfs_work: No space left on \
                 device (os error 28)",
            ),
            (
                BootError::MountOverlay {
                    device: device(),
                    source: Errno::NODEV,
                },
                "overlay /dev/vdb: cannot mount the overlay on /overlayroot/rootfs: No such \
                 device (os error 19); the guest kernel needs overlayfs",
            ),
            (
                BootError::Switch {
                    device: device(),
                    call: "pivot_root",
                    source: Errno::INVAL,
                },
                "overlay /dev/vdb: pivot_root failed: Invalid argument (os error 22)",
            ),
        ];
        for (err, message) in cases {
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn a_disk_that_is_not_there_is_named() {
        let err = overlay_root("/dev/sci-test-missing").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("overlay /dev/sci-test-missing: cannot mount it on /overlayroot: "),
            "{message}"
        );
    }
}
