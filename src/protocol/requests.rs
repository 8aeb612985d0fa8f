//! Requests: what a client asks, from the whole frame (`RequestFrame`) down to its parts
//! (`TxRequest`, `TxOptions`, `Statement`, the keys), with their MessagePack form in both
//! directions. The server decodes requests and the Rust client (`crate::client`) encodes
//! them; each type's decoder stands next to its encoder so that a field is added in one place.
//!
//! Decoders read fields in a fixed order and stop at the first fault, so the `bad_request`
//! a malformed request gets is always the same one.

use rmpv::Value as Msgpack;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::decode::{
    decode_map, kind_of, DecodeError, Fields, MAX_IDEMPOTENCY_KEY_BYTES, MAX_KEY_BYTES,
    RESERVED_KEY_PREFIX,
};
use super::values::Value;
use super::RequestId;
use crate::error::BrokerError;
use crate::locks::{LockMode, LockRequest};

/// A request as it travels: the client's id and what it asks.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestFrame {
    pub id: RequestId,
    pub request: Request,
}

/// A request that could not be decoded: the error to answer, with the id when it was read.
#[derive(Debug, PartialEq)]
pub struct RejectedRequest {
    pub id: Option<RequestId>,
    pub error: BrokerError,
}

impl RequestFrame {
    /// Decodes one frame body sent by a client. Every fault is a `bad_request`, answered with
    /// the request's id once that has been read.
    pub fn decode(body: &[u8]) -> Result<RequestFrame, RejectedRequest> {
        let reject = |id, error: DecodeError| RejectedRequest {
            id,
            error: BrokerError::BadRequest(error.to_string()),
        };
        let map = decode_map(body).map_err(|error| reject(None, error))?;
        let fields = Fields(&map);
        let id = match fields.get("id") {
            Some(Msgpack::Integer(n)) => n.as_u64().ok_or(DecodeError::BadId),
            Some(_) => Err(DecodeError::BadId),
            None => Err(DecodeError::MissingField { field: "id" }),
        }
        .map_err(|error| reject(None, error))?;
        let request = Request::decode(&fields).map_err(|error| reject(Some(id), error))?;
        Ok(RequestFrame { id, request })
    }
}

/// The client's encoder: one map holding `id`, `op` and the op's fields.
impl Serialize for RequestFrame {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("op", self.request.op())?;
        self.request.encode_fields(&mut map)?;
        map.end()
    }
}

/// Every operation of protocol v1.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Hello {
        token: Option<String>,
        client: Option<String>,
    },
    Ping,
    Tx(TxRequest),
    Begin(TxOptions),
    Exec(Statement),
    Lock(LockRequest),
    Commit,
    Rollback,
    Stats,
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Ping => "ping",
            Request::Tx(_) => "tx",
            Request::Begin(_) => "begin",
            Request::Exec(_) => "exec",
            Request::Lock(_) => "lock",
            Request::Commit => "commit",
            Request::Rollback => "rollback",
            Request::Stats => "stats",
        }
    }

    fn decode(fields: &Fields) -> Result<Request, DecodeError> {
        let op = fields.required_string("op")?;
        Ok(match op.as_str() {
            "hello" => Request::Hello {
                token: fields.string("token")?,
                client: fields.string("client")?,
            },
            "ping" => Request::Ping,
            "tx" => Request::Tx(TxRequest::decode(fields)?),
            "begin" => Request::Begin(TxOptions::decode(fields)?),
            "exec" => Request::Exec(Statement::decode(fields)?),
            "lock" => Request::Lock(decode_lock_request(fields)?.ok_or(DecodeError::NoKeys)?),
            "commit" => Request::Commit,
            "rollback" => Request::Rollback,
            "stats" => Request::Stats,
            _ => return Err(DecodeError::UnknownOp(op)),
        })
    }

    /// The op's own fields, beside `id` and `op`.
    fn encode_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        match self {
            Request::Hello { token, client } => {
                if let Some(token) = token {
                    map.serialize_entry("token", token)?;
                }
                if let Some(client) = client {
                    map.serialize_entry("client", client)?;
                }
            }
            Request::Tx(tx) => tx.encode_fields(map)?,
            Request::Begin(options) => options.encode_fields(map)?,
            Request::Exec(statement) => statement.encode_fields(map)?,
            Request::Lock(keys) => encode_lock_request(map, keys)?,
            Request::Ping | Request::Commit | Request::Rollback | Request::Stats => {}
        }
        Ok(())
    }
}

