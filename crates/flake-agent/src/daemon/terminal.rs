// SPDX-License-Identifier: MIT
//! A call with a terminal: the app runs on a pty whose master the agent relays.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcsetwinsize, Winsize};

use super::reaper::Reaper;
use super::session::{announce_acks, watch, Input, Writer};
use crate::command::app_command;
use crate::proto::{Call, Frame, WinSize, CHUNK};

/// How long output may keep coming after the app exited (background jobs holding the pty).
const DRAIN: Duration = Duration::from_millis(500);

/// Runs `call` on a new pty and relays it over the connection (`reader`, `writer`).
pub fn run(
    reader: impl Read + Send + 'static,
    writer: Writer,
    call: &Call,
    reaper: &Reaper,
) -> std::io::Result<()> {
    let (master, slave) = open_pty(call.size)?;
    announce_acks(&writer, call.flow)?;
    let spawned = reaper.spawn(|| {
        let mut command = app_command(call)?;
        command
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave.try_clone()?));
        controlling_terminal(&mut command);
        command.spawn()
    });
    drop(slave);
    let (pid, exit) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            writer.start_failed(call, &err);
            return Ok(());
        }
    };
    let output = relay_output(master.try_clone()?, writer.clone());
    let done = Arc::new(AtomicBool::new(false));
    watch(
        reader,
        pid,
        Arc::clone(&done),
        Some(Box::new(Master(master))),
        Some(writer.clone()),
        call.flow,
    );
    if let Ok(status) = exit.recv() {
        done.store(true, Ordering::SeqCst);
        let _ = output.recv_timeout(DRAIN);
        writer.send(&Frame::Exit(status))?;
    }
    Ok(())
}

fn open_pty(size: WinSize) -> std::io::Result<(File, File)> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let path = std::path::PathBuf::from(std::ffi::OsStr::new(&*name.to_string_lossy()));
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(i32::try_from(rustix::fs::OFlags::NOCTTY.bits()).unwrap_or(0))
        .open(path)?;
    let rows = if size.rows == 0 { 24 } else { size.rows };
    let cols = if size.cols == 0 { 80 } else { size.cols };
    let winsize = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    tcsetwinsize(&master, winsize)?;
    Ok((File::from(master), slave))
}

/// Makes the app a session leader with the pty as its controlling terminal, so that ^C,
/// job control and SIGWINCH work inside.
#[allow(unsafe_code)]
fn controlling_terminal(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes two system
    // calls (setsid, ioctl TIOCSCTTY on fd 0), both async-signal-safe; it allocates nothing
    // and touches no lock.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::io::stdin().as_fd())?;
            Ok(())
        });
    }
}

/// Copies the pty's output to the connection until the pty closes; the receiver fires then.
fn relay_output(mut master: File, writer: Writer) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.send(&Frame::Output(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(());
    });
    rx
}

/// The pty master as the destination of `Stdin` and `Resize` frames.
struct Master(File);

impl Input for Master {
    fn input(&mut self, bytes: &[u8]) {
        // EOF from the launcher's side is the terminal's end-of-file character.
        let bytes = if bytes.is_empty() { &[0x04][..] } else { bytes };
        let _ = self.0.write_all(bytes);
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        let winsize = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let _ = tcsetwinsize(&self.0, winsize);
    }
}
