// SPDX-License-Identifier: MIT
//! The launcher's end of a frame-mode call against a scripted agent on a socket pair.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

use std::io::Write;
use std::os::unix::net::UnixStream;

use flake_agent::client::{self, Request, Streams};
use flake_protocol::proto::{Call, ExitStatus, Frame};

fn request(output_acks: bool) -> Request {
    Request {
        argv: vec![b"/bin/true".to_vec()],
        streams: Streams::Frames,
        term: None,
        env: Vec::new(),
        cwd: Vec::new(),
        user: Vec::new(),
        launcher: "test-pilot",
        output_acks,
        stdin_on_ack: false,
        answer_within: None,
    }
}

/// A guest on the other end of the launcher's connection: once it has read the call, it
/// does `answer` on its own thread.
fn fake_guest<T: Send + 'static>(
    answer: impl FnOnce(Call, UnixStream) -> T + Send + 'static,
) -> (UnixStream, std::thread::JoinHandle<T>) {
    let (launcher, mut agent) = UnixStream::pair().unwrap();
    let guest = std::thread::spawn(move || match Frame::read_from(&mut agent).unwrap() {
        Some(Frame::Call(call)) => answer(call, agent),
        other => panic!("the launcher opened with {other:?}"),
    });
    (launcher, guest)
}

/// A guest that sends output and its exit status and hangs up at once, before the launcher
/// read any of it (a one-shot VM powering off): acknowledgements then fail, the status
/// still counts. A frame of a kind this build does not know is skipped.
#[test]
fn the_status_arrives_although_the_guest_hung_up_and_unknown_frames_are_skipped() {
    for output_acks in [true, false] {
        let (launcher, guest) = fake_guest(move |call, mut agent| {
            assert!(call.output_acks == output_acks && call.flow);
            let mut bytes = Vec::new();
            bytes.extend([2, 0, 0, 0, 99, 0]); // kind 99, one payload byte
            for _ in 0..3 {
                bytes.extend(Frame::Stderr(b"x".to_vec()).encode());
            }
            bytes.extend(Frame::Exit(ExitStatus::Exited(7)).encode());
            agent.write_all(&bytes).unwrap();
            drop(agent);
        });
        let status = client::run(launcher, &request(output_acks)).unwrap();
        guest.join().unwrap();
        assert_eq!(status, ExitStatus::Exited(7), "output_acks {output_acks}");
    }
}

/// With output acknowledgements, every frame but `Ready` and `Exit` is acknowledged with
/// its window cost.
#[test]
fn frames_are_acknowledged_with_their_cost() {
    let (launcher, guest) = fake_guest(move |_call, mut agent| {
        let stderr = Frame::Stderr(vec![b'e'; 5000]);
        let len = stderr.encode().len();
        Frame::Ready(flake_protocol::proto::VERSION)
            .write_to(&mut agent)
            .unwrap();
        stderr.write_to(&mut agent).unwrap();
        let mut acked = Vec::new();
        while acked.is_empty() {
            match Frame::read_from(&mut agent).unwrap() {
                Some(Frame::OutputAck(n)) => acked.push(n),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        Frame::Exit(ExitStatus::Exited(0))
            .write_to(&mut agent)
            .unwrap();
        (acked, len)
    });
    let status = client::run(launcher, &request(true)).unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
    let (acked, len) = guest.join().unwrap();
    let cost = u32::try_from(flake_protocol::proto::window_cost(len)).unwrap();
    assert_eq!(acked, vec![cost], "one ack, for the Stderr frame only");
    assert_eq!(cost, 5005 + 2048, "4 + 1 + 5000 bytes in two 4 KiB pieces");
}

/// An instance that refuses the call as it powers off says so; a launcher that took no
/// input yet may repeat the call.
#[test]
fn a_refused_call_is_its_own_error() {
    let (launcher, guest) = fake_guest(move |_call, mut agent| {
        Frame::Closing.write_to(&mut agent).unwrap();
        agent
    });
    let refused = client::run(launcher, &request(false)).unwrap_err();
    let _agent = guest.join().unwrap();
    assert!(
        matches!(refused, flake_protocol::proto::ProtoError::Refused { .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("call the app again"));
}

/// An instance that takes the call and never answers it (a VM whose guest hangs) is
/// reported once the time allowed has passed; repeated `Ready`s do not extend it.
#[test]
fn a_call_without_an_answer_in_time_is_its_own_error() {
    let (launcher, guest) = fake_guest(move |_call, mut agent| {
        for _ in 0..20 {
            if Frame::Ready(flake_protocol::proto::VERSION)
                .write_to(&mut agent)
                .is_err()
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        agent
    });
    let mut request = request(false);
    request.answer_within = Some(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client::run(launcher, &request).unwrap_err();
    let waited = started.elapsed();
    let _agent = guest.join().unwrap();
    assert!(
        matches!(err, flake_protocol::proto::ProtoError::NoAnswer { .. }),
        "{err:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(300)
            && waited < std::time::Duration::from_millis(900),
        "{waited:?}"
    );
}

/// An instance that drops the connection after `Ready` but before answering (a VM port
/// reset as its guest powers off): nothing of the call ran, so it is `Unanswered`, which
/// the VM launcher makes again, not an I/O error that ends the call.
#[test]
fn a_connection_dropped_before_the_answer_is_unanswered() {
    let (launcher, guest) = fake_guest(move |_call, mut agent| {
        Frame::Ready(flake_protocol::proto::VERSION)
            .write_to(&mut agent)
            .unwrap();
        // Dropped with the launcher's stdin EOF unread: the launcher's read is reset.
    });
    let err = client::run(launcher, &request(false)).unwrap_err();
    guest.join().unwrap();
    assert!(
        matches!(err, flake_protocol::proto::ProtoError::Unanswered),
        "{err:?}"
    );
}

/// The request's environment, working directory and user (a VM image's `Env`,
/// `WorkingDir` and `User`) travel in the call's frame, as given, in both stream modes
/// that need no terminal.
#[test]
fn env_and_cwd_travel_with_the_call() {
    for streams in [Streams::Frames, Streams::Descriptors] {
        let (launcher, guest) = fake_guest(move |call, mut agent| {
            Frame::Exit(ExitStatus::Exited(0))
                .write_to(&mut agent)
                .unwrap();
            call
        });
        let request = Request {
            streams,
            env: vec![b"A=1".to_vec(), b"B=x=y z".to_vec()],
            cwd: b"/srv/app".to_vec(),
            user: b"app:staff".to_vec(),
            ..request(false)
        };
        assert_eq!(
            client::run(launcher, &request).unwrap(),
            ExitStatus::Exited(0)
        );
        let call = guest.join().unwrap();
        assert_eq!(call.env, request.env, "{streams:?}");
        assert_eq!(call.cwd, b"/srv/app", "{streams:?}");
        assert_eq!(call.user, b"app:staff", "{streams:?}");
    }
}
