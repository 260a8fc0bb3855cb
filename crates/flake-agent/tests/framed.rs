// SPDX-License-Identifier: MIT
//! Frame-mode calls. A separate test process: the agent's reaper, which unit tests of the
//! daemon start, would otherwise collect these tests' children first.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use flake_agent::daemon::reaper::Reaper;
use flake_agent::framed::{run, Link};
use flake_protocol::proto::{Call, ExitStatus, Frame, CHUNK};

/// A `Write` whose bytes the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `call` with `input` frames and returns every frame it wrote.
fn frames_of(call: &Call, input: &[Frame]) -> Vec<Frame> {
    let bytes: Vec<u8> = input.iter().flat_map(Frame::encode).collect();
    // The control stream stays open (a pipe that never ends), as a live connection does:
    // an ended one would make the call kill its app.
    let (keep_open, reader) = std::os::unix::net::UnixStream::pair().unwrap();
    (&keep_open).write_all(&bytes).unwrap();
    let sink = Shared::default();
    run(call, link_to(reader, &sink), Some(&Reaper::start())).unwrap();
    drop(keep_open);
    decode(&sink)
}

/// A call's argv from words.
fn argv(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// A link reading from `input` and writing to `sink`.
fn link_to(input: std::os::unix::net::UnixStream, sink: &Shared) -> Link {
    let input = std::fs::File::from(std::os::fd::OwnedFd::from(input));
    Link::new(input, Box::new(sink.clone()), Vec::new())
}

/// The frames written into `sink`.
fn decode(sink: &Shared) -> Vec<Frame> {
    let written = sink.0.lock().unwrap().clone();
    let mut reader = written.as_slice();
    std::iter::from_fn(|| Frame::read_from(&mut reader).unwrap()).collect()
}

/// Runs the words of an argv with `input` frames and returns (stdout, stderr, status).
fn call(words: &[&str], input: Vec<Frame>) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    let call = Call {
        argv: argv(words),
        frames: true,
        ..Call::default()
    };
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
    for frame in frames_of(&call, &input) {
        assert!(status.is_none(), "exit comes last");
        match frame {
            Frame::Stdout(b) => out.extend(b),
            Frame::Stderr(b) => err.extend(b),
            Frame::Exit(s) => status = Some(s),
            _ => {}
        }
    }
    (out, err, status.expect("an exit status"))
}

#[test]
fn streams_and_status() {
    let (out, err, status) = call(
        &["sh", "-c", "echo out; echo err >&2; exit 4"],
        vec![Frame::Stdin(Vec::new())],
    );
    assert_eq!(
        (out.as_slice(), err.as_slice(), status),
        (&b"out\n"[..], &b"err\n"[..], ExitStatus::Exited(4))
    );
}

#[test]
fn stdin_and_half_close() {
    let input = vec![
        Frame::Stdin(b"one\n".to_vec()),
        Frame::Stdin(b"two\n".to_vec()),
        Frame::Stdin(Vec::new()),
    ];
    let (out, _, status) = call(&["cat"], input);
    assert_eq!(
        (out.as_slice(), status),
        (&b"one\ntwo\n"[..], ExitStatus::Exited(0))
    );
}

#[test]
fn large_output_and_missing_program() {
    let (out, _, _) = call(
        &["sh", "-c", "head -c 3000000 /dev/zero"],
        vec![Frame::Stdin(Vec::new())],
    );
    assert_eq!(out.len(), 3_000_000);
    let (_, _, status) = call(&["/no/such/program"], Vec::new());
    assert_eq!(status, ExitStatus::Exited(127));
}

#[test]
fn signals_reach_the_app() {
    let (_, _, status) = call(&["sleep", "30"], vec![Frame::Signal(15)]);
    assert_eq!(status, ExitStatus::Signaled(15));
}

