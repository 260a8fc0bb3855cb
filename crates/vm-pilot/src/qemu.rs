// SPDX-License-Identifier: MIT
//! The QEMU microvm backend: `qemu-system-x86_64 -M microvm` with the flake's kernel and
//! rootfs, for hosts without Firecracker or without hardware KVM.
//!
//! The guest channel ([`Channel`]) is the plain virtio console for the one call of a
//! one-shot VM whose guest init knows it (on `channel-0.sock`: ready as soon as the kernel
//! has probed it, and the one channel a saved state can carry), and otherwise a set of
//! virtio console ports named `flake0`, `flake1`, ..., each backed by a unix socket QEMU
//! listens on (`channel-N.sock`), one call per port at a time. `FLAKE_QEMU_CHANNEL=vsock`
//! puts every call on vsock instead, through `vhost-device-vsock` ([`device`]: the same
//! hybrid vsock as Firecracker's, so calls take the same code as there); it is not the
//! default because warm calls measured slower over it here, and the device process fails
//! for good when a host connection closes before the guest took it. The kernel console
//! goes to a log file, so no kernel or VMM message can mix with the app's output.
//! The root drive is read-only; the overlay drive, when the flake has one, is the second disk
//! (`/dev/vdb`). KVM is used when the caller may open `/dev/kvm` and the CPU has hardware
//! virtualisation (`vmx` or `svm`): some hosts expose a `/dev/kvm` without it (a software
//! nested hypervisor) that cannot run Linux guests; everywhere else QEMU emulates the
//! guest (TCG). `FLAKE_QEMU_ACCEL=kvm|tcg` overrides the choice.
//!
//! A one-shot VM on the plain console can be saved and restored ([`crate::saved`]): a VM
//! started to be saved has QEMU's monitor (QMP) on `monitor.sock` in its private instance
//! directory, through which it migrates into the state file the launcher hands over; a
//! restored VM reads its state with `-incoming fd:N` from the open file.

pub mod device;
mod qmp;

pub use qmp::{QmpError, SaveError};

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use flakes::config::vm::{CacheType, VmFlake};

use crate::error::{Result, VmError};
use crate::vmm::{Channel, InitCan, Plan, Saved, StateFile, Vmm};

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

/// Environment variable choosing QEMU's guest channel (see the module doc).
pub const CHANNEL_ENV: &str = "FLAKE_QEMU_CHANNEL";

/// Which guest channels QEMU VMs use ([`CHANNEL_ENV`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelChoice {
    /// The console for one-shot calls whose init knows it, virtio console ports for the
    /// rest: measured faster than vsock under QEMU, and no device process to break.
    #[default]
    Virtio,
    /// vsock for every call, through `vhost-device-vsock` (images whose init announces
    /// itself; others keep to the console and ports).
    Vsock,
}

/// A value of [`CHANNEL_ENV`] that names no guest channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{CHANNEL_ENV}={value:?} is not a guest channel: use virtio (the default) or vsock")]
pub struct ChannelError {
    /// The value given.
    pub value: String,
}

impl ChannelChoice {
    /// The choice `value` of [`CHANNEL_ENV`] names, or the error that says what it may be.
    pub fn parse(value: &str) -> std::result::Result<Self, ChannelError> {
        match value {
            "" | "virtio" => Ok(ChannelChoice::Virtio),
            "vsock" => Ok(ChannelChoice::Vsock),
            other => Err(ChannelError {
                value: other.to_string(),
            }),
        }
    }
}

