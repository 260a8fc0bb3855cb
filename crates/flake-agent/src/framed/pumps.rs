// SPDX-License-Identifier: MIT
//! One frame-mode call without a terminal on threads: one pump per output stream, so a
//! write that waits for the launcher (a port or vsock connection it does not read) never
//! holds up the control frames, which [`watch`] reads meanwhile.

use std::io::{Read, Write};
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::command::piped_app_command;
use crate::daemon::reaper::Reaper;
use crate::daemon::session::{announce_acks, watch, Input};
use crate::daemon::Writer;
use crate::proto::{Call, Frame, CHUNK};

/// Runs `call`, reading control frames from `reader` and writing output and the exit status
/// to `writer`. Returns when the exit status is sent (or the connection broke).
pub(super) fn run(
    call: &Call,
    reader: impl Read + Send + 'static,
    writer: Writer,
    reaper: &Reaper,
) -> std::io::Result<()> {
    announce_acks(&writer, call.flow)?;
    let mut pipes = None;
    let spawned = reaper.spawn(|| {
        let mut child = piped_app_command(call)?.spawn()?;
        pipes = Some((child.stdin.take(), child.stdout.take(), child.stderr.take()));
        Ok(child)
    });
    let (pid, exit) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            writer.start_failed(call, &err);
            return Ok(());
        }
    };
    let (stdin, stdout, stderr) = pipes.unwrap_or((None, None, None));
    let pumps = [
        stdout.map(|out| pump(out, writer.clone(), Frame::Stdout)),
        stderr.map(|err| pump(err, writer.clone(), Frame::Stderr)),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let input = stdin.map(|pipe| Box::new(Pipe(Some(pipe))) as Box<dyn Input>);
    watch(
        reader,
        pid,
        Arc::clone(&done),
        input,
        Some(writer.clone()),
        call.flow,
    );
    if let Ok(status) = exit.recv() {
        done.store(true, Ordering::SeqCst);
        for pump in pumps.into_iter().flatten() {
            let _ = pump.join();
        }
        writer.send(&Frame::Exit(status))?;
    }
    Ok(())
}

/// Copies one output stream of the app into frames made by `frame`.
fn pump<R: Read + Send + 'static>(
    mut from: R,
    writer: Writer,
    frame: fn(Vec<u8>) -> Frame,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.send(&frame(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// The app's stdin pipe as the destination of `Stdin` frames; EOF closes it.
struct Pipe(Option<ChildStdin>);

impl Input for Pipe {
    fn input(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            self.0 = None;
        } else if let Some(pipe) = self.0.as_mut() {
            if pipe.write_all(bytes).is_err() {
                self.0 = None;
            }
        }
    }
}
