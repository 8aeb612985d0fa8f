//! Responses: what the server answers, from the whole frame (`Response`) down to its parts
//! (`Reply`, `QueryResult`, `Stats`, the `error` map), with their MessagePack form in both
//! directions. The server encodes responses and the Rust client (`crate::client`) decodes
//! them; each type's decoder stands next to its encoder so that a field is added in one place.
//!
//! Keys a decoder does not know, stats counters included, are skipped: the contract lets a
//! server add to a response without breaking older clients.

use std::fmt;

use rmpv::Value as Msgpack;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::decode::{decode_map, DecodeError, Fields};
use super::values::Value;
use super::RequestId;
use crate::error::{BrokerError, ErrorCode};

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
    pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
        let map = decode_map(body)?;
        let fields = Fields(&map);
        let id = fields.uint("id")?;
        let outcome = match fields.get("ok") {
            Some(Msgpack::Boolean(true)) => Ok(Reply::decode(&fields)?),
            Some(Msgpack::Boolean(false)) => {
                let Some(Msgpack::Map(error)) = fields.get("error") else {
                    return Err(DecodeError::NoErrorMap);
                };
                Err(ErrorReply::decode(&Fields(error))?)
            }
            _ => return Err(DecodeError::NoBoolOk),
        };
        Ok(Response { id, outcome })
    }
}

/// The server's encoder: one map holding `id`, `ok` and either the reply's fields or `error`.
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
                reply.encode_fields(&mut map)?;
            }
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
    /// The recorded answer of an earlier request with the same idempotency key, sent again
    /// with `replayed: true`; `results_omitted` when it was recorded without its rows.
    Replayed {
        reply: Box<Reply>,
        results_omitted: bool,
    },
}

impl Reply {
    /// A response does not name its op, so the reply is told by the fields it holds.
    fn decode(fields: &Fields) -> Result<Reply, DecodeError> {
        let reply = Reply::decode_own(fields)?;
        Ok(if fields.bool("replayed")? {
            Reply::Replayed {
                reply: Box::new(reply),
                results_omitted: fields.bool("results_omitted")?,
            }
        } else {
            reply
        })
    }

    fn decode_own(fields: &Fields) -> Result<Reply, DecodeError> {
        Ok(if let Some(results) = fields.array("results")? {
            Reply::Tx {
                results: results
                    .iter()
                    .map(QueryResult::decode)
                    .collect::<Result<_, _>>()?,
                attempts: fields
                    .uint("attempts")?
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1),
            }
        } else if let Some(result) = fields.get("result") {
            Reply::Exec {
                result: QueryResult::decode(result)?,
            }
        } else if let Some(Msgpack::Map(entries)) = fields.get("stats") {
            Reply::Stats(Stats::decode(entries))
        } else if let Some(server) = fields.string("server")? {
            Reply::Hello {
                server,
                protocol: fields.uint("protocol")?.unwrap_or_default(),
                session: fields.uint("session")?.unwrap_or_default(),
            }
        } else {
            Reply::Done
        })
    }

    /// The reply's own fields, beside `id` and `ok`.
    fn encode_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        match self {
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
            Reply::Replayed {
                reply,
                results_omitted,
            } => {
                reply.encode_fields(map)?;
                map.serialize_entry("replayed", &true)?;
                if *results_omitted {
                    map.serialize_entry("results_omitted", &true)?;
                }
            }
        }
        Ok(())
    }
}

/// What one statement did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    pub affected: u64,
    pub last_insert_id: Option<u64>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl QueryResult {
    fn decode(value: &Msgpack) -> Result<QueryResult, DecodeError> {
        let Msgpack::Map(entries) = value else {
            return Err(DecodeError::ResultNotAMap);
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
                    .ok_or(DecodeError::ColumnNotAStr)
            })
            .collect::<Result<_, _>>()?;
        let rows = fields
            .array("rows")?
            .unwrap_or_default()
            .iter()
            .map(|row| match row {
                Msgpack::Array(cells) => cells
                    .iter()
                    .map(|cell| Value::from_msgpack(cell.clone()).map_err(DecodeError::BadCell))
                    .collect::<Result<Vec<Value>, _>>(),
                _ => Err(DecodeError::RowNotAnArray),
            })
            .collect::<Result<_, _>>()?;
        Ok(QueryResult {
            affected: fields.uint("affected")?.unwrap_or_default(),
            last_insert_id: fields.uint("last_insert_id")?,
            columns,
            rows,
        })
    }
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

