// SPDX-License-Identifier: MIT
//! Serving calls over the guest channel until the VM should end.
//!
//! A one-shot VM serves one call; a resume VM serves calls (several at once, one per port
//! or vsock connection) until a launcher sends `Shutdown` or no call came for the idle
//! timeout. Each call runs as in a container (`flake_agent::framed`): streams as frames, a
//! pty when asked for, the exit status last.
//!
//! A vsock connection is one call. A virtio port has no connections, so its one reader
//! splits the stream: a `Call` (or `Shutdown`) frame starts the next call and ends the one
//! before (its caller is gone), other frames go to the running call, and the host hanging
//! up ends it; frames before the first `Call` are the rest of an earlier, ended call.

use std::io::{BufReader, Read};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flake_agent::daemon::reaper::Reaper;
use flake_agent::daemon::Writer;
use flake_agent::framed;
use flake_agent::proto::{ExitStatus, Frame, ProtoError, CHUNK};

use crate::cmdline::{BootSettings, Channel, VSOCK_PORT};
use crate::port::{self, Port, PortReader};

/// How long a VM that decided to power off for idleness still answers calls (refusing them).
const CLOSING_GRACE: Duration = Duration::from_millis(300);
/// How long a one-shot VM waits for its call.
const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The one call of a one-shot VM is done.
    Done,
    /// A launcher asked for the VM to end.
    Shutdown,
    /// No call for the idle timeout.
    Idle,
}

/// Serves calls as `settings` say; returns when the VM should end.
pub fn serve(settings: &BootSettings) -> Result<End, String> {
    if settings.channel == Channel::Console {
        // One call; the console cannot carry more (its host cannot reconnect).
        let console = crate::console::open(Duration::from_secs(10))?;
        crate::debug::log(|| "console open".to_string());
        crate::oneshot::serve(console, FIRST_CALL_TIMEOUT)?;
        return Ok(End::Done);
    }
    let (end_tx, end_rx) = channel();
    let activity = Arc::new(Activity::new());
    let server = Server {
        ports: settings.ports,
        resume: settings.resume,
        end: end_tx.clone(),
        activity: Arc::clone(&activity),
        reaper: Reaper::start(),
    };

    match (settings.resume, settings.idle) {
        (true, Some(idle)) => watch_idle(activity, idle, end_tx),
        (true, None) => {}
        // A launcher killed while the VM booted never calls: do not wait for it forever.
        (false, _) => watch_idle(activity, FIRST_CALL_TIMEOUT, end_tx),
    }
    match settings.channel {
        Channel::Virtio => serve_ports(server)?,
        Channel::Vsock => serve_vsock(server)?,
        Channel::Console => {}
    }
    let end = end_rx
        .recv()
        .map_err(|_| "every guest channel closed".to_string())?;
    if end == End::Idle {
        // A call that came as the VM decided to power off is refused: the refusal must
        // reach its launcher before the VM is gone.
        std::thread::sleep(CLOSING_GRACE);
    }
    Ok(end)
}

/// What every connection handler shares.
#[derive(Debug, Clone)]
struct Server {
    ports: usize,
    resume: bool,
    end: Sender<End>,
    activity: Arc<Activity>,
    reaper: Arc<Reaper>,
}

impl Server {
    /// Handles one vsock connection (one call); returns false when serving must stop.
    fn connection<R>(&self, reader: R, writer: Writer) -> bool
    where
        R: Read + Send + 'static,
    {
        let mut reader = BufReader::with_capacity(CHUNK + 8, reader);
        loop {
            let frame = Frame::read_from(&mut reader);
            crate::debug::log(|| {
                format!(
                    "connection frame: {:?}",
                    frame.as_ref().map(|f| f.as_ref().map(kind))
                )
            });
            match frame {
                Ok(Some(Frame::Call(call))) => return self.run_call(&call, reader, writer),
                Ok(Some(Frame::Shutdown)) => {
                    let _ = writer.send(&Frame::Exit(ExitStatus::Exited(0)));
                    let _ = self.end.send(End::Shutdown);
                    return false;
                }
                Ok(Some(_)) => {}
                Ok(None) => return true,
                // A newer launcher's frame, read whole.
                Err(ProtoError::UnknownKind { .. }) => {}
                Err(err @ ProtoError::Version { .. }) => {
                    writer.fail(&format!("sci: {err}"), 125);
                    return true;
                }
                Err(_) => return true,
            }
        }
    }
}

