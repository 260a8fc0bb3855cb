// SPDX-License-Identifier: MIT
//! Serving calls over the guest channel until the VM should end.
//!
//! A one-shot VM serves one call; a resume VM serves calls (several at once, one per port
//! or vsock connection) until a launcher sends `Shutdown` or no call came for the idle
//! timeout. Each call runs as in a container (`flake_agent::framed`): streams as frames, a
//! pty when asked for, the exit status last. The first frame of a connection must be a
//! `Call` or `Shutdown`; anything else is the rest of an earlier, ended call and skipped.

use std::io::{BufReader, Read};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flake_agent::daemon::reaper::Reaper;
use flake_agent::daemon::Writer;
use flake_agent::framed;
use flake_agent::proto::{ExitStatus, Frame, ProtoError, CHUNK};

use crate::cmdline::{BootSettings, Channel, VSOCK_PORT};
use crate::port::{self, Port};

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
    let (end_tx, end_rx) = channel();
    let activity = Arc::new(Activity::new());
    let server = Server {
        resume: settings.resume,
        end: end_tx.clone(),
        activity: Arc::clone(&activity),
        reaper: Reaper::start(),
    };
    match settings.channel {
        Channel::Virtio => serve_ports(server)?,
        Channel::Vsock => serve_vsock(server)?,
    }
    match (settings.resume, settings.idle) {
        (true, Some(idle)) => watch_idle(activity, idle, end_tx),
        (true, None) => {}
        // A launcher killed while the VM booted never calls: do not wait for it forever.
        (false, _) => watch_idle(activity, FIRST_CALL_TIMEOUT, end_tx),
    }
    end_rx
        .recv()
        .map_err(|_| "every guest channel closed".to_string())
}

/// What every connection handler shares.
#[derive(Debug, Clone)]
struct Server {
    resume: bool,
    end: Sender<End>,
    activity: Arc<Activity>,
    reaper: Arc<Reaper>,
}

impl Server {
    /// Handles one connection; returns false when serving must stop.
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
                Ok(Some(Frame::Call(call))) => {
                    let busy = self.activity.begin();
                    let result = framed::run(&call, reader, writer, &self.reaper);
                    crate::debug::log(|| format!("call ended: {result:?}"));
                    drop(busy);
                    if !self.resume {
                        let _ = self.end.send(End::Done);
                        return false;
                    }
                    return true;
                }
                Ok(Some(Frame::Shutdown)) => {
                    let _ = writer.send(&Frame::Exit(ExitStatus::Exited(0)));
                    let _ = self.end.send(End::Shutdown);
                    return false;
                }
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(err @ ProtoError::Version { .. }) => {
                    writer.fail(&format!("sci: {err}"), 125);
                    return true;
                }
                Err(_) => return true,
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
    for path in port::find_ports(Duration::from_secs(10))? {
        let port = Port::open(&path)?;
        let server = server.clone();
        std::thread::spawn(move || loop {
            port.wait_for_host();
            let session = port.session();
            crate::debug::log(|| format!("{} session {session:?}", path.display()));
            let reads = session.clone();
            let writer = Writer::new(session.clone()).before_exit(move || reads.close_reads());
            let more = server.connection(session.clone(), writer);
            session.close();
            if !more {
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
            std::thread::spawn(move || server.connection(reader, Writer::new(stream)));
        }
    });
    Ok(())
}

/// Calls running now, and when the last one ended.
#[derive(Debug)]
struct Activity(Mutex<(usize, Instant)>);

/// Marks a call as running while it lives.
#[derive(Debug)]
struct Busy<'a>(&'a Activity);

impl Activity {
    fn new() -> Self {
        Activity(Mutex::new((0, Instant::now())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin(&self) -> Busy<'_> {
        self.lock().0 += 1;
        Busy(self)
    }

    /// How long no call has run; `None` while one runs.
    fn idle_for(&self) -> Option<Duration> {
        let (running, since) = *self.lock();
        (running == 0).then(|| since.elapsed())
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.0 = state.0.saturating_sub(1);
        state.1 = Instant::now();
    }
}

fn watch_idle(activity: Arc<Activity>, idle: Duration, end: Sender<End>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if activity.idle_for().is_some_and(|quiet| quiet >= idle) {
            let _ = end.send(End::Idle);
            return;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_counts_from_the_last_call() {
        let activity = Activity::new();
        let busy = activity.begin();
        assert_eq!(activity.idle_for(), None);
        let second = activity.begin();
        drop(busy);
        assert_eq!(activity.idle_for(), None, "one call still runs");
        drop(second);
        assert!(activity.idle_for().unwrap() < Duration::from_secs(1));
    }
}
