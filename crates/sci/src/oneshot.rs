// SPDX-License-Identifier: MIT
//! The one call of a one-shot VM over the plain console, served from `sci`'s one thread.
//!
//! A one-shot VM pays its init's start-up on every launch, and under software emulation
//! every thread started and every code path run for the first time costs the guest
//! milliseconds (the emulator translates code as it first meets it). So this path starts
//! no thread. It says `Ready` until the call comes, starts the app on three pipes, and
//! then one `poll` loop moves frames between the console and the app: stdin as the app
//! takes it (acknowledged, so the launcher keeps its window), output as the launcher's
//! window has room for it, signals to the app's process group, and the exit status after
//! the last output. If the launcher hangs up, the app's group gets SIGHUP, then SIGKILL.
//! A call with a terminal takes the general way (`flake_agent::framed`), threads and all.

use std::fs::File;
use std::io::{Cursor, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use flake_agent::daemon::reaper::Reaper;
use flake_agent::daemon::{signal_group, Writer};
use flake_agent::proto::{
    window_cost, Call, ExitStatus, Frame, ProtoError, CHUNK, OUTPUT_WINDOW, VERSION,
};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Signal;

/// How often `Ready` is said until the call comes: the console drops what is written
/// while no host is connected.
const READY_EVERY: Duration = Duration::from_millis(100);
/// How long the app's group has after SIGHUP (its launcher is gone) before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// How long the VM stays up after the exit status, for it to reach the host (which stops
/// the VMM itself as soon as it has it).
const LINGER: Duration = Duration::from_secs(2);

/// Serves the one call that comes over `console` within `first_call`.
pub fn serve(console: File, first_call: Duration) -> Result<(), String> {
    let mut link = Link::new(console);
    let Some(call) = link.wait_call(first_call)? else {
        return Ok(());
    };
    crate::debug::log(|| "call".to_string());
    if call.terminal {
        return general(&call, link);
    }
    link.limited = call.output_acks;
    if let Some(relay) = Relay::start(&call, link) {
        let mut link = relay.run();
        crate::debug::log(|| "exit sent".to_string());
        link.linger();
    }
    Ok(())
}

/// A call with a terminal: the general, threaded way, on the bytes read so far and then
/// the console.
fn general(call: &Call, link: Link) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot share {}: {e}", crate::console::DEVICE);
    let reader = Cursor::new(link.inbox).chain(link.console.try_clone().map_err(fail)?);
    let writer = Writer::new(link.console.try_clone().map_err(fail)?);
    let _ = flake_agent::framed::run(call, reader, writer, &Reaper::start());
    Link::new(link.console).linger();
    Ok(())
}

/// The console: frames in, frames out, and the launcher's output window.
struct Link {
    console: File,
    /// Bytes read and not yet taken as frames.
    inbox: Vec<u8>,
    /// Under output flow control, the window cost sent and not acknowledged.
    limited: bool,
    outstanding: u64,
    /// The launcher hung up or broke the stream.
    gone: bool,
}

impl Link {
    fn new(console: File) -> Self {
        Link {
            console,
            inbox: Vec::new(),
            limited: false,
            outstanding: 0,
            gone: false,
        }
    }

    /// Sends one frame; control frames go out whatever the window says (they are small,
    /// and holding them back could stall both sides).
    fn send(&mut self, frame: &Frame) {
        let bytes = frame.encode();
        if self.limited {
            self.outstanding = self.outstanding.saturating_add(window_cost(bytes.len()));
        }
        if self.console.write_all(&bytes).is_err() {
            self.gone = true;
        }
    }

    /// How many output bytes the next frame may carry now (0: wait for acknowledgements).
    /// A frame alone always fits.
    fn room(&self) -> usize {
        if !self.limited || self.outstanding == 0 {
            return CHUNK;
        }
        // cost(n + 5) is at most (n + 5) * 5 / 4 + 1 KiB, with 5 the frame's own bytes
        let free = OUTPUT_WINDOW.saturating_sub(self.outstanding);
        let bytes = free.saturating_sub(1024) * 4 / 5;
        usize::try_from(bytes.saturating_sub(5)).map_or(CHUNK, |n| n.min(CHUNK))
    }