impl Server {
    /// Runs one call and reports whether serving goes on (a one-shot VM serves one).
    fn run_call(
        &self,
        call: &flake_agent::proto::Call,
        reader: impl Read + Send + 'static,
        writer: Writer,
    ) -> bool {
        let Some(busy) = self.activity.begin() else {
            // Refused whole, never cut off: nothing of the call has run, and the launcher
            // may start the VM again and repeat it.
            let _ = writer.send(&Frame::Closing);
            return false;
        };
        crate::debug::log(|| "call starts".to_string());
        let result = framed::run(call, reader, writer, &self.reaper);
        crate::debug::log(|| format!("call ended: {result:?}"));
        drop(busy);
        if !self.resume {
            // The exit status may still be on its way (vsock sends asynchronously): the VM
            // ends when the host hangs up (it stops the VMM itself, normally), or soon after.
            let end = self.end.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                let _ = end.send(End::Done);
            });
        }
        self.resume
    }

    /// Reads the frames of a port until its host hangs up; false when serving must stop.
    fn port_connection(&self, port: &Arc<Port>) -> bool {
        let mut reader = BufReader::with_capacity(CHUNK + 8, PortReader(Arc::clone(port)));
        // The control frames of the running call, if one runs.
        let mut current: Option<Sender<Vec<u8>>> = None;
        let mut served = false;
        self.activity.touch();
        let more = loop {
            let frame = Frame::read_from(&mut reader);
            crate::debug::log(|| {
                format!(
                    "port frame: {:?}",
                    frame.as_ref().map(|f| f.as_ref().map(kind))
                )
            });
            match frame {
                Ok(Some(Frame::Call(call))) => {
                    drop(current.take());
                    let (tx, rx) = channel();
                    current = Some(tx);
                    let writer = Writer::new(port.writer());
                    let server = self.clone();
                    served = true;
                    std::thread::spawn(move || server.run_call(&call, Frames::new(rx), writer));
                }
                Ok(Some(Frame::Shutdown)) => {
                    drop(current.take());
                    let _ = Writer::new(port.writer()).send(&Frame::Exit(ExitStatus::Exited(0)));
                    let _ = self.end.send(End::Shutdown);
                    break false;
                }
                Ok(Some(control)) => {
                    if let Some(tx) = &current {
                        let _ = tx.send(control.encode());
                    }
                }
                Err(err @ ProtoError::Version { .. }) => {
                    Writer::new(port.writer()).fail(&format!("sci: {err}"), 125);
                }
                Err(ProtoError::UnknownKind { .. }) => {}
                Ok(None) => break true,
                Err(_) => {
                    // A broken stream: drop it, and do not spin on an error that persists.
                    std::thread::sleep(Duration::from_millis(10));
                    break true;
                }
            }
        };
        if served && !self.resume {
            let _ = self.end.send(End::Done);
        }
        // The host hung up (or broke the stream): its call's app is ended and nothing it
        // still writes reaches the next host.
        port.end_writes();
        drop(current);
        more
    }
}

/// Control frames of a port call, handed over by the port's reader, as a byte stream.
struct Frames {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: std::io::Cursor<Vec<u8>>,
}

impl Frames {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Frames {
            rx,
            pending: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl Read for Frames {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.pending.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.rx.recv() {
                Ok(bytes) => self.pending = std::io::Cursor::new(bytes),
                Err(_) => return Ok(0),
            }
        }
    }
}

/// A frame's name, for diagnostics (payloads stay out of the log).
fn kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Call(_) => "call",
        Frame::Shutdown => "shutdown",
        Frame::Stdin(_) => "stdin",
        Frame::Signal(_) => "signal",
        _ => "other",
    }
}

fn serve_ports(server: Server) -> Result<(), String> {
    port::handle_sigio()?;
    let ports = port::find_ports(server.ports, Duration::from_secs(10))?;
    crate::debug::log(|| format!("ports {ports:?}"));
    for path in ports {
        let port = Port::open(&path)?;
        crate::debug::log(|| format!("{}: open", path.display()));
        let server = server.clone();
        std::thread::spawn(move || loop {
            port.wait_for_host();
            crate::debug::log(|| format!("{}: host connected", path.display()));
            if !server.port_connection(&port) {
                return;
            }
        });
    }
    Ok(())
}

fn serve_vsock(server: Server) -> Result<(), String> {
    let listener = vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, VSOCK_PORT)
        .map_err(|e| format!("cannot listen on vsock port {VSOCK_PORT}: {e}"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(reader) = stream.try_clone() else {
                continue;
            };
            let server = server.clone();
            server.activity.touch();
            std::thread::spawn(move || server.connection(reader, Writer::new(stream)));
        }
    });
    Ok(())
}

/// Calls running now, when the last one ended, and whether the VM is powering off.
#[derive(Debug)]
struct Activity(Mutex<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    running: usize,
    since: Instant,
    closing: bool,
}

/// Marks a call as running while it lives.
#[derive(Debug)]
struct Busy<'a>(&'a Activity);

impl Activity {
    fn new() -> Self {
        Activity(Mutex::new(ActivityState {
            running: 0,
            since: Instant::now(),
            closing: false,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A call starts, unless the VM is powering off: the decision to power off and a call
    /// starting are taken under one lock, so a call is either run to its end or refused.
    fn begin(&self) -> Option<Busy<'_>> {
        let mut state = self.lock();
        if state.closing {
            return None;
        }
        state.running += 1;
        Some(Busy(self))
    }

    /// A host connected: its call is about to come, so the idle time starts again.
    fn touch(&self) {
        self.lock().since = Instant::now();
    }

    /// Decides to power off when no call has run for `idle`; from then on calls are
    /// refused.
    fn close_if_idle(&self, idle: Duration) -> bool {
        let mut state = self.lock();
        if state.running == 0 && state.since.elapsed() >= idle {
            state.closing = true;
        }
        state.closing
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.running = state.running.saturating_sub(1);
        state.since = Instant::now();
    }
}

fn watch_idle(activity: Arc<Activity>, idle: Duration, end: Sender<End>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if activity.close_if_idle(idle) {
            let _ = end.send(End::Idle);
            return;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_counts_from_the_last_call_and_closing_refuses_calls() {
        let activity = Activity::new();
        let busy = activity.begin().unwrap();
        assert!(!activity.close_if_idle(Duration::ZERO), "a call runs");
        let second = activity.begin().unwrap();
        drop(busy);
        assert!(
            !activity.close_if_idle(Duration::ZERO),
            "one call still runs"
        );
        drop(second);
        assert!(
            !activity.close_if_idle(Duration::from_secs(60)),
            "not idle long"
        );
        assert!(activity.close_if_idle(Duration::ZERO));
        assert!(
            activity.begin().is_none(),
            "a call after the decision is refused"
        );
        assert!(
            activity.close_if_idle(Duration::from_secs(60)),
            "closing stays"
        );
    }
}
