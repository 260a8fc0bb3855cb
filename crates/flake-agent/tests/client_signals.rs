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
use flake_protocol::proto::{ExitStatus, Frame};

const CHILD: &str = "FLAKE_AGENT_TEST_CLIENT_SOCKET";

/// In the child: one frame-mode call over the socket, then a long "clean-up" (as a VM
/// launcher's `%remove` may have), then exit 0.
fn run_client(path: &str) {
    let stream = UnixStream::connect(path).unwrap();
    let request = frames_request(b"/bin/true", false);
    let status = client::run(stream, &request).unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
    eprintln!("call over");
    std::thread::sleep(Duration::from_secs(20));
    std::process::exit(0);
}

/// A frame-mode call of `program`; `stdin_on_ack`: stdin is read only once the agent
/// acknowledges it.
fn frames_request(program: &[u8], stdin_on_ack: bool) -> Request {
    Request {
        argv: vec![program.to_vec()],
        streams: Streams::Frames,
        term: None,
        env: Vec::new(),
        cwd: Vec::new(),
        user: Vec::new(),
        launcher: "test-pilot",
        output_acks: false,
        stdin_on_ack,
        answer_within: None,
    }
}

/// This binary run again as the launcher of `test` (which sees `var` set to the agent
/// socket), and the socket's listener.
fn launcher(
    test: &str,
    var: &str,
    stdin: Stdio,
) -> (tempfile::TempDir, UnixListener, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(var, &path)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (dir, listener, child)
}

/// The launcher's next connection, which opens with its call.
fn accept_call(listener: &UnixListener) -> UnixStream {
    let (mut agent, _) = listener.accept().unwrap();
    agent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(matches!(
        Frame::read_from(&mut agent).unwrap(),
        Some(Frame::Call(_))
    ));
    agent
}

#[test]
fn a_signal_during_the_call_goes_to_the_app_and_after_it_ends_the_launcher() {
    if let Ok(path) = std::env::var(CHILD) {
        run_client(&path);
        return;
    }
    let (_dir, listener, mut child) = launcher(
        "a_signal_during_the_call_goes_to_the_app_and_after_it_ends_the_launcher",
        CHILD,
        Stdio::null(),
    );
    let mut agent = accept_call(&listener);
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

const AGAIN: &str = "FLAKE_AGENT_TEST_CLIENT_AGAIN";

/// In the child: a call the instance refuses, then the same call made again, with stdin
/// read only once the agent acknowledges it.
fn run_client_again(path: &str) {
    let request = frames_request(b"/bin/cat", true);
    let refused = client::run(UnixStream::connect(path).unwrap(), &request).unwrap_err();
    assert!(
        matches!(
            refused,
            flake_protocol::proto::ProtoError::Refused { stdin_read: false }
        ),
        "{refused:?}"
    );
    eprintln!("refused");
    let status = client::run(UnixStream::connect(path).unwrap(), &request).unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
    std::process::exit(0);
}

#[test]
fn a_call_made_again_after_a_refusal_gets_all_input_and_the_signals() {
    if let Ok(path) = std::env::var(AGAIN) {
        run_client_again(&path);
        return;
    }
    let (_dir, listener, mut child) = launcher(
        "a_call_made_again_after_a_refusal_gets_all_input_and_the_signals",
        AGAIN,
        Stdio::piped(),
    );
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, b"every byte\n").unwrap();
    drop(input);
    // The first call is refused as the instance powers off: it has read no input.
    let mut agent = accept_call(&listener);
    // Time for a relay that does not wait for an acknowledgement to read and send input.
    agent
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let early = Frame::read_from(&mut agent);
    assert!(
        early.is_err(),
        "nothing before the agent's answer: {early:?}"
    );
    Frame::Closing.write_to(&mut agent).unwrap();
    drop(agent);
    // The call made again gets all of it once it acknowledges stdin.
    let mut agent = accept_call(&listener);
    Frame::StdinAck(0).write_to(&mut agent).unwrap();
    let mut got = Vec::new();
    loop {
        match Frame::read_from(&mut agent).unwrap() {
            Some(Frame::Stdin(bytes)) if bytes.is_empty() => break,
            Some(Frame::Stdin(bytes)) => got.extend(bytes),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"every byte\n");
    // Signals go to the call made again, and do not end the launcher.
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    assert_eq!(
        Frame::read_from(&mut agent).unwrap(),
        Some(Frame::Signal(2))
    );
    Frame::Exit(ExitStatus::Exited(0))
        .write_to(&mut agent)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.contains("refused"), "{stderr}");
}

const ENDLESS: &str = "FLAKE_AGENT_TEST_CLIENT_ENDLESS";

/// In the child: a call with endless input (`yes | app`) that ends before the input does.
fn run_client_endless(path: &str) {
    let request = frames_request(b"/bin/true", true);
    let (status, clean) = client::run_shared(UnixStream::connect(path).unwrap(), &request);
    assert_eq!(status.unwrap(), ExitStatus::Exited(0));
    assert!(clean, "hung up cleanly");
    std::process::exit(0);
}

/// On a stream later calls use too, a launcher hangs up only when the other end has read
/// all it sent, and never inside a frame: on a VM's virtio port QEMU would drop the rest,
/// and the guest would take the next caller's call for it.
#[test]
fn a_launcher_hangs_up_between_frames_once_all_it_sent_is_read() {
    if let Ok(path) = std::env::var(ENDLESS) {
        run_client_endless(&path);
        return;
    }
    let (_dir, listener, mut child) = launcher(
        "a_launcher_hangs_up_between_frames_once_all_it_sent_is_read",
        ENDLESS,
        Stdio::piped(),
    );
    let mut input = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'y'; 65536];
        while std::io::Write::write_all(&mut input, &chunk).is_ok() {}
    });
    let mut agent = accept_call(&listener);
    Frame::StdinAck(0).write_to(&mut agent).unwrap();
    // The launcher sends a window of input, more than the socket holds: it is still
    // sending when the call ends.
    std::thread::sleep(Duration::from_millis(300));
    Frame::Exit(ExitStatus::Exited(0))
        .write_to(&mut agent)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the launcher waits until what it sent has been read"
    );
    let mut sent = Vec::new();
    std::io::Read::read_to_end(&mut agent, &mut sent).unwrap();
    let mut at = 0;
    while at < sent.len() {
        match Frame::parse(&sent[at..]).unwrap() {
            Some((Frame::Stdin(bytes), len)) if !bytes.is_empty() => at += len,
            Some((other, _)) => panic!("only input was on its way, got {other:?}"),
            None => panic!("a frame cut off at {at} of {} bytes", sent.len()),
        }
    }
    assert!(at > 65536, "input was on its way: {at} bytes");
    let started = Instant::now();
    drop(agent);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    feeder.join().unwrap();
}