/// With flow control, a signal behind more input than the app's stdin pipe holds (an app
/// that never reads it) still reaches the app at once, and the input is acknowledged.
#[test]
fn a_signal_overtakes_input_the_app_does_not_read() {
    let call = Call {
        argv: argv(&[
            "sh",
            "-c",
            "trap 'exit 3' INT; sleep 20 >/dev/null 2>&1 & wait",
        ]),
        frames: true,
        flow: true,
        ..Call::default()
    };
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut host = host;
        // Four chunks fill the window; the app's pipe takes only one of them.
        for _ in 0..4 {
            Frame::Stdin(vec![b'y'; flake_protocol::proto::CHUNK])
                .write_to(&mut host)
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        Frame::Signal(2).write_to(&mut host).unwrap();
        host
    });
    let sink = Shared::default();
    let started = std::time::Instant::now();
    run(&call, link_to(guest, &sink), Some(&Reaper::start())).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the signal waited for the input"
    );
    let _host = feeder.join().unwrap();
    let (mut acked, mut status) = (Vec::new(), None);
    for frame in decode(&sink) {
        match frame {
            Frame::StdinAck(n) => acked.push(n),
            Frame::Exit(s) => status = Some(s),
            _ => {}
        }
    }
    assert_eq!(status, Some(ExitStatus::Exited(3)));
    assert_eq!(
        acked.first(),
        Some(&0),
        "support announced first: {acked:?}"
    );
}

/// Input that arrives after the app ended is not acknowledged once the exit status is out:
/// on a guest channel port, the next caller would get it. (With a thread per stream; the
/// one-thread relay of output flow control returns with `Exit`.)
#[test]
fn nothing_follows_the_exit_status() {
    let call = Call {
        argv: vec![b"true".to_vec()],
        frames: true,
        flow: true,
        ..Call::default()
    };
    let (keep_open, reader) = std::os::unix::net::UnixStream::pair().unwrap();
    let sink = Shared::default();
    run(&call, link_to(reader, &sink), Some(&Reaper::start())).unwrap();
    let late: Vec<u8> = [Frame::Stdin(vec![b'y'; 4096]), Frame::Stdin(Vec::new())]
        .iter()
        .flat_map(Frame::encode)
        .collect();
    let _ = (&keep_open).write_all(&late);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let frames = decode(&sink);
    assert!(
        matches!(frames.last(), Some(Frame::Exit(ExitStatus::Exited(0)))),
        "{frames:?}"
    );
}

/// Without flow control (a launcher that predates it), nothing is acknowledged.
#[test]
fn no_acknowledgements_unless_asked() {
    let input = [Frame::Stdin(b"x\n".to_vec()), Frame::Stdin(Vec::new())];
    let call = Call {
        argv: vec![b"cat".to_vec()],
        frames: true,
        ..Call::default()
    };
    for frame in frames_of(&call, &input) {
        assert!(!matches!(frame, Frame::StdinAck(_)), "{frame:?}");
    }
}

/// Under output flow control one thread relays the call; here the process's reaper waits
/// for the app (as in a guest init that reaps orphans).
#[test]
fn one_thread_relays_a_call_under_output_flow_control() {
    let call = Call {
        argv: argv(&["sh", "-c", "cat; echo err >&2; exit 5"]),
        frames: true,
        flow: true,
        output_acks: true,
        ..Call::default()
    };
    let input = [Frame::Stdin(b"in\n".to_vec()), Frame::Stdin(Vec::new())];
    let (mut out, mut err, mut acked, mut status) = (Vec::new(), Vec::new(), 0, None);
    for frame in frames_of(&call, &input) {
        assert!(status.is_none(), "exit comes last");
        match frame {
            Frame::Stdout(b) => out.extend(b),
            Frame::Stderr(b) => err.extend(b),
            Frame::StdinAck(n) => acked += n,
            Frame::Exit(s) => status = Some(s),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"in\n"[..], &b"err\n"[..])
    );
    assert_eq!(acked, 3);
    assert_eq!(status, Some(ExitStatus::Exited(5)));
}

/// A link whose writes never wait, reading frames from `input` and writing to `output`
/// (the test reads the other end).
fn nonblocking_link(
    input: std::os::unix::net::UnixStream,
    output: std::os::unix::net::UnixStream,
) -> Link {
    output.set_nonblocking(true).unwrap();
    let ready = std::os::fd::OwnedFd::from(output.try_clone().unwrap());
    let input = std::fs::File::from(std::os::fd::OwnedFd::from(input));
    Link::nonblocking(input, Box::new(output), ready, Vec::new())
}

