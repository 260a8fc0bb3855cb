// SPDX-License-Identifier: MIT
//! Wire format between a launcher and the agent of a resumable instance.
//!
//! The agent listens on a unix stream socket in the instance's private state directory. One
//! connection carries one call. Every message is a frame:
//!
//! ```text
//! +----------------+-----------+------------------+
//! | length: u32 LE | kind: u8  | payload          |
//! +----------------+-----------+------------------+
//!   length counts kind + payload; at most MAX_FRAME bytes
//! ```
//!
//! Strings and byte strings inside payloads are `u32 LE length + bytes`; lists are
//! `u32 LE count + items`. Frames, in the order they may appear:
//!
//! | kind | name    | direction      | payload                                               |
//! |------|---------|----------------|-------------------------------------------------------|
//! | 1    | Call    | pilot -> agent | version u16, flags u8 (bit 0: terminal, bit 1: stdio as frames, bit 2: stdin flow control, bit 3: output flow control, bit 4: a user follows), rows u16, cols u16, argv list, env list (`KEY=VALUE`), cwd bytes (empty: the instance's), with bit 4: user bytes (`USER[:GROUP]`, names or numbers) |
//! | 2    | Stdin   | pilot -> agent | bytes (terminal or frame mode); an empty payload is EOF (a half-close) |
//! | 3    | Resize  | pilot -> agent | rows u16, cols u16                                    |
//! | 4    | Signal  | pilot -> agent | signal number u8, delivered to the app's process group |
//! | 5    | Output  | agent -> pilot | bytes from the app's terminal (terminal mode only)    |
//! | 6    | Exit    | agent -> pilot | kind u8 (0: exited, 1: killed by signal), value u8    |
//! | 7    | Error   | agent -> pilot | message bytes; the call failed before the app ran, an Exit follows |
//! | 8    | Stdout  | agent -> pilot | bytes the app wrote to stdout (frame mode only)       |
//! | 9    | Stderr  | agent -> pilot | bytes the app wrote to stderr (frame mode only)       |
//! | 10   | Shutdown| pilot -> agent | empty; instead of a `Call`: end the instance (a VM's init powers off) |
//! | 11   | Ready   | agent -> pilot | version u16; sent first on a channel that cannot tell the host it is open (a VM's virtio console): the pilot sends its `Call` only after it |
//! | 12   | StdinAck| agent -> pilot | count u32: that many bytes of `Stdin` were passed on to the app (or dropped, its stdin being closed) |
//! | 13   | OutputAck| pilot -> agent | count u32: the [`window_cost`] of frames that arrived from the agent |
//! | 14   | Closing | agent -> pilot | empty; instead of running a `Call`: the instance is powering off (a VM after its idle time) and nothing of the call ran, so the pilot may start the instance again and repeat it |
//! | 15   | Resync  | pilot -> agent | seconds u64, nanoseconds u32 (below 10^9; the host's wall clock), 32 bytes of host entropy; before the `Call` of a one-shot VM that may be saved or was restored from a saved state: the guest sets its clock, reseeds its random generator, attaches its overlay disk, and answers `Resynced` (or `Error` and `Exit` 125 when the disk fails) |
//! | 16   | Resynced| agent -> pilot | u8: 1 when the clock and the random generator were taken, 0 when the guest cannot reseed its generator (its VM must not be saved or restored); the guest then waits for the `Call` |
//!
//! Without a terminal, the `Call` frame carries the pilot's stdin, stdout and stderr as
//! three file descriptors (`SCM_RIGHTS`); the app reads and writes them directly, so no byte
//! of its I/O passes through the agent. Where descriptors cannot travel (into a VM, over a
//! virtio console or vsock), frame mode carries the three streams as `Stdin`, `Stdout` and
//! `Stderr` frames instead. With a terminal, the agent runs the app on a pty
//! and relays it as `Stdin`/`Output` frames. Either way the connection ends with `Exit`.
//! A pilot that disconnects before `Exit` makes the agent kill the app's process group.
//!
//! **Ending a call.** Nothing follows `Exit`: the agent sends no late acknowledgement. On a
//! VM's virtio port, which is one stream for all its callers in turn, the pilot hangs up
//! between frames and only once the other end has read all it sent (if it has not yet,
//! the pilot shuts its sending half and reads until that end closes): QEMU drops what it
//! has not read from a caller that closed, and the guest would take the next caller's
//! `Call` for the rest of a cut frame.
//!
//! **Stdin flow control.** An app that does not read its stdin must not stall the call: the
//! agent would stop reading the connection, and a `Signal` queued behind stdin (a Ctrl-C)
//! would never arrive. With flag bit 2 the agent reads the connection without pause, hands
//! stdin to the app as it takes it and acknowledges it with `StdinAck`, the first
//! (`StdinAck(0)`) before it starts the app; a pilot that has seen an acknowledgement keeps
//! at most [`STDIN_WINDOW`] bytes unacknowledged. An agent that predates the flag ignores it
//! and never acknowledges, and the pilot then sends as before. A pilot that knows the agent
//! acknowledges (a guest init whose image says so) reads no stdin before `StdinAck(0)`, so
//! a call answered with `Closing` took none of its caller's input and can be made again,
//! and it can give the agent a time to answer at all: a guest that hangs, or never came up,
//! is then reported rather than waited for.
//!
//! **Output flow control.** A VM's plain virtio console drops what its host socket cannot
//! take at once. With flag bit 3 (set only on that channel) the pilot acknowledges every
//! frame it read but `Ready` and `Exit` with `OutputAck` (its [`window_cost`]), and the agent
//! keeps at most [`OUTPUT_WINDOW`] of that unacknowledged (one larger frame alone), well
//! below what a socket holds. A launcher uses this only with a guest init whose image says
//! it knows it (`pull` records the feature).
//!
//! **User.** A call may name the user the app runs as (a VM image's `User`), resolved by the
//! agent in the instance's own `/etc/passwd` and `/etc/group`. The field is there only with
//! flag bit 4, so a call without one is what it always was; an agent that predates it
//! refuses such a call as malformed rather than run the app as someone else.
//!
//! [`VERSION`] is bumped on any incompatible change; the agent answers a `Call` of another
//! version with `Error` and `Exit` 125 rather than guessing.

