// SPDX-License-Identifier: MIT
//! Running one call whose streams travel as frames over any byte channel (a VM's virtio
//! console or port, or vsock), because descriptors cannot cross into a guest. Used by the
//! guest init `sci`.
//!
//! Without a terminal the app gets three pipes and the relay moves the frames from one
//! thread: output is relayed in chunks as it comes (not byte by byte, as the original guest
//! init did), a `Stdin` frame with no bytes is a half-close that reaches the app as EOF,
//! and the call ends with the app's exit status after all of its output. With a terminal
//! the app runs on a pty, exactly as in a container (see `daemon::terminal`). In a process
//! that reaps orphans (an init serving many calls), children are waited for by its one
//! [`Reaper`], so no call loses its app's status to it.

mod relay;

use std::io::{Cursor, Read};

use crate::daemon::reaper::Reaper;
use crate::daemon::{terminal, Writer};
use crate::proto::Call;

pub use relay::Link;

/// Runs `call` over `link`: control frames in, output and the exit status out. `reaper`:
/// the process's reaper when it has one; without, the app is waited for directly and no
/// thread is started for a call without a terminal. Returns when the exit status is sent
/// (or the connection broke).
pub fn run(call: &Call, link: Link, reaper: Option<&Reaper>) -> std::io::Result<()> {
    if !call.terminal {
        relay::run(call, link, reaper);
        return Ok(());
    }
    let (input, output, read_ahead) = link.into_parts();
    let reader = Cursor::new(read_ahead).chain(input);
    let writer = Writer::new(output);
    if call.output_acks {
        writer.limit_output();
    }
    match reaper {
        Some(reaper) => terminal::run(reader, writer, call, reaper),
        None => terminal::run(reader, writer, call, &Reaper::start()),
    }
}