    /// Reads what the console has (poll said it has something).
    fn fill(&mut self) {
        let mut buf = vec![0u8; CHUNK];
        match self.console.read(&mut buf) {
            Ok(0) => self.gone = true,
            Ok(n) => self
                .inbox
                .extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(_) => self.gone = true,
        }
    }

    /// The next whole frame read; frames of unknown kinds are skipped, and a broken
    /// stream counts as a hang-up (nothing after it can be trusted).
    fn next(&mut self) -> Result<Option<Frame>, ProtoError> {
        loop {
            match Frame::parse(&self.inbox) {
                Ok(Some((frame, used))) => {
                    self.inbox.drain(..used);
                    return Ok(Some(frame));
                }
                Ok(None) => return Ok(None),
                Err(ProtoError::UnknownKind { len, .. }) => {
                    self.inbox.drain(..len.min(self.inbox.len()));
                }
                Err(err) => {
                    self.gone = true;
                    self.inbox.clear();
                    return Err(err);
                }
            }
        }
    }

    /// Whether the console has input within `timeout`.
    fn readable(&self, timeout: Duration) -> bool {
        let mut fds = [PollFd::new(&self.console, PollFlags::IN)];
        let timeout = rustix::time::Timespec::try_from(timeout).ok();
        matches!(poll(&mut fds, timeout.as_ref()), Ok(n) if n > 0)
    }

    /// Says `Ready` until the launcher's first bytes come, then waits for its `Call`;
    /// `None` when none came in `timeout` or the launcher is gone.
    fn wait_call(&mut self, timeout: Duration) -> Result<Option<Call>, String> {
        let deadline = Instant::now() + timeout;
        let mut heard = false;
        while !self.gone && Instant::now() < deadline {
            if !heard {
                self.send(&Frame::Ready(VERSION));
            }
            if !self.readable(READY_EVERY) {
                continue;
            }
            heard = true;
            self.fill();
            loop {
                match self.next() {
                    Ok(Some(Frame::Call(call))) => return Ok(Some(call)),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(err @ ProtoError::Version { .. }) => {
                        self.send(&Frame::Error(format!("sci: {err}")));
                        self.send(&Frame::Exit(ExitStatus::Exited(125)));
                        self.linger();
                        return Ok(None);
                    }
                    Err(err) => return Err(format!("{}: {err}", crate::console::DEVICE)),
                }
            }
        }
        Ok(None)
    }

    /// Stays until the launcher hangs up (it stops the VMM) or for [`LINGER`].
    fn linger(&mut self) {
        let until = Instant::now() + LINGER;
        while !self.gone && Instant::now() < until {
            if self.readable(LINGER) {
                self.fill();
                self.inbox.clear();
            }
        }
    }
}

/// The running app and what is on its way to and from it.
struct Relay {
    link: Link,
    app: Child,
    pid: i32,
    /// Readable when the app has ended (a pidfd); without one (a kernel before 5.3), the
    /// loop looks every few milliseconds.
    ended: Option<OwnedFd>,
    status: Option<ExitStatus>,
    stdin: Option<ChildStdin>,
    /// Input not yet taken by the app, and whether EOF follows it.
    pending: Vec<u8>,
    eof: bool,
    /// The launcher acknowledges input (stdin flow control).
    flow: bool,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// When the app's group gets SIGKILL (its launcher hung up).
    kill_at: Option<Instant>,
}

/// What one `poll` entry stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Console,
    Stdin,
    Stdout,
    Stderr,
    Ended,
}

