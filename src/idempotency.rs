//! Idempotency keys (`docs/protocol.md` §19): what a `tx` or `begin` carrying
//! `idempotency_key` leaves behind so that a retry of it is answered once. This module owns the
//! outcomes table (its name, its statements, what a record holds), the claim a keyed request
//! makes (its key, the hash of its content, the broker key that serializes requests with the
//! same idempotency key) and the background purge of expired records. The engine
//! (`src/engine/idempotent.rs`) looks records up and writes them; `db.rs` runs the statements.
//!
//! A record is written by the transaction it describes, just before its `COMMIT`, so it exists
//! exactly when that transaction committed; the primary key on the idempotency key makes a
//! second commit of the same key fail instead of running twice, whatever the broker knew. A
//! `tx` whose statements answer only with row counts writes its record in the same query as
//! its statements, before their answers are known: the server writes the counts in
//! (`row_counts`, from `ROW_COUNT()`), and a replay puts them back into the response.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use slog::{debug, Logger};

use crate::config::Config;
use crate::db::{Database, DbConnection, DbError};
use crate::locks::{LockMode, LockRequest};
use crate::protocol::{
    Isolation, QueryResult, Reply, Response, Statement, TxOptions, TxRequest, Value,
    RESERVED_KEY_PREFIX,
};
use crate::txn::TxMode;

/// The broker key of an idempotency key: reserved (clients' keys may not start with NUL), so
/// it collides with no client key, and lowest in byte order, so it is taken first.
const LOCK_KEY_PREFIX: &str = "\0idempotency:";

/// Pause between two batches of one purge round: the purge never holds the table for long.
const PAUSE_BETWEEN_PURGE_BATCHES: Duration = Duration::from_millis(10);

/// A keyed request's claim on its idempotency key: the key, and the hash of what the request
/// asks (its statements, keys, isolation and access mode), which a retry must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub hash: [u8; 32],
}

/// The canonical content of a request, hashed for its claim: every field that changes what it
/// does, none that does not (`id`, `retries`, the key itself, the broker's own lock key).
#[derive(Serialize)]
struct Canonical<'a> {
    op: &'a str,
    statements: &'a [Statement],
    keys: Vec<(&'a str, &'a str)>,
    isolation: Option<&'a str>,
    read_only: bool,
}

impl Claim {
    pub fn of_tx(tx: &TxRequest) -> Option<Claim> {
        Claim::of("tx", &tx.statements, &tx.options)
    }

    pub fn of_begin(options: &TxOptions) -> Option<Claim> {
        Claim::of("begin", &[], options)
    }

    fn of(op: &str, statements: &[Statement], options: &TxOptions) -> Option<Claim> {
        let key = options.idempotency_key.clone()?;
        let keys = options
            .locks
            .iter()
            .flat_map(LockRequest::keys)
            .filter(|(key, _)| !key.starts_with(RESERVED_KEY_PREFIX))
            .map(|(key, mode)| {
                let mode = match mode {
                    LockMode::Exclusive => "exclusive",
                    LockMode::Shared => "shared",
                };
                (key.as_str(), mode)
            })
            .collect();
        let canonical = Canonical {
            op,
            statements,
            keys,
            isolation: options.isolation.map(Isolation::as_str),
            read_only: options.read_only,
        };
        // Encoding plain data into a Vec cannot fail.
        let bytes = rmp_serde::to_vec(&canonical).unwrap_or_default();
        Some(Claim {
            key,
            hash: Sha256::digest(&bytes).into(),
        })
    }

    /// The request's keys with this claim's broker key added, exclusive: requests with the
    /// same idempotency key then run one after another.
    pub fn with_lock_key(&self, locks: Option<LockRequest>) -> LockRequest {
        let (mut exclusive, mut shared) = (Vec::new(), Vec::new());
        for (key, mode) in locks.iter().flat_map(LockRequest::keys) {
            match mode {
                LockMode::Exclusive => exclusive.push(key.clone()),
                LockMode::Shared => shared.push(key.clone()),
            }
        }
        exclusive.push(format!("{LOCK_KEY_PREFIX}{}", self.key));
        LockRequest::new(exclusive, shared)
            .unwrap_or_else(|| unreachable!("the broker key makes the request non-empty"))
    }
}

