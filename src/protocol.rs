//! The vocabulary of protocol v1: typed requests, responses and values, and their
//! MessagePack form. This module owns the translation between bytes and types in both
//! directions (the server decodes requests and encodes responses; the client does the
//! opposite), so no other module ever looks inside a frame body.
//!
//! Decoding goes through `rmpv::Value` and checks each field by hand: that is what lets a
//! request with one bad field still be answered with its own `id`, and lets every
//! `bad_request` name the field at fault.

use std::fmt;

use rmpv::Value as Msgpack;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{BrokerError, ErrorCode};
use crate::locks::{LockMode, LockRequest};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// Longest key a request may name, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// No request of protocol v1 nests deeper than four levels (map, statements, statement,
/// params); the limit stops a hostile frame from recursing the decoder off the stack.
const MAX_NESTING: usize = 16;

pub type RequestId = u64;

/// A MessagePack value as it crosses between a client and a MySQL column or parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Text(String),
    Bytes(Vec<u8>),
}

macro_rules! value_from {
    ($($source:ty => $variant:ident as $target:ty),* $(,)?) => {
        $(impl From<$source> for Value {
            fn from(value: $source) -> Value {
                Value::$variant(value as $target)
            }
        })*
    };
}

value_from! {
    i8 => Int as i64, i16 => Int as i64, i32 => Int as i64, i64 => Int as i64,
    u8 => UInt as u64, u16 => UInt as u64, u32 => UInt as u64, u64 => UInt as u64,
    f32 => Float as f32, f64 => Double as f64,
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Bool(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_string())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Value {
        Value::Bytes(value)
    }
}

impl From<&[u8]> for Value {
    fn from(value: &[u8]) -> Value {
        Value::Bytes(value.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

impl Value {
    /// The value as a signed integer, when it is one that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(n) => Some(n),
            Value::UInt(n) => i64::try_from(n).ok(),
            _ => None,
        }
    }

    /// The value as text, when it is a string (DECIMAL, dates and times are strings).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    fn from_msgpack(value: Msgpack) -> Result<Value, &'static str> {
        Ok(match value {
            Msgpack::Nil => Value::Null,
            Msgpack::Boolean(b) => Value::Bool(b),
            Msgpack::Integer(n) => match n.as_i64() {
                Some(signed) => Value::Int(signed),
                None => Value::UInt(n.as_u64().ok_or("integer out of range")?),
            },
            Msgpack::F32(f) => Value::Float(f),
            Msgpack::F64(f) => Value::Double(f),
            Msgpack::String(text) => Value::Text(text.into_str().ok_or("str is not valid UTF-8")?),
            Msgpack::Binary(bytes) => Value::Bytes(bytes),
            Msgpack::Array(_) | Msgpack::Map(_) | Msgpack::Ext(..) => {
                return Err("arrays, maps and ext types are not values")
            }
        })
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(n) => serializer.serialize_i64(*n),
            Value::UInt(n) => serializer.serialize_u64(*n),
            Value::Float(f) => serializer.serialize_f32(*f),
            Value::Double(f) => serializer.serialize_f64(*f),
            Value::Text(text) => serializer.serialize_str(text),
            Value::Bytes(bytes) => serializer.serialize_bytes(bytes),
        }
    }
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

    /// The level as SQL spells it after `ISOLATION LEVEL`.
    pub fn as_sql(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "READ UNCOMMITTED",
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::RepeatableRead => "REPEATABLE READ",
            Isolation::Serializable => "SERIALIZABLE",
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
}

/// How a transaction starts: its keys, isolation level and access mode (`begin`, and `tx`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TxOptions {
    pub locks: Option<LockRequest>,
    pub isolation: Option<Isolation>,
    pub read_only: bool,
}