impl Relay {
    /// Starts the app; a failed start is reported to the launcher (`None`).
    fn start(call: &Call, mut link: Link) -> Option<Self> {
        let mut command = flake_agent::command::app_command(call);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut app = match command.spawn() {
            Ok(app) => app,
            Err(err) => {
                let (message, code) = flake_agent::command::start_failure(call, &err);
                link.send(&Frame::Error(message));
                link.send(&Frame::Exit(ExitStatus::Exited(code)));
                link.linger();
                return None;
            }
        };
        crate::debug::log(|| "app started".to_string());
        let pid = i32::try_from(app.id()).unwrap_or(0);
        let ended = rustix::process::Pid::from_raw(pid).and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        let stdin = app.stdin.take();
        if let Some(pipe) = &stdin {
            // The loop must never wait for the app to read its input.
            let _ = rustix::io::ioctl_fionbio(pipe, true);
        }
        if call.flow {
            link.send(&Frame::StdinAck(0));
        }
        Some(Relay {
            link,
            pid,
            ended,
            status: None,
            stdin,
            pending: Vec::new(),
            eof: false,
            flow: call.flow,
            stdout: app.stdout.take(),
            stderr: app.stderr.take(),
            app,
            kill_at: None,
        })
    }

    /// Relays until the app has ended and its output is out, then sends the exit status.
    fn run(mut self) -> Link {
        // Frames that came right behind the call.
        self.handle_frames();
        while self.status.is_none() || self.stdout.is_some() || self.stderr.is_some() {
            self.step();
        }
        let status = self.status.unwrap_or(ExitStatus::Exited(125));
        crate::debug::log(|| format!("app ended: {status:?}"));
        self.link.send(&Frame::Exit(status));
        self.link
    }

    /// One round: waits for whatever can move, and moves it.
    fn step(&mut self) {
        let ready = self.wait();
        for (source, events) in ready {
            if events.is_empty() {
                continue;
            }
            match source {
                Source::Console => self.take_frames(),
                Source::Stdin => self.feed_app(),
                Source::Stdout => self.output(Source::Stdout),
                Source::Stderr => self.output(Source::Stderr),
                Source::Ended => self.reap(),
            }
        }
        if self.ended.is_none() && self.status.is_none() {
            self.reap();
        }
        if let Some(at) = self.kill_at {
            if Instant::now() >= at {
                signal_group(self.pid, Signal::KILL.as_raw());
                self.kill_at = None;
            }
        }
    }

