// SPDX-License-Identifier: MIT
//! The QEMU microvm backend: boots the flake's kernel and rootfs with
//! `qemu-system-x86_64 -M microvm` and runs one call through the guest init `sci`.
//!
//! The guest channel is a virtio console port named `flake`, backed by a unix socket that
//! QEMU listens on; the kernel console goes to a log file, so no kernel or VMM message can
//! mix with the app's output. Hardware KVM is used only when asked for
//! (`FLAKE_QEMU_ACCEL=kvm`): some hosts expose a `/dev/kvm` that cannot run Linux guests,
//! and software emulation (TCG) works everywhere.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flake_agent::proto::{Call, ExitStatus, Frame, CHUNK};
use flakes::config::vm::VmFlake;

/// Environment variable choosing QEMU's accelerator (`tcg` by default).
pub const ACCEL_ENV: &str = "FLAKE_QEMU_ACCEL";

/// Errors of a QEMU run.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU could not be started.
    #[error("cannot start {}: {source}", qemu.display())]
    Start {
        /// The QEMU binary.
        qemu: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The guest never opened its channel or broke it.
    #[error("the VM of flake '{flake}' {what}; its console log is {}", log.display())]
    Guest {
        /// The flake.
        flake: String,
        /// What happened.
        what: String,
        /// Console log.
        log: PathBuf,
    },
}

/// One VM for one call.
#[derive(Debug)]
pub struct QemuCall<'a> {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The flake name.
    pub flake_name: &'a str,
    /// The flake.
    pub flake: &'a VmFlake,
    /// Private directory for the socket and the log.
    pub workdir: PathBuf,
    /// `FLAKE_QEMU_ACCEL`, if set.
    pub accel: Option<String>,
}

impl QemuCall<'_> {
    /// Boots the VM, runs `argv` in it with this process's stdio, and returns the app's status.
    pub fn run(&self, argv: Vec<Vec<u8>>) -> Result<ExitStatus, QemuError> {
        let socket = self.workdir.join("channel.sock");
        let log = self.workdir.join("console.log");
        let mut qemu = self.start(&socket, &log)?;
        let _ = std::fs::write(self.workdir.join(crate::PID_FILE), qemu.id().to_string());
        let result = self.call(&socket, &log, argv, &mut qemu);
        // A one-shot VM has nothing left to do once the exit status is in (its root is
        // read-only); stopping it now instead of waiting for the guest's own shutdown keeps
        // the launch as short as the raw boot.
        let _ = qemu.kill();
        let _ = qemu.wait();
        result
    }

    fn guest_error(&self, what: impl Into<String>, log: &Path) -> QemuError {
        QemuError::Guest {
            flake: self.flake_name.to_string(),
            what: what.into(),
            log: log.to_path_buf(),
        }
    }

    fn start(&self, socket: &Path, log: &Path) -> Result<Child, QemuError> {
        let runtime = &self.flake.runtime;
        let mut append: Vec<String> = runtime.boot_args.clone();
        append.extend(["ro".into(), "reboot=t".into(), "panic=-1".into()]);
        let mut command = Command::new(&self.qemu);
        command
            .args([
                "-M",
                "microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off",
            ])
            .args([
                "-accel",
                self.accel.as_deref().unwrap_or("tcg"),
                "-cpu",
                "max",
            ])
            .args([
                "-m",
                &runtime.mem_size_mib.to_string(),
                "-smp",
                &runtime.vcpu_count.to_string(),
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(&runtime.kernel)
            .args(["-append", &append.join(" ")])
            .arg("-drive")
            .arg(format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                runtime.rootfs.display()
            ))
            .args([
                "-device",
                "virtio-blk-device,drive=root",
                "-device",
                "virtio-serial-device",
            ])
            .arg("-chardev")
            .arg(format!(
                "socket,id=flake,path={},server=on,wait=off",
                socket.display()
            ))
            .args(["-device", "virtserialport,chardev=flake,name=flake"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(initrd) = &runtime.initrd {
            command.arg("-initrd").arg(initrd);
        }
        command.spawn().map_err(|source| QemuError::Start {
            qemu: self.qemu.clone(),
            source,
        })
    }

    fn call(
        &self,
        socket: &Path,
        log: &Path,
        argv: Vec<Vec<u8>>,
        qemu: &mut Child,
    ) -> Result<ExitStatus, QemuError> {
        let stream = self.connect(socket, log, qemu)?;
        let call = Call {
            argv,
            frames: true,
            ..Call::default()
        };
        let writer = Arc::new(Mutex::new(
            stream
                .try_clone()
                .map_err(|e| self.guest_error(e.to_string(), log))?,
        ));
        send(&writer, &Frame::Call(call))
            .map_err(|e| self.guest_error(format!("refused the call: {e}"), log))?;
        relay_stdin(Arc::clone(&writer));
        forward_signals(Arc::clone(&writer));
        let mut reader = std::io::BufReader::with_capacity(CHUNK + 8, stream);
        let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
        loop {
            let frame = Frame::read_from(&mut reader)
                .map_err(|e| self.guest_error(format!("broke the channel: {e}"), log))?;
            match frame {
                Some(Frame::Stdout(bytes)) => {
                    let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
                }
                Some(Frame::Stderr(bytes)) => {
                    let _ = stderr.write_all(&bytes);
                }
                Some(Frame::Error(message)) => eprintln!("firecracker-pilot: {message}"),
                Some(Frame::Exit(status)) => return Ok(status),
                Some(_) => {}
                None => return Err(self.guest_error("ended the call without an exit status", log)),
            }
        }
    }

    /// Connects to QEMU's channel socket; the guest side opens once `sci` runs.
    fn connect(
        &self,
        socket: &Path,
        log: &Path,
        qemu: &mut Child,
    ) -> Result<UnixStream, QemuError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(stream) = UnixStream::connect(socket) {
                return Ok(stream);
            }
            if let Ok(Some(status)) = qemu.try_wait() {
                return Err(
                    self.guest_error(format!("stopped before its channel opened ({status})"), log)
                );
            }
            if Instant::now() > deadline {
                return Err(self.guest_error("did not open its channel within 60 s", log));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn send(writer: &Mutex<UnixStream>, frame: &Frame) -> std::io::Result<()> {
    let mut stream = writer
        .lock()
        .map_err(|_| std::io::Error::other("writer poisoned"))?;
    stream.write_all(&frame.encode())
}

/// Copies this process's stdin into `Stdin` frames; EOF becomes the empty frame.
fn relay_stdin(writer: Arc<Mutex<UnixStream>>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = stdin.read(&mut buf).unwrap_or(0);
            if send(&writer, &Frame::Stdin(buf[..n].to_vec())).is_err() || n == 0 {
                break;
            }
        }
    });
}

/// Forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the app in the guest.
fn forward_signals(writer: Arc<Mutex<UnixStream>>) {
    use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
    else {
        return;
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let frame = Frame::Signal(u8::try_from(signal).unwrap_or(15));
            if send(&writer, &frame).is_err() {
                break;
            }
        }
    });
}
