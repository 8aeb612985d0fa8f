//! The reading half every message shares: a frame body parsed into a map, its fields looked
//! up by name and checked by type, and `DecodeError`, everything that can be wrong with it.
//!
//! Decoding goes through `rmpv::Value` and checks each field by hand: that is what lets a
//! request with one bad field still be answered with its own `id`, and lets every
//! `bad_request` name the field at fault. A `DecodeError`'s text is that message, so each
//! variant carries the field (and index) a client needs to find its mistake.

use rmpv::Value as Msgpack;
use thiserror::Error;

use super::values::ValueError;

/// Longest key a request may name, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Longest idempotency key a `tx` or `begin` may carry, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Keys that start with this are the broker's own (one per idempotency key in use), so a
/// client's key may not: it would collide with them.
pub const RESERVED_KEY_PREFIX: char = '\0';

/// No request of protocol v1 nests deeper than four levels (map, statements, statement,
/// params); the limit stops a hostile frame from recursing the decoder off the stack.
const MAX_NESTING: usize = 16;

/// Why a frame body is not a message of protocol v1.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame body is not valid MessagePack: {reason}")]
    NotMessagepack { reason: String },
    #[error("frame body holds {count} bytes after its MessagePack value")]
    TrailingBytes { count: usize },
    #[error("frame body must be a MessagePack map, not {found}")]
    NotAMap { found: &'static str },
    #[error("missing field {field}")]
    MissingField { field: &'static str },
    #[error("field {field} must be {expected}, not {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field {field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },

    // Requests.
    #[error("id must be an unsigned integer")]
    BadId,
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error(
        "unknown isolation {0:?}: use read_uncommitted, read_committed, repeatable_read or \
         serializable"
    )]
    BadIsolation(String),
    #[error("{field}[{index}]: a key must be a str")]
    KeyNotAStr { field: &'static str, index: usize },
    #[error("{field}[{index}]: a key must be 1 to {max} bytes", max = MAX_KEY_BYTES)]
    BadKeyLength { field: &'static str, index: usize },
    #[error("{field}[{index}]: keys starting with a NUL byte are reserved for the broker")]
    ReservedKey { field: &'static str, index: usize },
    #[error(
        "idempotency_key must be 1 to {max} bytes",
        max = MAX_IDEMPOTENCY_KEY_BYTES
    )]
    BadIdempotencyKey,
    #[error("idempotency_key goes with transactions that write: a read_only one commits nothing to run once")]
    IdempotentReadOnly,
    #[error("lock needs at least one key in locks or read_locks")]
    NoKeys,
    #[error("statements must hold at least one statement")]
    EmptyStatements,
    #[error("statements[{index}] must be a map, not {found}")]
    StatementNotAMap { index: usize, found: &'static str },
    /// A fault inside one statement of a `tx`, which the index locates.
    #[error("statements[{index}]: {error}")]
    InStatement {
        index: usize,
        error: Box<DecodeError>,
    },
    #[error("sql is empty")]
    EmptySql,
    #[error("params[{index}]: {error}")]
    BadParam { index: usize, error: ValueError },
    #[error("retries is too large")]
    RetriesTooLarge,

    // Responses.
    #[error("response without a bool ok")]
    NoBoolOk,
    #[error("failed response without an error map")]
    NoErrorMap,
    #[error("unknown error code {0:?}")]
    UnknownErrorCode(String),
    #[error("a result must be a map")]
    ResultNotAMap,
    #[error("a column name must be a str")]
    ColumnNotAStr,
    #[error("a row must be an array")]
    RowNotAnArray,
    #[error("{0}")]
    BadCell(ValueError),
}

/// Parses one frame body, which must be exactly one MessagePack map.
pub(super) fn decode_map(body: &[u8]) -> Result<Vec<(Msgpack, Msgpack)>, DecodeError> {
    let mut cursor = body;
    let value =
        rmpv::decode::read_value_with_max_depth(&mut cursor, MAX_NESTING).map_err(|error| {
            DecodeError::NotMessagepack {
                reason: error.to_string(),
            }
        })?;
    if !cursor.is_empty() {
        return Err(DecodeError::TrailingBytes {
            count: cursor.len(),
        });
    }
    match value {
        Msgpack::Map(entries) => Ok(entries),
        other => Err(DecodeError::NotAMap {
            found: kind_of(&other),
        }),
    }
}

/// The MessagePack type of a value, as an error message names it.
pub(super) fn kind_of(value: &Msgpack) -> &'static str {
    match value {
        Msgpack::Nil => "nil",
        Msgpack::Boolean(_) => "a bool",
        Msgpack::Integer(_) => "an integer",
        Msgpack::F32(_) | Msgpack::F64(_) => "a float",
        Msgpack::String(_) => "a str",
        Msgpack::Binary(_) => "a bin",
        Msgpack::Array(_) => "an array",
        Msgpack::Map(_) => "a map",
        Msgpack::Ext(..) => "an ext",
    }
}

/// The entries of one decoded map, looked up by string key. Nil counts as absent; when a key
/// appears twice, the first one wins.
pub(super) struct Fields<'a>(pub(super) &'a [(Msgpack, Msgpack)]);

impl<'a> Fields<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a Msgpack> {
        self.0
            .iter()
            .find(|(key, _)| key.as_str() == Some(name))
            .map(|(_, value)| value)
            .filter(|value| !value.is_nil())
    }

    pub(super) fn string(&self, name: &'static str) -> Result<Option<String>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Msgpack::String(text)) => match text.as_str() {
                Some(text) => Ok(Some(text.to_string())),
                None => Err(DecodeError::NotUtf8 { field: name }),
            },
            Some(other) => Err(wrong_type(name, "a str", other)),
        }
    }

    pub(super) fn required_string(&self, name: &'static str) -> Result<String, DecodeError> {
        self.string(name)?
            .ok_or(DecodeError::MissingField { field: name })
    }

    /// An absent bool is false: every bool of the protocol is a flag that is off by default.
    pub(super) fn bool(&self, name: &'static str) -> Result<bool, DecodeError> {
        match self.get(name) {
            None => Ok(false),
            Some(Msgpack::Boolean(b)) => Ok(*b),
            Some(other) => Err(wrong_type(name, "a bool", other)),
        }
    }

    pub(super) fn uint(&self, name: &'static str) -> Result<Option<u64>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Msgpack::Integer(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(wrong_type(name, "an unsigned integer", other)),
        }
    }

    pub(super) fn array(&self, name: &'static str) -> Result<Option<&'a [Msgpack]>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Msgpack::Array(items)) => Ok(Some(items)),
            Some(other) => Err(wrong_type(name, "an array", other)),
        }
    }
}

fn wrong_type(field: &'static str, expected: &'static str, found: &Msgpack) -> DecodeError {
    DecodeError::WrongType {
        field,
        expected,
        found: kind_of(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        let mut body = vec![0x91u8; 100_000];
        body.push(0xc0);
        let error = decode_map(&body).expect_err("too deep");
        assert!(
            matches!(error, DecodeError::NotMessagepack { .. }),
            "{error:?}"
        );
    }
}
