// SPDX-License-Identifier: MIT
//! VM flakes: the validated form of a `vm:` section.
//!
//! Everything the launcher will put on a kernel command line or into a VMM configuration is
//! checked here, before anything acts: sizes parse, paths are absolute, and boot arguments
//! cannot smuggle extra kernel parameters (no white space, no quotes).

use std::path::PathBuf;

use super::raw::{RawFirecracker, RawSize, RawVm, RawVmRuntime};
use super::{LaunchMode, Target};
use crate::size::ByteSize;

/// Default kernel command line of a new registration.
pub const DEFAULT_BOOT_ARGS: [&str; 7] = [
    "init=/usr/sbin/sci",
    "console=ttyS0",
    "root=/dev/vda",
    "acpi=off",
    "rd.neednet=1",
    "ip=dhcp",
    "quiet",
];
/// Seconds a resume VM stays up without a call, unless the flake says otherwise.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 1800;
/// Smallest overlay that can hold a file system.
pub const MIN_OVERLAY: u64 = 1 << 20;

/// Settings of a VM flake.
#[derive(Debug, Clone, PartialEq)]
pub struct VmFlake {
    /// Name of the VM image in the image registry.
    pub image: String,
    /// Program run in the guest; [`Target::ImageEntrypoint`] runs the entry command an
    /// image made from an OCI image records (`vm_pilot::oci`).
    pub target: Target,
    /// Registered host path, if recorded.
    pub host_app_path: Option<PathBuf>,
    /// How the VM runs.
    pub runtime: VmRuntime,
}

/// The virtual machine monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// Firecracker (the default).
    Firecracker,
    /// QEMU's microvm machine, for hosts without Firecracker or hardware KVM.
    Qemu,
}

/// Cache mode of the overlay drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    /// Flush to the host file on guest request (default).
    Writeback,
    /// Ignore flushes.
    Unsafe,
}

/// How a VM flake runs.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRuntime {
    /// One-shot or resume (attach does not exist for VMs).
    pub mode: LaunchMode,
    /// Use the guest channel for one-shot calls too.
    pub force_vsock: bool,
    /// Which VMM.
    pub vmm: Vmm,
    /// Whether the guest gets a network device.
    pub network: bool,
    /// Resume VMs power off after this long without a call; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// Kernel command line.
    pub boot_args: Vec<String>,
    /// Writable overlay disk size.
    pub overlay_size: Option<ByteSize>,
    /// Root filesystem image.
    pub rootfs: PathBuf,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd image.
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Guest CPUs.
    pub vcpu_count: u8,
    /// Overlay drive cache mode.
    pub cache_type: CacheType,
}

/// Why a `vm:` section is not a flake; each names the key and what to write there.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmConfigError {
    /// `vm.name` is missing.
    #[error("vm.name is missing; set it to the VM image name")]
    NoImage,
    /// `vm.target_app_path` is not an absolute program path.
    #[error("vm.target_app_path '{0}' must be an absolute program path, or / for the image's entry command")]
    Target(String),
    /// `vm.runtime.vmm` names no VMM.
    #[error("vm.runtime.vmm '{0}' is unknown; use firecracker or qemu")]
    Vmm(String),
    /// A boot argument is not one word.
    #[error("vm.runtime.firecracker.boot_args entry '{0}' must be one word without quotes")]
    BootArg(String),
    /// `overlay_size` is no size.
    #[error("vm.runtime.firecracker.overlay_size: {0}")]
    OverlaySize(String),
    /// `overlay_size` is below the smallest overlay.
    #[error("vm.runtime.firecracker.overlay_size must be at least 1MiB")]
    OverlayTooSmall,
    /// An image path of the VM is missing.
    #[error("vm.runtime.firecracker.{0} is missing; pull the image again")]
    NoPath(&'static str),
    /// An image path of the VM is not absolute.
    #[error("vm.runtime.firecracker.{key} '{path}' must be an absolute path")]
    RelativePath {
        /// The key.
        key: &'static str,
        /// Its value.
        path: String,
    },
    /// `mem_size_mib` is too small.
    #[error("vm.runtime.firecracker.mem_size_mib {0} is too small; use 64 or more")]
    Memory(u32),
    /// `vcpu_count` is out of range.
    #[error("vm.runtime.firecracker.vcpu_count {0} must be between 1 and 32")]
    Cpus(u8),
    /// `cache_type` names no cache mode.
    #[error("vm.runtime.firecracker.cache_type '{0}' is unknown; use Writeback or Unsafe")]
    CacheType(String),
}