/// What the outcomes table holds for a claim's key.
#[derive(Debug, PartialEq)]
pub enum Recorded {
    Absent,
    /// A record past its expiry: ignored, and deleted before the request runs.
    Expired,
    /// The recorded answer, to send again.
    Live(Reply),
    /// The key was recorded for a request with other content.
    OtherRequest,
}

/// The outcomes table: where records go, how long they live, how large they may be.
#[derive(Clone, Debug)]
pub struct OutcomeTable {
    /// The table's name as SQL writes it, quoted, with its database when one is configured.
    name: String,
    ttl_s: u64,
    max_response_bytes: usize,
    purge_batch: u64,
    purge_interval: Duration,
}

impl OutcomeTable {
    /// Names come from a validated config: letters, digits, `_` and `$` only.
    pub fn new(config: &Config) -> OutcomeTable {
        let name = match &config.idempotency_database {
            Some(database) => format!("`{database}`.`{}`", config.idempotency_table),
            None => format!("`{}`", config.idempotency_table),
        };
        OutcomeTable {
            name,
            ttl_s: config.idempotency_ttl_s,
            max_response_bytes: config.idempotency_max_response_bytes,
            purge_batch: config.idempotency_purge_batch,
            purge_interval: config.idempotency_purge_interval(),
        }
    }

