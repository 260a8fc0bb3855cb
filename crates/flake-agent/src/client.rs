// SPDX-License-Identifier: MIT
//! The launcher's side of a call (see [`crate::proto`]), shared by the container and the
//! VM launchers.
//!
//! Without a terminal a container launcher hands its own stdin, stdout and stderr to the
//! agent, so the app reads and writes them directly: nothing is copied, pipes and EOF
//! behave as they do for a local program. Into a VM descriptors cannot travel, so the
//! streams are relayed as frames instead, stdin EOF as a half-close. With a terminal the
//! agent runs the app on a pty; the launcher puts the caller's terminal in raw mode,
//! relays bytes and window-size changes, and restores the terminal before it exits.
//! Signals the launcher receives are forwarded to the app's process group in every mode.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::termios::{self, OptionalActions, Termios};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

use crate::proto::{
    window_cost, Call, ExitStatus, Frame, ProtoError, WinSize, CHUNK, STDIN_WINDOW,
};
use crate::transport::send_call;

/// `SIGPIPE` as the wire carries signals (Linux numbers them alike on every architecture).
const SIGPIPE_NUMBER: u8 = 13;

/// Signals forwarded to the app.
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Connects to the agent socket at `path`.
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(path)
}

/// How the app's streams travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// The caller's stdin, stdout and stderr are handed over (containers).
    Descriptors,
    /// stdin, stdout and stderr are relayed as frames (VMs).
    Frames,
    /// A pty inside the instance, relayed to the caller's terminal.
    Terminal,
}

/// What to run in the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Program and arguments.
    pub argv: Vec<Vec<u8>>,
    /// How the streams travel.
    pub streams: Streams,
    /// `TERM` of the caller, for terminal calls; it comes after `env`, so it wins over a
    /// `TERM` there (it describes the caller's terminal).
    pub term: Option<Vec<u8>>,
    /// Environment, `KEY=VALUE`, set on top of the instance's own (a VM image's `Env`).
    pub env: Vec<Vec<u8>>,
    /// Working directory of the app; empty for the instance's.
    pub cwd: Vec<u8>,
    /// The user the app runs as (`USER[:GROUP]`, a VM image's `User`); empty for the
    /// instance's own.
    pub user: Vec<u8>,
    /// The launcher's name, prefixed to the errors the instance reports.
    pub launcher: &'static str,
    /// Acknowledge output (the channel drops what the host does not take at once: a VM's
    /// plain virtio console).
    pub output_acks: bool,
    /// The agent acknowledges stdin from the start of every call it runs (`StdinAck(0)`
    /// comes first): stdin is read only after that, so a call the instance refuses has
    /// taken none of the caller's input and can be made again. Only for agents known to
    /// do so; one that never acknowledges would never get input.
    pub stdin_on_ack: bool,
    /// How long the first answer to the call (an agent with `stdin_on_ack` acknowledges at
    /// once) may take; `None`: as long as it takes.
    pub answer_within: Option<std::time::Duration>,
}

/// Runs `request` over `stream` and returns the app's exit status.
///
/// The connection is shut down when the call ends, although threads still hold clones of
/// it: the other end learns at once that the call is over.
pub fn run(stream: UnixStream, request: &Request) -> Result<ExitStatus, ProtoError> {
    run_with(stream, request, false).0
}

/// [`run`] over a stream that later calls use too (a VM's virtio port): after a call that
/// ended with its status, it hangs up only between frames and once the other end has read
/// all it sent (the protocol's "Ending a call"). The second value says whether it did: if
/// not, the stream may hold the start of a frame whose rest never comes.
pub fn run_shared(stream: UnixStream, request: &Request) -> (Result<ExitStatus, ProtoError>, bool) {
    run_with(stream, request, true)
}

fn run_with(
    stream: UnixStream,
    request: &Request,
    shared: bool,
) -> (Result<ExitStatus, ProtoError>, bool) {
    let (handle, writer) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(handle), Ok(writer)) => (handle, Arc::new(Mutex::new(writer))),
        (Err(err), _) | (_, Err(err)) => return (Err(err.into()), false),
    };
    let result = run_call(stream, Arc::clone(&writer), request);
    let clean = shared && result.is_ok() && hang_up(&handle, &writer);
    let _ = handle.shutdown(std::net::Shutdown::Both);
    (result, clean)
}

