// SPDX-License-Identifier: MIT
//! Frame-mode calls. A separate test process: the agent's reaper, which unit tests of the
//! daemon start, would otherwise collect these tests' children first.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

use std::process::Command;
use std::sync::{Arc, Mutex};

use flake_agent::framed::{run, Sink};
use flake_agent::proto::{Call, ExitStatus, Frame};

/// Runs `argv` with `input` frames and returns (stdout, stderr, status).
fn call(argv: &[&str], input: Vec<Frame>) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    let call = Call {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        frames: true,
        ..Call::default()
    };
    let mut command = Command::new(argv[0]);
    command.args(&argv[1..]);
    let bytes: Vec<u8> = input.iter().flat_map(Frame::encode).collect();
    let sink: Sink<Vec<u8>> = Arc::new(Mutex::new(Vec::new()));
    let status = run(command, &call, std::io::Cursor::new(bytes), &sink).unwrap();
    let written = sink.lock().unwrap().clone();
    let mut reader = written.as_slice();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(frame) = Frame::read_from(&mut reader).unwrap() {
        match frame {
            Frame::Stdout(b) => out.extend(b),
            Frame::Stderr(b) => err.extend(b),
            Frame::Exit(s) => assert_eq!(s, status, "exit comes last"),
            _ => {}
        }
    }
    (out, err, status)
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