/// Every frame the other end of a link's output gets until the link is dropped.
fn read_all(mut from: std::os::unix::net::UnixStream, pause: bool) -> Vec<Frame> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(err) => panic!("{err}"),
        }
        if pause && bytes.len() % 7 == 0 {
            // A reader slower than the app: the link fills and must wait for room.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let mut reader = bytes.as_slice();
    std::iter::from_fn(|| Frame::read_from(&mut reader).unwrap()).collect()
}

/// Over a link whose writes never wait, one thread relays a call without output flow
/// control to a reader slower than the app: all of its output arrives, in order, then the
/// status, and nothing after it.
#[test]
fn a_link_that_never_waits_relays_all_output_to_a_slow_reader() {
    let call = Call {
        argv: argv(&["sh", "-c", "cat; seq 1 100000; echo err >&2; exit 4"]),
        frames: true,
        flow: true,
        ..Call::default()
    };
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let (keep_open, control) = std::os::unix::net::UnixStream::pair().unwrap();
    let input = [Frame::Stdin(b"in\n".to_vec()), Frame::Stdin(Vec::new())];
    let bytes: Vec<u8> = input.iter().flat_map(Frame::encode).collect();
    (&keep_open).write_all(&bytes).unwrap();
    let reader = std::thread::spawn(move || read_all(host, true));
    run(
        &call,
        nonblocking_link(control, guest),
        Some(&Reaper::start()),
    )
    .unwrap();
    let frames = reader.join().unwrap();
    drop(keep_open);
    let (mut out, mut err, mut acked, mut status) = (Vec::new(), Vec::new(), 0, None);
    for frame in frames {
        assert!(status.is_none(), "exit comes last");
        match frame {
            Frame::Stdout(b) => out.extend(b),
            Frame::Stderr(b) => err.extend(b),
            Frame::StdinAck(n) => acked += n,
            Frame::Exit(s) => status = Some(s),
            other => panic!("{other:?}"),
        }
    }
    let mut expected = b"in\n".to_vec();
    for n in 1..=100_000 {
        expected.extend_from_slice(format!("{n}\n").as_bytes());
    }
    assert!(out == expected, "stdout differs ({} bytes)", out.len());
    assert_eq!(err, b"err\n");
    assert_eq!(acked, 3);
    assert_eq!(status, Some(ExitStatus::Exited(4)));
}

/// A launcher that reads none of the app's output (its own reader is paused) still gets
/// its signal to the app over a link whose writes never wait: the app ends before any of
/// its output is read.
#[test]
fn a_signal_reaches_the_app_while_its_output_is_not_read() {
    let dir = std::env::temp_dir().join(format!("framed-signal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mark = dir.join("ended");
    let _ = std::fs::remove_file(&mark);
    let script = format!("trap 'touch {}; exit 3' TERM; yes", mark.display());
    let call = Call {
        argv: vec![b"sh".to_vec(), b"-c".to_vec(), script.into_bytes()],
        frames: true,
        flow: true,
        ..Call::default()
    };
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let (keep_open, control) = std::os::unix::net::UnixStream::pair().unwrap();
    let relay = std::thread::spawn(move || {
        run(
            &call,
            nonblocking_link(control, guest),
            Some(&Reaper::start()),
        )
        .unwrap();
    });
    // Long enough for the socket and the link to fill.
    std::thread::sleep(std::time::Duration::from_millis(300));
    (&keep_open).write_all(&Frame::Signal(15).encode()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !mark.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ended = mark.exists();
    // Read in any case, so that a failure does not leave the relay waiting.
    let frames = read_all(host, false);
    relay.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        ended,
        "the app got its signal while nothing of its output was read"
    );
    assert_eq!(frames.last(), Some(&Frame::Exit(ExitStatus::Exited(3))));
}

/// A terminal call over a link whose writes never wait is served by threads whose writes
/// wait for room again: all of its output reaches a slow reader.
#[test]
fn a_terminal_call_over_a_link_that_never_waits_loses_no_output() {
    let call = Call {
        argv: argv(&["sh", "-c", "seq 1 100000"]),
        terminal: true,
        flow: true,
        ..Call::default()
    };
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let (keep_open, control) = std::os::unix::net::UnixStream::pair().unwrap();
    // A reader that starts late: the socket fills, and the writes must wait for room.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        read_all(host, false)
    });
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        run(
            &call,
            nonblocking_link(control, guest),
            Some(&Reaper::start()),
        )
        .unwrap();
        let _ = done.send(());
    });
    // An output that stopped at a full socket would leave the app blocked for ever.
    finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the call ends");
    // The call's control reader holds the output until the launcher hangs up.
    drop(keep_open);
    let frames = reader.join().unwrap();
    let out: Vec<u8> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Output(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("1\r\n2\r\n"),
        "{:?}",
        &text[..text.len().min(40)]
    );
    assert!(text.ends_with("99999\r\n100000\r\n"), "{} bytes", out.len());
    assert_eq!(frames.last(), Some(&Frame::Exit(ExitStatus::Exited(0))));
}

