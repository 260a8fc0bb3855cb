// SPDX-License-Identifier: MIT
//! Properties of the wire format over generated frames of every kind: encoding and
//! decoding are inverse on every reader, streams keep frames apart at any split, and a
//! length prefix is checked before anything is read or allocated for it.

use std::io::Read;

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn call() -> impl Strategy<Value = Call> {
    (
        any::<[bool; 4]>(),
        any::<(u16, u16)>(),
        vec(bytes(24), 1..6),
        vec(bytes(24), 0..6),
        bytes(24),
        bytes(12),
    )
        .prop_map(
            |([terminal, frames, flow, output_acks], (rows, cols), argv, env, cwd, user)| Call {
                terminal,
                frames,
                flow,
                output_acks,
                size: WinSize { rows, cols },
                argv,
                env,
                cwd,
                user,
            },
        )
}

fn resync() -> impl Strategy<Value = Resync> {
    (any::<u64>(), 0..1_000_000_000u32, any::<[u8; 32]>()).prop_map(|(secs, nanos, entropy)| {
        Resync {
            realtime: std::time::Duration::new(secs, nanos),
            entropy,
        }
    })
}

/// Every kind of frame, with any payload it can carry.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        call().prop_map(Frame::Call),
        bytes(300).prop_map(Frame::Stdin),
        any::<(u16, u16)>().prop_map(|(rows, cols)| Frame::Resize(WinSize { rows, cols })),
        any::<u8>().prop_map(Frame::Signal),
        bytes(300).prop_map(Frame::Output),
        bytes(300).prop_map(Frame::Stdout),
        bytes(300).prop_map(Frame::Stderr),
        any::<u8>().prop_map(|code| Frame::Exit(ExitStatus::Exited(code))),
        any::<u8>().prop_map(|signal| Frame::Exit(ExitStatus::Signaled(signal))),
        any::<String>().prop_map(Frame::Error),
        Just(Frame::Shutdown),
        any::<u16>().prop_map(Frame::Ready),
        any::<u32>().prop_map(Frame::StdinAck),
        any::<u32>().prop_map(Frame::OutputAck),
        Just(Frame::Closing),
        resync().prop_map(Frame::Resync),
        any::<bool>().prop_map(Frame::Resynced),
    ]
}

/// The kind byte of each frame; without a wildcard, so a new kind must be added to
/// [`frame`] and here before this compiles.
fn kind(frame: &Frame) -> u8 {
    match frame {
        Frame::Call(_) => 1,
        Frame::Stdin(_) => 2,
        Frame::Resize(_) => 3,
        Frame::Signal(_) => 4,
        Frame::Output(_) => 5,
        Frame::Exit(_) => 6,
        Frame::Error(_) => 7,
        Frame::Stdout(_) => 8,
        Frame::Stderr(_) => 9,
        Frame::Shutdown => 10,
        Frame::Ready(_) => 11,
        Frame::StdinAck(_) => 12,
        Frame::OutputAck(_) => 13,
        Frame::Closing => 14,
        Frame::Resync(_) => 15,
        Frame::Resynced(_) => 16,
    }
}

/// A reader that hands out its bytes a few at a time and remembers the largest buffer it
/// was asked to fill: a decoder that sized a buffer by an unchecked length shows here.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    largest_buffer: usize,
    reads: usize,
}

impl<'a> Trickle<'a> {
    fn new(data: &'a [u8], step: usize) -> Self {
        Trickle {
            data,
            step,
            largest_buffer: 0,
            reads: 0,
        }
    }
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        self.largest_buffer = self.largest_buffer.max(buf.len());
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

proptest! {
    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let encoded = frame.encode();
        prop_assert_eq!(encoded[4], kind(&frame));
        prop_assert_eq!(
            usize::try_from(u32::from_le_bytes(encoded[..4].try_into().unwrap())).unwrap(),
            encoded.len() - 4
        );
        prop_assert_eq!(Frame::decode(&encoded[4..]).unwrap(), frame.clone());
        prop_assert_eq!(Frame::parse(&encoded).unwrap(), Some((frame.clone(), encoded.len())));
        let mut reader = Trickle::new(&encoded, 7);
        prop_assert_eq!(
            Frame::read_counted(&mut reader).unwrap(),
            Some((frame, encoded.len()))
        );
    }

    #[test]
    fn a_stream_of_frames_reads_back_in_order_at_any_split(
        frames in vec(frame(), 0..12),
        step in 1usize..600,
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut reader = Trickle::new(&stream, step);
        let mut read = Vec::new();
        while let Some(frame) = Frame::read_from(&mut reader).unwrap() {
            read.push(frame);
        }
        prop_assert_eq!(&read, &frames);
        // As a polling reader fills its buffer `step` bytes at a time.
        let (mut buf, mut parsed) = (Vec::new(), Vec::new());
        for chunk in stream.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some((frame, used)) = Frame::parse(&buf).unwrap() {
                buf.drain(..used);
                parsed.push(frame);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(parsed, frames);
    }

    #[test]
    fn a_cut_frame_is_never_taken_for_a_whole_one(frame in frame(), cut in any::<prop::sample::Index>()) {
        let encoded = frame.encode();
        let cut = cut.index(encoded.len());
        prop_assert!(matches!(Frame::parse(&encoded[..cut]), Ok(None)));
        prop_assert!(!matches!(Frame::read_from(&mut &encoded[..cut]), Ok(Some(_))));
    }

    #[test]
    fn an_oversized_length_is_refused_before_anything_is_read(
        len in (MAX_FRAME + 1)..=u32::MAX,
        tail in bytes(64),
    ) {
        let mut input = len.to_le_bytes().to_vec();
        input.extend(&tail);
        prop_assert!(matches!(Frame::parse(&input), Err(ProtoError::Malformed(_))));
        let mut reader = Trickle::new(&input, 4);
        prop_assert!(matches!(Frame::read_from(&mut reader), Err(ProtoError::Malformed(_))));
        prop_assert_eq!(reader.data, tail.as_slice());
    }

    #[test]
    fn a_length_is_not_allocated_before_its_bytes_arrive(
        len in (MAX_FRAME / 4)..=MAX_FRAME,
        tail in bytes(64),
    ) {
        let mut input = len.to_le_bytes().to_vec();
        input.extend(&tail);
        let mut reader = Trickle::new(&input, 4096);
        prop_assert!(Frame::read_from(&mut reader).is_err());
        prop_assert!(reader.largest_buffer <= 2 * CHUNK, "asked to fill {}", reader.largest_buffer);
    }
}