    fn create_statement(&self) -> Statement {
        Statement::new(
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 idempotency_key VARBINARY(128) NOT NULL PRIMARY KEY, \
                 request_hash BINARY(32) NOT NULL, \
                 response MEDIUMBLOB NOT NULL, \
                 results_omitted BOOL NOT NULL, \
                 row_counts TEXT CHARACTER SET ascii NULL, \
                 created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                 expires_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                 KEY expires_at (expires_at)) ENGINE=InnoDB",
                self.name
            ),
            Vec::new(),
        )
    }

    /// Adds `row_counts` to a table created before it existed (it is the last column
    /// added); a no-op on a table that has it.
    fn upgrade_statement(&self) -> Statement {
        Statement::new(
            format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS \
                 row_counts TEXT CHARACTER SET ascii NULL AFTER results_omitted",
                self.name
            ),
            Vec::new(),
        )
    }

    /// Reads the records of `claims`' keys, in one query: a plain read by primary key,
    /// outside any transaction or inside a group's. A record written meanwhile by a duplicate
    /// still in flight is not seen, and then the duplicate's primary key stops this request's
    /// own record (see the module).
    pub fn lookup(&self, claims: &[&Claim]) -> Statement {
        let mut sql = format!(
            "SELECT idempotency_key, request_hash, response, results_omitted, \
             expires_at > NOW(6), row_counts FROM {} WHERE idempotency_key IN (",
            self.name
        );
        for index in 0..claims.len() {
            sql.push_str(if index == 0 { "?" } else { ", ?" });
        }
        sql.push(')');
        let keys = claims
            .iter()
            .map(|claim| Value::Bytes(claim.key.as_bytes().to_vec()))
            .collect();
        Statement::new(sql, keys)
    }

    /// What the lookup of `claims` found for each, in their order.
    pub fn read(&self, found: &QueryResult, claims: &[&Claim]) -> Vec<Recorded> {
        claims
            .iter()
            .map(|claim| {
                found
                    .rows
                    .iter()
                    .find(|row| {
                        matches!(row.first(), Some(Value::Bytes(key)) if key.as_slice() == claim.key.as_bytes())
                    })
                    .map_or(Recorded::Absent, |row| read_record(&row[1..], claim))
            })
            .collect()
    }

    /// Deletes `claim`'s record if it has expired, so that the request may record anew.
    pub fn forget_expired(&self, claim: &Claim) -> Statement {
        Statement::new(
            format!(
                "DELETE FROM {} WHERE idempotency_key = ? AND expires_at <= NOW(6)",
                self.name
            ),
            vec![Value::Bytes(claim.key.as_bytes().to_vec())],
        )
    }

    /// The `INSERT` of one record per claim with the reply it will be answered, as complete
    /// text (every value a hex literal), to go in one round trip with the `COMMIT`.
    pub fn insert(&self, records: &[(&Claim, &Reply)]) -> String {
        self.insert_rows(records, "NULL")
    }

    fn insert_rows(&self, records: &[(&Claim, &Reply)], row_counts: &str) -> String {
        let mut sql = format!(
            "INSERT INTO {} (idempotency_key, request_hash, response, results_omitted, \
             row_counts, created_at, expires_at) VALUES ",
            self.name
        );
        for (index, (claim, reply)) in records.iter().enumerate() {
            let (response, omitted) = self.stored(reply);
            if index > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            push_hex(&mut sql, claim.key.as_bytes());
            sql.push_str(", ");
            push_hex(&mut sql, &claim.hash);
            sql.push_str(", ");
            push_hex(&mut sql, &response);
            let _ = write!(
                sql,
                ", {}, {row_counts}, NOW(6), NOW(6) + INTERVAL {} SECOND)",
                u8::from(omitted),
                self.ttl_s
            );
        }
        sql
    }

    /// `SET` of the session variable that keeps the row count of statement `index` of a
    /// one-trip `tx` until its record is written, for every statement but the last (whose
    /// count `ROW_COUNT()` still gives when the record is written).
    pub fn keep_row_count(index: usize) -> String {
        format!("SET {} = ROW_COUNT()", row_count_variable(index))
    }

    /// The `INSERT` of `claim`'s record for a one-trip `tx` of `statements` statements that
    /// answer with row counts only, to follow the last of them in the same query: the server
    /// writes the counts in (`row_counts`), which `reply` leaves at zero.
    pub fn insert_counting(&self, claim: &Claim, reply: &Reply, statements: usize) -> String {
        let mut row_counts = String::from("CONCAT_WS(','");
        for index in 0..statements.saturating_sub(1) {
            let _ = write!(row_counts, ", {}", row_count_variable(index));
        }
        row_counts.push_str(", ROW_COUNT())");
        self.insert_rows(&[(claim, reply)], &row_counts)
    }

    /// The reply as recorded, and whether its rows were left out to keep it under
    /// `idempotency_max_response_bytes`.
    fn stored(&self, reply: &Reply) -> (Vec<u8>, bool) {
        let encode =
            |reply: Reply| rmp_serde::to_vec(&Response::success(0, reply)).unwrap_or_default();
        let whole = encode(reply.clone());
        if whole.len() <= self.max_response_bytes {
            return (whole, false);
        }
        let without_rows = match reply.clone() {
            Reply::Tx { results, attempts } => Reply::Tx {
                results: results
                    .into_iter()
                    .map(|result| QueryResult {
                        rows: Vec::new(),
                        ..result
                    })
                    .collect(),
                attempts,
            },
            other => other,
        };
        (encode(without_rows), true)
    }

    fn purge_statement(&self) -> Statement {
        Statement::new(
            format!(
                "DELETE FROM {} WHERE expires_at < NOW(6) ORDER BY expires_at LIMIT {}",
                self.name, self.purge_batch
            ),
            Vec::new(),
        )
    }

    /// Creates the table when it is missing. `connection` must be outside any transaction.
    pub async fn create(&self, connection: &mut DbConnection) -> Result<(), DbError> {
        connection.ensure_connected().await?;
        connection
            .execute(&self.create_statement(), TxMode::Autocommit)
            .await?;
        connection
            .execute(&self.upgrade_statement(), TxMode::Autocommit)
            .await
            .map(drop)
    }

    /// Deletes expired records in batches until none is left; READ COMMITTED, so that its
    /// range scan takes no gap locks that would hold up new records.
    async fn purge(&self, connection: &mut DbConnection) -> Result<u64, DbError> {
        connection.ensure_connected().await?;
        connection
            .set_isolation(Some(Isolation::ReadCommitted))
            .await?;
        let mut purged = 0;
        loop {
            let deleted = connection
                .execute(&self.purge_statement(), TxMode::Autocommit)
                .await?
                .affected;
            purged += deleted;
            if deleted < self.purge_batch {
                return Ok(purged);
            }
            tokio::time::sleep(PAUSE_BETWEEN_PURGE_BATCHES).await;
        }
    }
}