/// A whole transaction in one request.
#[derive(Clone, Debug, PartialEq)]
pub struct TxRequest {
    pub statements: Vec<Statement>,
    pub options: TxOptions,
    /// Retries after a deadlock or lock wait timeout; `None` means the configured default.
    pub retries: Option<u32>,
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
}

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
    /// Decodes one frame body sent by a client.
    pub fn decode(body: &[u8]) -> Result<RequestFrame, RejectedRequest> {
        let reject = |id, message: String| RejectedRequest {
            id,
            error: BrokerError::BadRequest(message),
        };
        let map = match decode_map(body) {
            Ok(map) => map,
            Err(message) => return Err(reject(None, message)),
        };
        let fields = Fields(&map);
        let id = match fields.get("id") {
            Some(Msgpack::Integer(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(_) => return Err(reject(None, "id must be an unsigned integer".into())),
            None => return Err(reject(None, "missing field id".into())),
        };
        let request = fields.request().map_err(|message| reject(id, message))?;
        Ok(RequestFrame {
            id: id.unwrap_or_default(),
            request,
        })
    }
}

fn decode_map(body: &[u8]) -> Result<Vec<(Msgpack, Msgpack)>, String> {
    let mut cursor = body;
    let value = rmpv::decode::read_value_with_max_depth(&mut cursor, MAX_NESTING)
        .map_err(|error| format!("frame body is not valid MessagePack: {error}"))?;
    if !cursor.is_empty() {
        return Err(format!(
            "frame body holds {} bytes after its MessagePack value",
            cursor.len()
        ));
    }
    match value {
        Msgpack::Map(entries) => Ok(entries),
        other => Err(format!(
            "frame body must be a MessagePack map, not {}",
            kind_of(&other)
        )),
    }
}

fn kind_of(value: &Msgpack) -> &'static str {
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
struct Fields<'a>(&'a [(Msgpack, Msgpack)]);

