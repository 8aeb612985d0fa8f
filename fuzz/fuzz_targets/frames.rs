//! Fuzz target `frames`: the server's whole decoding path for what a client sends.
//!
//! Input layout (so that seeds are readable and the fuzzer controls everything):
//!   byte 0   max_frame_bytes selector: max = byte0 * 8 + 1 (1 ..= 2041 bytes)
//!   byte 1   how the stream is cut: 0 = all at once, otherwise chunks of
//!            1 ..= (byte1 % 64 + 1) bytes with lengths drawn from a PRNG seeded by byte1
//!   rest     the byte stream a client sends (4-byte big-endian length + body, repeated)
//!
//! Checks:
//!   * no panic anywhere (FrameCodec::decode, decode_eof, RequestFrame::decode, encoders);
//!   * the codec is split-invariant: chunked feeding yields exactly the bodies, the error and
//!     the leftover that a one-shot reference splitter finds on the whole stream;
//!   * every body is 1 ..= max bytes, and an error comes as soon as 4 bad length bytes are in;
//!   * an Ok request re-encodes (rmp_serde::to_vec) and decodes back equal (NaN-aware: a
//!     request holding a NaN parameter must re-encode to the same bytes);
//!   * a rejected request is a `bad_request`, and the server's error response for it
//!     encodes and is read back equal by the client's Response::decode.
#![no_main]

mod round_trip;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use txbroker::error::ErrorCode;
use txbroker::frame::{FrameCodec, FrameError};
use txbroker::protocol::{RequestFrame, Response};

/// What the reference splitter says about the end of the stream.
#[derive(Debug, PartialEq)]
enum End {
    /// No error; this many bytes were left over (a partial frame, or nothing).
    Pending(usize),
    Empty,
    TooLarge(u64),
}

/// One-shot reference for the framing rule of protocol v1.
fn reference_split(stream: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut bodies = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < 4 {
            return (bodies, End::Pending(rest.len()));
        }
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if length == 0 {
            return (bodies, End::Empty);
        }
        if length > max {
            return (bodies, End::TooLarge(length as u64));
        }
        if rest.len() < 4 + length {
            return (bodies, End::Pending(rest.len()));
        }
        bodies.push(&rest[4..4 + length]);
        rest = &rest[4 + length..];
    }
}

/// Tiny xorshift, enough to vary chunk sizes deterministically.
struct Cuts(u32);

impl Cuts {
    fn next(&mut self, limit: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        1 + (x as usize) % limit
    }
}

fn check_body(body: &[u8]) {
    match RequestFrame::decode(body) {
        Ok(frame) => round_trip::assert_round_trips("request", &frame, RequestFrame::decode),
        Err(rejected) => {
            assert_eq!(
                rejected.error.code(),
                ErrorCode::BadRequest,
                "a malformed request must be bad_request: {rejected:?}"
            );
            // What the server sends back must be readable by the client.
            let response = Response::failure(rejected.id, &rejected.error);
            let encoded = rmp_serde::to_vec(&response).expect("an error response encodes");
            assert_eq!(
                Response::decode(&encoded),
                Ok(response),
                "the server's bad_request answer does not decode on the client"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = data[0] as usize * 8 + 1;
    let split = data[1];
    let stream = &data[2..];

    let mut codec = FrameCodec::new(max);
    let mut buffer = BytesMut::new();
    let mut bodies: Vec<BytesMut> = Vec::new();
    let mut error: Option<FrameError> = None;
    let mut cuts = Cuts(u32::from(split) | 0x9e37_0000);
    let mut fed = 0;
    let mut last_take = 0;

    'feed: while fed < stream.len() {
        let take = if split == 0 {
            stream.len() - fed
        } else {
            cuts.next(split as usize % 64 + 1).min(stream.len() - fed)
        };
        buffer.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
        last_take = take;
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(body)) => bodies.push(body),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }

    let (expected_bodies, expected_end) = reference_split(stream, max);
    let end = match &error {
        None => End::Pending(buffer.len()),
        Some(FrameError::Empty) => End::Empty,
        Some(FrameError::TooLarge { length, limit }) => {
            assert_eq!(*limit, max);
            End::TooLarge(*length)
        }
        Some(other) => panic!("decode returned an unexpected error: {other:?}"),
    };
    assert_eq!(end, expected_end, "codec and reference disagree on the end");
    assert_eq!(bodies.len(), expected_bodies.len(), "codec and reference disagree on frame count");
    for (body, expected) in bodies.iter().zip(&expected_bodies) {
        assert!(!body.is_empty() && body.len() <= max);
        assert_eq!(&body[..], *expected);
    }
    if error.is_some() {
        // The error came as soon as the bad length was complete: in the very chunk that
        // completed its four bytes, without waiting for any body.
        let consumed: usize = bodies.iter().map(|b| 4 + b.len()).sum();
        assert!(buffer.len() >= 4, "error without four length bytes");
        assert!(buffer.len() - 4 < last_take, "error reported a chunk late");
        assert_eq!(consumed + buffer.len(), fed);
    } else {
        assert_eq!(FrameCodec::is_mid_frame(&buffer), !buffer.is_empty());
        // End of stream, as FramedRead sees it: leftover bytes are an error, none is Ok(None).
        let leftover = buffer.len();
        match codec.decode_eof(&mut buffer) {
            Ok(None) => assert_eq!(leftover, 0),
            Ok(Some(body)) => panic!("decode_eof produced a frame decode missed: {body:?}"),
            Err(FrameError::Io(_)) => assert!(leftover > 0),
            Err(other) => panic!("decode_eof: unexpected error {other:?}"),
        }
    }

    for body in &bodies {
        check_body(body);
    }

    // The encoder frames what it is given, and the codec reads it back.
    if let Some(body) = bodies.first() {
        if let Ok(frame) = RequestFrame::decode(body) {
            let mut out = BytesMut::new();
            let mut big = FrameCodec::new(usize::MAX);
            big.encode(&frame, &mut out).expect("frame encodes");
            let read = big.decode(&mut out).expect("re-framed").expect("one whole frame");
            assert!(out.is_empty());
            let again = RequestFrame::decode(&read).expect("re-framed request decodes");
            assert_eq!(
                rmp_serde::to_vec(&again).expect("encodes"),
                rmp_serde::to_vec(&frame).expect("encodes")
            );
        }
    }
});