/// A whole transaction in one request.
#[derive(Clone, Debug, PartialEq)]
pub struct TxRequest {
    pub statements: Vec<Statement>,
    pub options: TxOptions,
    /// Retries after a deadlock or lock wait timeout; `None` means the configured default.
    pub retries: Option<u32>,
}

impl TxRequest {
    fn decode(fields: &Fields) -> Result<TxRequest, DecodeError> {
        let retries = match fields.uint("retries")? {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| DecodeError::RetriesTooLarge)?),
        };
        Ok(TxRequest {
            statements: decode_statements(fields)?,
            options: TxOptions::decode(fields)?,
            retries,
        })
    }

    fn encode_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("statements", &self.statements)?;
        self.options.encode_fields(map)?;
        if let Some(retries) = self.retries {
            map.serialize_entry("retries", &retries)?;
        }
        Ok(())
    }
}

/// `statements` of a `tx`: one or more, each a map of its own.
fn decode_statements(fields: &Fields) -> Result<Vec<Statement>, DecodeError> {
    let items = fields
        .array("statements")?
        .ok_or(DecodeError::MissingField {
            field: "statements",
        })?;
    if items.is_empty() {
        return Err(DecodeError::EmptyStatements);
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Msgpack::Map(entries) => {
                Statement::decode(&Fields(entries)).map_err(|error| DecodeError::InStatement {
                    index,
                    error: Box::new(error),
                })
            }
            other => Err(DecodeError::StatementNotAMap {
                index,
                found: kind_of(other),
            }),
        })
        .collect()
}

/// How a transaction starts: its keys, isolation level and access mode (`begin`, and `tx`),
/// and the idempotency key that makes a retry of it answer once (`docs/protocol.md` §19).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TxOptions {
    pub locks: Option<LockRequest>,
    pub isolation: Option<Isolation>,
    pub read_only: bool,
    pub idempotency_key: Option<String>,
}

impl TxOptions {
    fn decode(fields: &Fields) -> Result<TxOptions, DecodeError> {
        let options = TxOptions {
            locks: decode_lock_request(fields)?,
            isolation: match fields.string("isolation")? {
                None => None,
                Some(text) => Some(Isolation::parse(&text).ok_or(DecodeError::BadIsolation(text))?),
            },
            read_only: fields.bool("read_only")?,
            idempotency_key: match fields.string("idempotency_key")? {
                Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES => {
                    return Err(DecodeError::BadIdempotencyKey)
                }
                key => key,
            },
        };
        // Its record could not be written in a READ ONLY transaction.
        if options.read_only && options.idempotency_key.is_some() {
            return Err(DecodeError::IdempotentReadOnly);
        }
        Ok(options)
    }

    fn encode_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        if let Some(keys) = &self.locks {
            encode_lock_request(map, keys)?;
        }
        if let Some(isolation) = self.isolation {
            map.serialize_entry("isolation", isolation.as_str())?;
        }
        if self.read_only {
            map.serialize_entry("read_only", &true)?;
        }
        if let Some(key) = &self.idempotency_key {
            map.serialize_entry("idempotency_key", key)?;
        }
        Ok(())
    }
}

/// `locks` and `read_locks`; `None` when both are absent or empty.
fn decode_lock_request(fields: &Fields) -> Result<Option<LockRequest>, DecodeError> {
    Ok(LockRequest::new(
        decode_keys(fields, "locks")?,
        decode_keys(fields, "read_locks")?,
    ))
}

fn encode_lock_request<M: SerializeMap>(map: &mut M, keys: &LockRequest) -> Result<(), M::Error> {
    let with_mode = |mode| -> Vec<&str> {
        keys.keys()
            .iter()
            .filter(|(_, key_mode)| *key_mode == mode)
            .map(|(key, _)| key.as_str())
            .collect()
    };
    let exclusive = with_mode(LockMode::Exclusive);
    let shared = with_mode(LockMode::Shared);
    if !exclusive.is_empty() {
        map.serialize_entry("locks", &exclusive)?;
    }
    if !shared.is_empty() {
        map.serialize_entry("read_locks", &shared)?;
    }
    Ok(())
}

