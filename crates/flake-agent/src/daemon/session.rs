// SPDX-License-Identifier: MIT
//! What every call mode shares: sending frames from several threads, and watching the
//! connection for control frames while the app runs. Connections are plain byte streams
//! (a unix socket in a container, a virtio console port or vsock in a VM), so both halves
//! are trait objects.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::Signal;
use rustix::process::{kill_process_group, Pid};

use crate::proto::{ExitStatus, Frame, ProtoError};

/// The write half of a connection, shared by the threads of one call.
#[derive(Clone)]
pub struct Writer {
    stream: Arc<Mutex<Writing>>,
    credit: Arc<Credit>,
}

/// The connection, and whether the call's `Exit` has gone out: a call says nothing after
/// it (a late `StdinAck` would reach whoever uses the guest channel port next).
struct Writing {
    stream: Box<dyn Write + Send>,
    ended: bool,
}

/// Output flow control (see [`crate::proto`]): frame bytes sent and not acknowledged.
#[derive(Debug, Default)]
struct Credit {
    /// (limited, outstanding, the call has ended)
    state: Mutex<(bool, u64, bool)>,
    room: std::sync::Condvar,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Wraps the write half of a connection.
    pub fn new(stream: impl Write + Send + 'static) -> Self {
        Writer {
            stream: Arc::new(Mutex::new(Writing {
                stream: Box::new(stream),
                ended: false,
            })),
            credit: Arc::default(),
        }
    }

    /// From now on, keeps at most `OUTPUT_WINDOW` bytes unacknowledged (the launcher
    /// asked for output flow control).
    pub fn limit_output(&self) {
        self.credit.lock().0 = true;
    }

    /// The launcher received `count` bytes of frames.
    pub fn acknowledged(&self, count: u32) {
        let mut state = self.credit.lock();
        state.1 = state.1.saturating_sub(u64::from(count));
        self.credit.room.notify_all();
    }

    /// Sends one frame; errors mean the launcher is gone, or the call has ended (its
    /// `Exit` was sent). Under output flow control it first waits for room, without
    /// holding the connection.
    pub fn send(&self, frame: &Frame) -> std::io::Result<()> {
        let bytes = frame.encode();
        // `Ready` precedes the call and is never acknowledged. Once `Exit` is out, no
        // room is waited for (no acknowledgement comes after the end).
        if !matches!(frame, Frame::Ready(_)) {
            self.credit.reserve(crate::proto::window_cost(bytes.len()));
        }
        let mut writing = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if writing.ended {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        writing.ended = matches!(frame, Frame::Exit(_));
        if writing.ended {
            // Whoever waits for room gives up.
            self.credit.lock().2 = true;
            self.credit.room.notify_all();
        }
        writing.stream.write_all(&bytes)?;
        writing.stream.flush()
    }

    /// Reports an app that could not be started (127: not found, 126: not executable).
    pub fn start_failed(&self, call: &crate::proto::Call, err: &std::io::Error) {
        let (message, code) = crate::command::start_failure(call, err);
        self.fail(&message, code);
    }

    /// Sends an error followed by its exit status, ending the call.
    pub fn fail(&self, message: &str, code: u8) {
        let _ = self.send(&Frame::Error(message.to_string()));
        let _ = self.send(&Frame::Exit(ExitStatus::Exited(code)));
    }
}

impl Credit {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, u64, bool)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `len` more fits (a frame alone always does), then counts it.
    fn reserve(&self, len: u64) {
        let mut state = self.lock();
        while state.0
            && !state.2
            && state.1 > 0
            && state.1.saturating_add(len) > crate::proto::OUTPUT_WINDOW
        {
            state = self
                .room
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.0 {
            state.1 = state.1.saturating_add(len);
        }
    }
}

/// Under stdin flow control (`flow`), tells the launcher that input will be acknowledged:
/// `StdinAck(0)`, sent before the app starts, so that a launcher that has nothing from the
/// call knows nothing of it ran.
pub fn announce_acks(writer: &Writer, flow: bool) -> std::io::Result<()> {
    if flow {
        writer.send(&Frame::StdinAck(0))?;
    }
    Ok(())
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: i32, signal: i32) {
    if let (Some(pid), Some(signal)) = (Pid::from_raw(pid), Signal::from_named_raw(signal)) {
        let _ = kill_process_group(pid, signal);
    }
}

/// Where `Stdin` and `Resize` frames go: a pty master, or the app's stdin pipe.
pub trait Input: Send + 'static {
    /// Input bytes; empty means EOF.
    fn input(&mut self, bytes: &[u8]);
    /// Window size change (ignored without a terminal).
    fn resize(&mut self, _rows: u16, _cols: u16) {}
}