use std::io::{self, Read, Write};

/// A string every guest init speaking this protocol carries in its binary; `flake-ctl
/// firecracker pull` looks for it to tell such images from ones with the original init.
pub const GUEST_MARKER: &str = "flake-pilot-guest-protocol-2";
/// A string a guest init that can serve a one-shot call over a plain virtio console
/// (`hvc0`, announcing itself with `Ready`) carries in its binary; images pulled with an
/// older init go on using virtio console ports.
pub const GUEST_CONSOLE_MARKER: &str = "flake-pilot-guest-console-with-acks";
/// A string a guest init that understands [`Frame::Resync`] carries in its binary: only
/// its images are restored from saved VM states.
pub const GUEST_RESYNC_MARKER: &str = "flake-pilot-guest-resync-2";
/// A string a guest init that announces its vsock listener carries in its binary: it
/// connects to the host's vsock port [`ANNOUNCE_PORT`] once it listens, and the host opens
/// no connection to the guest before (a QEMU vsock device fails on connections that come
/// before the guest driver set up its queues).
pub const GUEST_ANNOUNCE_MARKER: &str = "flake-pilot-guest-vsock-announce-1";
/// The host vsock port a guest init announces itself on (the unix socket
/// `vsock.sock_52` in the instance directory, by the hybrid vsock convention).
pub const ANNOUNCE_PORT: u32 = 52;
/// Protocol version spoken by this build.
pub const VERSION: u16 = 2;
/// Largest frame accepted (kind + payload).
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest `Stdin`/`Output` chunk a sender puts in one frame.
pub const CHUNK: usize = 64 * 1024;
/// What an agent keeps unacknowledged at most under output flow control, counted with
/// [`window_cost`].
pub const OUTPUT_WINDOW: u64 = 32 * 1024;

