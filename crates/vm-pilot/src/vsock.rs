// SPDX-License-Identifier: MIT
//! The host side of the vsock guest channel, the same for both VMMs.
//!
//! Firecracker and `vhost-device-vsock` (QEMU's vsock device, see
//! [`crate::qemu::device`]) both expose the guest's vsock as one unix socket in the
//! instance directory, `vsock.sock`, with Firecracker's "hybrid vsock" convention: the host
//! connects, writes `CONNECT <port>\n`, and gets `OK <host port>\n` once the guest accepted
//! the connection on that port; from then on the stream is the guest connection. Every
//! connection is one call, so a resume VM needs no ports to claim and no settle time after a
//! launcher that died mid-call: the guest sees that connection reset, and the next call has
//! a connection of its own.
//!
//! The host opens no connection before the guest init listens: a QEMU vsock device fails
//! for good on connections that come before the guest driver set up its queues. A guest
//! init that knows this (its image has the `vsock-announce` feature) announces itself by
//! connecting to the host's port 52 (the unix socket `vsock.sock_52`); launchers wait for
//! that ([`wait_up`]), and the one that takes it marks the instance up for the others.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// The host socket of the guest's vsock, in the instance directory.
pub const SOCKET: &str = "vsock.sock";
/// The guest's vsock context id (any value >= 3; each VM has its own namespace).
pub const GUEST_CID: u32 = 3;
/// The vsock port the guest init listens on (the original's, so host tooling keeps working).
pub const GUEST_PORT: u32 = 52;
use crate::timing::HANDSHAKE_TIMEOUT;
/// The longest answer line read (`OK ` and a 32-bit port number).
const ANSWER_MAX: usize = 32;

/// In the instance directory: the guest announced its vsock listener, the VM is up.
/// Removed with the rest of the state when the VM starts again.
pub const GUEST_UP: &str = "guest-up";

/// How waiting for a guest's announcement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// The guest listens.
    Up,
    /// The VMM ended first.
    VmmEnded,
    /// Time was up first.
    TimedOut,
}

/// Waits until the guest of the VM in `dir` announced its vsock listener, up to `timeout`
/// and while its VMM runs (`alive`). Every launcher waiting for the same VM does the same:
/// one of them listens on the announcement socket (the first, or one that finds its
/// listener gone with its launcher), takes the announcement and marks the instance up
/// ([`GUEST_UP`]); the others see the mark.
pub fn wait_up(dir: &Path, timeout: Duration, mut alive: impl FnMut() -> bool) -> Announcement {
    let up = dir.join(GUEST_UP);
    let socket = dir.join(format!("{SOCKET}_{}", flake_protocol::proto::ANNOUNCE_PORT));
    let deadline = crate::timing::Deadline::after(timeout);
    let mut own: Option<UnixListener> = None;
    loop {
        if up.exists() {
            return Announcement::Up;
        }
        match &own {
            Some(listener) if announced(dir, listener) => {
                let _ = crate::state_file::write(&up, b"");
                let _ = std::fs::remove_file(&socket);
                return Announcement::Up;
            }
            Some(_) => {}
            None => own = take_over(&socket),
        }
        if !alive() {
            return Announcement::VmmEnded;
        }
        if deadline.passed() {
            return Announcement::TimedOut;
        }
        std::thread::sleep(crate::timing::POLL);
    }
}

/// Whether the VM's VMM (or its vsock device) connected to `listener`: the guest's
/// announcement. Connections of anyone else are dropped.
fn announced(dir: &Path, listener: &UnixListener) -> bool {
    while let Ok((stream, _)) = listener.accept() {
        let peer = flake_agent::transport::peer_credentials(&stream);
        if peer.is_ok_and(|peer| crate::vmm::served_by_vmm(dir, peer.pid)) {
            return true;
        }
    }
    false
}

/// Listens on the announcement `socket` unless a live launcher does (a connection to it is
/// taken); a socket left by a dead one is replaced.
fn take_over(socket: &Path) -> Option<UnixListener> {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match crate::vmm::connect_unix(socket) {
        Err(err) if matches!(err.kind(), ConnectionRefused | NotFound) => {
            let _ = std::fs::remove_file(socket);
            let listener = crate::vmm::bind_unix(socket).ok()?;
            listener.set_nonblocking(true).ok()?;
            Some(listener)
        }
        _ => None,
    }
}

/// One attempt to open a connection to the guest init of the VM in `dir`; fails while the
/// guest does not accept it yet (booting), and when neither the VMM nor its vsock device
/// serves the socket.
pub fn connect(dir: &Path) -> std::io::Result<UnixStream> {
    connect_within(dir, HANDSHAKE_TIMEOUT)
}

/// [`connect`] to a guest that announced itself: it listens, so the one connection is
/// given all of `timeout` to be accepted (a guest that is slow or stopped is waited for
/// once, not flooded with connections it would find dead when it comes to them).
pub fn connect_within(dir: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let mut stream = crate::vmm::connect_vmm(dir, SOCKET)?;
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    stream.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())?;
    let answer = accepted(&mut stream);
    if let Err(err) = &answer {
        if matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            if let Some(vmm) = crate::instance::recorded(dir).filter(|v| v.is_alive()) {
                keep_until_answered(&stream, vmm.pid);
            }
        }
    }
    if !answer? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "the guest does not accept vsock connections yet",
        ));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Keeps the host end of a connection the guest has not answered open, in a process of its
/// own, until the answer comes or the VMM `vmm` ends: the vsock device (vhost-device-vsock
/// 0.3.0) stops serving the VM for good when it cannot write a late `OK` to a host end that
/// is gone. The process closes every other descriptor, so it holds nothing of the caller
/// (a pipe it kept open would keep the caller's reader waiting).
fn keep_until_answered(stream: &UnixStream, vmm: u32) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let Ok(vmm) = libc::pid_t::try_from(vmm) else {
        return;
    };
    // SAFETY: the child of this fork calls only async-signal-safe functions (setsid, close,
    // close_range via syscall, poll, read, kill, _exit) on values made before the fork and
    // a buffer on its own stack; it allocates nothing and takes no lock, so a fork of a
    // process with other threads is sound. The parent only learns the child's pid.
    #[allow(unsafe_code)]
    unsafe {
        if libc::fork() != 0 {
            return;
        }
        libc::setsid();
        for std_fd in 0..3 {
            if std_fd != fd {
                libc::close(std_fd);
            }
        }
        libc::syscall(libc::SYS_close_range, 3, fd - 1, 0);
        libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0);
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut buf = [0u8; 64];
        loop {
            let ready = libc::poll(&mut poll, 1, 1000);
            if ready > 0 {
                // The answer (then the end of the connection) or the device hanging up.
                let _ = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::_exit(0);
            }
            if ready < 0 || libc::kill(vmm, 0) != 0 {
                libc::_exit(0);
            }
        }
    }
}

/// Reads the VMM's answer line byte by byte (nothing of the guest's stream after it may be
/// taken): whether it is `OK ...`.
fn accepted(stream: &mut impl Read) -> std::io::Result<bool> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < ANSWER_MAX {
        if stream.read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(line.starts_with(b"OK "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ok_line_accepts_and_nothing_after_it_is_read() {
        let mut answer: &[u8] = b"OK 1073741824\nguest bytes";
        assert!(accepted(&mut answer).unwrap());
        assert_eq!(answer, b"guest bytes");
        for refused in [&b""[..], b"\n", b"ERR\n", b"OKAY\n", &[b'x'; 64]] {
            let mut answer = refused;
            assert!(!accepted(&mut answer).unwrap(), "{refused:?}");
        }
    }
}
