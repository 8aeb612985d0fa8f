//! Fuzz target `responses`: the client's decoding of what a (possibly hostile) server sends.
//!
//! The input is one frame body. Checks:
//!   * Response::decode never panics;
//!   * an Ok response re-encodes (rmp_serde::to_vec, the server's encoder) and decodes back
//!     equal (NaN-aware: a response holding a NaN cell must re-encode to the same bytes);
//!   * the same body, framed by FrameCodec, comes back out of the codec unchanged.
#![no_main]

mod round_trip;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use txbroker::frame::FrameCodec;
use txbroker::protocol::Response;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = Response::decode(data) {
        round_trip::assert_round_trips("response", &response, Response::decode);
    }

    // As the client reads it: a 4-byte length, then the body.
    if !data.is_empty() {
        let mut codec = FrameCodec::new(data.len());
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&(data.len() as u32).to_be_bytes());
        buffer.extend_from_slice(data);
        let body = codec
            .decode(&mut buffer)
            .expect("a frame at the limit is accepted")
            .expect("a whole frame is returned");
        assert_eq!(&body[..], data);
        assert!(buffer.is_empty());
    }
});