/// What a frame of `len` bytes (length prefix included) counts in the output window: its
/// bytes, and 1 KiB for every 4 KiB piece of it, which is about what a socket charges for
/// each write the VMM makes (it writes the console's buffers one by one).
pub fn window_cost(len: usize) -> u64 {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    len.saturating_add(len.div_ceil(4096).saturating_mul(1024))
}
/// Stdin bytes a pilot keeps unacknowledged at most, under flow control.
pub const STDIN_WINDOW: u64 = 4 * CHUNK as u64;

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing the socket failed.
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    /// A frame is malformed.
    #[error("agent protocol: {0}")]
    Malformed(&'static str),
    /// The instance was powering off and did not run the call (`Closing`); `stdin_read`:
    /// the launcher had already taken input from its stdin, so it cannot repeat the call.
    #[error("the instance was powering off (no call had come for its idle time) and did not run the call; call the app again")]
    Refused {
        /// Input was already read from the caller's stdin.
        stdin_read: bool,
    },
    /// The instance ended without answering the call at all (a VM powering off after its
    /// idle time as the call came).
    #[error("the instance ended before it answered the call (a VM does so when it powers off after its idle time); call the app again")]
    Unanswered,
    /// No answer came in time: the instance took the call (a VM's console port accepts
    /// before its guest is up) but never started it.
    #[error("the instance did not answer the call within {seconds} s (a guest that hangs or never came up; `%remove` stops a resume VM)")]
    NoAnswer {
        /// The time allowed.
        seconds: u64,
    },
    /// A well-formed frame of a kind this build does not know (a newer peer's): it has
    /// been read whole, so the stream is still in step and a reader may skip it.
    #[error("agent protocol: unknown frame kind {kind}")]
    UnknownKind {
        /// The kind.
        kind: u8,
        /// The bytes the frame took on the stream, length prefix included.
        len: usize,
    },
    /// The peer speaks another version.
    #[error("agent protocol version {got} is not supported (this build speaks {VERSION}); recreate the instance with %remove")]
    Version {
        /// The version received.
        got: u16,
    },
}

/// Result alias for this module.
pub type Result<T, E = ProtoError> = std::result::Result<T, E>;

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The request that opens a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    /// Run the app on a terminal (pty relayed through the connection).
    pub terminal: bool,
    /// Carry stdin, stdout and stderr as frames instead of passed descriptors.
    pub frames: bool,
    /// The pilot limits its unacknowledged stdin; acknowledge it with `StdinAck`.
    pub flow: bool,
    /// The pilot acknowledges output with `OutputAck`; keep within the window.
    pub output_acks: bool,
    /// Initial terminal size (terminal mode).
    pub size: WinSize,
    /// Program and arguments; `argv[0]` is the program path inside the instance.
    pub argv: Vec<Vec<u8>>,
    /// Extra environment, `KEY=VALUE`, on top of the instance's own.
    pub env: Vec<Vec<u8>>,
    /// Working directory; empty for the instance's.
    pub cwd: Vec<u8>,
    /// Run the app as this user (`USER[:GROUP]`); empty for the agent's own.
    pub user: Vec<u8>,
}

/// What a guest restored from a saved state must take from its host before a call: every
/// instance restored from the same state would otherwise share its clock and its random
/// generator's state with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resync {
    /// The host's wall clock, since the Unix epoch.
    pub realtime: std::time::Duration,
    /// Fresh entropy from the host.
    pub entropy: [u8; 32],
}

/// How the app ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with a code.
    Exited(u8),
    /// Killed by a signal.
    Signaled(u8),
}

