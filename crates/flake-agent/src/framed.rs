// SPDX-License-Identifier: MIT
//! Running one call whose streams travel as frames over any byte channel (a VM's virtio
//! console or port, or vsock), because descriptors cannot cross into a guest. Used by the
//! guest init `sci`.
//!
//! Without a terminal the app gets three pipes, and the frames move from one thread (the
//! relay) or from one per stream (see [`run`]): output is relayed in chunks as it comes
//! (not byte by byte, as the original guest init did), a `Stdin` frame with no bytes is a
//! half-close that reaches the app as EOF, and the call ends with the app's exit status
//! after all of its output. With a terminal
//! the app runs on a pty, exactly as in a container (see `daemon::terminal`). In a process
//! that reaps orphans (an init serving many calls), children are waited for by its one
//! [`Reaper`], so no call loses its app's status to it.

mod pumps;
mod relay;

use std::io::{Cursor, Read};

use crate::daemon::reaper::Reaper;
use crate::daemon::{terminal, Writer};
use crate::proto::Call;

pub use relay::Link;

/// Runs `call` over `link`: control frames in, output and the exit status out. `reaper`:
/// the process's reaper when it has one; without, a call under output flow control is
/// waited for directly. Returns when the exit status is sent (or the connection broke).
///
/// Under output flow control (the plain console) at most a window of output is on its
/// way, so writes never wait long, and a link whose writes never wait
/// ([`Link::nonblocking`]) holds what the launcher has not taken yet: over either, one
/// thread serves a call without a terminal. Otherwise a write may wait as long as the
/// launcher does not read, and the streams get threads of their own (as do terminal
/// calls).
pub fn run(call: &Call, link: Link, reaper: Option<&Reaper>) -> std::io::Result<()> {
    if !call.terminal && (call.output_acks || link.never_waits()) {
        relay::run(call, link, reaper);
        return Ok(());
    }
    let (input, output, read_ahead) = link.into_parts();
    let reader = Cursor::new(read_ahead).chain(input);
    let writer = Writer::new(output);
    if call.output_acks {
        writer.limit_output();
    }
    let started;
    let reaper = match reaper {
        Some(reaper) => reaper,
        None => {
            started = Reaper::start();
            &started
        }
    };
    if call.terminal {
        terminal::run(reader, writer, call, reaper)
    } else {
        pumps::run(call, reader, writer, reaper)
    }
}