/// The answer of the `stats` op: the contract's counters, the broker's own, and two views of
/// the recent past (`latency`, `hot_keys`) that old clients skip.
#[derive(Clone, Debug, Default, PartialEq)]
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
    /// Transactions whose keys passed on when their `COMMIT` was sent (protocol 1.1).
    pub handovers: u64,
    /// Database transactions that committed a group of two or more requests.
    pub groups_committed: u64,
    /// Requests committed in those groups, leaders included: over `groups_committed`, the
    /// mean group size.
    pub transactions_grouped: u64,
    /// Statements that read without locking, waiting now for the commit of the previous
    /// holder of their transaction's keys.
    pub reads_waiting: u64,
    /// Transaction latency over the recent window; `None` from a server that does not send it.
    pub latency: Option<LatencySummary>,
    /// The most contended keys over the recent window, most waited-for first.
    pub hot_keys: Vec<HotKey>,
}

/// Percentiles of whole-transaction latency (`tx` requests and interactive transactions, from
/// the request's arrival to its answer) over the last `window_seconds`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub window_seconds: u64,
    /// Transactions measured in the window.
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One key's contention over the recent window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HotKey {
    pub key: String,
    /// Seconds requests spent queued for this key, summed.
    pub wait_seconds: f64,
    /// Requests that queued for it.
    pub waits: u64,
    /// Requests granted it.
    pub grants: u64,
    /// Requests queued for it now.
    pub waiting: u64,
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
    /// Name and value of every counter: the contract's, in its order, then the broker's own.
    pub fn entries(&self) -> [(&'static str, u64); 13] {
        self.counters().map(|(name, value, _)| (name, value))
    }

    /// Name, value and kind of every counter, in the contract's order.
    pub fn counters(&self) -> [(&'static str, u64, StatKind); 13] {
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
            ("handovers", self.handovers, Total),
            ("groups_committed", self.groups_committed, Total),
            ("transactions_grouped", self.transactions_grouped, Total),
            ("reads_waiting", self.reads_waiting, Gauge),
        ]
    }

    /// Requests per committed group, or `None` before the first group: derived, so sent beside
    /// the counters rather than kept as one.
    pub fn mean_group_size(&self) -> Option<f64> {
        (self.groups_committed > 0)
            .then(|| self.transactions_grouped as f64 / self.groups_committed as f64)
    }

    /// Reads the counters it knows; the contract says "at least these", so others are skipped.
    /// So are parts of `latency` and `hot_keys` that are not as this version sends them.
    fn decode(entries: &[(Msgpack, Msgpack)]) -> Stats {
        let mut stats = Stats::default();
        for (name, value) in entries {
            match (name.as_str(), value) {
                (Some("latency"), Msgpack::Map(fields)) => {
                    stats.latency = Some(LatencySummary::decode(fields));
                }
                (Some("hot_keys"), Msgpack::Array(keys)) => {
                    stats.hot_keys = keys.iter().filter_map(HotKey::decode).collect();
                }
                (Some(name), value) => {
                    if let (Some(slot), Some(value)) = (stats.field_mut(name), value.as_u64()) {
                        *slot = value;
                    }
                }
                (None, _) => {}
            }
        }
        stats
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
            "handovers" => &mut self.handovers,
            "groups_committed" => &mut self.groups_committed,
            "transactions_grouped" => &mut self.transactions_grouped,
            "reads_waiting" => &mut self.reads_waiting,
            _ => return None,
        })
    }
}

impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = self.entries();
        let extras = 2 + usize::from(self.latency.is_some());
        let mut map = serializer.serialize_map(Some(entries.len() + extras))?;
        for (name, value) in entries {
            map.serialize_entry(name, &value)?;
        }
        map.serialize_entry("mean_group_size", &self.mean_group_size().unwrap_or(0.0))?;
        if let Some(latency) = &self.latency {
            map.serialize_entry("latency", latency)?;
        }
        map.serialize_entry("hot_keys", &self.hot_keys)?;
        map.end()
    }
}