/// How long hanging up may take in all: waiting for a frame another thread is writing,
/// then for the other end to read the rest.
const HANG_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Hangs up between two frames, and only once the other end has read everything sent;
/// false if that did not happen within [`HANG_UP_WAIT`].
///
/// QEMU drops what it has not read yet from a caller that closed its port connection. So
/// a frame that the stdin relay or the signal forwarder is writing is finished first.
/// If the other end has read every byte by then (the usual case), that is all; else the
/// sending half is shut (nothing more goes out), and what the other end still sends is
/// read and dropped until it closes too, which QEMU does once it has read up to that
/// point.
fn hang_up(handle: &UnixStream, writer: &Mutex<UnixStream>) -> bool {
    let deadline = std::time::Instant::now() + HANG_UP_WAIT;
    let between_frames = loop {
        match writer.try_lock() {
            Ok(guard) => break Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => break Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => break None,
        }
    };
    let whole_frames = between_frames.is_some();
    if whole_frames && unread(handle) == Some(0) {
        // The other end has read every byte already (the usual case): nothing to lose.
        // Shut while the lock is held, so no thread starts a frame in between.
        let _ = handle.shutdown(std::net::Shutdown::Both);
        return true;
    }
    let _ = handle.shutdown(std::net::Shutdown::Write);
    drop(between_frames);
    let mut rest = [0u8; 16 * 1024];
    let mut reader = handle;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || reader.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match reader.read(&mut rest) {
            Ok(0) => return whole_frames,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// What the kernel still holds of the data sent on `stream` for its other end to read
/// (`SIOCOUTQ`, in its own accounting); 0: the other end has read everything.
///
/// rustix has no typed call for it, so this is a direct `ioctl`.
#[allow(unsafe_code)]
fn unread(stream: &UnixStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: the descriptor is open for the duration of the call, and SIOCOUTQ (equal to
    // TIOCOUTQ) writes one int to the live local it is given.
    let rc = unsafe {
        libc::ioctl(
            stream.as_raw_fd(),
            libc::TIOCOUTQ,
            std::ptr::addr_of_mut!(queued),
        )
    };
    if rc < 0 {
        return None;
    }
    usize::try_from(queued).ok()
}

fn run_call(
    stream: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    request: &Request,
) -> Result<ExitStatus, ProtoError> {
    match request.streams {
        Streams::Terminal => run_terminal(stream, writer, request),
        Streams::Descriptors => {
            let call = Call {
                argv: request.argv.clone(),
                env: request.env.clone(),
                cwd: request.cwd.clone(),
                user: request.user.clone(),
                ..Call::default()
            };
            let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
            send_call(
                &stream,
                &call,
                Some([stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]),
            )?;
            let _forwarding = forward_signals(Arc::clone(&writer), false)?;
            let answer = request.answer_within;
            wait_for_exit(
                stream,
                request.launcher,
                &Window::open(),
                None,
                answer,
                |_| Ok(()),
            )
        }
        Streams::Frames => {
            let call = Call {
                argv: request.argv.clone(),
                frames: true,
                flow: true,
                output_acks: request.output_acks,
                env: request.env.clone(),
                cwd: request.cwd.clone(),
                user: request.user.clone(),
                ..Call::default()
            };
            // `/dev/null` gives nothing to lose or wait for: its EOF goes with the call, in
            // one write, and no thread relays it.
            let null = stdin_is_null();
            let mut first = Frame::Call(call).encode();
            if null {
                first.extend(Frame::Stdin(Vec::new()).encode());
            }
            // Signals are forwarded from before the call goes out; one that comes before
            // it is out waits for the writer, so the call's frame is always first.
            let _forwarding = {
                let mut stream = writer
                    .lock()
                    .map_err(|_| std::io::Error::other("writer poisoned"))?;
                let forwarding = forward_signals(Arc::clone(&writer), false)?;
                stream.write_all(&first)?;
                forwarding
            };
            let window = Window::open();
            if !null {
                relay_stdin(
                    Arc::clone(&writer),
                    Arc::clone(&window),
                    request.stdin_on_ack,
                );
            }
            let mut stdout = std::io::stdout().lock();
            let acks = request.output_acks.then_some(&*writer);
            let answer = request.answer_within;
            let mut reader_gone = false;
            wait_for_exit(stream, request.launcher, &window, acks, answer, |bytes| {
                // A reader that went away (`app | head`) must not stop the app's stderr
                // or its exit status from arriving. The app itself gets the `SIGPIPE` a
                // local program would get from its next write, once.
                let written = stdout.write_all(bytes).and_then(|()| stdout.flush());
                if let Err(err) = written {
                    if err.kind() == std::io::ErrorKind::BrokenPipe && !reader_gone {
                        reader_gone = true;
                        let _ = send(&writer, &Frame::Signal(SIGPIPE_NUMBER));
                    }
                }
                Ok(())
            })
        }
    }
}

/// The environment of a terminal call: the request's, then the caller's `TERM`.
fn terminal_env(request: &Request) -> Vec<Vec<u8>> {
    let term = request
        .term
        .iter()
        .map(|t| [b"TERM=".as_slice(), t].concat());
    request.env.iter().cloned().chain(term).collect()
}

fn run_terminal(
    stream: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    request: &Request,
) -> Result<ExitStatus, ProtoError> {
    let size = window_size();
    let call = Call {
        terminal: true,
        frames: false,
        flow: true,
        output_acks: request.output_acks,
        size,
        argv: request.argv.clone(),
        env: terminal_env(request),
        cwd: request.cwd.clone(),
        user: request.user.clone(),
    };
    send_call(&stream, &call, None)?;
    // Declared before the raw mode, so dropped after it: a signal that takes its default
    // action again (the call is over) finds the terminal restored.
    let _forwarding = forward_signals(Arc::clone(&writer), true)?;
    let _raw = RawMode::enter();
    let window = Window::open();
    relay_stdin(
        Arc::clone(&writer),
        Arc::clone(&window),
        request.stdin_on_ack,
    );
    let mut stdout = std::io::stdout().lock();
    let acks = request.output_acks.then_some(&*writer);
    let answer = request.answer_within;
    wait_for_exit(stream, request.launcher, &window, acks, answer, |bytes| {
        stdout.write_all(bytes)?;
        stdout.flush()
    })
}

/// Reads frames until `Exit`, passing terminal output and stdout to `output`; the first
/// frame other than `Ready` must come within `answer_within`.
fn wait_for_exit(
    stream: UnixStream,
    launcher: &str,
    window: &Window,
    acks: Option<&Mutex<UnixStream>>,
    answer_within: Option<std::time::Duration>,
    mut output: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<ExitStatus, ProtoError> {
    let mut reader = std::io::BufReader::with_capacity(CHUNK + 8, stream);
    let seconds = answer_within.map_or(0, |d| d.as_secs());
    let mut deadline = answer_within.map(|d| std::time::Instant::now() + d);
    let mut stderr = std::io::stderr();
    // However the call ends, a stdin relay waiting for room must not wait forever.
    let _close = CloseOnDrop(window);
    let mut acks = acks;
    let mut answered = false;
    loop {
        if let Some(deadline) = deadline {
            // Repeated `Ready`s do not count as an answer, nor do they extend the time.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ProtoError::NoAnswer { seconds });
            }
            reader.get_ref().set_read_timeout(Some(left))?;
        }
        let frame = match Frame::read_counted(&mut reader) {
            Ok(Some((frame, len))) => {
                answered |= !matches!(frame, Frame::Ready(_));
                if answered && deadline.take().is_some() {
                    reader.get_ref().set_read_timeout(None)?;
                }
                let counted = !matches!(frame, Frame::Ready(_) | Frame::Exit(_));
                if let (Some(writer), true) = (acks, counted) {
                    let cost = u32::try_from(window_cost(len)).unwrap_or(u32::MAX);
                    // A guest that has hung up may still have left frames to read.
                    if send(writer, &Frame::OutputAck(cost)).is_err() {
                        acks = None;
                    }
                }
                Some(frame)
            }
            // A newer agent's frame, read whole: acknowledged (it may count) and skipped.
            Err(ProtoError::UnknownKind { len, .. }) => {
                answered = true;
                if deadline.take().is_some() {
                    reader.get_ref().set_read_timeout(None)?;
                }
                if let Some(writer) = acks {
                    let cost = u32::try_from(window_cost(len)).unwrap_or(u32::MAX);
                    if send(writer, &Frame::OutputAck(cost)).is_err() {
                        acks = None;
                    }
                }
                continue;
            }
            Ok(None) => None,
            Err(ProtoError::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ProtoError::NoAnswer { seconds })
            }
            // Dropped before anything but `Ready`: like a close at that point, nothing of
            // the call ran (an instance acknowledges a call before it starts the app).
            Err(ProtoError::Io(err))
                if !answered
                    && matches!(
                        err.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(ProtoError::Unanswered)
            }
            Err(err) => return Err(err),
        };
        match frame {
            Some(Frame::StdinAck(count)) => window.acknowledged(count),
            Some(Frame::Closing) => {
                return Err(ProtoError::Refused {
                    stdin_read: window.read_any(),
                })
            }
            // A guest init repeats `Ready` until it has read the call.
            Some(Frame::Ready(_)) => {}
            Some(Frame::Output(bytes) | Frame::Stdout(bytes)) => output(&bytes)?,
            Some(Frame::Stderr(bytes)) => {
                let _ = stderr.write_all(&bytes);
            }
            Some(Frame::Error(message)) => eprintln!("{launcher}: {message}"),
            Some(Frame::Exit(status)) => return Ok(status),
            Some(_) => return Err(ProtoError::Malformed("unexpected frame from the agent")),
            // Not even the first `StdinAck` of a call the agent started.
            None if !answered => return Err(ProtoError::Unanswered),
            None => {
                return Err(ProtoError::Malformed(
                    "the agent closed the call without an exit status",
                ))
            }
        }
    }
}

fn send(writer: &Mutex<UnixStream>, frame: &Frame) -> std::io::Result<()> {
    send_bytes(writer, &frame.encode())
}

/// Writes encoded frames whole, none interleaved with another thread's.
fn send_bytes(writer: &Mutex<UnixStream>, bytes: &[u8]) -> std::io::Result<()> {
    let mut stream = writer
        .lock()
        .map_err(|_| std::io::Error::other("writer poisoned"))?;
    stream.write_all(bytes)
}

/// Signals go to the app of the call while this lives; once the call is over (it is
/// dropped), they take their default action again, so a Ctrl-C while the launcher cleans
/// up ends it as it would end any program, rather than being forwarded to an app that is
/// gone. A launcher that makes a call again (the instance refused it) forwards to the new
/// call: one listener serves the whole process.
struct Forwarding(u64);

impl Drop for Forwarding {
    fn drop(&mut self) {
        let mut target = signal_target();
        // Only its own call's: a later call's target stays.
        if target.as_ref().is_some_and(|t| t.id == self.0) {
            *target = None;
        }
    }
}

/// The call the process's signals go to: its connection, and whether it has a terminal
/// (which also gets window-size changes).
#[derive(Clone)]
struct Target {
    id: u64,
    writer: Arc<Mutex<UnixStream>>,
    terminal: bool,
}

fn signal_target() -> std::sync::MutexGuard<'static, Option<Target>> {
    static TARGET: Mutex<Option<Target>> = Mutex::new(None);
    TARGET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forwards signals (and, with a terminal, window-size changes) to the call on `writer`,
/// from the process's listener thread (started on first use).
fn forward_signals(writer: Arc<Mutex<UnixStream>>, terminal: bool) -> std::io::Result<Forwarding> {
    static LISTENING: Mutex<bool> = Mutex::new(false);
    let mut listening = LISTENING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*listening {
        let mut wanted = FORWARDED.to_vec();
        wanted.push(SIGWINCH);
        let mut signals = Signals::new(wanted)?;
        std::thread::spawn(move || {
            for signal in signals.forever() {
                deliver(signal);
            }
        });
        *listening = true;
    }
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    *signal_target() = Some(Target {
        id,
        writer,
        terminal,
    });
    Ok(Forwarding(id))
}

fn deliver(signal: i32) {
    let target = signal_target().clone();
    let Some(Target {
        writer, terminal, ..
    }) = target
    else {
        if signal != SIGWINCH {
            let _ = signal_hook::low_level::emulate_default_handler(signal);
        }
        return;
    };
    let frame = match signal {
        SIGWINCH if terminal => Frame::Resize(window_size()),
        SIGWINCH => return,
        other => Frame::Signal(u8::try_from(other).unwrap_or(15)),
    };
    // A connection that broke ends the call with an error: nothing to do here.
    let _ = send(&writer, &frame);
}

/// Copies the caller's stdin to the agent; an empty frame marks EOF. Once the agent has
/// acknowledged stdin, it waits for room in the window first, without holding the writer:
/// signals and window changes go out meanwhile. `on_ack`: nothing is read before the
/// agent's first acknowledgement (and nothing at all if the call ends first).
fn relay_stdin(writer: Arc<Mutex<UnixStream>>, window: Arc<Window>, on_ack: bool) {
    std::thread::spawn(move || {
        // `/dev/null` gives nothing to lose: its EOF goes with the call, as early as ever.
        if on_ack && !stdin_is_null() && !window.wait_active() {
            return;
        }
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if !window.reserve(n) {
                break;
            }
            if send(&writer, &Frame::Stdin(buf[..n].to_vec())).is_err() || n == 0 {
                break;
            }
        }
    });
}

/// Whether the caller's stdin is `/dev/null` (a character device 1:3).
fn stdin_is_null() -> bool {
    rustix::fs::fstat(std::io::stdin()).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
            && st.st_rdev == rustix::fs::makedev(1, 3)
    })
}