type FieldResult<T> = Result<T, String>;

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Msgpack> {
        self.0
            .iter()
            .find(|(key, _)| key.as_str() == Some(name))
            .map(|(_, value)| value)
            .filter(|value| !value.is_nil())
    }

    fn string(&self, name: &str) -> FieldResult<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Msgpack::String(text)) => match text.as_str() {
                Some(text) => Ok(Some(text.to_string())),
                None => Err(format!("field {name} is not valid UTF-8")),
            },
            Some(other) => Err(format!(
                "field {name} must be a str, not {}",
                kind_of(other)
            )),
        }
    }

    fn required_string(&self, name: &str) -> FieldResult<String> {
        self.string(name)?
            .ok_or_else(|| format!("missing field {name}"))
    }

    fn bool(&self, name: &str) -> FieldResult<bool> {
        match self.get(name) {
            None => Ok(false),
            Some(Msgpack::Boolean(b)) => Ok(*b),
            Some(other) => Err(format!(
                "field {name} must be a bool, not {}",
                kind_of(other)
            )),
        }
    }

    fn uint(&self, name: &str) -> FieldResult<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Msgpack::Integer(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(format!(
                "field {name} must be an unsigned integer, not {}",
                kind_of(other)
            )),
        }
    }

    fn array(&self, name: &str) -> FieldResult<Option<&'a [Msgpack]>> {
        match self.get(name) {
            None => Ok(None),
            Some(Msgpack::Array(items)) => Ok(Some(items)),
            Some(other) => Err(format!(
                "field {name} must be an array, not {}",
                kind_of(other)
            )),
        }
    }

    fn keys(&self, name: &str) -> FieldResult<Vec<String>> {
        let Some(items) = self.array(name)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item.as_str() {
                Some(key) if !key.is_empty() && key.len() <= MAX_KEY_BYTES => Ok(key.to_string()),
                Some(_) => Err(format!(
                    "{name}[{index}]: a key must be 1 to {MAX_KEY_BYTES} bytes"
                )),
                None => Err(format!("{name}[{index}]: a key must be a str")),
            })
            .collect()
    }

    fn lock_request(&self) -> FieldResult<Option<LockRequest>> {
        Ok(LockRequest::new(
            self.keys("locks")?,
            self.keys("read_locks")?,
        ))
    }

    fn isolation(&self) -> FieldResult<Option<Isolation>> {
        match self.string("isolation")? {
            None => Ok(None),
            Some(text) => Isolation::parse(&text).map(Some).ok_or_else(|| {
                format!(
                    "unknown isolation {text:?}: use read_uncommitted, read_committed, \
                     repeatable_read or serializable"
                )
            }),
        }
    }

    fn tx_options(&self) -> FieldResult<TxOptions> {
        Ok(TxOptions {
            locks: self.lock_request()?,
            isolation: self.isolation()?,
            read_only: self.bool("read_only")?,
        })
    }

    fn statement(&self, context: &str) -> FieldResult<Statement> {
        let sql = self
            .required_string("sql")
            .map_err(|message| format!("{context}{message}"))?;
        if sql.trim().is_empty() {
            return Err(format!("{context}sql is empty"));
        }
        let params = match self.array("params") {
            Ok(None) => Vec::new(),
            Ok(Some(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    Value::from_msgpack(item.clone())
                        .map_err(|why| format!("{context}params[{index}]: {why}"))
                })
                .collect::<FieldResult<Vec<Value>>>()?,
            Err(message) => return Err(format!("{context}{message}")),
        };
        Ok(Statement { sql, params })
    }

    fn statements(&self) -> FieldResult<Vec<Statement>> {
        let items = self
            .array("statements")?
            .ok_or("missing field statements")?;
        if items.is_empty() {
            return Err("statements must hold at least one statement".into());
        }
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Msgpack::Map(entries) => {
                    Fields(entries).statement(&format!("statements[{index}]: "))
                }
                other => Err(format!(
                    "statements[{index}] must be a map, not {}",
                    kind_of(other)
                )),
            })
            .collect()
    }

    fn request(&self) -> FieldResult<Request> {
        let op = self.required_string("op")?;
        Ok(match op.as_str() {
            "hello" => Request::Hello {
                token: self.string("token")?,
                client: self.string("client")?,
            },
            "ping" => Request::Ping,
            "tx" => {
                let retries = match self.uint("retries")? {
                    None => None,
                    Some(n) => Some(u32::try_from(n).map_err(|_| "retries is too large")?),
                };
                Request::Tx(TxRequest {
                    statements: self.statements()?,
                    options: self.tx_options()?,
                    retries,
                })
            }
            "begin" => Request::Begin(self.tx_options()?),
            "exec" => Request::Exec(self.statement("")?),
            "lock" => Request::Lock(
                self.lock_request()?
                    .ok_or("lock needs at least one key in locks or read_locks")?,
            ),
            "commit" => Request::Commit,
            "rollback" => Request::Rollback,
            "stats" => Request::Stats,
            other => return Err(format!("unknown op {other:?}")),
        })
    }
}

impl Serialize for RequestFrame {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("op", self.request.op())?;
        match &self.request {
            Request::Hello { token, client } => {
                if let Some(token) = token {
                    map.serialize_entry("token", token)?;
                }
                if let Some(client) = client {
                    map.serialize_entry("client", client)?;
                }
            }
            Request::Tx(tx) => {
                map.serialize_entry("statements", &StatementList(&tx.statements))?;
                serialize_tx_options(&mut map, &tx.options)?;
                if let Some(retries) = tx.retries {
                    map.serialize_entry("retries", &retries)?;
                }
            }
            Request::Begin(options) => serialize_tx_options(&mut map, options)?,
            Request::Exec(statement) => {
                map.serialize_entry("sql", &statement.sql)?;
                map.serialize_entry("params", &statement.params)?;
            }
            Request::Lock(keys) => serialize_lock_request(&mut map, keys)?,
            Request::Ping | Request::Commit | Request::Rollback | Request::Stats => {}
        }
        map.end()
    }
}

