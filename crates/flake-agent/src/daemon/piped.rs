// SPDX-License-Identifier: MIT
//! A call without a terminal: the app gets the launcher's own stdin, stdout and stderr.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::reaper::Reaper;
use super::session::{watch, Writer};
use crate::command::app_command;
use crate::proto::{Call, Frame};

/// Runs `call` with the three passed descriptors and reports its exit status.
pub fn run(
    stream: &UnixStream,
    call: &Call,
    fds: Vec<OwnedFd>,
    reaper: &Reaper,
) -> std::io::Result<()> {
    let writer = Writer::new(stream.try_clone()?);
    let [stdin, stdout, stderr]: [OwnedFd; 3] = match fds.try_into() {
        Ok(fds) => fds,
        Err(_) => {
            writer.fail(
                "a call without a terminal must pass stdin, stdout and stderr",
                125,
            );
            return Ok(());
        }
    };
    let spawned = reaper.spawn(|| {
        // The descriptors move into the command and are closed when it is dropped right
        // after the spawn: the launcher's pipes must see EOF when the app closes them.
        let mut command = app_command(call)?;
        command
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        command.process_group(0).spawn()
    });
    let (pid, exit) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            writer.start_failed(call, &err);
            return Ok(());
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    watch(
        stream.try_clone()?,
        pid,
        Arc::clone(&done),
        None,
        None,
        false,
    );
    if let Ok(status) = exit.recv() {
        done.store(true, Ordering::SeqCst);
        writer.send(&Frame::Exit(status))?;
    }
    Ok(())
}