impl ExitStatus {
    /// The shell-style code: the exit code, or 128 + signal.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128u8.saturating_add(signal),
        }
    }
}

/// Any frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a call.
    Call(Call),
    /// Terminal input; empty means EOF.
    Stdin(Vec<u8>),
    /// Terminal size change.
    Resize(WinSize),
    /// Signal for the app.
    Signal(u8),
    /// Terminal output.
    Output(Vec<u8>),
    /// The app's stdout, in frame mode.
    Stdout(Vec<u8>),
    /// The app's stderr, in frame mode.
    Stderr(Vec<u8>),
    /// The app ended.
    Exit(ExitStatus),
    /// The call failed before the app ran.
    Error(String),
    /// End the instance (sent instead of a `Call`).
    Shutdown,
    /// The guest init reads its channel now (it speaks `version`).
    Ready(u16),
    /// Stdin bytes passed on to the app.
    StdinAck(u32),
    /// Frame bytes that arrived from the agent.
    OutputAck(u32),
    /// The instance is powering off and did not run the call.
    Closing,
    /// The guest was restored from a saved state: take the host's clock and entropy.
    Resync(Resync),
    /// The answer to `Resync`: whether the guest took the clock and reseeded.
    Resynced(bool),
}

impl Frame {
    /// Encodes the frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Frame::Call(call) => {
                body.push(1);
                body.extend(VERSION.to_le_bytes());
                body.push(
                    u8::from(call.terminal)
                        | (u8::from(call.frames) << 1)
                        | (u8::from(call.flow) << 2)
                        | (u8::from(call.output_acks) << 3)
                        | (u8::from(!call.user.is_empty()) << 4),
                );
                body.extend(call.size.rows.to_le_bytes());
                body.extend(call.size.cols.to_le_bytes());
                put_list(&mut body, &call.argv);
                put_list(&mut body, &call.env);
                put_bytes(&mut body, &call.cwd);
                if !call.user.is_empty() {
                    put_bytes(&mut body, &call.user);
                }
            }
            Frame::Stdin(data) => tagged(&mut body, 2, data),
            Frame::Resize(size) => {
                body.push(3);
                body.extend(size.rows.to_le_bytes());
                body.extend(size.cols.to_le_bytes());
            }
            Frame::Signal(signal) => body.extend([4, *signal]),
            Frame::Output(data) => tagged(&mut body, 5, data),
            Frame::Exit(ExitStatus::Exited(code)) => body.extend([6, 0, *code]),
            Frame::Exit(ExitStatus::Signaled(signal)) => body.extend([6, 1, *signal]),
            Frame::Error(message) => tagged(&mut body, 7, message.as_bytes()),
            Frame::Stdout(data) => tagged(&mut body, 8, data),
            Frame::Stderr(data) => tagged(&mut body, 9, data),
            Frame::Shutdown => body.push(10),
            Frame::Ready(version) => {
                body.push(11);
                body.extend(version.to_le_bytes());
            }
            Frame::StdinAck(count) => {
                body.push(12);
                body.extend(count.to_le_bytes());
            }
            Frame::OutputAck(count) => {
                body.push(13);
                body.extend(count.to_le_bytes());
            }
            Frame::Closing => body.push(14),
            Frame::Resync(resync) => {
                body.push(15);
                body.extend(resync.realtime.as_secs().to_le_bytes());
                body.extend(resync.realtime.subsec_nanos().to_le_bytes());
                body.extend(resync.entropy);
            }
            Frame::Resynced(reseeded) => body.extend([16, u8::from(*reseeded)]),
        }
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend(body);
        out
    }

    /// Decodes one frame body (kind + payload, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader(body);
        let frame = match r.u8()? {
            1 => Frame::Call(decode_call(&mut r)?),
            2 => Frame::Stdin(r.rest()),
            3 => Frame::Resize(WinSize {
                rows: r.u16()?,
                cols: r.u16()?,
            }),
            4 => Frame::Signal(r.u8()?),
            5 => Frame::Output(r.rest()),
            6 => Frame::Exit(match (r.u8()?, r.u8()?) {
                (0, code) => ExitStatus::Exited(code),
                (1, signal) => ExitStatus::Signaled(signal),
                _ => return Err(ProtoError::Malformed("unknown exit kind")),
            }),
            7 => Frame::Error(String::from_utf8_lossy(&r.rest()).into_owned()),
            8 => Frame::Stdout(r.rest()),
            9 => Frame::Stderr(r.rest()),
            10 => Frame::Shutdown,
            11 => Frame::Ready(r.u16()?),
            12 => Frame::StdinAck(r.u32()?),
            13 => Frame::OutputAck(r.u32()?),
            14 => Frame::Closing,
            15 => Frame::Resync(decode_resync(&mut r)?),
            16 => Frame::Resynced(r.u8()? != 0),
            kind => {
                return Err(ProtoError::UnknownKind {
                    kind,
                    len: body.len() + 4,
                })
            }
        };
        r.finish()?;
        Ok(frame)
    }

    /// Writes the frame to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> Result<()> {
        w.write_all(&self.encode())?;
        Ok(())
    }

    /// Reads one frame from `r`; `Ok(None)` on a clean end of stream before a frame.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Self>> {
        Ok(Self::read_counted(r)?.map(|(frame, _)| frame))
    }

    /// Takes the first frame off `buf` when `buf` holds all of it, giving the frame and
    /// the bytes it took; `Ok(None)` asks for more bytes. For a reader that cannot block
    /// on one stream (it polls several). A frame of unknown kind comes back as
    /// `UnknownKind` with its length, so the reader can skip it.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>> {
        let Some(prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix);
        if len == 0 || len > MAX_FRAME {
            return Err(ProtoError::Malformed("frame length out of range"));
        }
        let end = usize::try_from(len).map_or(usize::MAX, |len| len.saturating_add(4));
        match buf.get(4..end) {
            Some(body) => Self::decode(body).map(|frame| Some((frame, end))),
            None => Ok(None),
        }
    }

    /// [`Frame::read_from`], also giving the bytes the frame took on the stream.
    pub fn read_counted(r: &mut impl Read) -> Result<Option<(Self, usize)>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(err) => return Err(err.into()),
        }
        let len = u32::from_le_bytes(len);
        if len == 0 || len > MAX_FRAME {
            return Err(ProtoError::Malformed("frame length out of range"));
        }
        // The body is stored as it arrives: a length alone, from a peer that then sends
        // nothing, does not make the reader set a whole frame's memory aside.
        let expected = usize::try_from(len).unwrap_or(usize::MAX);
        let mut body = Vec::with_capacity(expected.min(CHUNK + 16));
        r.by_ref().take(u64::from(len)).read_to_end(&mut body)?;
        if body.len() < expected {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Self::decode(&body).map(|frame| Some((frame, body.len() + 4)))
    }
}