struct StatementList<'a>(&'a [Statement]);

impl Serialize for StatementList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for statement in self.0 {
            seq.serialize_element(&StatementMap(statement))?;
        }
        seq.end()
    }
}

struct StatementMap<'a>(&'a Statement);

impl Serialize for StatementMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("sql", &self.0.sql)?;
        map.serialize_entry("params", &self.0.params)?;
        map.end()
    }
}

fn serialize_tx_options<M: SerializeMap>(map: &mut M, options: &TxOptions) -> Result<(), M::Error> {
    if let Some(keys) = &options.locks {
        serialize_lock_request(map, keys)?;
    }
    if let Some(isolation) = options.isolation {
        map.serialize_entry("isolation", isolation.as_str())?;
    }
    if options.read_only {
        map.serialize_entry("read_only", &true)?;
    }
    Ok(())
}

fn serialize_lock_request<M: SerializeMap>(
    map: &mut M,
    keys: &LockRequest,
) -> Result<(), M::Error> {
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

/// What one statement did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    pub affected: u64,
    pub last_insert_id: Option<u64>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Serialize for QueryResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("affected", &self.affected)?;
        map.serialize_entry("last_insert_id", &self.last_insert_id)?;
        map.serialize_entry("columns", &self.columns)?;
        map.serialize_entry("rows", &self.rows)?;
        map.end()
    }
}

/// The counters of the `stats` op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sessions: u64,
    pub transactions_committed: u64,
    pub transactions_rolled_back: u64,
    pub retries: u64,
    pub deadlocks: u64,
    pub lock_waits: u64,
    pub lock_timeouts: u64,
    pub locks_held: u64,
    pub lock_waiters: u64,
}

/// What a `stats` counter measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    /// How things are now (sessions open, keys held, requests waiting).
    Gauge,
    /// A count since the server started.
    Total,
}

impl Stats {
    /// Name and value of every counter, in the contract's order.
    pub fn entries(&self) -> [(&'static str, u64); 9] {
        self.counters().map(|(name, value, _)| (name, value))
    }

    /// Name, value and kind of every counter, in the contract's order.
    pub fn counters(&self) -> [(&'static str, u64, StatKind); 9] {
        use StatKind::{Gauge, Total};
        [
            ("sessions", self.sessions, Gauge),
            ("transactions_committed", self.transactions_committed, Total),
            (
                "transactions_rolled_back",
                self.transactions_rolled_back,
                Total,
            ),
            ("retries", self.retries, Total),
            ("deadlocks", self.deadlocks, Total),
            ("lock_waits", self.lock_waits, Total),
            ("lock_timeouts", self.lock_timeouts, Total),
            ("locks_held", self.locks_held, Gauge),
            ("lock_waiters", self.lock_waiters, Gauge),
        ]
    }

    fn field_mut(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "sessions" => &mut self.sessions,
            "transactions_committed" => &mut self.transactions_committed,
            "transactions_rolled_back" => &mut self.transactions_rolled_back,
            "retries" => &mut self.retries,
            "deadlocks" => &mut self.deadlocks,
            "lock_waits" => &mut self.lock_waits,
            "lock_timeouts" => &mut self.lock_timeouts,
            "locks_held" => &mut self.locks_held,
            "lock_waiters" => &mut self.lock_waiters,
            _ => return None,
        })
    }
}

impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = self.entries();
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (name, value) in entries {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

/// The fields of a successful response, by op.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Hello {
        server: String,
        protocol: u64,
        session: u64,
    },
    /// `ping`, `begin`, `lock`, `commit`, `rollback`: `ok` alone says it all.
    Done,
    Tx {
        results: Vec<QueryResult>,
        attempts: u32,
    },
    Exec {
        result: QueryResult,
    },
    Stats(Stats),
}

/// The `error` map of a failed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    pub mysql_code: Option<u16>,
    pub sqlstate: Option<String>,
    pub statement: Option<usize>,
}

