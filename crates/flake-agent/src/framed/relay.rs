// SPDX-License-Identifier: MIT
//! One frame-mode call without a terminal, relayed from a single thread.
//!
//! A call in a VM pays for every thread it starts and every code path it runs for the
//! first time (under software emulation the emulator translates code as it first meets
//! it; a one-shot VM does so on every launch). So the relay starts no thread: one `poll`
//! loop moves frames between the link and the app's three pipes. Stdin goes to the app as
//! it takes it, acknowledged when the launcher asked for stdin flow control; output goes
//! out as the launcher's output window has room, or, on a link whose writes never wait
//! ([`Link::nonblocking`]), as the link takes it (what it cannot take yet waits in the
//! link, and the app's output is read no further meanwhile); signals go to the app's
//! process group;
//! the exit status follows the last output. If the launcher hangs up, the app's group gets
//! SIGHUP, then SIGKILL.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Signal;

use crate::command::{piped_app_command, start_failure};
use crate::daemon::reaper::Reaper;
use crate::daemon::signal_group;
use crate::proto::{window_cost, Call, ExitStatus, Frame, ProtoError, CHUNK, OUTPUT_WINDOW};

/// How long the app's group has after SIGHUP (its launcher is gone) before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// How many bytes of frames not yet written make a non-blocking link stop reading the
/// app's output (which then waits in its pipes); the frame read last may take it to about
/// twice this.
const OUTBOX_LIMIT: usize = CHUNK;

/// Stdin waiting for the app beyond which the link is read no further, so input the app
/// does not take backs up to the launcher, as it would in a pipe, instead of filling this
/// process's memory. A launcher under stdin flow control never comes near it: it keeps at
/// most a window (`STDIN_WINDOW`, four chunks) and one chunk unacknowledged. One that does
/// not is heard again (its signals, its hang-up) once the app reads or ends.
const PENDING_LIMIT: usize = 8 * CHUNK;

/// How long a wait for room in a non-blocking output lasts before the write is tried
/// again: a writer that may no longer write (a newer call's took over) then learns so, as
/// does one whose wake-up got lost.
const ROOM_RECHECK: Duration = Duration::from_millis(500);

/// Runs `call` (without a terminal) over `link`; `reaper`: the process's reaper, if it has
/// one (without, the app is waited for here). Returns when the exit status is sent.
pub fn run(call: &Call, mut link: Link, reaper: Option<&Reaper>) {
    link.limited = call.output_acks;
    match Relay::start(call, link, reaper) {
        Ok(relay) => relay.run(),
        Err(mut link) => link.finish(),
    }
}

/// A call's connection, read without blocking: frames in from a stream `poll` can wait
/// on, frames out, and the launcher's output window.
pub struct Link {
    input: File,
    output: Box<dyn Write + Send>,
    /// The output to wait on, when its writes never wait (see [`Link::nonblocking`]).
    ready: Option<OwnedFd>,
    /// Frames for the non-blocking output, of which it has taken `sent` bytes.
    outbox: Vec<u8>,
    sent: usize,
    /// Bytes read and not yet taken as frames.
    inbox: Vec<u8>,
    /// Under output flow control, the window cost sent and not acknowledged.
    limited: bool,
    outstanding: u64,
    /// The launcher hung up or broke the stream.
    gone: bool,
    /// Where reads land first.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("input", &self.input)
            .field("inbox", &self.inbox.len())
            .field("outstanding", &self.outstanding)
            .field("outbox", &self.outbox.len())
            .field("gone", &self.gone)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link reading frames from `input` (after the bytes of `read_ahead`, already read
    /// from it) and writing them to `output`.
    pub fn new(input: File, output: Box<dyn Write + Send>, read_ahead: Vec<u8>) -> Self {
        Link {
            input,
            output,
            ready: None,
            outbox: Vec::new(),
            sent: 0,
            inbox: read_ahead,
            limited: false,
            outstanding: 0,
            gone: false,
            scratch: Vec::new(),
        }
    }

    /// A link whose `output` never waits: a write it cannot take now fails with
    /// `WouldBlock`, and `ready` (the same output) polls writable once it can. One thread
    /// then relays a call without output flow control, because a launcher that reads
    /// nothing for a while holds up only the app's output, never its input or signals.
    pub fn nonblocking(
        input: File,
        output: Box<dyn Write + Send>,
        ready: OwnedFd,
        read_ahead: Vec<u8>,
    ) -> Self {
        Link {
            ready: Some(ready),
            ..Link::new(input, output, read_ahead)
        }
    }

    /// Whether one thread can relay a call over this link whatever the launcher reads.
    pub(super) fn never_waits(&self) -> bool {
        self.ready.is_some()
    }

    /// Whether the launcher hung up (or broke the stream).
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// The two halves and the bytes read and not yet taken, for a reader that blocks.
    /// The output of a non-blocking link waits for room again (frames it still holds go
    /// first).
    pub(super) fn into_parts(self) -> (File, Box<dyn Write + Send>, Vec<u8>) {
        let output = match self.ready {
            Some(ready) => {
                let mut output = WaitingOutput {
                    output: self.output,
                    ready,
                };
                // A launcher that is gone learns nothing more anyway.
                let _ = output.write_all(self.outbox.get(self.sent..).unwrap_or_default());
                Box::new(output)
            }
            None => self.output,
        };
        (self.input, output, self.inbox)
    }

    /// Writes what the non-blocking output takes now of the frames queued.
    fn push(&mut self) {
        while self.sent < self.outbox.len() && !self.gone {
            match self
                .output
                .write(self.outbox.get(self.sent..).unwrap_or_default())
            {
                Ok(0) => self.gone = true,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => self.gone = true,
            }
        }
        if self.gone || self.sent >= self.outbox.len() {
            self.outbox.clear();
            self.sent = 0;
        }
    }

    /// Acts on what `poll` said of the non-blocking output: room, or a launcher gone.
    fn writable(&mut self, events: PollFlags) {
        if events.contains(PollFlags::OUT) {
            self.push();
        } else if events.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
            self.gone = true;
            self.outbox.clear();
            self.sent = 0;
        }
    }