/// A number sent as an integer or a float.
fn as_number(value: &Msgpack) -> Option<f64> {
    value.as_f64().or_else(|| value.as_u64().map(|n| n as f64))
}

fn field<'a>(entries: &'a [(Msgpack, Msgpack)], name: &str) -> Option<&'a Msgpack> {
    entries
        .iter()
        .find(|(key, _)| key.as_str() == Some(name))
        .map(|(_, value)| value)
}

impl LatencySummary {
    fn decode(entries: &[(Msgpack, Msgpack)]) -> LatencySummary {
        let uint = |name| field(entries, name).and_then(Msgpack::as_u64).unwrap_or(0);
        let float = |name| field(entries, name).and_then(as_number).unwrap_or(0.0);
        LatencySummary {
            window_seconds: uint("window_seconds"),
            count: uint("count"),
            p50_ms: float("p50_ms"),
            p90_ms: float("p90_ms"),
            p99_ms: float("p99_ms"),
            max_ms: float("max_ms"),
        }
    }
}

impl Serialize for LatencySummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("window_seconds", &self.window_seconds)?;
        map.serialize_entry("count", &self.count)?;
        map.serialize_entry("p50_ms", &self.p50_ms)?;
        map.serialize_entry("p90_ms", &self.p90_ms)?;
        map.serialize_entry("p99_ms", &self.p99_ms)?;
        map.serialize_entry("max_ms", &self.max_ms)?;
        map.end()
    }
}

impl HotKey {
    /// `None` for an entry without a string `key`.
    fn decode(value: &Msgpack) -> Option<HotKey> {
        let Msgpack::Map(entries) = value else {
            return None;
        };
        let uint = |name| field(entries, name).and_then(Msgpack::as_u64).unwrap_or(0);
        Some(HotKey {
            key: field(entries, "key")?.as_str()?.to_string(),
            wait_seconds: field(entries, "wait_seconds")
                .and_then(as_number)
                .unwrap_or(0.0),
            waits: uint("waits"),
            grants: uint("grants"),
            waiting: uint("waiting"),
        })
    }
}

impl Serialize for HotKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("key", &self.key)?;
        map.serialize_entry("wait_seconds", &self.wait_seconds)?;
        map.serialize_entry("waits", &self.waits)?;
        map.serialize_entry("grants", &self.grants)?;
        map.serialize_entry("waiting", &self.waiting)?;
        map.end()
    }
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

impl ErrorReply {
    fn decode(fields: &Fields) -> Result<ErrorReply, DecodeError> {
        let code_text = fields.required_string("code")?;
        let code = ErrorCode::parse(&code_text).ok_or(DecodeError::UnknownErrorCode(code_text))?;
        Ok(ErrorReply {
            code,
            message: fields.string("message")?.unwrap_or_default(),
            retryable: fields.bool("retryable")?,
            mysql_code: fields
                .uint("mysql_code")?
                .and_then(|code| u16::try_from(code).ok()),
            sqlstate: fields.string("sqlstate")?,
            statement: fields
                .uint("statement")?
                .and_then(|index| usize::try_from(index).ok()),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
            Response::success(
                6,
                Reply::Replayed {
                    reply: Box::new(Reply::Tx {
                        results: vec![result.clone()],
                        attempts: 1,
                    }),
                    results_omitted: true,
                },
            ),
            Response::success(
                7,
                Reply::Replayed {
                    reply: Box::new(Reply::Done),
                    results_omitted: false,
                },
            ),
            Response::success(4, Reply::Exec { result }),
            Response::success(
                5,
                Reply::Stats(Stats {
                    locks_held: 3,
                    latency: Some(LatencySummary {
                        window_seconds: 10,
                        count: 7,
                        p50_ms: 1.5,
                        p90_ms: 2.0,
                        p99_ms: 9.25,
                        max_ms: 12.0,
                    }),
                    hot_keys: vec![HotKey {
                        key: "accounts:1".into(),
                        wait_seconds: 0.5,
                        waits: 4,
                        grants: 9,
                        waiting: 2,
                    }],
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

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Response::decode(&body);
        }
    }
}