/// A non-blocking output that fails (`BrokenPipe`) once it is replaced, as a port's writer
/// does once a newer call took the port over.
struct Replaceable {
    stream: std::os::unix::net::UnixStream,
    replaced: Arc<std::sync::atomic::AtomicBool>,
}

impl Write for Replaceable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.replaced.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A call whose output waits for a launcher that reads nothing learns that its writer was
/// replaced: it ends (its app is hung up on) instead of waiting for room for ever.
#[test]
fn a_call_waiting_for_room_ends_once_its_writer_is_replaced() {
    let call = Call {
        argv: vec![b"yes".to_vec()],
        frames: true,
        flow: true,
        ..Call::default()
    };
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let (keep_open, control) = std::os::unix::net::UnixStream::pair().unwrap();
    guest.set_nonblocking(true).unwrap();
    let ready = std::os::fd::OwnedFd::from(guest.try_clone().unwrap());
    let replaced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let output = Replaceable {
        stream: guest,
        replaced: Arc::clone(&replaced),
    };
    let input = std::fs::File::from(std::os::fd::OwnedFd::from(control));
    let link = Link::nonblocking(input, Box::new(output), ready, Vec::new());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        run(&call, link, Some(&Reaper::start())).unwrap();
        let _ = done.send(());
    });
    // The socket and the link fill; then a newer call takes over.
    std::thread::sleep(std::time::Duration::from_millis(300));
    replaced.store(true, std::sync::atomic::Ordering::SeqCst);
    let ended = finished.recv_timeout(std::time::Duration::from_secs(10));
    drop((host, keep_open));
    assert!(ended.is_ok(), "the call ended");
}

#[test]
fn stdin_the_app_does_not_read_backs_up_to_the_launcher() {
    // A launcher that ignores the stdin window must not make the relay hold all it sends:
    // past a bound the relay reads no further and the launcher's writes wait, as on a pipe.
    let call = Call {
        argv: argv(&["sleep", "3"]),
        frames: true,
        output_acks: true,
        ..Call::default()
    };
    let (launcher, reader) = std::os::unix::net::UnixStream::pair().unwrap();
    launcher
        .set_write_timeout(Some(std::time::Duration::from_millis(1000)))
        .unwrap();
    let sink = Shared::default();
    let relay_sink = sink.clone();
    let relay = std::thread::spawn(move || {
        run(&call, link_to(reader, &relay_sink), Some(&Reaper::start()))
    });
    let chunk = Frame::Stdin(vec![b'x'; CHUNK]).encode();
    let mut sent = 0;
    while sent < 64 && (&launcher).write_all(&chunk).is_ok() {
        sent += 1;
    }
    assert!(
        sent < 32,
        "the relay took {sent} chunks of stdin that the app never read"
    );
    drop(launcher);
    relay.join().unwrap().unwrap();
    assert!(matches!(decode(&sink).last(), Some(Frame::Exit(_))));
}