fn decode_call(r: &mut Reader<'_>) -> Result<Call> {
    let version = r.u16()?;
    if version != VERSION {
        return Err(ProtoError::Version { got: version });
    }
    let flags = r.u8()?;
    let size = WinSize {
        rows: r.u16()?,
        cols: r.u16()?,
    };
    let argv = r.list()?;
    if argv.is_empty() {
        return Err(ProtoError::Malformed("empty argv"));
    }
    Ok(Call {
        terminal: flags & 1 != 0,
        frames: flags & 2 != 0,
        flow: flags & 4 != 0,
        output_acks: flags & 8 != 0,
        size,
        argv,
        env: r.list()?,
        cwd: r.bytes()?,
        user: if flags & 16 != 0 {
            r.bytes()?
        } else {
            Vec::new()
        },
    })
}

fn decode_resync(r: &mut Reader<'_>) -> Result<Resync> {
    let secs = u64::from_le_bytes(r.array()?);
    let nanos = r.u32()?;
    if nanos >= 1_000_000_000 {
        return Err(ProtoError::Malformed("nanoseconds out of range"));
    }
    Ok(Resync {
        realtime: std::time::Duration::new(secs, nanos),
        entropy: r.array()?,
    })
}

fn tagged(body: &mut Vec<u8>, kind: u8, data: &[u8]) {
    body.push(kind);
    body.extend(data);
}