/// QEMU's microvm machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    /// The `qemu-system-x86_64` binary.
    pub binary: PathBuf,
    /// `FLAKE_QEMU_ACCEL`, if set.
    pub accel: Option<String>,
    /// `FLAKE_QEMU_CHANNEL`.
    pub channel: ChannelChoice,
    /// `vhost-device-vsock`, where it is installed ([`device::find`]).
    pub device: Option<PathBuf>,
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
        if plan.channel == Channel::Vsock && plan.serial.is_none() {
            self.attach_device(&mut command, plan)?;
        }
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
        command
            .spawn()
            .map_err(|source| self.start_error(plan, source))
    }

    /// Has the VMM `command` start the vsock device of `plan` as its child.
    fn attach_device(&self, command: &mut Command, plan: &Plan) -> Result<()> {
        let Some(program) = &self.device else {
            return Err(VmError::NoVsockDevice {
                flake: plan.flake.clone(),
                install: device::INSTALL_HINT,
                channel: CHANNEL_ENV,
            });
        };
        device::attach(command, &plan.dir, program).map_err(crate::error::io(&plan.dir))
    }

    /// What a failed start of the VMM of `plan` (`source`) tells the caller: the vsock
    /// device's start-up failures name the device.
    fn start_error(&self, plan: &Plan, source: std::io::Error) -> VmError {
        let device = self
            .device
            .as_ref()
            .filter(|_| plan.channel == Channel::Vsock);
        let why = match source.raw_os_error() {
            Some(libc::ECHILD) => "ended before it served the VM",
            Some(libc::ETIMEDOUT) => "did not serve the VM in time",
            _ => "",
        };
        match device {
            Some(program) if !why.is_empty() => plan.guest_error(format!(
                "could not start: its vsock device {} {why}",
                program.display()
            )),
            _ => VmError::Start {
                program: self.binary.clone(),
                source,
            },
        }
    }

    /// The QEMU command line of `plan`.
    pub fn command(&self, flake: &VmFlake, plan: &Plan) -> Command {
        let runtime = &flake.runtime;
        let vsock = plan.channel == Channel::Vsock && plan.serial.is_none();
        let mut machine = String::from("microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off");
        if vsock {
            // The device maps the guest's memory: a shared memory file.
            machine.push_str(",memory-backend=mem");
        }
        let mut command = Command::new(&self.binary);
        command
            .args(["-M", &machine])
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
        command
            .arg("-kernel")
            .arg(&runtime.kernel)
            .args(["-append", &plan.kernel_args(flake).join(" ")]);
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
        let ports = match plan.channel {
            Channel::Vsock => {
                command.args(device::qemu_args(runtime.mem_size_mib));
                return command;
            }
            Channel::Ports(ports) => ports,
            Channel::Console => 0,
        };
        if ports == 0 {
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
        for port in 0..ports {
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
    fn channel(&self, resume: bool, init: InitCan) -> Channel {
        // vsock without the device fails at start, saying what to install. An init that
        // does not announce itself cannot have vsock here (see crate::vsock).
        if init.announce && self.channel == ChannelChoice::Vsock {
            Channel::Vsock
        } else if !resume && init.console {
            Channel::Console
        } else if resume {
            Channel::Ports(RESUME_PORTS)
        } else {
            Channel::Ports(1)
        }
    }

    fn start(&self, flake: &VmFlake, plan: &Plan) -> Result<Child> {
        self.spawn(self.command(flake, plan), plan)
    }

    fn connect(&self, plan: &Plan, port: usize) -> std::io::Result<UnixStream> {
        match plan.channel {
            Channel::Vsock => crate::vsock::connect(&plan.dir),
            _ => crate::vmm::connect_vmm(&plan.dir, &channel_name(port)),
        }
    }

    fn saves_states(&self) -> bool {
        true
    }

    fn state_key(&self, flake: &VmFlake, plan: &Plan) -> Option<String> {
        // One call on the plain console, no network: a VM with nothing of the host in it
        // but its files.
        let console = plan.channel == Channel::Console;
        if !console || plan.guest.resume || plan.tap.is_some() || plan.serial.is_some() {
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

    fn save_state(&self, plan: &Plan, to: &std::fs::File) -> Result<Saved> {
        match qmp::save(&Self::monitor(plan), to) {
            Ok(()) => Ok(Saved::Saved),
            Err(SaveError::NotSaved(why)) => Ok(Saved::Not(why.into())),
            Err(SaveError::Stuck(source)) => Err(VmError::Stuck {
                flake: plan.flake.clone(),
                source,
            }),
        }
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

    fn qemu(device: Option<&str>) -> Qemu {
        Qemu {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            accel: None,
            channel: ChannelChoice::Virtio,
            device: device.map(PathBuf::from),
        }
    }

    #[test]
    fn vsock_only_when_chosen_and_the_init_announces_itself() {
        let virtio = qemu(Some("/usr/bin/vhost-device-vsock"));
        let vsock = Qemu {
            channel: ChannelChoice::Vsock,
            ..virtio.clone()
        };
        let can = |console, announce| InitCan { console, announce };
        let ports = Channel::Ports(RESUME_PORTS);
        // (resume, init) for: the default, vsock chosen.
        let cases = [
            (false, can(true, true), [Channel::Console, Channel::Vsock]),
            (false, can(false, true), [Channel::Ports(1), Channel::Vsock]),
            (true, can(true, true), [ports, Channel::Vsock]),
            // An init that does not announce itself never gets vsock under QEMU.
            (true, can(true, false), [ports, ports]),
            (
                false,
                can(true, false),
                [Channel::Console, Channel::Console],
            ),
        ];
        for (resume, init, want) in cases {
            let got = [virtio.channel(resume, init), vsock.channel(resume, init)];
            assert_eq!(got, want, "resume {resume}, {init:?}");
        }
        // vsock without the device: the start says what to install.
        let missing = Qemu {
            device: None,
            ..vsock
        };
        let mut command = Command::new("true");
        let err = missing
            .attach_device(&mut command, &crate::vmm::tests::plan())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cargo install --locked vhost-device-vsock"),
            "{err}"
        );
        assert_eq!(ChannelChoice::parse("").unwrap(), ChannelChoice::Virtio);
        let bad = ChannelChoice::parse("ports").unwrap_err().to_string();
        assert!(
            bad.contains("FLAKE_QEMU_CHANNEL") && bad.contains("virtio (the default) or vsock"),
            "{bad}"
        );
    }

    #[test]
    fn a_vsock_vm_has_shared_memory_and_the_vhost_user_device_and_no_ports() {
        let flake = crate::firecracker::tests::flake(true, "/k".into(), "/r".into());
        let plan = Plan {
            channel: Channel::Vsock,
            ..crate::vmm::tests::plan()
        };
        let joined: Vec<String> = qemu(Some("/d"))
            .command(&flake, &plan)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
        for needle in [
            "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off,memory-backend=mem",
            "-m 128",
            "memory-backend-memfd,id=mem,size=128M,share=on",
            "-chardev socket,id=vhu,path=vhost.sock",
            "-device vhost-user-vsock-device,chardev=vhu",
            "sci_channel=vsock",
        ] {
            assert!(joined.contains(needle), "{needle} missing in {joined}");
        }
        assert!(!joined.contains("virtio-serial"), "{joined}");
    }

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
        let qemu = qemu(None);
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
            channel: Channel::Ports(2),
            announces: false,
            tap: Some("tap-app".into()),
            guest: GuestSettings {
                resume: true,
                idle: Some(60),
                debug: false,
                resync: false,
            },
            serial: None,
        };
        let command = qemu(None).command(&flake, &plan);
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
