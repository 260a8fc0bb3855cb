// SPDX-License-Identifier: MIT
//! The Firecracker VMM configuration of an instance, built from typed structs (the original
//! patched a JSON template by hand, which let a `"` in an argument reach the kernel command
//! line unescaped).
//!
//! The JSON is what `firecracker --no-api --config-file FILE` reads: `boot-source`, `drives`
//! (the read-only rootfs, and the writable overlay when the flake has one), `machine-config`,
//! `network-interfaces` (only when the flake has a network), `vsock` (the guest channel; the
//! host side is the unix socket `uds_path`, per Firecracker's convention), and `logger`
//! (to a file, so VMM messages never mix with the app's output).

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use flakes::config::vm::{CacheType, VmFlake};
use serde::Serialize;

use crate::error::{Result, VmError};
use crate::vmm::{create_log, Channel, InitCan, Plan, Vmm};
use crate::vsock::GUEST_CID;

/// A complete VMM configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmmConfig {
    /// Kernel, initrd and command line.
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    /// Block devices.
    pub drives: Vec<Drive>,
    /// CPUs and memory.
    #[serde(rename = "machine-config")]
    pub machine: MachineConfig,
    /// Network interfaces (empty without network).
    #[serde(rename = "network-interfaces", skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<NetworkInterface>,
    /// The guest channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// Where the VMM logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
}

/// `boot-source`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootSource {
    /// Kernel (ELF vmlinux).
    pub kernel_image_path: PathBuf,
    /// Initrd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line.
    pub boot_args: String,
}

/// One entry of `drives`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drive {
    /// Identifier.
    pub drive_id: String,
    /// Image file.
    pub path_on_host: PathBuf,
    /// The root device.
    pub is_root_device: bool,
    /// Read-only.
    pub is_read_only: bool,
    /// `Writeback` or `Unsafe`.
    pub cache_type: &'static str,
}

/// `machine-config`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineConfig {
    /// CPUs.
    pub vcpu_count: u8,
    /// Memory in MiB.
    pub mem_size_mib: u32,
}

/// One entry of `network-interfaces`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkInterface {
    /// Guest interface id.
    pub iface_id: String,
    /// Host TAP device.
    pub host_dev_name: String,
}

/// `vsock`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vsock {
    /// Guest context id.
    pub guest_cid: u32,
    /// Host unix socket.
    pub uds_path: PathBuf,
}

/// `logger`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logger {
    /// Log file (must exist).
    pub log_path: PathBuf,
    /// Level.
    pub level: &'static str,
}

/// Per-instance host resources the configuration refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePaths {
    /// Writable overlay image, when the flake has an overlay.
    pub overlay: Option<PathBuf>,
    /// Host side of the guest channel; a relative path is relative to the VMM's working
    /// directory (the instance directory, see [`crate::vmm::connect_unix`]).
    pub vsock: PathBuf,
    /// VMM log file.
    pub log: PathBuf,
    /// TAP device, when the flake has a network.
    pub tap: Option<String>,
}

impl VmmConfig {
    /// The configuration of `flake` with `extra_args` appended to its kernel command line.
    pub fn new(flake: &VmFlake, paths: &InstancePaths, extra_args: &[String]) -> Self {
        let runtime = &flake.runtime;
        let mut drives = vec![Drive {
            drive_id: "rootfs".into(),
            path_on_host: runtime.rootfs.clone(),
            is_root_device: true,
            is_read_only: true,
            cache_type: "Writeback",
        }];
        if let Some(overlay) = &paths.overlay {
            drives.push(Drive {
                drive_id: "overlay".into(),
                path_on_host: overlay.clone(),
                is_root_device: false,
                is_read_only: false,
                cache_type: match runtime.cache_type {
                    CacheType::Writeback => "Writeback",
                    CacheType::Unsafe => "Unsafe",
                },
            });
        }
        let network = match (&paths.tap, runtime.network) {
            (Some(tap), true) => vec![NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: tap.clone(),
            }],
            _ => Vec::new(),
        };
        let boot_args: Vec<&str> = runtime
            .boot_args
            .iter()
            .chain(extra_args)
            .map(String::as_str)
            .collect();
        VmmConfig {
            boot_source: BootSource {
                kernel_image_path: runtime.kernel.clone(),
                initrd_path: runtime.initrd.clone(),
                boot_args: boot_args.join(" "),
            },
            drives,
            machine: MachineConfig {
                vcpu_count: runtime.vcpu_count,
                mem_size_mib: runtime.mem_size_mib,
            },
            network,
            vsock: Some(Vsock {
                guest_cid: GUEST_CID,
                uds_path: paths.vsock.clone(),
            }),
            logger: Some(Logger {
                log_path: paths.log.clone(),
                level: "Warning",
            }),
        }
    }

    /// Writes the configuration as JSON to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// Firecracker, started with `--no-api --config-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firecracker {
    /// The `firecracker` binary.
    pub binary: PathBuf,
}

impl Firecracker {
    /// Host paths of `plan` as the configuration names them.
    pub fn paths(plan: &Plan) -> InstancePaths {
        InstancePaths {
            overlay: plan.overlay.clone(),
            vsock: crate::vsock::SOCKET.into(),
            log: plan.vmm_log(),
            tap: plan.tap.clone(),
        }
    }
}

impl Vmm for Firecracker {
    fn channel(&self, _resume: bool, _init: InitCan) -> Channel {
        Channel::Vsock
    }

    fn start(&self, flake: &VmFlake, plan: &Plan) -> Result<Child> {
        let paths = Self::paths(plan);
        create_log(&paths.log)?;
        let console = create_log(&plan.log())?;
        let config_path = plan.dir.join("vm.json");
        VmmConfig::new(flake, &paths, &plan.instance_args())
            .write(&config_path)
            .map_err(crate::error::io(&config_path))?;
        let mut command = Command::new(&self.binary);
        command.current_dir(&plan.dir);
        if !plan.guest.resume {
            crate::vmm::end_with_launcher(&mut command);
        }
        // The guest's serial console is Firecracker's stdout: it goes to the console log,
        // never to the caller. Its own group keeps a Ctrl-C meant for the app away from it.
        command
            .arg("--no-api")
            .arg("--config-file")
            .arg(&config_path)
            .stderr(Stdio::from(create_log(&plan.dir.join("vmm.stderr"))?));
        // Serial mode keeps the caller's process group and stdio: the console is the
        // caller's terminal.
        if plan.serial.is_none() {
            command
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::from(console));
        }
        command.spawn().map_err(|source| VmError::Start {
            program: self.binary.clone(),
            source,
        })
    }

    fn connect(&self, plan: &Plan, _port: usize) -> std::io::Result<UnixStream> {
        crate::vsock::connect(&plan.dir)
    }
}

#[cfg(test)]
pub(crate) mod tests;
