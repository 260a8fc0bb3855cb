// SPDX-License-Identifier: MIT
//! A one-shot launch whose standard streams mix terminals with pipes or files.
//!
//! The app should write into the caller's own descriptors, so that a reader that goes away
//! (`app | head -1`) is the app's own `SIGPIPE`, as for a local program. podman hands its
//! descriptors to the container with `--log-driver=passthrough`, but refuses to when any of
//! them is a terminal (a process holding the caller's terminal could push input into the
//! caller's shell with `TIOCSTI`). Relaying every stream through podman instead is what
//! breaks pipes: podman dies writing into the closed pipe (exit 126) and the container runs
//! on, unattended.
//!
//! So when some streams are terminals and the app gets no terminal of its own, the launcher
//! stays: the streams that are not terminals go to the app directly, the terminal ones are
//! relayed through pipes, podman runs in a process group of its own (a Ctrl-C reaches the
//! launcher alone and is forwarded once), and every signal the launcher receives is passed
//! to podman, which forwards it into the container; podman gets `SIGTERM` when the launcher
//! dies, so even a launcher killed with `SIGKILL` leaves no container running.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use flakes::process::{Cmd, ProcessError};
use flakes::PilotExit;
use rustix::fd::OwnedFd;
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

/// Which of stdin, stdout and stderr are terminals.
pub type TerminalStreams = [bool; 3];

/// Signals passed on to podman (and by it to the app).
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// How long the output relays may take to drain once podman has ended.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs `cmd` with the terminal streams relayed and waits for it; the result is podman's
/// status, which is the app's.
pub fn run(cmd: &Cmd, terminals: TerminalStreams) -> Result<PilotExit, ProcessError> {
    let spawn_error = |source| ProcessError::Spawn {
        command: cmd.summary(),
        source,
    };
    let mut command = cmd.command();
    command.process_group(0);
    // A launcher killed with SIGKILL can forward nothing: podman then gets the SIGTERM it
    // would have forwarded, passes it to the app and removes the container.
    flakes::process::end_with_parent(&mut command, Signal::TERM);
    let piped = |terminal: bool| {
        if terminal {
            Stdio::piped()
        } else {
            Stdio::inherit()
        }
    };
    command
        .stdin(piped(terminals[0]))
        .stdout(piped(terminals[1]))
        .stderr(piped(terminals[2]));
    let mut child = command.spawn().map_err(spawn_error)?;
    let forwarding = forward_signals(&child).map_err(spawn_error)?;
    let outputs = relay_streams(&mut child);
    let status = child.wait().map_err(spawn_error)?;
    forwarding.close();
    drain(outputs);
    Ok(PilotExit::from_status(status))
}

/// Starts the relays: stdin in a thread nobody waits for (it may sit in a read of the
/// terminal when the app is done), stdout and stderr in threads that report their end.
fn relay_streams(child: &mut Child) -> mpsc::Receiver<()> {
    if let Some(mut to_app) = child.stdin.take() {
        thread::spawn(move || {
            // Ends on the caller's EOF (then closing the app's stdin) or when the app is gone.
            let _ = copy(&mut std::io::stdin().lock(), &mut to_app);
        });
    }
    let (done, outputs) = mpsc::channel();
    if let Some(mut from_app) = child.stdout.take() {
        let done = done.clone();
        thread::spawn(move || {
            let _ = copy(&mut from_app, &mut std::io::stdout().lock());
            let _ = done.send(());
        });
    }
    if let Some(mut from_app) = child.stderr.take() {
        thread::spawn(move || {
            let _ = copy(&mut from_app, &mut std::io::stderr().lock());
            let _ = done.send(());
        });
    }
    outputs
}

/// Copies until EOF, writing each read through at once (a terminal shows output as it comes).
fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// Waits until both output relays have reached EOF, or [`DRAIN`] has passed: a process the
/// app left behind may hold a pipe open, and the launcher must not wait for it.
fn drain(outputs: mpsc::Receiver<()>) {
    let deadline = std::time::Instant::now() + DRAIN;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match outputs.recv_timeout(left) {
            Ok(()) => continue,
            Err(_) => return,
        }
    }
}

/// Forwards [`FORWARDED`] signals to the child through a pidfd, so a signal that arrives
/// as the child is reaped can never reach a process that took over its pid.
struct Forwarding(Handle);

impl Forwarding {
    fn close(self) {
        self.0.close();
    }
}

fn forward_signals(child: &Child) -> std::io::Result<Forwarding> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("child pid out of range"))?;
    let pidfd: OwnedFd = pidfd_open(pid, PidfdFlags::empty())?;
    let mut signals = Signals::new(FORWARDED)?;
    let handle = signals.handle();
    thread::spawn(move || {
        for number in signals.forever() {
            if let Some(signal) = Signal::from_named_raw(number) {
                let _ = pidfd_send_signal(&pidfd, signal);
            }
        }
    });
    Ok(Forwarding(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Cmd {
        let sh =
            flakes::process::resolve("sh", Some(std::ffi::OsStr::new("/bin:/usr/bin"))).unwrap();
        Cmd::new(sh).args(["-c", script])
    }

    #[test]
    fn status_of_the_child_is_the_result() {
        assert_eq!(run(&sh("exit 7"), [false; 3]).unwrap(), PilotExit::App(7));
        assert_eq!(
            run(&sh("kill -TERM $$"), [false; 3]).unwrap(),
            PilotExit::Signal(15)
        );
    }

    #[test]
    fn relayed_output_is_drained_before_returning() {
        // Piped stdout, relayed to ours: the copy must be done when run returns (the test
        // harness captures nothing of it, so only the status and the timing are checked).
        let started = std::time::Instant::now();
        assert_eq!(
            run(&sh("seq 1 20000 >/dev/null; echo done"), [true, true, true]).unwrap(),
            PilotExit::App(0)
        );
        assert!(started.elapsed() < DRAIN);
    }
}
