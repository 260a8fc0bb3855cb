// SPDX-License-Identifier: MIT
//! The one call of a one-shot VM over the plain console, served from `sci`'s one thread.
//!
//! A one-shot VM pays its init's start-up on every launch, and under software emulation
//! every thread started costs the guest milliseconds. So this path starts none: it says
//! `Ready` until the call comes, then runs it with `flake_agent::framed` without a reaper
//! (one `poll` loop over the console and the app's pipes; a call with a terminal still
//! takes the threaded way), and stays up until the launcher has the exit status.
//!
//! A VM that its launcher may save while it waits (`sci_resync=1`) attaches its overlay
//! disk only once the host's `Resync` came (see [`crate::resync`]) and answers it with
//! `Resynced`: until then it is the same for every copy restored from the saved state.

use std::fs::File;
use std::time::{Duration, Instant};

use flake_agent::framed::{self, Link};
use flake_protocol::proto::{Call, ExitStatus, Frame, ProtoError, Resync, VERSION};

use crate::boot::BootError;
use crate::console::DEVICE;
use crate::resync::ResyncError;

/// What a VM that may be saved does once its host has resynced it (`Some`), or at its call
/// when no `Resync` came (`None`): whether it took the clock and reseeded, or why its disk
/// could not be attached.
pub type OnResync = Box<dyn FnOnce(Option<&Resync>) -> Result<bool, SetupError> + Send>;

/// Why the guest could not get ready for its call; the call is answered with it.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The overlay disk could not become the root.
    #[error(transparent)]
    Overlay(#[from] BootError),
    /// The overlay disk's cache could not be dropped.
    #[error(transparent)]
    Cache(#[from] ResyncError),
}

/// Why the one call over the console could not be served.
#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    /// The console's descriptor could not be duplicated.
    #[error("cannot share {DEVICE} between reading and writing: {source}")]
    Share {
        /// Underlying error.
        source: std::io::Error,
    },
    /// The guest could not get ready (the call was answered with why).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The host's frames could not be read.
    #[error("cannot read the call from {DEVICE}: {source}")]
    Channel {
        /// Underlying error.
        source: ProtoError,
    },
}

use crate::timing::{LINGER, READY_EVERY};

/// Serves the one call that comes over `console` within `first_call`; `prepare` readies
/// the guest for the app meanwhile (after the first `Ready`, so the launcher's answer is on
/// its way).
pub fn serve(
    console: File,
    first_call: Duration,
    prepare: impl FnOnce() -> Result<(), SetupError>,
    mut on_resync: Option<OnResync>,
) -> Result<(), OneshotError> {
    let share = |source| OneshotError::Share { source };
    let output = console.try_clone().map_err(share)?;
    let last = console.try_clone().map_err(share)?;
    let mut link = Link::new(console, Box::new(output), Vec::new());
    link.send(&Frame::Ready(VERSION));
    if let Err(err) = prepare() {
        // The launcher waits for its call's answer: this is it.
        refuse(&mut link, &err);
        linger(last);
        return Err(err.into());
    }
    let call = wait_call(&mut link, first_call, &mut on_resync);
    if let Ok(Some(call)) = &call {
        crate::debug::log(|| "call".to_string());
        let _ = framed::run(call, link, None);
        crate::debug::log(|| "exit sent".to_string());
    }
    linger(last);
    call.map(|_| ())
}

/// Runs `on_resync` (once) for `resync`, giving whether the guest reseeded; a failure is
/// the call's answer.
fn resync(
    link: &mut Link,
    on_resync: &mut Option<OnResync>,
    resync: Option<&Resync>,
) -> Result<bool, SetupError> {
    let Some(attach) = on_resync.take() else {
        return Ok(false);
    };
    attach(resync).inspect_err(|err| refuse(link, err))
}

/// Answers the call with `err`: the guest is not ready for it, and never will be.
fn refuse(link: &mut Link, err: &SetupError) {
    link.send(&Frame::Error(format!("sci: {err}")));
    link.send(&Frame::Exit(ExitStatus::Exited(125)));
}

