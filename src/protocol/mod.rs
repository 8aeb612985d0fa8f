//! The vocabulary of protocol v1: typed requests, responses and values, and their
//! MessagePack form. This module owns the translation between bytes and types in both
//! directions (the server decodes requests and encodes responses; the client does the
//! opposite), so no other module ever looks inside a frame body.
//!
//! # Layout
//! - `requests`: [`RequestFrame`], [`Request`] and its parts ([`TxRequest`], [`TxOptions`],
//!   [`Isolation`], [`Statement`], the keys); the decoder next to the encoder of each.
//! - `responses`: [`Response`], [`Reply`], [`QueryResult`], [`Stats`], [`ErrorReply`]; the
//!   same pairing.
//! - `values`: [`Value`], what a parameter or a result cell holds, in both directions.
//! - `decode`: what every decoder shares: the frame body as a map, its fields checked by
//!   type, and [`DecodeError`].
//!
//! The submodules are private: every type is used as `protocol::Name`.

mod decode;
mod requests;
mod responses;
mod values;

pub use decode::{DecodeError, MAX_IDEMPOTENCY_KEY_BYTES, MAX_KEY_BYTES, RESERVED_KEY_PREFIX};
pub use requests::{
    Isolation, RejectedRequest, Request, RequestFrame, Statement, TxOptions, TxRequest,
};
pub use responses::{
    ErrorReply, HotKey, LatencySummary, QueryResult, Reply, Response, StatKind, Stats,
};
pub use values::{Value, ValueError};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// The id a client gives a request, echoed in its response.
pub type RequestId = u64;