fn decode_keys(fields: &Fields, name: &'static str) -> Result<Vec<String>, DecodeError> {
    let Some(items) = fields.array(name)? else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item.as_str() {
            Some(key) if key.starts_with(RESERVED_KEY_PREFIX) => {
                Err(DecodeError::ReservedKey { field: name, index })
            }
            Some(key) if !key.is_empty() && key.len() <= MAX_KEY_BYTES => Ok(key.to_string()),
            Some(_) => Err(DecodeError::BadKeyLength { field: name, index }),
            None => Err(DecodeError::KeyNotAStr { field: name, index }),
        })
        .collect()
}

/// Transaction isolation levels, spelled as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "read_uncommitted",
            Isolation::ReadCommitted => "read_committed",
            Isolation::RepeatableRead => "repeatable_read",
            Isolation::Serializable => "serializable",
        }
    }

    fn parse(text: &str) -> Option<Isolation> {
        [
            Isolation::ReadUncommitted,
            Isolation::ReadCommitted,
            Isolation::RepeatableRead,
            Isolation::Serializable,
        ]
        .into_iter()
        .find(|level| level.as_str() == text)
    }

    /// The level as SQL spells it after `ISOLATION LEVEL`.
    pub fn as_sql(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "READ UNCOMMITTED",
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::RepeatableRead => "REPEATABLE READ",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }
}

/// One SQL statement with its positional `?` parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

impl Statement {
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }

    /// Reads `sql` and `params` from the map that holds them: the request itself for `exec`,
    /// an item of `statements` for `tx`.
    fn decode(fields: &Fields) -> Result<Statement, DecodeError> {
        let sql = fields.required_string("sql")?;
        if sql.trim().is_empty() {
            return Err(DecodeError::EmptySql);
        }
        let params = fields
            .array("params")?
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(index, item)| {
                Value::from_msgpack(item.clone())
                    .map_err(|error| DecodeError::BadParam { index, error })
            })
            .collect::<Result<_, _>>()?;
        Ok(Statement { sql, params })
    }

    /// Writes `sql` and `params` into the map that holds them (see `decode`).
    fn encode_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("sql", &self.sql)?;
        map.serialize_entry("params", &self.params)
    }
}