    /// The output to poll for room while frames wait for it.
    fn waiting_output(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.ready
            .as_ref()
            .filter(|_| !self.outbox.is_empty() && !self.gone)
            .map(AsFd::as_fd)
    }

    /// Waits until the frames queued have gone out, or the launcher has hung up (what it
    /// still sends is dropped: the call is over). A link whose last frames must reach the
    /// launcher (a refusal) is finished before it is dropped.
    pub fn finish(&mut self) {
        let recheck = rustix::time::Timespec::try_from(ROOM_RECHECK).ok();
        while let Some(output) = self.waiting_output() {
            let mut fds = [
                PollFd::from_borrowed_fd(output, PollFlags::OUT),
                PollFd::new(&self.input, PollFlags::IN),
            ];
            match poll(&mut fds, recheck.as_ref()) {
                Ok(0) => {
                    self.push();
                    continue;
                }
                Ok(_) => {}
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            let (output, input) = (fds[0].revents(), fds[1].revents());
            if !input.is_empty() {
                self.fill();
                self.inbox.clear();
            }
            self.writable(output);
        }
    }

    /// Sends one frame; control frames go out whatever the window says (they are small,
    /// and holding them back could stall both sides).
    pub fn send(&mut self, frame: &Frame) {
        let bytes = frame.encode();
        if self.limited {
            self.outstanding = self.outstanding.saturating_add(window_cost(bytes.len()));
        }
        if self.ready.is_some() {
            if !self.gone {
                if self.sent >= CHUNK {
                    // What went out is dropped now and then, not on every write.
                    self.outbox.drain(..self.sent);
                    self.sent = 0;
                }
                self.outbox.extend_from_slice(&bytes);
                self.push();
            }
            return;
        }
        if self
            .output
            .write_all(&bytes)
            .and_then(|()| self.output.flush())
            .is_err()
        {
            self.gone = true;
        }
    }

    /// Whether a frame of `len` bytes fits the window now (one alone always does).
    fn fits(&self, len: usize) -> bool {
        !self.limited
            || self.outstanding == 0
            || self.outstanding.saturating_add(window_cost(len)) <= OUTPUT_WINDOW
    }

    /// How many output bytes the next frame may carry now (0: wait for acknowledgements).
    /// A frame alone always fits.
    fn room(&self) -> usize {
        if self.outbox.len().saturating_sub(self.sent) >= OUTBOX_LIMIT {
            return 0;
        }
        if !self.limited || self.outstanding == 0 {
            return CHUNK;
        }
        // cost(n + 5) is at most (n + 5) * 5 / 4 + 1 KiB, with 5 the frame's own bytes
        let free = OUTPUT_WINDOW.saturating_sub(self.outstanding);
        let bytes = free.saturating_sub(1024) * 4 / 5;
        usize::try_from(bytes.saturating_sub(5)).map_or(CHUNK, |n| n.min(CHUNK))
    }

    /// Reads what the input has (poll said it has something).
    pub fn fill(&mut self) {
        self.scratch.resize(CHUNK, 0);
        match self.input.read(&mut self.scratch) {
            Ok(0) => self.gone = true,
            Ok(n) => self
                .inbox
                .extend_from_slice(self.scratch.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(_) => self.gone = true,
        }
    }

    /// The next whole frame read; frames of unknown kinds are skipped, and a broken
    /// stream counts as a hang-up (nothing after it can be trusted).
    pub fn take(&mut self) -> Result<Option<Frame>, ProtoError> {
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

    /// Whether the input has bytes (or an end) within `timeout`.
    pub fn readable(&self, timeout: Duration) -> bool {
        let mut fds = [PollFd::new(&self.input, PollFlags::IN)];
        let timeout = rustix::time::Timespec::try_from(timeout).ok();
        matches!(poll(&mut fds, timeout.as_ref()), Ok(n) if n > 0)
    }
}

/// A non-blocking output whose writes wait for room again, for a call served by threads.
struct WaitingOutput {
    output: Box<dyn Write + Send>,
    ready: OwnedFd,
}

impl Write for WaitingOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.output.write(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => return other,
            }
            let mut fds = [PollFd::new(&self.ready, PollFlags::OUT)];
            let recheck = rustix::time::Timespec::try_from(ROOM_RECHECK).ok();
            match poll(&mut fds, recheck.as_ref()) {
                Ok(_) => {
                    let events = fds[0].revents();
                    if !events.contains(PollFlags::OUT)
                        && events.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
                    {
                        return Err(ErrorKind::BrokenPipe.into());
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.output.flush()
    }
}

/// The running app and what is on its way to and from it.
struct Relay {
    link: Link,
    app: Waiting,
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
    /// Input the app took that is not acknowledged yet (acknowledgements wait for room in
    /// the output window, like any frame).
    taken: u64,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// The launcher is gone, and the app was told (`hang_up`).
    hung_up: bool,
    /// When the app's group gets SIGKILL (its launcher hung up).
    kill_at: Option<Instant>,
    /// Where the app's output lands first.
    buf: Vec<u8>,
}

/// What one `poll` entry stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Console,
    Stdin,
    Stdout,
    Stderr,
    Ended,
    /// The link's non-blocking output, while frames wait for it.
    Output,
}

impl Relay {
    /// Starts the app; a failed start is reported to the launcher, over the link given
    /// back.
    fn start(call: &Call, mut link: Link, reaper: Option<&Reaper>) -> Result<Self, Link> {
        let command = piped_app_command(call);
        // Before the app starts: a launcher that got nothing knows nothing of it ran.
        if call.flow {
            link.send(&Frame::StdinAck(0));
        }
        let spawned = match (command, reaper) {
            (Err(err), _) => Err(err),
            (Ok(mut command), Some(reaper)) => {
                let mut pipes = None;
                reaper
                    .spawn(|| {
                        let mut child = command.spawn()?;
                        pipes = Some(Pipes::of(&mut child));
                        Ok(child)
                    })
                    .map(|(pid, status)| (pid, Waiting::Reaper(status), pipes.unwrap_or_default()))
            }
            (Ok(mut command), None) => command.spawn().map(|mut child| {
                let pipes = Pipes::of(&mut child);
                let pid = i32::try_from(child.id()).unwrap_or(0);
                (pid, Waiting::Child(child), pipes)
            }),
        };
        let (pid, app, pipes) = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                let (message, code) = start_failure(call, &err);
                link.send(&Frame::Error(message));
                link.send(&Frame::Exit(ExitStatus::Exited(code)));
                return Err(link);
            }
        };
        let ended = rustix::process::Pid::from_raw(pid).and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        let Pipes(stdin, stdout, stderr) = pipes;
        let mut app = app;
        // An app that has ended (and been reaped) already: its pid may be another
        // process's by now, so the pidfd is not to be trusted.
        let status = app.status(false);
        let ended = if status.is_some() { None } else { ended };
        if let Some(pipe) = &stdin {
            // The loop must never wait for the app to read its input.
            let _ = rustix::io::ioctl_fionbio(pipe, true);
        }
        Ok(Relay {
            link,
            pid,
            ended,
            status,
            stdin,
            pending: Vec::new(),
            eof: false,
            flow: call.flow,
            taken: 0,
            stdout,
            stderr,
            app,
            hung_up: false,
            kill_at: None,
            buf: Vec::new(),
        })
    }

    /// Relays until the app has ended and its output is out, then sends the exit status.
    fn run(mut self) {
        // Frames that came right behind the call.
        self.handle_frames();
        while self.status.is_none() || self.stdout.is_some() || self.stderr.is_some() {
            self.step();
        }
        let status = self.status.unwrap_or(ExitStatus::Exited(125));
        if self.taken > 0 && !self.link.gone {
            // The last acknowledgement goes out whatever the window says: the call is over.
            let count = u32::try_from(self.taken).unwrap_or(u32::MAX);
            self.link.send(&Frame::StdinAck(count));
        }
        self.link.send(&Frame::Exit(status));
        self.link.finish();
    }

    /// One round: waits for whatever can move, and moves it.
    fn step(&mut self) {
        if self.link.gone && !self.hung_up {
            self.hang_up();
        }
        let ready = self.wait();
        if ready.iter().all(|(_, events)| events.is_empty()) {
            // Nothing moved for a while: the output is tried again (see `ROOM_RECHECK`).
            self.link.push();
        }
        for (source, events) in ready {
            if events.is_empty() {
                continue;
            }
            match source {
                Source::Console => self.take_frames(),
                Source::Stdin => self.feed_app(),
                Source::Stdout => self.output(Source::Stdout),
                Source::Stderr => self.output(Source::Stderr),
                Source::Ended => self.reap(true),
                Source::Output => self.link.writable(events),
            }
        }
        if self.status.is_none() {
            // Without a pidfd, or one the reaper may beat: look.
            self.reap(false);
        }
        self.send_acks();
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
        let wanted: [(Source, Option<std::os::fd::BorrowedFd<'_>>, PollFlags); 6] = [
            (
                Source::Console,
                (!self.link.gone && self.pending.len() < PENDING_LIMIT)
                    .then(|| self.link.input.as_fd()),
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
            (Source::Output, self.link.waiting_output(), PollFlags::OUT),
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
        let recheck = self.link.waiting_output().map(|_| ROOM_RECHECK);
        [looking, kill, recheck].into_iter().flatten().min()
    }

    /// Takes the launcher's frames.
    fn take_frames(&mut self) {
        self.link.fill();
        self.handle_frames();
    }

    /// Acts on the frames read so far.
    fn handle_frames(&mut self) {
        loop {
            match self.link.take() {
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
    }

    /// The launcher is gone: the app's group gets SIGHUP now and SIGKILL soon, and what it
    /// still writes goes nowhere.
    fn hang_up(&mut self) {
        self.hung_up = true;
        if self.status.is_none() {
            signal_group(self.pid, Signal::HUP.as_raw());
            self.kill_at = Some(Instant::now() + HANGUP_GRACE);
        }
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
        if self.flow {
            let count = u64::try_from(count).unwrap_or(u64::MAX);
            self.taken = self.taken.saturating_add(count);
        }
    }

    /// Acknowledges the input taken so far, in one frame, once the window has room for it.
    fn send_acks(&mut self) {
        let ack_len = Frame::StdinAck(0).encode().len();
        if self.taken > 0 && !self.link.gone && self.link.fits(ack_len) {
            let count = u32::try_from(self.taken).unwrap_or(u32::MAX);
            self.taken -= u64::from(count);
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
        self.buf.resize(room, 0);
        let buf = &mut self.buf;
        let read = match source {
            Source::Stdout => self.stdout.as_mut().map(|pipe| pipe.read(buf)),
            _ => self.stderr.as_mut().map(|pipe| pipe.read(buf)),
        };
        match read {
            Some(Ok(n)) if n > 0 => {
                let bytes = self.buf.get(..n).unwrap_or_default().to_vec();
                let frame = match source {
                    Source::Stdout => Frame::Stdout(bytes),
                    _ => Frame::Stderr(bytes),
                };
                self.link.send(&frame);
            }
            Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            _ => match source {
                Source::Stdout => self.stdout = None,
                _ => self.stderr = None,
            },
        }
    }

    /// Takes the app's exit status once it has ended; `ended`: the pidfd says it has.
    fn reap(&mut self, ended: bool) {
        if let Some(status) = self.app.status(ended) {
            self.status = Some(status);
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

/// How the app's exit status is learnt.
enum Waiting {
    /// Waited for here: nothing else in the process reaps children.
    Child(Child),
    /// The process's reaper hands it over.
    Reaper(Receiver<ExitStatus>),
}

impl Waiting {
    /// The status once the app has ended; `ended`: it has (its pidfd said so), and the
    /// reaper's hand-over is a moment away at most.
    fn status(&mut self, ended: bool) -> Option<ExitStatus> {
        match self {
            // An error (it was reaped elsewhere) must not leave the loop waiting for ever.
            Waiting::Child(child) => match child.try_wait() {
                Ok(status) => status.map(exit_status),
                Err(_) => Some(ExitStatus::Exited(125)),
            },
            Waiting::Reaper(status) if ended => {
                Some(status.recv().unwrap_or(ExitStatus::Exited(125)))
            }
            Waiting::Reaper(status) => status.try_recv().ok(),
        }
    }
}

/// The app's ends of its three pipes.
#[derive(Default)]
struct Pipes(Option<ChildStdin>, Option<ChildStdout>, Option<ChildStderr>);

impl Pipes {
    fn of(child: &mut Child) -> Self {
        Pipes(child.stdin.take(), child.stdout.take(), child.stderr.take())
    }
}