/// The background purge, on a connection of its own (made for each round and closed after
/// it, so that it takes no database connection slot between rounds): creates the table if it
/// could not be created at start, then deletes expired records every
/// `idempotency_purge_interval_ms`. Runs until its task is aborted (`Broker::shutdown`).
pub async fn purge_expired(database: Database, table: OutcomeTable, log: Logger) {
    let mut created = TableState::Unknown;
    loop {
        tokio::time::sleep(table.purge_interval).await;
        let mut connection = database.connection();
        if created == TableState::Unknown {
            match table.create(&mut connection).await {
                Ok(()) => created = TableState::Exists,
                Err(error) => {
                    debug!(log, "idempotency table not created yet"; "error" => %error);
                    connection.disconnect().await;
                    continue;
                }
            }
        }
        match table.purge(&mut connection).await {
            Ok(0) => {}
            Ok(purged) => debug!(log, "idempotency records purged"; "count" => purged),
            Err(error) => debug!(log, "idempotency purge failed"; "error" => %error),
        }
        connection.disconnect().await;
    }
}

/// Whether the purge knows the table exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TableState {
    Unknown,
    Exists,
}

/// The session variable that keeps the row count of statement `index` of a one-trip `tx`.
fn row_count_variable(index: usize) -> String {
    format!("@txbroker_row_count_{index}")
}

/// What one record (its columns after the key, as `lookup` reads them) holds for `claim`.
fn read_record(record: &[Value], claim: &Claim) -> Recorded {
    let [Value::Bytes(hash), Value::Bytes(response), omitted, live, row_counts] = record else {
        return Recorded::Absent;
    };
    if !is_true(live) {
        return Recorded::Expired;
    }
    if hash.as_slice() != claim.hash {
        return Recorded::OtherRequest;
    }
    match Response::decode(response).map(|decoded| decoded.outcome) {
        Ok(Ok(reply)) => Recorded::Live(Reply::Replayed {
            reply: Box::new(with_row_counts(reply, row_counts)),
            results_omitted: is_true(omitted),
        }),
        // Only successes are recorded; anything else is not a record of this broker's.
        _ => Recorded::Absent,
    }
}

/// `reply` with the affected-row counts the server recorded (`row_counts`, one per result,
/// comma-separated), when it recorded them; a count that does not read as one is left as
/// recorded.
fn with_row_counts(reply: Reply, row_counts: &Value) -> Reply {
    let counts = match row_counts {
        Value::Text(counts) => Cow::Borrowed(counts.as_str()),
        Value::Bytes(counts) => String::from_utf8_lossy(counts),
        _ => return reply,
    };
    let Reply::Tx {
        mut results,
        attempts,
    } = reply
    else {
        return reply;
    };
    for (result, count) in results.iter_mut().zip(counts.split(',')) {
        if let Ok(count) = count.parse() {
            result.affected = count;
        }
    }
    Reply::Tx { results, attempts }
}

fn is_true(value: &Value) -> bool {
    matches!(value, Value::Int(n) if *n != 0) || matches!(value, Value::UInt(n) if *n != 0)
}