/// A statement as an item of a `tx`'s `statements`: a map of its own fields.
impl Serialize for Statement {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        self.encode_fields(&mut map)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn encode(value: &Msgpack) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).expect("writing to a Vec cannot fail");
        bytes
    }

    fn map(entries: Vec<(&str, Msgpack)>) -> Msgpack {
        Msgpack::Map(
            entries
                .into_iter()
                .map(|(key, value)| (Msgpack::from(key), value))
                .collect(),
        )
    }

    fn check_rejected(body: &[u8], id: Option<u64>, message_part: &str) {
        let rejected = RequestFrame::decode(body).expect_err("must be rejected");
        assert_eq!(rejected.id, id);
        assert_eq!(rejected.error.code(), ErrorCode::BadRequest);
        assert!(
            rejected.error.to_string().contains(message_part),
            "{:?} does not contain {message_part:?}",
            rejected.error.to_string()
        );
    }

    #[test]
    fn a_full_tx_request_decodes() {
        let body = encode(&map(vec![
            ("id", Msgpack::from(7)),
            ("op", Msgpack::from("tx")),
            (
                "statements",
                Msgpack::Array(vec![map(vec![
                    ("sql", Msgpack::from("UPDATE t SET v = ? WHERE id = ?")),
                    (
                        "params",
                        Msgpack::Array(vec![
                            Msgpack::from(-5),
                            Msgpack::from(u64::MAX),
                            Msgpack::Binary(vec![0, 1]),
                            Msgpack::Nil,
                            Msgpack::from(1.5f64),
                        ]),
                    ),
                ])]),
            ),
            ("locks", Msgpack::Array(vec!["b".into(), "a".into()])),
            ("read_locks", Msgpack::Array(vec!["a".into(), "c".into()])),
            ("isolation", Msgpack::from("read_committed")),
            ("read_only", Msgpack::Nil),
            ("retries", Msgpack::from(2)),
            ("future_field", Msgpack::from("ignored")),
        ]));
        let frame = RequestFrame::decode(&body).expect("valid request");
        assert_eq!(frame.id, 7);
        let Request::Tx(tx) = frame.request else {
            panic!("expected tx, got {:?}", frame.request);
        };
        assert_eq!(
            tx.statements[0].params,
            vec![
                Value::Int(-5),
                Value::UInt(u64::MAX),
                Value::Bytes(vec![0, 1]),
                Value::Null,
                Value::Double(1.5)
            ]
        );
        let keys = tx.options.locks.expect("keys");
        assert_eq!(
            keys.keys(),
            &[
                ("a".to_string(), LockMode::Exclusive),
                ("b".to_string(), LockMode::Exclusive),
                ("c".to_string(), LockMode::Shared)
            ]
        );
        assert_eq!(tx.options.isolation, Some(Isolation::ReadCommitted));
        assert!(!tx.options.read_only);
        assert_eq!(tx.retries, Some(2));
    }

    #[test]
    fn bad_requests_name_the_field_and_keep_the_id_when_readable() {
        check_rejected(&[0x92, 0x01], None, "not valid MessagePack");
        check_rejected(
            &encode(&Msgpack::from(3)),
            None,
            "must be a MessagePack map",
        );
        check_rejected(
            &encode(&map(vec![("op", "ping".into())])),
            None,
            "missing field id",
        );
        check_rejected(
            &encode(&map(vec![("id", Msgpack::from(-1)), ("op", "ping".into())])),
            None,
            "id must be",
        );
        let with_id = |entries: Vec<(&str, Msgpack)>| {
            let mut all = vec![("id", Msgpack::from(9))];
            all.extend(entries);
            encode(&map(all))
        };
        check_rejected(&with_id(vec![]), Some(9), "missing field op");
        check_rejected(&with_id(vec![("op", "fly".into())]), Some(9), "unknown op");
        check_rejected(
            &with_id(vec![
                ("op", "tx".into()),
                ("statements", Msgpack::Array(vec![])),
            ]),
            Some(9),
            "at least one statement",
        );
        check_rejected(
            &with_id(vec![
                ("op", "begin".into()),
                ("isolation", "snapshot".into()),
            ]),
            Some(9),
            "unknown isolation",
        );
        check_rejected(
            &with_id(vec![
                ("op", "lock".into()),
                ("locks", Msgpack::Array(vec!["".into()])),
            ]),
            Some(9),
            "locks[0]",
        );
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        check_rejected(
            &with_id(vec![
                ("op", "lock".into()),
                ("read_locks", Msgpack::Array(vec![long_key.as_str().into()])),
            ]),
            Some(9),
            "1 to 512 bytes",
        );
        check_rejected(
            &with_id(vec![("op", "lock".into())]),
            Some(9),
            "at least one key",
        );
        check_rejected(
            &with_id(vec![
                ("op", "lock".into()),
                ("locks", Msgpack::Array(vec!["\0idempotency:x".into()])),
            ]),
            Some(9),
            "locks[0]: keys starting with a NUL byte are reserved",
        );
        for bad in [String::new(), "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1)] {
            check_rejected(
                &with_id(vec![
                    ("op", "begin".into()),
                    ("idempotency_key", bad.as_str().into()),
                ]),
                Some(9),
                "idempotency_key must be 1 to 128 bytes",
            );
        }
        check_rejected(
            &with_id(vec![
                ("op", "begin".into()),
                ("idempotency_key", "k".into()),
                ("read_only", true.into()),
            ]),
            Some(9),
            "idempotency_key goes with transactions that write: a read_only one commits nothing to run once",
        );
        check_rejected(
            &with_id(vec![("op", "begin".into()), ("idempotency_key", 7.into())]),
            Some(9),
            "field idempotency_key must be a str",
        );
        check_rejected(
            &with_id(vec![
                ("op", "exec".into()),
                ("sql", "SELECT ?".into()),
                ("params", Msgpack::Array(vec![Msgpack::Array(vec![])])),
            ]),
            Some(9),
            "params[0]",
        );
        check_rejected(
            &with_id(vec![
                ("op", "tx".into()),
                (
                    "statements",
                    Msgpack::Array(vec![
                        map(vec![("sql", "SELECT 1".into())]),
                        map(vec![
                            ("sql", "SELECT ?".into()),
                            ("params", Msgpack::Array(vec![Msgpack::Array(vec![])])),
                        ]),
                    ]),
                ),
            ]),
            Some(9),
            "statements[1]: params[0]: arrays, maps and ext types are not values",
        );
        check_rejected(
            &with_id(vec![
                ("op", "tx".into()),
                ("statements", Msgpack::Array(vec![map(vec![])])),
                ("retries", Msgpack::from(u64::from(u32::MAX) + 1)),
            ]),
            Some(9),
            "retries is too large",
        );
        check_rejected(
            &with_id(vec![("op", "exec".into()), ("sql", Msgpack::from(1))]),
            Some(9),
            "sql must be a str",
        );
        let mut trailing = with_id(vec![("op", "ping".into())]);
        trailing.push(0xc0);
        check_rejected(&trailing, None, "after its MessagePack value");
    }

    #[test]
    fn requests_round_trip_through_their_encoding() {
        let requests = vec![
            Request::Hello {
                token: Some("secret".into()),
                client: None,
            },
            Request::Ping,
            Request::Tx(TxRequest {
                statements: vec![Statement::new("SELECT ?", vec![Value::from("x")])],
                options: TxOptions {
                    locks: LockRequest::new(vec!["k".to_string()], vec!["j".to_string()]),
                    isolation: Some(Isolation::Serializable),
                    read_only: false,
                    idempotency_key: Some("k-1".into()),
                },
                retries: Some(0),
            }),
            Request::Begin(TxOptions::default()),
            Request::Exec(Statement::new("SELECT 1", vec![])),
            Request::Lock(LockRequest::new(vec!["z".to_string()], vec![]).expect("one key")),
            Request::Commit,
            Request::Rollback,
            Request::Stats,
        ];
        for (id, request) in requests.into_iter().enumerate() {
            let frame = RequestFrame {
                id: id as u64,
                request,
            };
            let body = rmp_serde::to_vec(&frame).expect("encodes");
            assert_eq!(RequestFrame::decode(&body), Ok(frame));
        }
    }

    /// MessagePack values shaped like requests: the fields the decoder looks for, holding
    /// anything, so that every branch of the decoder meets wrong types.
    fn arbitrary_msgpack() -> impl proptest::strategy::Strategy<Value = Msgpack> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Msgpack::Nil),
            any::<bool>().prop_map(Msgpack::from),
            any::<i64>().prop_map(Msgpack::from),
            any::<u64>().prop_map(Msgpack::from),
            any::<f64>().prop_map(Msgpack::from),
            prop_oneof![
                Just("tx"),
                Just("exec"),
                Just("begin"),
                Just("lock"),
                Just("hello"),
                Just("read_committed"),
                Just(""),
                Just("SELECT ?"),
                Just("k")
            ]
            .prop_map(Msgpack::from),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Msgpack::Binary),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            let names = prop_oneof![
                Just("id"),
                Just("op"),
                Just("sql"),
                Just("params"),
                Just("statements"),
                Just("locks"),
                Just("read_locks"),
                Just("isolation"),
                Just("read_only"),
                Just("retries"),
                Just("token")
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Msgpack::Array),
                proptest::collection::vec((names.prop_map(Msgpack::from), inner), 0..8)
                    .prop_map(Msgpack::Map),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = RequestFrame::decode(&body);
        }

        #[test]
        fn decoding_arbitrary_request_shaped_maps_never_panics(value in arbitrary_msgpack()) {
            let body = encode(&value);
            match RequestFrame::decode(&body) {
                Ok(frame) => {
                    // Whatever decodes encodes back to a request that decodes the same.
                    let again = rmp_serde::to_vec(&frame).expect("encodes");
                    proptest::prop_assert_eq!(RequestFrame::decode(&again), Ok(frame));
                }
                Err(rejected) => proptest::prop_assert_eq!(rejected.error.code(), ErrorCode::BadRequest),
            }
        }
    }
}