/// The launcher's side of stdin flow control (see [`crate::proto`]).
#[derive(Debug, Default)]
struct Window {
    state: Mutex<WindowState>,
    room: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct WindowState {
    /// The agent acknowledges stdin: the window applies.
    active: bool,
    /// Bytes sent and not yet acknowledged.
    outstanding: u64,
    /// The call is over.
    closed: bool,
    /// Bytes were read from the caller's stdin.
    read_any: bool,
}

impl Window {
    fn open() -> Arc<Self> {
        Arc::new(Window::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `n` more bytes fit; false once the call is over.
    fn reserve(&self, n: usize) -> bool {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        let mut state = self.lock();
        state.read_any |= n > 0;
        while state.active
            && !state.closed
            && state.outstanding > 0
            && state.outstanding.saturating_add(n) > STDIN_WINDOW
        {
            state = self
                .room
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.outstanding = state.outstanding.saturating_add(n);
        !state.closed
    }

    fn acknowledged(&self, count: u32) {
        let mut state = self.lock();
        state.active = true;
        state.outstanding = state.outstanding.saturating_sub(u64::from(count));
        self.room.notify_all();
    }

    /// Waits for the agent's first acknowledgement; false if the call ended first.
    fn wait_active(&self) -> bool {
        let mut state = self.lock();
        while !state.active && !state.closed {
            state = self
                .room
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        !state.closed
    }

    fn read_any(&self) -> bool {
        self.lock().read_any
    }

    fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
    }
}

/// Closes the window when the call ends.
struct CloseOnDrop<'a>(&'a Window);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn window_size() -> WinSize {
    termios::tcgetwinsize(std::io::stdout())
        .map(|w| WinSize {
            rows: w.ws_row,
            cols: w.ws_col,
        })
        .unwrap_or(WinSize { rows: 24, cols: 80 })
}

/// The caller's terminal in raw mode, restored on drop.
struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(original) = &saved {
            let mut raw = original.clone();
            raw.make_raw();
            let _ = termios::tcsetattr(&stdin, OptionalActions::Now, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(original) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, original);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_call_has_the_request_env_then_the_callers_term() {
        let mut request = Request {
            argv: vec![b"/bin/sh".to_vec()],
            streams: Streams::Terminal,
            term: Some(b"xterm-256color".to_vec()),
            env: vec![b"TERM=dumb".to_vec(), b"A=1".to_vec()],
            cwd: Vec::new(),
            user: Vec::new(),
            launcher: "test",
            output_acks: false,
            stdin_on_ack: false,
            answer_within: None,
        };
        let want: Vec<Vec<u8>> = vec![
            b"TERM=dumb".to_vec(),
            b"A=1".to_vec(),
            b"TERM=xterm-256color".to_vec(),
        ];
        assert_eq!(terminal_env(&request), want);
        request.term = None;
        assert_eq!(terminal_env(&request), &want[..2]);
    }
}