/// Validates a `vm:` section.
pub(crate) fn vm_flake(raw: RawVm) -> Result<VmFlake, VmConfigError> {
    let image = raw
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or(VmConfigError::NoImage)?;
    let target = match raw.target_app_path.as_deref() {
        None | Some("") => Target::FlakeName,
        // The launcher checks that the image has an entry command: only it reads images.
        Some("/") => Target::ImageEntrypoint,
        Some(p) if p.starts_with('/') => Target::Program(p.to_string()),
        Some(p) => return Err(VmConfigError::Target(p.to_string())),
    };
    Ok(VmFlake {
        image,
        target,
        host_app_path: raw
            .host_app_path
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        runtime: runtime(raw.runtime.unwrap_or_default())?,
    })
}

fn runtime(raw: RawVmRuntime) -> Result<VmRuntime, VmConfigError> {
    let vmm = match raw.vmm.as_deref() {
        None | Some("firecracker") => Vmm::Firecracker,
        Some("qemu") => Vmm::Qemu,
        Some(other) => return Err(VmConfigError::Vmm(other.to_string())),
    };
    let fc = raw.firecracker.unwrap_or_default();
    let mode = if raw.resume.unwrap_or(false) {
        LaunchMode::Resume
    } else {
        LaunchMode::OneShot
    };
    Ok(VmRuntime {
        mode,
        force_vsock: raw.force_vsock.unwrap_or(false),
        vmm,
        network: raw.network.unwrap_or(true),
        idle_timeout: Some(raw.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT))
            .filter(|secs| *secs > 0)
            .map(std::time::Duration::from_secs),
        boot_args: boot_args(fc.boot_args.clone())?,
        overlay_size: overlay_size(fc.overlay_size.clone())?,
        rootfs: image_path(fc.rootfs_image_path.clone(), "rootfs_image_path")?
            .ok_or(VmConfigError::NoPath("rootfs_image_path"))?,
        kernel: image_path(fc.kernel_image_path.clone(), "kernel_image_path")?
            .ok_or(VmConfigError::NoPath("kernel_image_path"))?,
        initrd: image_path(fc.initrd_path.clone(), "initrd_path")?,
        mem_size_mib: machine(&fc)?.0,
        vcpu_count: machine(&fc)?.1,
        cache_type: cache_type(fc.cache_type.as_deref())?,
    })
}

fn boot_args(args: Option<Vec<String>>) -> Result<Vec<String>, VmConfigError> {
    let args = args.unwrap_or_else(|| DEFAULT_BOOT_ARGS.map(str::to_string).to_vec());
    for arg in &args {
        if arg.is_empty()
            || arg
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        {
            return Err(VmConfigError::BootArg(arg.clone()));
        }
    }
    Ok(args)
}

fn overlay_size(raw: Option<RawSize>) -> Result<Option<ByteSize>, VmConfigError> {
    let size = match raw {
        None => return Ok(None),
        Some(RawSize::Bytes(bytes)) => ByteSize::parse(&bytes.to_string()),
        Some(RawSize::Text(text)) => ByteSize::parse(&text),
    }
    .map_err(|e| VmConfigError::OverlaySize(e.to_string()))?;
    if size.bytes() < MIN_OVERLAY {
        return Err(VmConfigError::OverlayTooSmall);
    }
    Ok(Some(size))
}

fn image_path(path: Option<String>, key: &'static str) -> Result<Option<PathBuf>, VmConfigError> {
    match path.filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(p) if p.starts_with('/') => Ok(Some(PathBuf::from(p))),
        Some(path) => Err(VmConfigError::RelativePath { key, path }),
    }
}

fn machine(fc: &RawFirecracker) -> Result<(u32, u8), VmConfigError> {
    let mem = fc.mem_size_mib.unwrap_or(4096);
    let cpus = fc.vcpu_count.unwrap_or(2);
    if mem < 64 {
        return Err(VmConfigError::Memory(mem));
    }
    if cpus == 0 || cpus > 32 {
        return Err(VmConfigError::Cpus(cpus));
    }
    Ok((mem, cpus))
}

fn cache_type(raw: Option<&str>) -> Result<CacheType, VmConfigError> {
    match raw {
        None | Some("Writeback") => Ok(CacheType::Writeback),
        Some("Unsafe") => Ok(CacheType::Unsafe),
        Some(other) => Err(VmConfigError::CacheType(other.to_string())),
    }
}
