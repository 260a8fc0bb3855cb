// SPDX-License-Identifier: MIT
//! QEMU's vsock device: `vhost-device-vsock`, a vhost-user virtio-vsock backend whose host
//! side is Firecracker's hybrid-vsock socket, so that calls into a QEMU VM go over the same
//! channel and the same code as under Firecracker ([`crate::vsock`]).
//!
//! The device is a process of its own, and it must live exactly as long as its VM: it
//! serves its socket forever otherwise, and a resume VM ends on its own (idle power-off)
//! with no launcher around to clean up. So the VMM starts it: between fork and exec, the
//! process that is about to become QEMU forks the device, which asks the kernel for a
//! SIGKILL when its parent ends (`PR_SET_PDEATHSIG`), then waits for the device's
//! vhost-user socket before it turns into QEMU (QEMU connects to it at start-up). QEMU
//! ending for any reason (power-off, `%remove`, `kill -9`, its launcher's death for a
//! one-shot VM) thus ends the device, and the device's listener can be checked to be the
//! VMM's own child ([`crate::vmm::served_by_vmm`]).
//!
//! Both sockets are named relative to the instance directory, the VMM's working
//! directory, so the longest instance names fit a socket address.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::vsock::{GUEST_CID, SOCKET};

/// The device program's name.
pub const PROGRAM: &str = "vhost-device-vsock";
/// The vhost-user socket the device listens on and QEMU connects to.
pub const DEVICE_SOCKET: &str = "vhost.sock";
/// How to get the device where it is missing.
pub const INSTALL_HINT: &str =
    "cargo install --locked vhost-device-vsock --version 0.3.0 (or the distribution's package)";
/// How long the device may take to listen, in milliseconds (a device that ends before is
/// noticed at once).
const START_WAIT_MS: u32 = 3000;

/// The device program: on `path`, or beside the running launcher (where a package installs
/// it next to the launchers).
pub fn find(path: &OsStr) -> Option<PathBuf> {
    flakes::process::resolve(PROGRAM, Some(path))
        .ok()
        .or_else(|| {
            let beside = std::env::current_exe().ok()?.with_file_name(PROGRAM);
            is_program(&beside).then_some(beside)
        })
}

fn is_program(path: &Path) -> bool {
    use rustix::fs::{access, Access};
    access(path, Access::EXEC_OK).is_ok() && path.is_file()
}

/// The QEMU QOM and device arguments that plug the device in: guest memory must be a
/// shared memory file, which the device maps.
pub fn qemu_args(mem_mib: u32) -> Vec<String> {
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem_mib}M,share=on"),
        "-chardev".into(),
        format!("socket,id=vhu,path={DEVICE_SOCKET}"),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vhu".into(),
    ]
}

/// The device's command line (argv, program first).
fn argv() -> [String; 4] {
    [
        PROGRAM.into(),
        format!("--guest-cid={GUEST_CID}"),
        format!("--socket={DEVICE_SOCKET}"),
        format!("--uds-path={SOCKET}"),
    ]
}

/// Makes the VMM `command` (working in the instance directory `dir`) start `program` as its
/// device, as the module doc says. The sockets a dead VM left are removed first (the device
/// refuses to bind over them, and the start-up wait would take them for the new ones).
pub fn attach(command: &mut Command, dir: &Path, program: &Path) -> std::io::Result<()> {
    for stale in [DEVICE_SOCKET, SOCKET] {
        match std::fs::remove_file(dir.join(stale)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    let program = c_string(program.as_os_str().as_bytes())?;
    let [a0, a1, a2, a3] = argv();
    let [a0, a1, a2, a3] = [
        c_string(a0.as_bytes())?,
        c_string(a1.as_bytes())?,
        c_string(a2.as_bytes())?,
        c_string(a3.as_bytes())?,
    ];
    let socket = c_string(DEVICE_SOCKET.as_bytes())?;
    // SAFETY: the closure runs in the child between fork and exec. It calls only getpid,
    // fork, prctl, getppid, execv, _exit, access, waitpid and nanosleep, all async-signal-safe, on
    // strings made before the spawn and a pointer array on its own stack; it allocates
    // nothing and takes no lock. The forked device process calls only prctl, getppid and
    // execv/_exit before it is replaced or ends.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            let vmm = libc::getpid();
            let argv = [
                a0.as_ptr(),
                a1.as_ptr(),
                a2.as_ptr(),
                a3.as_ptr(),
                std::ptr::null(),
            ];
            let device = libc::fork();
            match device {
                -1 => return Err(std::io::Error::last_os_error()),
                0 => {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() == vmm {
                        libc::execv(program.as_ptr(), argv.as_ptr());
                    }
                    libc::_exit(127)
                }
                _ => {}
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            for _ in 0..START_WAIT_MS {
                if libc::access(socket.as_ptr(), libc::F_OK) == 0 {
                    return Ok(());
                }
                if libc::waitpid(device, std::ptr::null_mut(), libc::WNOHANG) == device {
                    return Err(std::io::Error::from_raw_os_error(libc::ECHILD));
                }
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT))
        });
    }
    Ok(())
}

fn c_string(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a path with a NUL byte cannot be passed to a program",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_found_on_the_path_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join(PROGRAM);
        std::fs::write(&device, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&device, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(find(dir.path().as_os_str()), Some(device));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(find(empty.path().as_os_str()), None);
    }

    /// A stand-in device (a shell script that binds nothing but creates the socket file),
    /// started by a stand-in VMM (`sleep`): it is the VMM's child, and it dies with it.
    #[test]
    fn the_device_is_the_vmms_child_and_dies_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("device");
        let pid_file = dir.path().join("device.pid");
        std::fs::write(
            &device,
            format!(
                "#!/bin/sh\necho $$ > {}\n: > {DEVICE_SOCKET}\nexec sleep 60\n",
                pid_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&device, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut vmm = Command::new("sleep");
        vmm.arg("60").current_dir(dir.path());
        attach(&mut vmm, dir.path(), &device).unwrap();
        let mut vmm = vmm.spawn().unwrap();
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let id = crate::instance::VmmId::of(vmm.id()).unwrap();
        assert!(crate::instance::is_child(pid, &id));
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::instance::start_time(pid).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the device outlived its VMM"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_device_that_never_listens_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut vmm = Command::new("true");
        vmm.current_dir(dir.path());
        attach(&mut vmm, dir.path(), Path::new("/bin/false")).unwrap();
        let started = std::time::Instant::now();
        let err = vmm.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECHILD), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "noticed at once"
        );
    }
}
