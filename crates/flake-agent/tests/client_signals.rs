// SPDX-License-Identifier: MIT
//! Signals reaching a launcher: forwarded to the app during a call, their default action
//! once the call is over. The launcher is this test binary run again as a child (signals
//! to the test process itself would end the whole test run).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flake_agent::client::{self, Request, Streams};
use flake_agent::proto::{ExitStatus, Frame};

const CHILD: &str = "FLAKE_AGENT_TEST_CLIENT_SOCKET";

/// In the child: one frame-mode call over the socket, then a long "clean-up" (as a VM
/// launcher's `%remove` may have), then exit 0.
fn run_client(path: &str) {
    let stream = UnixStream::connect(path).unwrap();
    let request = Request {
        argv: vec![b"/bin/true".to_vec()],
        streams: Streams::Frames,
        term: None,
        launcher: "test-pilot",
        output_acks: false,
    };
    let status = client::run(stream, &request).unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
    eprintln!("call over");
    std::thread::sleep(Duration::from_secs(20));
    std::process::exit(0);
}

#[test]
fn a_signal_during_the_call_goes_to_the_app_and_after_it_ends_the_launcher() {
    if let Ok(path) = std::env::var(CHILD) {
        run_client(&path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_signal_during_the_call_goes_to_the_app_and_after_it_ends_the_launcher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut agent, _) = listener.accept().unwrap();
    assert!(matches!(
        Frame::read_from(&mut agent).unwrap(),
        Some(Frame::Call(_))
    ));
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    // stdin (/dev/null) is relayed after the signal handlers are in place: its EOF says
    // the launcher is ready for them.
    assert_eq!(
        Frame::read_from(&mut agent).unwrap(),
        Some(Frame::Stdin(Vec::new()))
    );
    // During the call: SIGINT is forwarded as a frame and the launcher lives on.
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let frame = Frame::read_from(&mut agent).unwrap();
    assert_eq!(frame, Some(Frame::Signal(2)));
    assert_eq!(child.try_wait().unwrap(), None, "forwarded, not taken");
    Frame::Exit(ExitStatus::Exited(0))
        .write_to(&mut agent)
        .unwrap();
    // After the call: SIGINT ends the launcher at once, as it ends any program.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("call over") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0);
    }
    let started = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(2), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