impl From<&BrokerError> for ErrorReply {
    fn from(error: &BrokerError) -> ErrorReply {
        let failure = error.db_failure();
        ErrorReply {
            code: error.code(),
            message: error.to_string(),
            retryable: error.is_retryable(),
            mysql_code: failure.map(|failure| failure.mysql_code),
            sqlstate: failure.map(|failure| failure.sqlstate.clone()),
            statement: failure.and_then(|failure| failure.statement),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl Serialize for ErrorReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("code", self.code.as_str())?;
        map.serialize_entry("message", &self.message)?;
        map.serialize_entry("retryable", &self.retryable)?;
        if let Some(code) = self.mysql_code {
            map.serialize_entry("mysql_code", &code)?;
        }
        if let Some(state) = &self.sqlstate {
            map.serialize_entry("sqlstate", state)?;
        }
        if let Some(index) = self.statement {
            map.serialize_entry("statement", &index)?;
        }
        map.end()
    }
}

/// One answer: to the request with `id`, or with `id` nil when the request could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: Option<RequestId>,
    pub outcome: Result<Reply, ErrorReply>,
}

impl Response {
    pub fn success(id: RequestId, reply: Reply) -> Response {
        Response {
            id: Some(id),
            outcome: Ok(reply),
        }
    }

    pub fn failure(id: Option<RequestId>, error: &BrokerError) -> Response {
        Response {
            id,
            outcome: Err(ErrorReply::from(error)),
        }
    }

    /// Decodes one frame body sent by a server.
    pub fn decode(body: &[u8]) -> Result<Response, String> {
        let map = decode_map(body)?;
        let fields = Fields(&map);
        let id = fields.uint("id")?;
        let ok = match fields.get("ok") {
            Some(Msgpack::Boolean(ok)) => *ok,
            _ => return Err("response without a bool ok".into()),
        };
        if !ok {
            let Some(Msgpack::Map(error)) = fields.get("error") else {
                return Err("failed response without an error map".into());
            };
            let error = Fields(error);
            let code_text = error.required_string("code")?;
            let code = ErrorCode::parse(&code_text)
                .ok_or_else(|| format!("unknown error code {code_text:?}"))?;
            let outcome = Err(ErrorReply {
                code,
                message: error.string("message")?.unwrap_or_default(),
                retryable: error.bool("retryable")?,
                mysql_code: error
                    .uint("mysql_code")?
                    .and_then(|code| u16::try_from(code).ok()),
                sqlstate: error.string("sqlstate")?,
                statement: error
                    .uint("statement")?
                    .and_then(|index| usize::try_from(index).ok()),
            });
            return Ok(Response { id, outcome });
        }
        let reply = if let Some(results) = fields.array("results")? {
            Reply::Tx {
                results: results
                    .iter()
                    .map(decode_query_result)
                    .collect::<FieldResult<_>>()?,
                attempts: fields
                    .uint("attempts")?
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1),
            }
        } else if let Some(result) = fields.get("result") {
            Reply::Exec {
                result: decode_query_result(result)?,
            }
        } else if let Some(Msgpack::Map(entries)) = fields.get("stats") {
            let mut stats = Stats::default();
            for (name, value) in entries {
                if let (Some(name), Some(value)) = (name.as_str(), value.as_u64()) {
                    if let Some(slot) = stats.field_mut(name) {
                        *slot = value;
                    }
                }
            }
            Reply::Stats(stats)
        } else if let Some(server) = fields.string("server")? {
            Reply::Hello {
                server,
                protocol: fields.uint("protocol")?.unwrap_or_default(),
                session: fields.uint("session")?.unwrap_or_default(),
            }
        } else {
            Reply::Done
        };
        Ok(Response {
            id,
            outcome: Ok(reply),
        })
    }
}