/// Reads control frames until the connection ends. If it ends before the app (`done` not
/// yet set), the launcher died: the app's group gets SIGHUP, then SIGKILL.
///
/// With `acks` (the launcher asked for stdin flow control), input goes to `terminal` from a
/// thread of its own and is acknowledged there, so this loop never waits for the app to
/// read its stdin and a `Signal` behind a heap of input still arrives at once. Without it
/// (a launcher that does not limit its input), input is passed on here, as it comes.
///
/// `OutputAck`s go to `writer` (see [`Writer::limit_output`]).
pub fn watch(
    reader: impl Read + Send + 'static,
    pid: i32,
    done: Arc<AtomicBool>,
    terminal: Option<Box<dyn Input>>,
    writer: Option<Writer>,
    flow: bool,
) {
    std::thread::spawn(move || {
        let mut input = match (terminal, writer.clone()) {
            (Some(terminal), Some(acks)) if flow => queue_input(terminal, acks),
            (terminal, _) => Deliver::Inline(terminal),
        };
        let mut reader = std::io::BufReader::new(reader);
        loop {
            match Frame::read_from(&mut reader) {
                Ok(Some(Frame::Signal(signal))) => signal_group(pid, i32::from(signal)),
                Ok(Some(Frame::Stdin(bytes))) => input.pass(Pending::Bytes(bytes)),
                Ok(Some(Frame::Resize(size))) => input.pass(Pending::Resize(size.rows, size.cols)),
                Ok(Some(Frame::OutputAck(count))) => {
                    if let Some(writer) = &writer {
                        writer.acknowledged(count);
                    }
                }
                Ok(Some(_)) | Err(ProtoError::UnknownKind { .. }) => {}
                Ok(None) | Err(_) => break,
            }
        }
        drop(input);
        if !done.load(Ordering::SeqCst) {
            signal_group(pid, Signal::HUP.as_raw());
            std::thread::sleep(Duration::from_secs(2));
            if !done.load(Ordering::SeqCst) {
                signal_group(pid, Signal::KILL.as_raw());
            }
        }
    });
}

/// Input for the app, in the order it came.
enum Pending {
    Bytes(Vec<u8>),
    Resize(u16, u16),
}

/// Where the watch loop puts input.
enum Deliver {
    Inline(Option<Box<dyn Input>>),
    Queued(std::sync::mpsc::Sender<Pending>, Arc<Backlog>),
}

impl Deliver {
    fn pass(&mut self, pending: Pending) {
        match self {
            Deliver::Inline(Some(terminal)) => deliver(terminal.as_mut(), &pending),
            Deliver::Inline(None) => {}
            Deliver::Queued(queue, backlog) => {
                backlog.take(pending.cost());
                let _ = queue.send(pending);
            }
        }
    }
}

/// The most input bytes queued for an app that does not read them. A launcher keeps
/// [`crate::proto::STDIN_WINDOW`] unacknowledged, plus what it sent before the first
/// acknowledgement reached it (a moment's worth of its stdin): far below this. A launcher
/// that ignores the window is not read further until the app takes some, so it cannot
/// make the agent, which may run as root, hold its input without bound.
pub const INPUT_BACKLOG: u64 = 16 << 20;

/// Input queued for the app and not yet handed to it, in bytes.
#[derive(Debug, Default)]
struct Backlog {
    /// (queued bytes, the delivering thread has ended)
    state: Mutex<(u64, bool)>,
    room: std::sync::Condvar,
}

