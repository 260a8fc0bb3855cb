// SPDX-License-Identifier: MIT
//! Sending the opening `Call` with the caller's stdio descriptors attached, and receiving it.

use std::io::{Cursor, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::proto::{Call, Frame, ProtoError, Result};

/// Sends `call`, attaching `fds` (stdin, stdout, stderr) when given.
pub fn send_call(stream: &UnixStream, call: &Call, fds: Option<[BorrowedFd<'_>; 3]>) -> Result<()> {
    let bytes = Frame::Call(call.clone()).encode();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fd_list;
    if let Some(list) = fds {
        fd_list = list;
        if !control.push(SendAncillaryMessage::ScmRights(&fd_list)) {
            return Err(ProtoError::Malformed("cannot attach descriptors"));
        }
    }
    // The descriptors ride on the first chunk; the rest of a long frame follows plainly.
    let sent = sendmsg(
        stream,
        &[std::io::IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let mut rest = &bytes[sent..];
    std::io::copy(&mut rest, &mut &*stream)?;
    Ok(())
}

/// Receives the opening `Call` and any descriptors that came with it.
///
/// Only the frame's 4-byte length is taken with `recvmsg` (the descriptors arrive with the
/// first byte); the body is then read exactly, so frames the launcher sends right after the
/// call (terminal input, signals) stay in the socket for the session.
pub fn recv_call(stream: &UnixStream) -> Result<(Call, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        stream,
        &mut [std::io::IoSliceMut::new(&mut len)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.bytes == 0 {
        return Err(ProtoError::Malformed("connection closed before the call"));
    }
    (&*stream).read_exact(&mut len[msg.bytes..])?;
    let mut reader = Cursor::new(len).chain(stream);
    match Frame::read_from(&mut reader)? {
        Some(Frame::Call(call)) => Ok((call, fds)),
        Some(_) => Err(ProtoError::Malformed("first frame is not a call")),
        None => Err(ProtoError::Malformed("connection closed before the call")),
    }
}

/// Who is at the other end of a unix socket, as seen from this process's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id of the peer (0 when it is in a pid namespace this process cannot see).
    pub pid: u32,
    /// Effective uid of the peer when it connected (or, for a listener, began to listen).
    pub uid: u32,
}

/// The peer's credentials from `SO_PEERCRED`.
///
/// rustix's typed `socket_peercred` cannot be used: a launcher outside the instance's PID
/// namespace has pid 0 there, which its non-zero `Pid` type cannot hold.
#[allow(unsafe_code)]
pub fn peer_credentials(stream: &UnixStream) -> std::io::Result<PeerCred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `cred` and `len` are live locals whose sizes match what is passed; the kernel
    // writes at most `len` bytes into `cred`, and the descriptor stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn call_and_descriptors_arrive_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        let call = Call {
            argv: vec![b"/bin/true".to_vec(), vec![b'x'; 100_000]],
            ..Call::default()
        };
        let sender = {
            let dup = file.try_clone().unwrap();
            let call = call.clone();
            std::thread::spawn(move || {
                let fd = dup.as_fd();
                send_call(&a, &call, Some([fd, fd, fd])).unwrap();
            })
        };
        let (got, fds) = recv_call(&b).unwrap();
        sender.join().unwrap();
        assert_eq!(got, call);
        assert_eq!(fds.len(), 3);
        let mut out = std::fs::File::from(fds.into_iter().nth(1).unwrap());
        out.write_all(b"through the passed fd").unwrap();
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the passed fd");
    }

    #[test]
    fn peer_credentials_name_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = peer_credentials(&a).unwrap();
        assert_eq!(peer.pid, std::process::id());
        assert_eq!(peer.uid, rustix::process::geteuid().as_raw());
    }

    #[test]
    fn call_without_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let call = Call {
            terminal: true,
            argv: vec![b"sh".to_vec()],
            ..Call::default()
        };
        send_call(&a, &call, None).unwrap();
        let (got, fds) = recv_call(&b).unwrap();
        assert_eq!(got, call);
        assert!(fds.is_empty());
    }
}
