// SPDX-License-Identifier: MIT
//! The agent in-process, called through a real socket as the launcher calls it.

use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::serve;
use crate::proto::{Call, ExitStatus, Frame, WinSize};
use crate::transport::send_call;

fn agent() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("state/agent.sock");
    let path = socket.clone();
    std::thread::spawn(move || serve(&path));
    let deadline = Instant::now() + Duration::from_secs(5);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }
    (dir, socket)
}

fn call(argv: &[&str]) -> Call {
    Call {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        ..Call::default()
    }
}

/// Frames until Exit; returns (output, errors, exit).
fn finish(stream: &mut UnixStream) -> (Vec<u8>, Vec<String>, ExitStatus) {
    let (mut output, mut errors) = (Vec::new(), Vec::new());
    loop {
        match Frame::read_from(stream)
            .unwrap()
            .expect("exit before close")
        {
            Frame::Output(bytes) => output.extend(bytes),
            Frame::Error(message) => errors.push(message),
            Frame::Exit(status) => return (output, errors, status),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Runs a piped call with files as stdin/stdout/stderr; returns (stdout, stderr, exit).
fn piped(socket: &PathBuf, argv: &[&str], input: &[u8]) -> (String, String, ExitStatus) {
    let mut stdin = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut stdin, input).unwrap();
    stdin.rewind().unwrap();
    let (mut out, mut err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut stream = UnixStream::connect(socket).unwrap();
    send_call(
        &stream,
        &call(argv),
        Some([stdin.as_fd(), out.as_fd(), err.as_fd()]),
    )
    .unwrap();
    let (_, _, status) = finish(&mut stream);
    let read = |f: &mut std::fs::File| {
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    };
    (read(&mut out), read(&mut err), status)
}

#[test]
fn piped_call_streams_and_exit_status() {
    let (_dir, socket) = agent();
    let (out, err, status) = piped(
        &socket,
        &["sh", "-c", "echo out; echo err >&2; exit 9"],
        b"",
    );
    assert_eq!(
        (out.as_str(), err.as_str(), status),
        ("out\n", "err\n", ExitStatus::Exited(9))
    );
    let (out, _, status) = piped(&socket, &["cat"], b"stdin data\n");
    assert_eq!(
        (out.as_str(), status),
        ("stdin data\n", ExitStatus::Exited(0))
    );
}

#[test]
fn missing_program_is_127() {
    let (_dir, socket) = agent();
    let mut stream = UnixStream::connect(&socket).unwrap();
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_fd();
    send_call(&stream, &call(&["/no/such/program"]), Some([fd, fd, fd])).unwrap();
    let (_, errors, status) = finish(&mut stream);
    assert_eq!(status, ExitStatus::Exited(127));
    assert!(errors[0].contains("/no/such/program"), "{errors:?}");
}

#[test]
fn terminal_call_has_a_pty_of_the_given_size() {
    let (_dir, socket) = agent();
    let mut stream = UnixStream::connect(&socket).unwrap();
    let mut c = call(&["sh", "-c", "test -t 0 && echo TTY; stty size"]);
    c.terminal = true;
    c.size = WinSize { rows: 33, cols: 77 };
    send_call(&stream, &c, None).unwrap();
    let (output, _, status) = finish(&mut stream);
    let text = String::from_utf8_lossy(&output);
    assert!(text.contains("TTY") && text.contains("33 77"), "{text}");
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn terminal_input_reaches_the_app() {
    let (_dir, socket) = agent();
    let mut stream = UnixStream::connect(&socket).unwrap();
    let mut c = call(&["sh"]);
    c.terminal = true;
    send_call(&stream, &c, None).unwrap();
    Frame::Stdin(b"exit 5\n".to_vec())
        .write_to(&mut stream)
        .unwrap();
    let (_, _, status) = finish(&mut stream);
    assert_eq!(status, ExitStatus::Exited(5));
}

#[test]
fn signals_are_forwarded_and_a_lost_launcher_kills_the_app() {
    let (_dir, socket) = agent();
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_fd();
    let mut stream = UnixStream::connect(&socket).unwrap();
    send_call(&stream, &call(&["sleep", "30"]), Some([fd, fd, fd])).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    Frame::Signal(15).write_to(&mut stream).unwrap();
    assert_eq!(finish(&mut stream).2, ExitStatus::Signaled(15));

    let mut out = tempfile::tempfile().unwrap();
    let stream = UnixStream::connect(&socket).unwrap();
    send_call(
        &stream,
        &call(&["sh", "-c", "echo $$; exec sleep 30"]),
        Some([fd, out.as_fd(), fd]),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        out.rewind().unwrap();
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        if let Ok(pid) = text.trim().parse::<u32>() {
            break pid;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(4);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "app {pid} survived its launcher");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn concurrent_calls_get_their_own_status_and_malformed_calls_an_error() {
    let (_dir, socket) = agent();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || piped(&socket, &["sh", "-c", &format!("exit {i}")], b"").2)
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(
            handle.join().unwrap(),
            ExitStatus::Exited(u8::try_from(i).unwrap())
        );
    }
    let mut stream = UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut stream, &[5, 0, 0, 0, 99, 1, 2, 3, 4]).unwrap();
    let (_, errors, status) = finish(&mut stream);
    assert_eq!(status, ExitStatus::Exited(125));
    assert!(!errors.is_empty());
    assert_eq!(
        piped(&socket, &["true"], b"").2,
        ExitStatus::Exited(0),
        "still serving"
    );
}

#[test]
fn warm_calls_take_milliseconds() {
    let (_dir, socket) = agent();
    let mut times: Vec<Duration> = (0..30)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(piped(&socket, &["true"], b"").2, ExitStatus::Exited(0));
            started.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    eprintln!("median in-process warm call: {median:?}");
    assert!(median < Duration::from_millis(50), "{median:?}");
}