fn put_bytes(body: &mut Vec<u8>, data: &[u8]) {
    body.extend(u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
    body.extend(data);
}

fn put_list(body: &mut Vec<u8>, items: &[Vec<u8>]) {
    body.extend(u32::try_from(items.len()).unwrap_or(u32::MAX).to_le_bytes());
    for item in items {
        put_bytes(body, item);
    }
}

/// Cursor over a frame body.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(ProtoError::Malformed("frame too short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.u32()?).map_err(|_| ProtoError::Malformed("length"))?;
        Ok(self.take(len)?.to_vec())
    }
    fn list(&mut self) -> Result<Vec<Vec<u8>>> {
        let count = self.u32()?;
        if count > MAX_FRAME / 4 {
            return Err(ProtoError::Malformed("list too long"));
        }
        (0..count).map(|_| self.bytes()).collect()
    }
    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0).to_vec()
    }
    fn finish(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed("trailing bytes in frame"))
        }
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Call(Call {
                terminal: true,
                frames: false,
                flow: true,
                output_acks: true,
                size: WinSize { rows: 24, cols: 80 },
                argv: vec![
                    b"/bin/sh".to_vec(),
                    b"-c".to_vec(),
                    b"echo \"a b\"".to_vec(),
                    vec![0xff, 0],
                ],
                env: vec![b"TERM=xterm".to_vec()],
                cwd: b"/root".to_vec(),
                user: Vec::new(),
            }),
            Frame::Call(Call {
                argv: vec![b"/bin/app".to_vec()],
                user: b"app:1000".to_vec(),
                ..Call::default()
            }),
            Frame::Call(Call {
                argv: vec![b"x".to_vec()],
                frames: true,
                ..Call::default()
            }),
            Frame::Stdout(b"out".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Stdin(b"data".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::Resize(WinSize {
                rows: 50,
                cols: 200,
            }),
            Frame::Signal(2),
            Frame::Output(vec![0; CHUNK]),
            Frame::Exit(ExitStatus::Exited(9)),
            Frame::Exit(ExitStatus::Signaled(15)),
            Frame::Error("exec failed".into()),
            Frame::Shutdown,
            Frame::Ready(VERSION),
            Frame::StdinAck(70_000),
            Frame::OutputAck(9),
            Frame::Closing,
            Frame::Resync(Resync {
                realtime: std::time::Duration::new(1_796_000_000, 999_999_999),
                entropy: std::array::from_fn(|i| u8::try_from(i).unwrap()),
            }),
            Frame::Resynced(true),
            Frame::Resynced(false),
        ]
    }

    #[test]
    fn a_resync_is_exactly_its_fields_and_refuses_bad_nanoseconds() {
        let resync = Frame::Resync(Resync {
            realtime: std::time::Duration::new(7, 5),
            entropy: [0xab; 32],
        });
        let encoded = resync.encode();
        assert_eq!(encoded.len(), 4 + 1 + 8 + 4 + 32);
        assert_eq!(encoded[4], 15);
        assert_eq!(&encoded[5..13], &7u64.to_le_bytes());
        let mut bad = encoded.clone();
        bad[13..17].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert!(matches!(
            Frame::read_from(&mut bad.as_slice()),
            Err(ProtoError::Malformed(_))
        ));
        let mut short = encoded[..encoded.len() - 1].to_vec();
        let body = u32::try_from(short.len() - 4).unwrap();
        short[..4].copy_from_slice(&body.to_le_bytes());
        assert!(Frame::read_from(&mut short.as_slice()).is_err());
    }

    #[test]
    fn every_frame_round_trips_through_a_stream() {
        let mut stream = Vec::new();
        for frame in frames() {
            frame.write_to(&mut stream).unwrap();
        }
        let mut reader = stream.as_slice();
        for want in frames() {
            assert_eq!(Frame::read_from(&mut reader).unwrap(), Some(want));
        }
        assert_eq!(Frame::read_from(&mut reader).unwrap(), None);
    }

    #[test]
    fn frames_are_parsed_off_a_buffer_once_whole() {
        let mut stream = Vec::new();
        for frame in frames() {
            frame.write_to(&mut stream).unwrap();
        }
        // Fed a byte at a time, as a polling reader may get them.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for byte in stream {
            buf.push(byte);
            if let Some((frame, used)) = Frame::parse(&buf).unwrap() {
                assert_eq!(used, buf.len());
                buf.clear();
                got.push(frame);
            }
        }
        assert_eq!(got, frames());
        assert!(buf.is_empty());
        let unknown = [2, 0, 0, 0, 200, 1, 9];
        assert!(matches!(
            Frame::parse(&unknown),
            Err(ProtoError::UnknownKind { kind: 200, len: 6 })
        ));
        assert!(Frame::parse(&[0, 0, 0, 0]).is_err());
        assert!(Frame::parse(&[255, 255, 255, 255, 1]).is_err());
    }

    /// An agent that predates users ignored flag bit 4 and read the call up to its cwd: it
    /// must find the user's bytes left over and refuse the call, never run it as itself.
    #[test]
    fn a_call_with_a_user_is_refused_by_an_agent_that_predates_users() {
        let call = Frame::Call(Call {
            argv: vec![b"/bin/id".to_vec()],
            env: vec![b"A=1".to_vec()],
            cwd: b"/srv".to_vec(),
            user: b"app:staff".to_vec(),
            ..Call::default()
        });
        let mut body = call.encode().split_off(4);
        // kind, version u16, then the flags.
        assert_eq!(body[3] & 16, 16);
        assert_eq!(Frame::decode(&body).unwrap(), call);
        body[3] &= !16;
        assert!(matches!(
            Frame::decode(&body),
            Err(ProtoError::Malformed("trailing bytes in frame"))
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let bad: &[&[u8]] = &[
            &[0, 0, 0, 0],
            &[255, 255, 255, 255],
            &[1, 0, 0, 0, 99],
            &[2, 0, 0, 0, 6, 7],
            &[3, 0, 0, 0, 4, 1, 0],
            &[3, 0, 0, 0, 1, 2, 0],
            &[5, 0, 0, 0, 1, 1, 0, 0, 0],
            &[1, 0, 0, 0, 4, 9],
            &[1, 0, 0, 0, 11],
            &[2, 0, 0, 0, 10, 0],
        ];
        for input in bad {
            let mut r = *input;
            assert!(Frame::read_from(&mut r).is_err(), "{input:?}");
        }
        let mut truncated: &[u8] = &[10, 0, 0, 0, 2, 1];
        assert!(Frame::read_from(&mut truncated).is_err());
    }

    #[test]
    fn other_versions_are_refused() {
        let mut encoded = Frame::Call(Call {
            argv: vec![b"x".to_vec()],
            ..Call::default()
        })
        .encode();
        encoded[5] = 99;
        let err = Frame::decode(&encoded[4..]).unwrap_err();
        assert!(matches!(err, ProtoError::Version { got: 99 }), "{err}");
    }

    #[test]
    fn empty_argv_is_refused() {
        let encoded = Frame::Call(Call::default()).encode();
        assert!(Frame::decode(&encoded[4..]).is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitStatus::Exited(9).code(), 9);
        assert_eq!(ExitStatus::Signaled(2).code(), 130);
    }
}
