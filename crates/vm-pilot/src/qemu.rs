// SPDX-License-Identifier: MIT
//! The QEMU microvm backend: `qemu-system-x86_64 -M microvm` with the flake's kernel and
//! rootfs, for hosts without Firecracker or without hardware KVM.
//!
//! The guest channel is a set of virtio console ports named `flake0`, `flake1`, ..., each
//! backed by a unix socket QEMU listens on (`channel-N.sock` in the instance directory);
//! one port carries one call at a time, so a resume VM gets several. A one-shot VM whose
//! guest init knows it uses the plain virtio console instead (the device without ports,
//! on `channel-0.sock`): it is ready as soon as the kernel has probed it. The kernel console
//! goes to a log file, so no kernel or VMM message can mix with the app's output. The
//! root drive is read-only; the overlay drive, when the flake has one, is the second disk
//! (`/dev/vdb`). KVM is used when the caller may open `/dev/kvm` and the CPU has hardware
//! virtualisation (`vmx` or `svm`): some hosts expose a `/dev/kvm` without it (a software
//! nested hypervisor) that cannot run Linux guests; everywhere else QEMU emulates the
//! guest (TCG). `FLAKE_QEMU_ACCEL=kvm|tcg` overrides the choice.
//!
//! A one-shot VM on the plain console can be saved and restored ([`crate::saved`]): a VM
//! started to be saved has QEMU's monitor (QMP) on `monitor.sock` in its private instance
//! directory, through which it migrates into the state file the launcher hands over; a
//! restored VM reads its state with `-incoming fd:N` from the open file.

mod qmp;

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use flakes::config::vm::{CacheType, VmFlake};

use crate::error::{Result, VmError};
use crate::vmm::{Plan, StateFile, Vmm};

/// Environment variable choosing QEMU's accelerator (`tcg` by default).
pub const ACCEL_ENV: &str = "FLAKE_QEMU_ACCEL";
/// The monitor socket's name in the instance directory.
const MONITOR: &str = "monitor.sock";

/// The name of guest channel `port`'s socket in the instance directory (QEMU binds it
/// there by name, its working directory: see [`crate::vmm::connect_unix`]).
fn channel_name(port: usize) -> String {
    format!("channel-{port}.sock")
}

/// Guest channel ports of a resume VM: how many calls it serves at once.
pub const RESUME_PORTS: usize = 4;

/// QEMU's microvm machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    /// The `qemu-system-x86_64` binary.
    pub binary: PathBuf,
    /// `FLAKE_QEMU_ACCEL`, if set.
    pub accel: Option<String>,
}

impl Qemu {
    /// The socket of guest channel `port`.
    pub fn channel(plan: &Plan, port: usize) -> PathBuf {
        plan.dir.join(channel_name(port))
    }

    /// The monitor socket of a VM that may be saved.
    pub fn monitor(plan: &Plan) -> PathBuf {
        plan.dir.join(MONITOR)
    }

    /// Starts `command`, the VMM of `plan`.
    fn spawn(&self, mut command: Command, plan: &Plan) -> Result<Child> {
        if !plan.guest.resume {
            crate::vmm::end_with_launcher(&mut command);
        }
        command.current_dir(&plan.dir);
        // Its own process group: a Ctrl-C on the caller's terminal is for the app (the
        // launcher forwards it), not for the VMM.
        // Serial mode keeps the caller's process group: the VMM reads the terminal.
        if plan.serial.is_none() {
            command
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(crate::vmm::create_log(&plan.vmm_log())?));
        }
        command.spawn().map_err(|source| VmError::Start {
            program: self.binary.clone(),
            source,
        })
    }

    /// The QEMU command line of `plan`.
    pub fn command(&self, flake: &VmFlake, plan: &Plan) -> Command {
        let runtime = &flake.runtime;
        let mut command = Command::new(&self.binary);
        command
            .args([
                "-M",
                "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off",
            ])
            .args([
                "-accel",
                self.accel.as_deref().unwrap_or_else(|| default_accel()),
                "-cpu",
                "max",
            ])
            .args(["-m", &runtime.mem_size_mib.to_string()])
            .args(["-smp", &runtime.vcpu_count.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-display",
                "none",
            ])
            .arg("-no-reboot");
        if plan.serial.is_some() {
            // Serial mode: the console is the caller's terminal (QEMU's own stdio).
            command.args([
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
            ]);
        } else {
            command
                .arg("-serial")
                .arg(format!("file:{}", plan.log().display()));
        }
        command.arg("-kernel").arg(&runtime.kernel).args([
            "-append",
            &plan
                .kernel_args(flake, if plan.console { "console" } else { "virtio" })
                .join(" "),
        ]);
        if let Some(initrd) = &runtime.initrd {
            command.arg("-initrd").arg(initrd);
        }
        drive(&mut command, "root", &runtime.rootfs, ",readonly=on");
        if let Some(overlay) = &plan.overlay {
            let cache = match runtime.cache_type {
                CacheType::Writeback => ",cache=writeback",
                CacheType::Unsafe => ",cache=unsafe",
            };
            drive(&mut command, "overlay", overlay, cache);
        }
        if let Some(tap) = &plan.tap {
            command
                .arg("-netdev")
                .arg(format!("tap,id=net0,ifname={tap},script=no,downscript=no"))
                .args(["-device", "virtio-net-device,netdev=net0"]);
        }
        if plan.serial.is_some() {
            return command;
        }
        if plan.console {
            command
                .args(["-device", "virtio-serial-device,max_ports=1"])
                .arg("-chardev")
                .arg(format!(
                    "socket,id=ch0,path={},server=on,wait=off",
                    channel_name(0)
                ))
                .args(["-device", "virtconsole,chardev=ch0"]);
            return command;
        }
        command.args(["-device", "virtio-serial-device"]);
        for port in 0..plan.ports.max(1) {
            command
                .arg("-chardev")
                .arg(format!(
                    "socket,id=ch{port},path={},server=on,wait=off",
                    channel_name(port)
                ))
                .arg("-device")
                .arg(format!("virtserialport,chardev=ch{port},name=flake{port}"));
        }
        command
    }
}