impl Backlog {
    /// Counts `cost` more bytes in, first waiting while that would pass [`INPUT_BACKLOG`]
    /// (one item alone always passes).
    fn take(&self, cost: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        while state.0 > 0 && state.0.saturating_add(cost) > INPUT_BACKLOG && !state.1 {
            state = match self.room.wait(state) {
                Ok(state) => state,
                Err(_) => return,
            };
        }
        state.0 = state.0.saturating_add(cost);
    }

    /// Counts `cost` bytes out: the app has them.
    fn give(&self, cost: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = state.0.saturating_sub(cost);
        }
        self.room.notify_all();
    }

    /// The delivering thread has ended: nothing waits for room any more.
    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.room.notify_all();
    }
}

impl Pending {
    /// What the item counts in the backlog: its bytes, a resize as a small frame.
    fn cost(&self) -> u64 {
        match self {
            Pending::Bytes(bytes) => u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            Pending::Resize(..) => 16,
        }
    }
}

fn deliver(terminal: &mut dyn Input, pending: &Pending) {
    match pending {
        Pending::Bytes(bytes) => terminal.input(bytes),
        Pending::Resize(rows, cols) => terminal.resize(*rows, *cols),
    }
}

/// Starts the thread that hands input to `terminal` and acknowledges it. The queue holds
/// what the launcher's window lets it send, and never more than [`INPUT_BACKLOG`].
fn queue_input(terminal: Box<dyn Input>, acks: Writer) -> Deliver {
    let (queue, pending) = std::sync::mpsc::channel();
    let backlog = Arc::new(Backlog::default());
    let counted = Arc::clone(&backlog);
    // Sent from the new thread: the watch loop must never wait for output room, since it
    // is what reads the acknowledgements that make room.
    std::thread::spawn(move || {
        hand_over(terminal, &pending, &acks, &counted);
        counted.close();
    });
    Deliver::Queued(queue, backlog)
}

/// Hands the queued input to `terminal` in order, acknowledging each piece, until the
/// queue ends or the acknowledgements cannot be sent.
fn hand_over(
    mut terminal: Box<dyn Input>,
    pending: &std::sync::mpsc::Receiver<Pending>,
    acks: &Writer,
    backlog: &Backlog,
) {
    for item in pending {
        deliver(terminal.as_mut(), &item);
        backlog.give(item.cost());
        if let Pending::Bytes(bytes) = &item {
            let count = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            if count > 0 && acks.send(&Frame::StdinAck(count)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Endless `Stdin` frames, counting the bytes read from it.
    struct Flood {
        frame: Vec<u8>,
        at: usize,
        read: Arc<AtomicU64>,
    }

    impl Read for Flood {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.frame.len() - self.at);
            buf[..n].copy_from_slice(&self.frame[self.at..self.at + n]);
            self.at = (self.at + n) % self.frame.len();
            self.read.fetch_add(n as u64, Ordering::SeqCst);
            Ok(n)
        }
    }

    /// An app that never reads its stdin.
    struct Deaf(std::sync::mpsc::Receiver<()>);

    impl Input for Deaf {
        fn input(&mut self, _bytes: &[u8]) {
            let _ = self.0.recv();
        }
    }

    #[test]
    fn a_launcher_ignoring_the_stdin_window_cannot_queue_input_without_bound() {
        let read = Arc::new(AtomicU64::new(0));
        let flood = Flood {
            frame: Frame::Stdin(vec![7; crate::proto::CHUNK]).encode(),
            at: 0,
            read: Arc::clone(&read),
        };
        let (_release, deaf) = std::sync::mpsc::channel();
        // `done` is set: the loop never signals a process group, whatever happens.
        let done = Arc::new(AtomicBool::new(true));
        let acks = Writer::new(std::io::sink());
        watch(
            flood,
            i32::MAX,
            done,
            Some(Box::new(Deaf(deaf))),
            Some(acks),
            true,
        );
        std::thread::sleep(Duration::from_millis(1500));
        let taken = read.load(Ordering::SeqCst);
        let bound = INPUT_BACKLOG + 4 * crate::proto::CHUNK as u64;
        assert!(taken > 0, "nothing was read");
        assert!(
            taken <= bound,
            "{taken} bytes read for an app that reads none"
        );
    }
}