fn decode_query_result(value: &Msgpack) -> FieldResult<QueryResult> {
    let Msgpack::Map(entries) = value else {
        return Err("a result must be a map".into());
    };
    let fields = Fields(entries);
    let columns = fields
        .array("columns")?
        .unwrap_or_default()
        .iter()
        .map(|column| {
            column
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "a column name must be a str".to_string())
        })
        .collect::<FieldResult<_>>()?;
    let rows = fields
        .array("rows")?
        .unwrap_or_default()
        .iter()
        .map(|row| match row {
            Msgpack::Array(cells) => cells
                .iter()
                .map(|cell| Value::from_msgpack(cell.clone()).map_err(str::to_string))
                .collect::<FieldResult<Vec<Value>>>(),
            _ => Err("a row must be an array".to_string()),
        })
        .collect::<FieldResult<_>>()?;
    Ok(QueryResult {
        affected: fields.uint("affected")?.unwrap_or_default(),
        last_insert_id: fields.uint("last_insert_id")?,
        columns,
        rows,
    })
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        match &self.outcome {
            Err(error) => {
                map.serialize_entry("ok", &false)?;
                map.serialize_entry("error", error)?;
            }
            Ok(reply) => {
                map.serialize_entry("ok", &true)?;
                match reply {
                    Reply::Hello {
                        server,
                        protocol,
                        session,
                    } => {
                        map.serialize_entry("server", server)?;
                        map.serialize_entry("protocol", protocol)?;
                        map.serialize_entry("session", session)?;
                    }
                    Reply::Done => {}
                    Reply::Tx { results, attempts } => {
                        map.serialize_entry("results", results)?;
                        map.serialize_entry("attempts", attempts)?;
                    }
                    Reply::Exec { result } => map.serialize_entry("result", result)?,
                    Reply::Stats(stats) => map.serialize_entry("stats", stats)?,
                }
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                ("op", "exec".into()),
                ("sql", "SELECT ?".into()),
                ("params", Msgpack::Array(vec![Msgpack::Array(vec![])])),
            ]),
            Some(9),
            "params[0]",
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
    fn deep_nesting_is_refused_without_recursing() {
        let mut body = vec![0x91u8; 100_000];
        body.push(0xc0);
        check_rejected(&body, None, "not valid MessagePack");
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
                    read_only: true,
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

    #[test]
    fn responses_round_trip_through_their_encoding() {
        let result = QueryResult {
            affected: 1,
            last_insert_id: Some(4),
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![
                Value::Text("1.500000".into()),
                Value::Bytes(vec![255]),
            ]],
        };
        let responses = vec![
            Response::success(
                1,
                Reply::Hello {
                    server: "txbroker 0.1.0".into(),
                    protocol: 1,
                    session: 3,
                },
            ),
            Response::success(2, Reply::Done),
            Response::success(
                3,
                Reply::Tx {
                    results: vec![result.clone(), QueryResult::default()],
                    attempts: 2,
                },
            ),
            Response::success(4, Reply::Exec { result }),
            Response::success(
                5,
                Reply::Stats(Stats {
                    locks_held: 3,
                    ..Stats::default()
                }),
            ),
            Response::failure(
                None,
                &BrokerError::Deadlock(crate::error::DbFailure {
                    mysql_code: 1213,
                    sqlstate: "40001".into(),
                    message: "Deadlock found".into(),
                    statement: Some(1),
                }),
            ),
        ];
        for response in responses {
            let body = rmp_serde::to_vec(&response).expect("encodes");
            assert_eq!(Response::decode(&body), Ok(response));
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
            let _ = Response::decode(&body);
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

    #[test]
    fn binary_values_are_msgpack_bin_and_text_is_str() {
        let body = rmp_serde::to_vec(&vec![Value::Bytes(vec![1]), Value::Text("a".into())])
            .expect("encodes");
        assert_eq!(body, vec![0x92, 0xc4, 0x01, 0x01, 0xa1, b'a']);
    }
}