    /// Polls what can move now; gives each source's events.
    fn wait(&self) -> Vec<(Source, PollFlags)> {
        let room = self.link.room() > 0;
        let wanted: [(Source, Option<std::os::fd::BorrowedFd<'_>>, PollFlags); 5] = [
            (
                Source::Console,
                (!self.link.gone).then(|| self.link.console.as_fd()),
                PollFlags::IN,
            ),
            (
                Source::Stdin,
                self.stdin
                    .as_ref()
                    .filter(|_| !self.pending.is_empty())
                    .map(AsFd::as_fd),
                PollFlags::OUT,
            ),
            (
                Source::Stdout,
                self.stdout.as_ref().filter(|_| room).map(AsFd::as_fd),
                PollFlags::IN,
            ),
            (
                Source::Stderr,
                self.stderr.as_ref().filter(|_| room).map(AsFd::as_fd),
                PollFlags::IN,
            ),
            (
                Source::Ended,
                self.ended
                    .as_ref()
                    .filter(|_| self.status.is_none())
                    .map(AsFd::as_fd),
                PollFlags::IN,
            ),
        ];
        let (sources, mut fds): (Vec<Source>, Vec<PollFd<'_>>) = wanted
            .into_iter()
            .filter_map(|(source, fd, events)| {
                fd.map(|fd| (source, PollFd::from_borrowed_fd(fd, events)))
            })
            .unzip();
        let timeout = self
            .timeout()
            .and_then(|t| rustix::time::Timespec::try_from(t).ok());
        if poll(&mut fds, timeout.as_ref()).is_err() {
            // Interrupted; never a busy loop on an error that stays.
            std::thread::sleep(Duration::from_millis(1));
            return Vec::new();
        }
        sources
            .into_iter()
            .zip(fds.iter().map(PollFd::revents))
            .collect()
    }

    /// How long one poll may wait: for ever, unless a SIGKILL is due or the app's end
    /// can only be seen by looking.
    fn timeout(&self) -> Option<Duration> {
        let looking =
            (self.ended.is_none() && self.status.is_none()).then_some(Duration::from_millis(5));
        let kill = self
            .kill_at
            .map(|at| at.saturating_duration_since(Instant::now()));
        match (looking, kill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the launcher's frames.
    fn take_frames(&mut self) {
        self.link.fill();
        self.handle_frames();
    }

    /// Acts on the frames read so far.
    fn handle_frames(&mut self) {
        loop {
            match self.link.next() {
                Ok(Some(Frame::Stdin(bytes))) => {
                    if bytes.is_empty() {
                        self.eof = true;
                    } else {
                        self.pending.extend_from_slice(&bytes);
                    }
                }
                Ok(Some(Frame::Signal(signal))) => signal_group(self.pid, i32::from(signal)),
                Ok(Some(Frame::OutputAck(count))) => {
                    self.link.outstanding = self.link.outstanding.saturating_sub(count.into());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.feed_app();
        if self.link.gone {
            self.hang_up();
        }
    }

    /// The launcher is gone: the app's group gets SIGHUP now and SIGKILL soon, and what it
    /// still writes goes nowhere.
    fn hang_up(&mut self) {
        if self.kill_at.is_some() || self.status.is_some() {
            self.stdout = None;
            self.stderr = None;
            return;
        }
        signal_group(self.pid, Signal::HUP.as_raw());
        self.kill_at = Some(Instant::now() + HANGUP_GRACE);
        self.stdin = None;
        self.pending.clear();
        self.stdout = None;
        self.stderr = None;
    }

    /// Passes pending input to the app as far as its pipe takes it.
    fn feed_app(&mut self) {
        let Some(pipe) = self.stdin.as_mut() else {
            // Input for an app that closed its stdin is dropped, and still acknowledged.
            self.acknowledge(self.pending.len());
            self.pending.clear();
            return;
        };
        let mut taken = 0;
        let mut closed = false;
        while taken < self.pending.len() {
            match pipe.write(self.pending.get(taken..).unwrap_or_default()) {
                Ok(n) if n > 0 => taken += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The app closed its stdin: the rest goes nowhere.
                Ok(_) | Err(_) => {
                    closed = true;
                    taken = self.pending.len();
                }
            }
        }
        self.pending.drain(..taken);
        self.acknowledge(taken);
        if closed || (self.eof && self.pending.is_empty()) {
            self.stdin = None;
        }
    }

    fn acknowledge(&mut self, count: usize) {
        if self.flow && count > 0 {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            self.link.send(&Frame::StdinAck(count));
        }
    }

    /// Relays what the app wrote on one stream; EOF closes it.
    fn output(&mut self, source: Source) {
        let room = self.link.room();
        if room == 0 {
            // The other stream took the room: the next round waits for acknowledgements.
            return;
        }
        let mut buf = vec![0u8; room];
        let read = match source {
            Source::Stdout => self.stdout.as_mut().map(|pipe| pipe.read(&mut buf)),
            _ => self.stderr.as_mut().map(|pipe| pipe.read(&mut buf)),
        };
        match read {
            Some(Ok(n)) if n > 0 => {
                buf.truncate(n);
                let frame = match source {
                    Source::Stdout => Frame::Stdout(buf),
                    _ => Frame::Stderr(buf),
                };
                self.link.send(&frame);
                if self.link.gone {
                    self.hang_up();
                }
            }
            Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            _ => match source {
                Source::Stdout => self.stdout = None,
                _ => self.stderr = None,
            },
        }
    }

    /// Takes the app's exit status once it has ended.
    fn reap(&mut self) {
        if let Ok(Some(status)) = self.app.try_wait() {
            self.status = Some(exit_status(status));
            self.ended = None;
            self.stdin = None;
        }
    }
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Exited(u8::try_from(code & 0xff).unwrap_or(255)),
        (None, Some(signal)) => ExitStatus::Signaled(u8::try_from(signal).unwrap_or(9)),
        (None, None) => ExitStatus::Exited(125),
    }
}

#[cfg(test)]
mod tests {
    //! The loop against real processes, with a socket pair standing in for the console.
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;

    struct Host {
        stream: UnixStream,
        sci: Option<JoinHandle<Result<(), String>>>,
    }

    /// What a call gave the host.
    #[derive(Debug, Default)]
    struct Got {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        errors: Vec<String>,
        stdin_acks: Vec<u32>,
        status: Option<ExitStatus>,
    }

    impl Host {
        fn start() -> Host {
            let (host, guest) = UnixStream::pair().unwrap();
            host.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let console = File::from(OwnedFd::from(guest));
            let sci = std::thread::spawn(move || serve(console, Duration::from_secs(20)));
            Host {
                stream: host,
                sci: Some(sci),
            }
        }

        fn send(&mut self, frame: &Frame) {
            self.stream.write_all(&frame.encode()).unwrap();
        }

        fn recv(&mut self) -> Frame {
            Frame::read_from(&mut self.stream).unwrap().unwrap()
        }

        /// Waits for `Ready`, then sends the call.
        fn call(&mut self, argv: &[&str], flow: bool, output_acks: bool) {
            assert_eq!(self.recv(), Frame::Ready(VERSION));
            self.send(&Frame::Call(Call {
                argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                frames: true,
                flow,
                output_acks,
                ..Call::default()
            }));
        }

        /// Reads frames to the exit status, acknowledging output when `ack`.
        fn collect(&mut self, ack: bool) -> Got {
            let mut got = Got::default();
            while got.status.is_none() {
                let frame = self.recv();
                if ack && !matches!(frame, Frame::Ready(_) | Frame::Exit(_)) {
                    let cost = window_cost(frame.encode().len());
                    self.send(&Frame::OutputAck(u32::try_from(cost).unwrap()));
                }
                match frame {
                    Frame::Stdout(bytes) => got.stdout.extend(bytes),
                    Frame::Stderr(bytes) => got.stderr.extend(bytes),
                    Frame::Error(message) => got.errors.push(message),
                    Frame::StdinAck(count) => got.stdin_acks.push(count),
                    Frame::Exit(status) => got.status = Some(status),
                    Frame::Ready(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        }

        /// Hangs up and waits for `serve` to return.
        fn finish(mut self) -> Duration {
            let started = Instant::now();
            drop(self.stream);
            self.sci.take().unwrap().join().unwrap().unwrap();
            started.elapsed()
        }
    }

    #[test]
    fn a_call_gets_its_output_and_exit_status_and_the_vm_ends_when_the_host_hangs_up() {
        let mut host = Host::start();
        host.call(
            &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            true,
        );
        let got = host.collect(true);
        assert_eq!(got.stdout, b"out\n");
        assert_eq!(got.stderr, b"err\n");
        assert_eq!(got.status, Some(ExitStatus::Exited(3)));
        assert!(
            host.finish() < LINGER,
            "serving ends with the host's hang-up"
        );
    }

    #[test]
    fn stdin_reaches_the_app_acknowledged_and_its_eof_too() {
        let mut host = Host::start();
        host.call(&["/bin/sh", "-c", "cat; echo end"], true, false);
        let input = vec![b'x'; 300_000];
        for chunk in input.chunks(CHUNK) {
            host.send(&Frame::Stdin(chunk.to_vec()));
        }
        host.send(&Frame::Stdin(Vec::new()));
        let got = host.collect(false);
        assert_eq!(got.stdout.len(), input.len() + 4);
        assert!(got.stdout.ends_with(b"xend\n"));
        assert_eq!(
            got.stdin_acks.first(),
            Some(&0),
            "the first ack says acks come"
        );
        let acked: u64 = got.stdin_acks.iter().map(|n| u64::from(*n)).sum();
        assert_eq!(acked, 300_000);
        assert_eq!(got.status, Some(ExitStatus::Exited(0)));
        host.finish();
    }

    #[test]
    fn output_beyond_the_window_waits_for_acknowledgements() {
        let mut host = Host::start();
        let script = "head -c 200000 /dev/zero; i=0; while [ $i -lt 3000 ]; do echo o; echo e >&2; i=$((i+1)); done";
        host.call(&["/bin/sh", "-c", script], false, true);
        let (mut bytes, mut stderr, mut stalls) = (0, 0, 0);
        host.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        loop {
            // Nothing acknowledged: the guest stops once the window is spent.
            let mut unacked = 0;
            let mut exit = None;
            while let Ok(Some(frame)) = Frame::read_from(&mut host.stream) {
                unacked += window_cost(frame.encode().len());
                match frame {
                    Frame::Stdout(data) => bytes += data.len(),
                    Frame::Stderr(data) => stderr += data.len(),
                    Frame::Exit(status) => exit = Some(status),
                    _ => {}
                }
            }
            if let Some(status) = exit {
                assert_eq!(status, ExitStatus::Exited(0));
                break;
            }
            assert!(
                unacked <= OUTPUT_WINDOW + window_cost(CHUNK + 5),
                "{unacked} sent unacknowledged"
            );
            stalls += 1;
            host.send(&Frame::OutputAck(u32::try_from(unacked).unwrap()));
        }
        assert_eq!(bytes, 200_000 + 3000 * 2);
        assert_eq!(stderr, 3000 * 2);
        assert!(stalls > 2, "the window held the output back {stalls} times");
        host.finish();
    }

    #[test]
    fn signals_reach_the_apps_group_and_unknown_frames_are_skipped() {
        let mut host = Host::start();
        host.call(
            &["/bin/sh", "-c", "sleep 30; echo not reached"],
            false,
            false,
        );
        // A newer launcher's frame: read whole and skipped.
        host.stream.write_all(&[3, 0, 0, 0, 200, 1, 2]).unwrap();
        host.send(&Frame::Signal(15));
        let got = host.collect(false);
        assert!(got.stdout.is_empty());
        assert_eq!(got.status, Some(ExitStatus::Signaled(15)));
        host.finish();
    }

    #[test]
    fn an_app_whose_launcher_hangs_up_is_hung_up_too() {
        let mut host = Host::start();
        host.call(&["/bin/sleep", "30"], true, true);
        assert_eq!(host.recv(), Frame::StdinAck(0));
        // `serve` returns once the app has ended.
        assert!(host.finish() < HANGUP_GRACE, "SIGHUP ended the app");
    }

    #[test]
    fn failures_before_the_app_runs_are_reported_with_their_status() {
        let mut host = Host::start();
        host.call(&["/nonexistent/app"], false, false);
        let got = host.collect(false);
        assert_eq!(got.status, Some(ExitStatus::Exited(127)));
        assert!(
            got.errors[0].contains("/nonexistent/app"),
            "{:?}",
            got.errors
        );
        host.finish();

        let mut host = Host::start();
        assert_eq!(host.recv(), Frame::Ready(VERSION));
        let mut call = Frame::Call(Call {
            argv: vec![b"/bin/true".to_vec()],
            ..Call::default()
        })
        .encode();
        call[5] = 99;
        host.stream.write_all(&call).unwrap();
        let got = host.collect(false);
        assert_eq!(got.status, Some(ExitStatus::Exited(125)));
        assert!(got.errors[0].contains("version 99"), "{:?}", got.errors);
        host.finish();
    }
}