/// The first processor's model and feature flags from `/proc/cpuinfo`.
fn host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let wanted = ["vendor_id", "cpu family", "model", "model name", "flags"];
    info.lines()
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| {
            line.split(':')
                .next()
                .is_some_and(|key| wanted.contains(&key.trim()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `kvm` when hardware KVM is usable by the caller, else `tcg` (see the module doc).
/// Found out once per process: a launch builds its command line more than once (the
/// saved-state key is made from it too).
pub fn default_accel() -> &'static str {
    use rustix::fs::{access, Access};
    static ACCEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ACCEL.get_or_init(|| {
        let kvm = access("/dev/kvm", Access::READ_OK | Access::WRITE_OK).is_ok();
        let cpuinfo = std::fs::File::open("/proc/cpuinfo").ok();
        choose_accel(kvm, cpuinfo.map(std::io::BufReader::new))
    })
}

/// The accelerator for a host where `/dev/kvm` is (`kvm`) or is not usable, given its
/// `/proc/cpuinfo`: only the first processor's `flags` line is read.
fn choose_accel(kvm: bool, cpuinfo: Option<impl std::io::BufRead>) -> &'static str {
    let hardware = kvm
        && cpuinfo.is_some_and(|info| {
            info.lines()
                .map_while(std::result::Result::ok)
                .find(|line| line.starts_with("flags"))
                .is_some_and(|flags| {
                    flags
                        .split_ascii_whitespace()
                        .any(|f| f == "vmx" || f == "svm")
                })
        });
    if hardware {
        "kvm"
    } else {
        "tcg"
    }
}

fn drive(command: &mut Command, id: &str, file: &std::path::Path, options: &str) {
    command
        .arg("-drive")
        .arg(format!(
            "id={id},file={},format=raw,if=none{options}",
            file.display()
        ))
        .arg("-device")
        .arg(format!("virtio-blk-device,drive={id}"));
}

impl Vmm for Qemu {
    fn plain_console(&self) -> bool {
        true
    }

    fn ports(&self, resume: bool) -> usize {
        if resume {
            RESUME_PORTS
        } else {
            1
        }
    }

    fn start(&self, flake: &VmFlake, plan: &Plan) -> Result<Child> {
        self.spawn(self.command(flake, plan), plan)
    }

    fn connect(&self, plan: &Plan, port: usize) -> std::io::Result<UnixStream> {
        crate::vmm::connect_vmm(&plan.dir, &channel_name(port))
    }

    fn saves_states(&self) -> bool {
        true
    }

    fn state_key(&self, flake: &VmFlake, plan: &Plan) -> Option<String> {
        // One call on the plain console, no network: a VM with nothing of the host in it
        // but its files.
        if !plan.console || plan.guest.resume || plan.tap.is_some() || plan.serial.is_some() {
            return None;
        }
        let dir = plan.dir.to_string_lossy();
        let mut material = vec![
            self.binary.to_string_lossy().into_owned(),
            format!("overlay {:?}", flake.runtime.overlay_size),
        ];
        material.extend(
            self.command(flake, plan)
                .get_args()
                .map(|arg| arg.to_string_lossy().replace(&*dir, "%i")),
        );
        if self.accel.as_deref().unwrap_or_else(|| default_accel()) == "kvm" {
            // `-cpu max` under KVM is the host's CPU: a state needs the same features.
            material.push(host_cpu());
        }
        let runtime = &flake.runtime;
        let mut files = vec![self.binary.as_path(), &runtime.kernel, &runtime.rootfs];
        files.extend(runtime.initrd.as_deref());
        crate::saved::key(&material, &files)
    }

    fn start_with_state(&self, flake: &VmFlake, plan: &Plan, state: &StateFile) -> Result<Child> {
        let mut command = self.command(flake, plan);
        // Kept open until the VMM has started; above the three standard descriptors, which
        // the spawn sets up before the child runs `inherit`.
        let mut above_stdio = None;
        match state {
            StateFile::Restore(file) => {
                use std::os::fd::AsRawFd;
                let mut fd = file.as_raw_fd();
                if fd <= 2 {
                    let high = rustix::io::fcntl_dupfd_cloexec(file, 3)
                        .map_err(|e| plan.guest_error(format!("cannot pass its state: {e}")))?;
                    fd = high.as_raw_fd();
                    above_stdio = Some(high);
                }
                command.arg("-incoming").arg(format!("fd:{fd}"));
                inherit(&mut command, fd);
            }
            StateFile::Save => {
                command
                    .arg("-qmp")
                    .arg(format!("unix:{MONITOR},server=on,wait=off"));
            }
        }
        let started = self.spawn(command, plan);
        drop(above_stdio);
        started
    }

    fn save_state(&self, plan: &Plan, to: &std::fs::File) -> Result<Result<(), String>> {
        qmp::save(&Self::monitor(plan), to).map_err(|what| plan.guest_error(what))
    }
}

/// Lets the VMM started by `command` inherit descriptor `fd` (open in this process until
/// the VMM has started).
fn inherit(command: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and makes one fcntl(2)
    // call, which is async-signal-safe, on `fd`, which the parent keeps open across the
    // spawn (so the child has it too); it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(Into::into)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::GuestSettings;

    #[test]
    fn kvm_only_with_the_device_and_hardware_virtualisation() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let amd = "flags\t\t: fpu svm\n";
        let nested = "processor\t: 0\nflags\t\t: fpu vme sse hypervisor\n";
        assert_eq!(choose_accel(true, Some(intel.as_bytes())), "kvm");
        assert_eq!(choose_accel(true, Some(amd.as_bytes())), "kvm");
        assert_eq!(choose_accel(true, Some(nested.as_bytes())), "tcg");
        assert_eq!(choose_accel(false, Some(intel.as_bytes())), "tcg");
        assert_eq!(choose_accel(true, None::<&[u8]>), "tcg");
        // Only the first processor counts; a "vmx" elsewhere in the text does not.
        let later = "flags\t\t: fpu\nbugs\t\t: vmx\nflags\t\t: vmx\n";
        assert_eq!(choose_accel(true, Some(later.as_bytes())), "tcg");
    }

    #[test]
    fn a_one_shot_vm_on_the_plain_console_has_no_ports() {
        let flake = crate::firecracker::tests::flake(false, "/k".into(), "/r".into());
        let plan = crate::vmm::tests::plan();
        let qemu = Qemu {
            binary: "qemu-system-x86_64".into(),
            accel: None,
        };
        let args: Vec<String> = qemu
            .command(&flake, &plan)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for needle in [
            "sci_channel=console",
            "-device virtio-serial-device,max_ports=1",
            "socket,id=ch0,path=channel-0.sock,server=on,wait=off",
            "-device virtconsole,chardev=ch0",
        ] {
            assert!(joined.contains(needle), "{needle} missing in {joined}");
        }
        assert!(!joined.contains("virtserialport"), "{joined}");
    }

    #[test]
    fn command_line_of_a_resume_vm_with_overlay_and_tap() {
        let flake = crate::firecracker::tests::flake(true, "/k".into(), "/r".into());
        let plan = Plan {
            flake: "app".into(),
            dir: "/i".into(),
            overlay: Some("/i/overlay.ext4".into()),
            ports: 2,
            tap: Some("tap-app".into()),
            guest: GuestSettings {
                resume: true,
                idle: Some(60),
                debug: false,
                resync: false,
            },
            serial: None,
            console: false,
        };
        let qemu = Qemu {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            accel: None,
        };
        let command = qemu.command(&flake, &plan);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        let accel = format!("-accel {}", default_accel());
        for needle in [
            accel.as_str(),
            "-serial file:/i/console.log",
            "console=ttyS0 quiet ro panic=-1 reboot=t overlay_root=/dev/vdb sci_channel=virtio sci_ports=2 sci_resume=1 sci_idle=60",
            "id=root,file=/r,format=raw,if=none,readonly=on",
            "id=overlay,file=/i/overlay.ext4,format=raw,if=none,cache=unsafe",
            "tap,id=net0,ifname=tap-app,script=no,downscript=no",
            "socket,id=ch1,path=channel-1.sock,server=on,wait=off",
            "virtserialport,chardev=ch1,name=flake1",
        ] {
            assert!(joined.contains(needle), "{needle} missing in {joined}");
        }
        let root = joined.find("drive=root").unwrap();
        let overlay = joined.find("drive=overlay").unwrap();
        assert!(root < overlay, "the overlay is the second disk");
    }
}