/// `X'…'`: bytes as an SQL hex literal, which needs no escaping in any `sql_mode`.
fn push_hex(sql: &mut String, bytes: &[u8]) {
    let mut digits = vec![0; 2 * bytes.len()];
    hex::encode_to_slice(bytes, &mut digits)
        .unwrap_or_else(|_| unreachable!("two digits per byte fit"));
    sql.push_str("X'");
    sql.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::TxBuilder;

    fn transfer(key: &str, amount: i64) -> TxRequest {
        let mut tx = TxBuilder::new()
            .lock("accounts:1")
            .read_lock("accounts:2")
            .exec(
                "UPDATE accounts SET balance = balance - ? WHERE id = 1",
                vec![amount.into()],
            )
            .retries(2)
            .into_request();
        tx.options.idempotency_key = Some(key.to_string());
        tx
    }

    #[test]
    fn the_hash_covers_what_the_request_does_and_nothing_else() {
        let claim = Claim::of_tx(&transfer("k", 10)).expect("keyed");
        let mut other_retries = transfer("k", 10);
        other_retries.retries = Some(9);
        assert_eq!(Claim::of_tx(&other_retries), Some(claim.clone()));
        let mut with_lock_key = transfer("k", 10);
        with_lock_key.options.locks = Some(claim.with_lock_key(with_lock_key.options.locks));
        assert_eq!(Claim::of_tx(&with_lock_key), Some(claim.clone()));
        assert_ne!(
            Claim::of_tx(&transfer("k", 11)).map(|c| c.hash),
            Some(claim.hash)
        );
        let mut serializable = transfer("k", 10);
        serializable.options.isolation = Some(Isolation::Serializable);
        assert_ne!(
            Claim::of_tx(&serializable).map(|c| c.hash),
            Some(claim.hash)
        );
        let begin = Claim::of_begin(&transfer("k", 10).options).expect("keyed");
        assert_ne!(
            begin.hash, claim.hash,
            "a begin is not the tx of the same key"
        );
        assert_eq!(
            Claim::of_tx(&TxBuilder::new().exec("SELECT 1", vec![]).into_request()),
            None
        );
    }

    #[test]
    fn the_broker_key_comes_first_and_is_exclusive() {
        let claim = Claim::of_tx(&transfer("k", 1)).expect("keyed");
        let keys = claim.with_lock_key(transfer("k", 1).options.locks);
        assert_eq!(
            keys.keys()[0],
            ("\0idempotency:k".to_string(), LockMode::Exclusive)
        );
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn a_large_response_is_stored_without_its_rows() {
        let table = OutcomeTable::new(&Config {
            idempotency_max_response_bytes: 100,
            ..Config::default()
        });
        let row = vec![Value::Text("x".repeat(200))];
        let reply = Reply::Tx {
            results: vec![QueryResult {
                affected: 0,
                last_insert_id: None,
                columns: vec!["v".into()],
                rows: vec![row],
            }],
            attempts: 1,
        };
        let (stored, omitted) = table.stored(&reply);
        assert!(omitted);
        let Ok(Response {
            outcome: Ok(Reply::Tx { results, .. }),
            ..
        }) = Response::decode(&stored)
        else {
            panic!("a stored tx reply decodes");
        };
        assert_eq!(results[0].columns, vec!["v".to_string()]);
        assert!(results[0].rows.is_empty());
        assert!(!table.stored(&Reply::Done).1);
    }

    #[test]
    fn the_insert_writes_every_value_as_hex() {
        let table = OutcomeTable::new(&Config::default());
        let claim = Claim {
            key: "a'b".into(),
            hash: [0xab; 32],
        };
        let sql = table.insert(&[(&claim, &Reply::Done)]);
        assert!(sql.starts_with("INSERT INTO `txbroker_outcomes`"), "{sql}");
        assert!(sql.contains("X'612762'"), "{sql}");
        assert!(!sql.contains("a'b"), "{sql}");
    }
}
