// SPDX-License-Identifier: MIT
//! The framed protocol decoder, as each of its readers uses it: one frame body
//! (`Frame::decode`), a blocking stream (`Frame::read_counted`, the launcher reading its
//! agent) and a buffer that fills while it is polled (`Frame::parse`, the guest init and
//! the relay). Both stream readers must see the same frames, every frame decoded must
//! encode back to itself, and no length prefix may take more than the input has.

#![no_main]

use flake_protocol::proto::{Frame, ProtoError};
use flake_pilot_fuzz as _;
use libfuzzer_sys::fuzz_target;

fn round_trips(frame: &Frame) {
    let bytes = frame.encode();
    assert_eq!(
        Frame::decode(&bytes[4..]).expect("an encoded frame decodes"),
        *frame
    );
    assert_eq!(
        Frame::parse(&bytes).expect("parses"),
        Some((frame.clone(), bytes.len()))
    );
}

/// Frames as a blocking reader takes them; unknown kinds are skipped as the launcher does.
fn from_stream(mut data: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let before = data.len();
        match Frame::read_counted(&mut data) {
            Ok(Some((frame, len))) => {
                assert_eq!(len, before - data.len(), "the bytes the frame took");
                frames.push(frame);
            }
            Err(ProtoError::UnknownKind { .. }) => {}
            Ok(None) | Err(_) => return frames,
        }
    }
}

/// Frames as a polling reader takes them off its buffer.
fn from_buffer(mut data: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match Frame::parse(data) {
            Ok(Some((frame, used))) => {
                assert!(used > 4 && used <= data.len());
                frames.push(frame);
                data = &data[used..];
            }
            Err(ProtoError::UnknownKind { len, .. }) => {
                assert!(len > 4 && len <= data.len());
                data = &data[len..];
            }
            Ok(None) | Err(_) => return frames,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        round_trips(&frame);
    }
    let streamed = from_stream(data);
    for frame in &streamed {
        round_trips(frame);
    }
    let buffered = from_buffer(data);
    // A stream reader fails on a truncated last frame where a buffer waits for more;
    // up to that point they agree.
    assert_eq!(streamed, buffered);
});