/// Waits for the launcher's `Call`, saying `Ready` again every [`READY_EVERY`] until its
/// first bytes come; `None` when no call came in `timeout`, the launcher is gone or speaks
/// another version.
fn wait_call(
    link: &mut Link,
    timeout: Duration,
    on_resync: &mut Option<OnResync>,
) -> Result<Option<Call>, OneshotError> {
    let mut deadline = Instant::now() + timeout;
    let mut heard = false;
    while !link.gone() && Instant::now() < deadline {
        if !link.readable(READY_EVERY) {
            if !heard {
                link.send(&Frame::Ready(VERSION));
            }
            continue;
        }
        heard = true;
        link.fill();
        loop {
            match link.take() {
                Ok(Some(Frame::Call(call))) => {
                    resync(link, on_resync, None)?;
                    return Ok(Some(call));
                }
                Ok(Some(Frame::Resync(fresh))) => {
                    let reseeded = resync(link, on_resync, Some(&fresh))?;
                    crate::debug::log(|| format!("resynced (reseeded: {reseeded})"));
                    link.send(&Frame::Resynced(reseeded));
                    // A restored copy waits its own time, not what was left when saved.
                    deadline = Instant::now() + timeout;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(err @ ProtoError::Version { .. }) => {
                    link.send(&Frame::Error(format!("sci: {err}")));
                    link.send(&Frame::Exit(ExitStatus::Exited(125)));
                    return Ok(None);
                }
                Err(source) => return Err(OneshotError::Channel { source }),
            }
        }
    }
    Ok(None)
}

/// Stays until the launcher hangs up (it stops the VMM) or for [`LINGER`].
fn linger(console: File) {
    let mut link = Link::new(console, Box::new(std::io::sink()), Vec::new());
    let until = Instant::now() + LINGER;
    while !link.gone() && Instant::now() < until {
        if link.readable(until.saturating_duration_since(Instant::now())) {
            link.fill();
            while let Ok(Some(_)) = link.take() {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop against real processes, with a socket pair standing in for the console.
    use super::*;
    use flake_protocol::proto::{window_cost, CHUNK, OUTPUT_WINDOW};
    use std::io::Write as _;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;

    struct Host {
        stream: UnixStream,
        sci: Option<JoinHandle<Result<(), OneshotError>>>,
    }

    /// What a call gave the host.
    #[derive(Debug, Default)]
    struct Got {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        errors: Vec<String>,
        stdin_acks: Vec<u32>,
        status: Option<ExitStatus>,
    }

    impl Host {
        fn start() -> Host {
            Host::start_with(|| Ok(()))
        }

        /// A guest readied by `prepare`.
        fn start_with(prepare: fn() -> Result<(), SetupError>) -> Host {
            Host::start_resyncing(prepare, None)
        }

        /// A guest readied by `prepare` that waits for a `Resync` when `on_resync` is set.
        fn start_resyncing(
            prepare: fn() -> Result<(), SetupError>,
            on_resync: Option<OnResync>,
        ) -> Host {
            let (host, guest) = UnixStream::pair().unwrap();
            host.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let console = File::from(OwnedFd::from(guest));
            let sci = std::thread::spawn(move || {
                serve(console, Duration::from_secs(20), prepare, on_resync)
            });
            Host {
                stream: host,
                sci: Some(sci),
            }
        }

        fn send(&mut self, frame: &Frame) {
            self.stream.write_all(&frame.encode()).unwrap();
        }

        fn recv(&mut self) -> Frame {
            Frame::read_from(&mut self.stream).unwrap().unwrap()
        }

        /// The next frame that is not `Ready`.
        fn recv_past_ready(&mut self) -> Frame {
            loop {
                match self.recv() {
                    Frame::Ready(_) => {}
                    other => return other,
                }
            }
        }

        /// Waits for `Ready`, then sends the call.
        /// (Output is acknowledged, as launchers always do on the console.)
        fn call(&mut self, argv: &[&str], flow: bool) {
            assert_eq!(self.recv(), Frame::Ready(VERSION));
            self.send(&Frame::Call(Call {
                argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                frames: true,
                flow,
                output_acks: true,
                ..Call::default()
            }));
        }

        /// Reads frames to the exit status, acknowledging output when `ack`.
        fn collect(&mut self, ack: bool) -> Got {
            let mut got = Got::default();
            while got.status.is_none() {
                let frame = self.recv();
                if ack && !matches!(frame, Frame::Ready(_) | Frame::Exit(_)) {
                    let cost = window_cost(frame.encode().len());
                    self.send(&Frame::OutputAck(u32::try_from(cost).unwrap()));
                }
                match frame {
                    Frame::Stdout(bytes) => got.stdout.extend(bytes),
                    Frame::Stderr(bytes) => got.stderr.extend(bytes),
                    Frame::Error(message) => got.errors.push(message),
                    Frame::StdinAck(count) => got.stdin_acks.push(count),
                    Frame::Exit(status) => got.status = Some(status),
                    Frame::Ready(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        }

        /// Hangs up and waits for `serve` to return.
        fn finish(mut self) -> Duration {
            let started = Instant::now();
            drop(self.stream);
            self.sci.take().unwrap().join().unwrap().unwrap();
            started.elapsed()
        }
    }

    #[test]
    fn a_call_gets_its_output_and_exit_status_and_the_vm_ends_when_the_host_hangs_up() {
        let mut host = Host::start();
        host.call(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], false);
        let got = host.collect(true);
        assert_eq!(got.stdout, b"out\n");
        assert_eq!(got.stderr, b"err\n");
        assert_eq!(got.status, Some(ExitStatus::Exited(3)));
        assert!(
            host.finish() < LINGER,
            "serving ends with the host's hang-up"
        );
    }

    /// What an overlay disk that cannot be mounted gives.
    fn broken_overlay() -> SetupError {
        SetupError::Overlay(BootError::MountDisk {
            device: "/dev/vdb".into(),
            source: rustix::io::Errno::IO,
        })
    }

    /// An `OnResync` that sends what it was given over a channel.
    fn recording(
        result: Result<(), SetupError>,
    ) -> (OnResync, std::sync::mpsc::Receiver<Option<Resync>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let on_resync: OnResync = Box::new(move |resync: Option<&Resync>| {
            tx.send(resync.copied()).unwrap();
            result.map(|()| resync.is_some())
        });
        (on_resync, rx)
    }

    #[test]
    fn a_resync_is_taken_once_and_answered_before_the_call() {
        let (on_resync, seen) = recording(Ok(()));
        let mut host = Host::start_resyncing(|| Ok(()), Some(on_resync));
        let fresh = Resync {
            realtime: Duration::new(1_800_000_000, 42),
            entropy: [7; 32],
        };
        assert_eq!(host.recv(), Frame::Ready(VERSION));
        host.send(&Frame::Resync(fresh));
        // A `Ready` said on the timer may come before the answer.
        assert_eq!(host.recv_past_ready(), Frame::Resynced(true));
        assert_eq!(seen.recv().unwrap(), Some(fresh));
        // Another `Resync` takes nothing more.
        host.send(&Frame::Resync(fresh));
        assert_eq!(host.recv_past_ready(), Frame::Resynced(false));
        host.send(&Frame::Call(Call {
            argv: vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"exit 4".to_vec()],
            frames: true,
            output_acks: true,
            ..Call::default()
        }));
        assert_eq!(host.collect(true).status, Some(ExitStatus::Exited(4)));
        host.finish();
        assert!(seen.try_recv().is_err(), "the disks are attached once");
    }

    #[test]
    fn a_call_without_resync_still_attaches_the_disks_first() {
        let (on_resync, seen) = recording(Ok(()));
        let mut host = Host::start_resyncing(|| Ok(()), Some(on_resync));
        host.call(&["/bin/true"], false);
        assert_eq!(host.collect(true).status, Some(ExitStatus::Exited(0)));
        host.finish();
        assert_eq!(seen.recv().unwrap(), None);
    }

    #[test]
    fn a_failed_resync_is_the_calls_answer() {
        let (on_resync, _seen) = recording(Err(broken_overlay()));
        let mut host = Host::start_resyncing(|| Ok(()), Some(on_resync));
        assert_eq!(host.recv(), Frame::Ready(VERSION));
        host.send(&Frame::Resync(Resync {
            realtime: Duration::ZERO,
            entropy: [0; 32],
        }));
        let got = host.collect(false);
        let message = broken_overlay().to_string();
        assert!(
            message.starts_with("overlay /dev/vdb: cannot mount it on /overlayroot: "),
            "{message}"
        );
        assert_eq!(got.errors, [format!("sci: {message}")]);
        assert_eq!(got.status, Some(ExitStatus::Exited(125)));
        drop(host.stream);
        let served = host.sci.take().unwrap().join().unwrap();
        let err = served.unwrap_err();
        assert!(matches!(err, OneshotError::Setup(_)), "{err:?}");
        assert_eq!(err.to_string(), message, "the same words at the top");
    }

    #[test]
    fn stdin_reaches_the_app_acknowledged_and_its_eof_too() {
        let mut host = Host::start();
        host.call(&["/bin/sh", "-c", "cat; echo end"], true);
        let input = vec![b'x'; 300_000];
        for chunk in input.chunks(CHUNK) {
            host.send(&Frame::Stdin(chunk.to_vec()));
        }
        host.send(&Frame::Stdin(Vec::new()));
        let got = host.collect(true);
        assert_eq!(got.stdout.len(), input.len() + 4);
        assert!(got.stdout.ends_with(b"xend\n"));
        assert_eq!(
            got.stdin_acks.first(),
            Some(&0),
            "the first ack says acks come"
        );
        let acked: u64 = got.stdin_acks.iter().map(|n| u64::from(*n)).sum();
        assert_eq!(acked, 300_000);
        assert_eq!(got.status, Some(ExitStatus::Exited(0)));
        host.finish();
    }

    #[test]
    fn output_beyond_the_window_waits_for_acknowledgements() {
        let mut host = Host::start();
        let script = "head -c 200000 /dev/zero; i=0; while [ $i -lt 3000 ]; do echo o; echo e >&2; i=$((i+1)); done";
        host.call(&["/bin/sh", "-c", script], false);
        let (mut bytes, mut stderr, mut stalls) = (0, 0, 0);
        host.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        loop {
            // Nothing acknowledged: the guest stops once the window is spent.
            let mut unacked = 0;
            let mut exit = None;
            while let Ok(Some(frame)) = Frame::read_from(&mut host.stream) {
                unacked += window_cost(frame.encode().len());
                match frame {
                    Frame::Stdout(data) => bytes += data.len(),
                    Frame::Stderr(data) => stderr += data.len(),
                    Frame::Exit(status) => exit = Some(status),
                    _ => {}
                }
            }
            if let Some(status) = exit {
                assert_eq!(status, ExitStatus::Exited(0));
                break;
            }
            assert!(
                unacked <= OUTPUT_WINDOW + window_cost(CHUNK + 5),
                "{unacked} sent unacknowledged"
            );
            stalls += 1;
            host.send(&Frame::OutputAck(u32::try_from(unacked).unwrap()));
        }
        assert_eq!(bytes, 200_000 + 3000 * 2);
        assert_eq!(stderr, 3000 * 2);
        assert!(stalls > 2, "the window held the output back {stalls} times");
        host.finish();
    }

    #[test]
    fn stdin_acknowledgements_keep_to_the_output_window_too() {
        let mut host = Host::start();
        // An app that takes its input in small pieces earns many acknowledgements.
        host.call(
            &["/bin/sh", "-c", "dd bs=64 of=/dev/null 2>/dev/null"],
            true,
        );
        let input = vec![b'y'; 256 * 1024];
        for chunk in input.chunks(4096) {
            host.send(&Frame::Stdin(chunk.to_vec()));
        }
        host.send(&Frame::Stdin(Vec::new()));
        host.stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let (mut acked, mut status) = (0u64, None);
        while status.is_none() {
            // Nothing acknowledged until the guest stops: it has kept to the window.
            let mut unacked = 0;
            while let Ok(Some(frame)) = Frame::read_from(&mut host.stream) {
                unacked += window_cost(frame.encode().len());
                match frame {
                    Frame::StdinAck(n) => acked += u64::from(n),
                    Frame::Exit(s) => status = Some(s),
                    _ => {}
                }
            }
            assert!(
                unacked <= OUTPUT_WINDOW + 1024,
                "{unacked} sent unacknowledged"
            );
            host.send(&Frame::OutputAck(u32::try_from(unacked).unwrap()));
        }
        assert_eq!(acked, 256 * 1024);
        assert_eq!(status, Some(ExitStatus::Exited(0)));
        host.finish();
    }

    #[test]
    fn signals_reach_the_apps_group_and_unknown_frames_are_skipped() {
        let mut host = Host::start();
        host.call(&["/bin/sh", "-c", "sleep 30; echo not reached"], false);
        // A newer launcher's frame: read whole and skipped.
        host.stream.write_all(&[3, 0, 0, 0, 200, 1, 2]).unwrap();
        host.send(&Frame::Signal(15));
        let got = host.collect(true);
        assert!(got.stdout.is_empty());
        assert_eq!(got.status, Some(ExitStatus::Signaled(15)));
        host.finish();
    }

    #[test]
    fn an_app_whose_launcher_hangs_up_is_hung_up_too() {
        let mut host = Host::start();
        host.call(&["/bin/sleep", "30"], true);
        assert_eq!(host.recv(), Frame::StdinAck(0));
        // `serve` returns once the app has ended.
        // (SIGKILL would follow 2 s after.)
        assert!(
            host.finish() < Duration::from_secs(2),
            "SIGHUP ended the app"
        );
    }

    #[test]
    fn an_app_whose_launcher_left_right_after_the_call_is_hung_up_too() {
        let mut host = Host::start();
        host.call(&["/bin/sleep", "30"], true);
        // Gone before reading anything: the guest's first write may already fail.
        assert!(
            host.finish() < Duration::from_secs(2),
            "SIGHUP ended the app"
        );
    }

    #[test]
    fn a_guest_that_cannot_get_ready_answers_the_call_with_why() {
        let mut host = Host::start_with(|| Err(broken_overlay()));
        host.call(&["/bin/true"], true);
        let got = host.collect(true);
        assert_eq!(got.status, Some(ExitStatus::Exited(125)));
        assert!(
            got.errors[0].contains("overlay /dev/vdb"),
            "{:?}",
            got.errors
        );
        drop(host.stream);
        let err = host.sci.take().unwrap().join().unwrap().unwrap_err();
        assert!(err.to_string().contains("cannot mount"), "{err}");
    }

    #[test]
    fn failures_before_the_app_runs_are_reported_with_their_status() {
        let mut host = Host::start();
        host.call(&["/nonexistent/app"], false);
        let got = host.collect(true);
        assert_eq!(got.status, Some(ExitStatus::Exited(127)));
        assert!(
            got.errors[0].contains("/nonexistent/app"),
            "{:?}",
            got.errors
        );
        host.finish();

        let mut host = Host::start();
        assert_eq!(host.recv(), Frame::Ready(VERSION));
        let mut call = Frame::Call(Call {
            argv: vec![b"/bin/true".to_vec()],
            ..Call::default()
        })
        .encode();
        call[5] = 99;
        host.stream.write_all(&call).unwrap();
        let got = host.collect(true);
        assert_eq!(got.status, Some(ExitStatus::Exited(125)));
        assert!(got.errors[0].contains("version 99"), "{:?}", got.errors);
        host.finish();
    }
}
