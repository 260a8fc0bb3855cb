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

use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

/// Where the overlay disk is mounted (a mount point every image has; `pull` adds it).
const OVERLAY_MOUNT: &str = "/overlayroot";

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

/// Makes `device` the writable upper layer of the root and switches into the overlay.
pub fn overlay_root(device: &str) -> Result<(), String> {
    let fail = |what: &str, err: rustix::io::Errno| format!("overlay {device}: {what}: {err}");
    mount(device, OVERLAY_MOUNT, "ext4", MountFlags::NOATIME, None)
        .map_err(|e| fail("cannot mount it on /overlayroot", e))?;
    for dir in ["rootfs", "rootfs_upper", "rootfs_work"] {
        std::fs::create_dir_all(format!("{OVERLAY_MOUNT}/{dir}"))
            .map_err(|e| format!("overlay {device}: cannot create {dir}: {e}"))?;
    }
    let merged = format!("{OVERLAY_MOUNT}/rootfs");
    let options = std::ffi::CString::new(format!(
        "lowerdir=/,upperdir={OVERLAY_MOUNT}/rootfs_upper,workdir={OVERLAY_MOUNT}/rootfs_work"
    ))
    .map_err(|e| format!("overlay {device}: {e}"))?;
    mount(
        "overlay",
        merged.as_str(),
        "overlay",
        MountFlags::empty(),
        Some(options.as_c_str()),
    )
    .map_err(|e| fail("cannot mount the overlay", e))?;
    // pivot_root . mnt; then the old root (with the first /proc and /dev) is detached.
    std::env::set_current_dir(&merged).map_err(|e| format!("overlay {device}: {e}"))?;
    std::fs::create_dir_all("mnt").map_err(|e| format!("overlay {device}: /mnt: {e}"))?;
    rustix::process::pivot_root(".", "mnt").map_err(|e| fail("pivot_root failed", e))?;
    rustix::process::chroot(".").map_err(|e| fail("chroot failed", e))?;
    std::env::set_current_dir("/").map_err(|e| format!("overlay {device}: {e}"))?;
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
