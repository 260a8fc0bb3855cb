// SPDX-License-Identifier: MIT
//! Running one call in frame mode: the app's stdin, stdout and stderr travel as frames over
//! any byte channel (a VM's virtio console or vsock), because descriptors cannot cross into
//! a guest. Used by the guest init `sci`.
//!
//! Output is relayed in chunks as it comes (not byte by byte, as the original guest init
//! did), stdin EOF is a half-close that reaches the app as EOF, and the call ends with the
//! app's exit status after all of its output.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::proto::{Call, ExitStatus, Frame, CHUNK};

/// A shared write half.
pub type Sink<W> = Arc<Mutex<W>>;

fn send<W: Write>(sink: &Sink<W>, frame: &Frame) -> std::io::Result<()> {
    let mut w = sink
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    w.write_all(&frame.encode())?;
    w.flush()
}

/// Runs `command` for `call`, reading control frames from `reader` and writing output and
/// the exit status to `sink`. Returns the app's exit status.
pub fn run<R, W>(
    mut command: Command,
    call: &Call,
    reader: R,
    sink: &Sink<W>,
) -> std::io::Result<ExitStatus>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let (message, code) = crate::command::start_failure(call, &err);
            send(sink, &Frame::Error(message))?;
            let status = ExitStatus::Exited(code);
            send(sink, &Frame::Exit(status))?;
            return Ok(status);
        }
    };
    let pumps = [
        child
            .stdout
            .take()
            .map(|out| pump(out, Arc::clone(sink), Frame::Stdout)),
        child
            .stderr
            .take()
            .map(|err| pump(err, Arc::clone(sink), Frame::Stderr)),
    ];
    feed(reader, child.stdin.take(), child.id());
    let status = wait(&mut child)?;
    for pump in pumps.into_iter().flatten() {
        let _ = pump.join();
    }
    send(sink, &Frame::Exit(status))?;
    Ok(status)
}

fn wait(child: &mut Child) -> std::io::Result<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait()?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Exited(u8::try_from(code & 0xff).unwrap_or(255)),
        (None, signal) => ExitStatus::Signaled(u8::try_from(signal.unwrap_or(9)).unwrap_or(9)),
    })
}

/// Copies one output stream of the app into frames made by `frame`.
fn pump<R, W>(
    mut from: R,
    sink: Sink<W>,
    frame: fn(Vec<u8>) -> Frame,
) -> std::thread::JoinHandle<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if send(&sink, &frame(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Applies `Stdin` and `Signal` frames from the launcher while the app runs.
fn feed<R: Read + Send + 'static>(reader: R, stdin: Option<ChildStdin>, pid: u32) {
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(reader);
        let mut stdin = stdin;
        while let Ok(Some(frame)) = Frame::read_from(&mut reader) {
            match frame {
                Frame::Stdin(bytes) if bytes.is_empty() => stdin = None,
                Frame::Stdin(bytes) => {
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(&bytes).is_err() {
                            stdin = None;
                        }
                    }
                }
                Frame::Signal(signal) => {
                    let pid = i32::try_from(pid)
                        .ok()
                        .and_then(rustix::process::Pid::from_raw);
                    if let (Some(pid), Some(sig)) = (
                        pid,
                        rustix::process::Signal::from_named_raw(i32::from(signal)),
                    ) {
                        let _ = rustix::process::kill_process(pid, sig);
                    }
                }
                _ => {}
            }
        }
    });
}
