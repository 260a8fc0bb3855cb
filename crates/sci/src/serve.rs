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

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flake_agent::daemon::reaper::Reaper;
use flake_agent::daemon::Writer;
use flake_agent::framed::{self, Link};
use flake_protocol::proto::{ExitStatus, Frame, ProtoError, CHUNK};

use crate::cmdline::{BootSettings, Channel, VSOCK_PORT};
use crate::port::{self, Port, PortError, PortReader};

/// Why calls cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The ports could not be set up.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The vsock listener could not be set up.
    #[error(
        "cannot listen on vsock port {port}: {source}; the guest kernel needs vsock \
         (CONFIG_VIRTIO_VSOCKETS) built in"
    )]
    Listen {
        /// The port.
        port: u32,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The console was asked to serve more than the one-shot call it carries.
    #[error("sci_channel=console serves a one-shot call only")]
    ConsoleOnly,
    /// Every thread that could end serving is gone.
    #[error("every guest channel closed before the VM was told to end")]
    Closed,
}

// The waits the launcher relies on (how long a call read on a port waits for the news that
// its host connected, see [`Port::await_host`]; how long a VM powering off goes on refusing
// calls; how long a one-shot VM waits for its call) are checked against the launcher's in
// `flake_protocol::timing`.
pub use crate::timing::FIRST_CALL_TIMEOUT;
use crate::timing::{ANNOUNCE_FIRST_PAUSE, ANNOUNCE_MAX_PAUSE, CLOSING_GRACE, HOST_NEWS_WAIT};

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
pub fn serve(settings: &BootSettings) -> Result<End, ServeError> {
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
        Channel::Console => return Err(ServeError::ConsoleOnly),
    }
    let end = end_rx.recv().map_err(|_| ServeError::Closed)?;
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
    fn connection(&self, mut link: Link) -> bool {
        loop {
            let frame = link.take();
            crate::debug::log(|| {
                format!(
                    "connection frame: {:?}",
                    frame.as_ref().map(|f| f.as_ref().map(kind))
                )
            });
            match frame {
                Ok(Some(Frame::Call(call))) => return self.run_call(&call, link),
                Ok(Some(Frame::Shutdown)) => {
                    link.send(&Frame::Exit(ExitStatus::Exited(0)));
                    let _ = self.end.send(End::Shutdown);
                    return false;
                }
                Ok(Some(_)) => {}
                Ok(None) if link.gone() => return true,
                // Reading blocks: this thread serves this connection only.
                Ok(None) => link.fill(),
                Err(err @ ProtoError::Version { .. }) => {
                    link.send(&Frame::Error(format!("sci: {err}")));
                    link.send(&Frame::Exit(ExitStatus::Exited(125)));
                    return true;
                }
                Err(_) => return true,
            }
        }
    }

    /// Runs one call and reports whether serving goes on (a one-shot VM serves one).
    fn run_call(&self, call: &flake_protocol::proto::Call, mut link: Link) -> bool {
        let Some(busy) = self.activity.begin() else {
            // Refused whole, never cut off: nothing of the call has run, and the launcher
            // may start the VM again and repeat it.
            link.send(&Frame::Closing);
            // The refusal must reach the launcher, which then makes the call again.
            link.finish();
            return false;
        };
        crate::debug::log(|| "call starts".to_string());
        let result = framed::run(call, link, Some(&self.reaper));
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
    /// Its calls run on `runner`.
    fn port_connection(&self, port: &Arc<Port>, runner: &mut Runner) -> bool {
        let mut reader = BufReader::with_capacity(CHUNK + 8, PortReader(Arc::clone(port)));
        // The control frames of the running call, if one runs.
        let mut current: Option<File> = None;
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
                    port.await_host(HOST_NEWS_WAIT);
                    let flags = rustix::pipe::PipeFlags::CLOEXEC;
                    let Ok((rx, tx)) = rustix::pipe::pipe_with(flags) else {
                        Writer::new(port.writer()).fail("sci: cannot make a pipe", 125);
                        continue;
                    };
                    current = Some(File::from(tx));
                    let input = File::from(rx);
                    let writer = port.writer();
                    // One thread relays the call when the port's writes need not wait.
                    let link = match writer.clone().never_waiting() {
                        Ok((writer, ready)) => {
                            Link::nonblocking(input, Box::new(writer), ready, Vec::new())
                        }
                        Err(_) => Link::new(input, Box::new(writer), Vec::new()),
                    };
                    served = true;
                    runner.run(self, call, link);
                }
                Ok(Some(Frame::Shutdown)) => {
                    drop(current.take());
                    port.await_host(HOST_NEWS_WAIT);
                    let _ = Writer::new(port.writer()).send(&Frame::Exit(ExitStatus::Exited(0)));
                    let _ = self.end.send(End::Shutdown);
                    break false;
                }
                Ok(Some(control)) => {
                    // The call's relay takes them from the pipe; once it is done, they go
                    // nowhere.
                    if let Some(tx) = current.as_mut() {
                        if tx.write_all(&control.encode()).is_err() {
                            current = None;
                        }
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

/// Runs the calls of one port on a thread that stays, started with the first: under
/// emulation, a thread started and ended for every call costs the guest its stack's
/// mapping and the TLB flush of its unmapping each time. A call that comes while the last
/// one still ends (its host hung up and its app has not quit yet) gets a thread of its own.
#[derive(Default)]
struct Runner {
    worker: Option<(Sender<Job>, Arc<AtomicBool>)>,
}

/// A call for a port's worker, and its link.
type Job = (flake_protocol::proto::Call, Link);

impl Runner {
    fn run(&mut self, server: &Server, call: flake_protocol::proto::Call, link: Link) {
        let (tx, idle) = self
            .worker
            .get_or_insert_with(|| start_worker(server.clone()));
        let (call, link) = if idle.swap(false, Ordering::SeqCst) {
            match tx.send((call, link)) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(job)) => job,
            }
        } else {
            (call, link)
        };
        let server = server.clone();
        std::thread::spawn(move || server.run_call(&call, link));
    }
}

/// The thread that runs a port's calls one after another; the flag says it waits for one.
fn start_worker(server: Server) -> (Sender<Job>, Arc<AtomicBool>) {
    let (tx, rx) = channel::<Job>();
    let idle = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&idle);
    std::thread::spawn(move || {
        for (call, link) in rx {
            server.run_call(&call, link);
            flag.store(true, Ordering::SeqCst);
        }
    });
    (tx, idle)
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

fn serve_ports(server: Server) -> Result<(), PortError> {
    port::handle_sigio()?;
    let ports = port::find_ports(server.ports, Duration::from_secs(10))?;
    crate::debug::log(|| format!("ports {ports:?}"));
    for path in ports {
        let port = Port::open(&path)?;
        crate::debug::log(|| format!("{}: open", path.display()));
        let server = server.clone();
        std::thread::spawn(move || {
            let mut runner = Runner::default();
            loop {
                port.wait_for_host();
                crate::debug::log(|| format!("{}: host connected", path.display()));
                if !server.port_connection(&port, &mut runner) {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn serve_vsock(server: Server) -> Result<(), ServeError> {
    let listener = vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, VSOCK_PORT)
        .map_err(|source| ServeError::Listen {
            port: VSOCK_PORT,
            source,
        })?;
    std::thread::spawn(announce);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(output) = stream.try_clone() else {
                continue;
            };
            let link = Link::new(
                File::from(OwnedFd::from(stream)),
                Box::new(output),
                Vec::new(),
            );
            let server = server.clone();
            server.activity.touch();
            std::thread::spawn(move || server.connection(link));
        }
    });
    Ok(())
}

/// Tells the host that the vsock listener is up, by connecting to its announcement port
/// (see `proto::GUEST_ANNOUNCE_MARKER`); again and again while nobody takes it: the launcher
/// that waits for it may have died and another one take its place. Launchers that never
/// listen (older ones) cost a refused connection per try, less and less often.
fn announce() {
    let mut pause = ANNOUNCE_FIRST_PAUSE;
    loop {
        let port = flake_protocol::proto::ANNOUNCE_PORT;
        match vsock::VsockStream::connect_with_cid_port(vsock::VMADDR_CID_HOST, port) {
            Ok(_) => {
                crate::debug::log(|| "announced the vsock listener".to_string());
                return;
            }
            Err(err) => crate::debug::log(|| format!("announcement not taken: {err}")),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(ANNOUNCE_MAX_PAUSE);
    }
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

#[cfg(test)]
mod connection_tests {
    //! A vsock connection's frames before a call, over a socket pair. No call runs the app
    //! here: these tests share their process with `oneshot`'s, which wait for their own
    //! children, so no reaper may run.
    use super::*;
    use flake_protocol::proto::Call;
    use std::os::unix::net::UnixStream;

    fn server() -> (Server, std::sync::mpsc::Receiver<End>) {
        let (end, ended) = channel();
        let server = Server {
            ports: 1,
            resume: true,
            end,
            activity: Arc::new(Activity::new()),
            // Never started: nothing here is spawned.
            reaper: Arc::new(Reaper::default()),
        };
        (server, ended)
    }

    fn link(stream: UnixStream) -> Link {
        let output = stream.try_clone().unwrap();
        Link::new(
            File::from(OwnedFd::from(stream)),
            Box::new(output),
            Vec::new(),
        )
    }

    fn frames(host: &mut UnixStream) -> Vec<Frame> {
        std::iter::from_fn(|| Frame::read_from(host).unwrap()).collect()
    }

    #[test]
    fn shutdown_ends_serving_and_other_versions_are_refused() {
        let (server, ended) = server();
        let (mut host, guest) = UnixStream::pair().unwrap();
        // A newer launcher's frame first: skipped.
        host.write_all(&[2, 0, 0, 0, 200, 1]).unwrap();
        host.write_all(&Frame::Shutdown.encode()).unwrap();
        assert!(!server.connection(link(guest)), "serving stops");
        assert_eq!(frames(&mut host), [Frame::Exit(ExitStatus::Exited(0))]);
        assert_eq!(ended.try_recv(), Ok(End::Shutdown));

        let (mut host, guest) = UnixStream::pair().unwrap();
        let mut call = Frame::Call(Call {
            argv: vec![b"/bin/true".to_vec()],
            ..Call::default()
        })
        .encode();
        call[5] = 99;
        host.write_all(&call).unwrap();
        assert!(server.connection(link(guest)), "serving goes on");
        let got = frames(&mut host);
        assert!(
            matches!(&got[0], Frame::Error(m) if m.contains("version 99")),
            "{got:?}"
        );
        assert_eq!(got[1], Frame::Exit(ExitStatus::Exited(125)));
    }

    #[test]
    fn a_call_after_the_idle_decision_is_refused_whole() {
        let (server, _ended) = server();
        assert!(server.activity.close_if_idle(Duration::ZERO));
        let (mut host, guest) = UnixStream::pair().unwrap();
        let call = Frame::Call(Call {
            argv: vec![b"/bin/true".to_vec()],
            frames: true,
            ..Call::default()
        });
        host.write_all(&call.encode()).unwrap();
        assert!(!server.connection(link(guest)));
        assert_eq!(frames(&mut host), [Frame::Closing]);
    }
}
