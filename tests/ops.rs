//! The operations of protocol v1 against the real broker and the real MariaDB: hello, ping,
//! stats, `tx`, interactive transactions, the value mapping, `bad_request` handling,
//! transaction-control SQL refused through `exec`, and pipelining.
//!
//! Every test has its own database (label `ops_*`) and its own broker, so counters and rows
//! are the test's alone. What the broker claims is checked directly in the database where it
//! matters (committed or not).

mod common;

use std::fmt::Debug;

use common::{map, RawConn, TestBroker, TestDb};
use mysql_async::prelude::Queryable;
use rmpv::Value as Msgpack;
use txbroker::client::{Client, ClientError};
use txbroker::error::ErrorCode;
use txbroker::locks::LockRequest;
use txbroker::protocol::{ErrorReply, Isolation, Reply, Request, Statement, TxOptions, Value};
use txbroker::Config;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A private database prepared with `statements`, a broker on it, and a client.
async fn setup(label: &str, statements: &[&str]) -> (TestDb, TestBroker, Client) {
    let db = TestDb::create(label).await;
    db.run(statements).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    (db, broker, client)
}

/// The server's error, failing the test if the call succeeded or failed otherwise.
fn server_error<T: Debug>(result: Result<T, ClientError>) -> ErrorReply {
    match result {
        Err(ClientError::Server(error)) => error,
        Err(other) => panic!("expected an error answer from the server, got {other:?}"),
        Ok(value) => panic!("expected an error answer from the server, got success {value:?}"),
    }
}

/// Asserts the call failed with `code` and returns the error.
fn expect_code<T: Debug>(result: Result<T, ClientError>, code: ErrorCode) -> ErrorReply {
    let error = server_error(result);
    assert_eq!(error.code, code, "unexpected error {error:?}");
    error
}

fn int(value: &Value) -> i128 {
    match value {
        Value::Int(n) => i128::from(*n),
        Value::UInt(n) => i128::from(*n),
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn float(value: &Value) -> f64 {
    match value {
        Value::Float(f) => f64::from(*f),
        Value::Double(f) => *f,
        other => panic!("expected a float, got {other:?}"),
    }
}

fn text(value: &Value) -> &str {
    match value {
        Value::Text(text) => text,
        other => panic!("expected a str, got {other:?}"),
    }
}

fn bytes(value: &Value) -> &[u8] {
    match value {
        Value::Bytes(bytes) => bytes,
        other => panic!("expected a bin, got {other:?}"),
    }
}

/// A raw request map: `id`, `op`, then `extra`.
fn req(id: u64, op: &str, extra: Vec<(&str, Msgpack)>) -> Msgpack {
    let mut entries = vec![("id", Msgpack::from(id)), ("op", Msgpack::from(op))];
    entries.extend(extra);
    map(entries)
}

fn encode(value: &Msgpack) -> Vec<u8> {
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, value).expect("encode");
    body
}

fn framed(value: &Msgpack) -> Vec<u8> {
    let body = encode(value);
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// Reads one frame and decodes it as a plain MessagePack value, as a non-Rust client would.
async fn read_raw(conn: &mut RawConn) -> Msgpack {
    let body = conn.read_frame().await.expect("the server answers");
    let mut cursor = body.as_slice();
    let value = rmpv::decode::read_value(&mut cursor).expect("the answer is MessagePack");
    assert!(cursor.is_empty(), "trailing bytes after the answer");
    value
}

async fn call_raw(conn: &mut RawConn, request: Msgpack) -> Msgpack {
    conn.send_value(&request).await;
    read_raw(conn).await
}

/// A field of a map with string keys; panics when `value` is not such a map.
fn field<'a>(value: &'a Msgpack, key: &str) -> Option<&'a Msgpack> {
    let entries = value
        .as_map()
        .unwrap_or_else(|| panic!("expected a map, got {value}"));
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Every key of the map (and of nested maps) is a str.
fn assert_string_keys(value: &Msgpack) {
    match value {
        Msgpack::Map(entries) => {
            for (key, inner) in entries {
                assert!(key.is_str(), "non-string key {key} in {value}");
                assert_string_keys(inner);
            }
        }
        Msgpack::Array(items) => items.iter().for_each(assert_string_keys),
        _ => {}
    }
}

/// Checks a raw success answer for `id` and returns it.
fn assert_raw_ok(response: &Msgpack, id: u64) {
    assert_string_keys(response);
    assert_eq!(
        field(response, "id").and_then(Msgpack::as_u64),
        Some(id),
        "id not echoed in {response}"
    );
    assert_eq!(
        field(response, "ok"),
        Some(&Msgpack::Boolean(true)),
        "not ok: {response}"
    );
}

/// Checks a raw failure answer: its id (None means nil or absent) and code.
fn assert_raw_error(response: &Msgpack, id: Option<u64>, code: &str) {
    assert_string_keys(response);
    match id {
        Some(id) => assert_eq!(
            field(response, "id").and_then(Msgpack::as_u64),
            Some(id),
            "id not echoed in {response}"
        ),
        None => assert!(
            field(response, "id").is_none_or(Msgpack::is_nil),
            "id should be nil in {response}"
        ),
    }
    assert_eq!(
        field(response, "ok"),
        Some(&Msgpack::Boolean(false)),
        "expected a failure: {response}"
    );
    let error = field(response, "error").expect("an error map");
    assert_eq!(
        field(error, "code").and_then(Msgpack::as_str),
        Some(code),
        "wrong code in {response}"
    );
    assert!(
        field(error, "message").is_some_and(Msgpack::is_str),
        "error without a str message: {response}"
    );
    assert!(
        field(error, "retryable").is_some_and(Msgpack::is_bool),
        "error without a bool retryable: {response}"
    );
}

/// A ping on `conn` is answered ok: the connection is open and in sync.
async fn assert_ping_works(conn: &mut RawConn, id: u64) {
    let response = call_raw(conn, req(id, "ping", vec![])).await;
    assert_raw_ok(&response, id);
}

fn exec_req(id: u64, sql: &str, params: Vec<Msgpack>) -> Msgpack {
    req(
        id,
        "exec",
        vec![
            ("sql", Msgpack::from(sql)),
            ("params", Msgpack::Array(params)),
        ],
    )
}

fn statement(sql: &str) -> Msgpack {
    map(vec![("sql", Msgpack::from(sql))])
}

async fn count(db: &TestDb, table: &str) -> i64 {
    db.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
}

async fn table_exists(db: &TestDb, table: &str) -> bool {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_schema = '{}' AND table_name = '{table}'",
        db.name
    ))
    .await
        > 0
}

// ---------------------------------------------------------------------------------------
// hello, ping, stats
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_ping_and_stats_answer_string_keyed_maps_echoing_the_id() {
    let db = TestDb::create("ops_hello").await;
    let broker = TestBroker::start(db.config());

    let mut first = RawConn::connect(broker.addr).await;
    let hello = call_raw(
        &mut first,
        req(7, "hello", vec![("client", Msgpack::from("ops-test/1"))]),
    )
    .await;
    assert_raw_ok(&hello, 7);
    let server = field(&hello, "server")
        .and_then(Msgpack::as_str)
        .expect("server is a str");
    assert!(!server.trim().is_empty(), "server names the broker");
    assert_eq!(field(&hello, "protocol").and_then(Msgpack::as_u64), Some(1));
    let first_session = field(&hello, "session")
        .and_then(Msgpack::as_u64)
        .expect("session is an unsigned integer");

    let mut second = RawConn::connect(broker.addr).await;
    let hello = call_raw(&mut second, req(8, "hello", vec![])).await;
    assert_raw_ok(&hello, 8);
    let second_session = field(&hello, "session")
        .and_then(Msgpack::as_u64)
        .expect("session is an unsigned integer");
    assert_ne!(first_session, second_session, "session ids are distinct");

    // The largest id is echoed exactly, and ping's answer is just ok.
    let ping = call_raw(&mut first, req(u64::MAX, "ping", vec![])).await;
    assert_raw_ok(&ping, u64::MAX);
    let ping = call_raw(&mut first, req(0, "ping", vec![])).await;
    assert_raw_ok(&ping, 0);

    let stats = call_raw(&mut second, req(9, "stats", vec![])).await;
    assert_raw_ok(&stats, 9);
    let counters = field(&stats, "stats").expect("a stats field");
    assert!(counters.is_map(), "stats is a map: {counters}");
    for name in [
        "sessions",
        "transactions_committed",
        "transactions_rolled_back",
        "retries",
        "deadlocks",
        "lock_waits",
        "lock_timeouts",
        "locks_held",
        "lock_waiters",
    ] {
        let value = field(counters, name).unwrap_or_else(|| panic!("stats lacks {name}"));
        assert!(
            value.as_u64().is_some(),
            "stats.{name} is not an unsigned integer: {value}"
        );
    }
    let sessions = field(counters, "sessions").and_then(Msgpack::as_u64);
    assert!(sessions >= Some(2), "two sessions are open: {counters}");
    assert_eq!(
        field(counters, "transactions_committed").and_then(Msgpack::as_u64),
        Some(0),
        "nothing committed yet on a fresh broker"
    );

    // The Rust client sees the same.
    let client = broker.client().await;
    let info = client.hello(None).await.expect("hello");
    assert_eq!(info.protocol, 1);
    assert_eq!(info.server, server);
    assert!(info.session != first_session && info.session != second_session);
    client.ping().await.expect("ping");
    let stats = client.stats().await.expect("stats");
    assert!(stats.sessions >= 3, "{stats:?}");
}

// ---------------------------------------------------------------------------------------
// tx
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_results_have_the_contract_shape() {
    let (db, broker, client) = setup(
        "ops_tx_shape",
        &[
            "CREATE TABLE auto (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10))",
            "CREATE TABLE plain (id INT PRIMARY KEY, v INT)",
        ],
    )
    .await;

    let outcome = client
        .tx()
        .exec(
            "INSERT INTO auto (v) VALUES (?), (?)",
            vec!["a".into(), "b".into()],
        )
        .exec("INSERT INTO plain VALUES (?, ?)", vec![10.into(), 0.into()])
        .exec("UPDATE plain SET v = v + 1 WHERE id >= ?", vec![0.into()])
        .exec("SELECT id, v AS label FROM auto ORDER BY id", vec![])
        .run()
        .await
        .expect("tx");
    assert_eq!(outcome.attempts, 1);
    assert_eq!(outcome.results.len(), 4);

    let insert_auto = &outcome.results[0];
    assert_eq!(insert_auto.affected, 2);
    // A multi-row insert reports the first generated id.
    assert_eq!(insert_auto.last_insert_id, Some(1));
    assert!(insert_auto.columns.is_empty() && insert_auto.rows.is_empty());

    let insert_plain = &outcome.results[1];
    assert_eq!(insert_plain.affected, 1);
    assert_eq!(insert_plain.last_insert_id, None, "no auto-increment value");
    assert!(insert_plain.columns.is_empty() && insert_plain.rows.is_empty());

    let update = &outcome.results[2];
    assert_eq!(update.affected, 1);
    assert_eq!(update.last_insert_id, None);

    let select = &outcome.results[3];
    assert_eq!(select.columns, vec!["id".to_string(), "label".to_string()]);
    assert_eq!(select.rows.len(), 2);
    assert_eq!(int(&select.rows[0][0]), 1);
    assert_eq!(text(&select.rows[0][1]), "a");
    assert_eq!(int(&select.rows[1][0]), 2);
    assert_eq!(text(&select.rows[1][1]), "b");
    assert_eq!(select.last_insert_id, None);

    // It was committed.
    assert_eq!(count(&db, "auto").await, 2);
    assert_eq!(db.scalar("SELECT v FROM plain WHERE id = 10").await, 1);
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.transactions_committed, 1, "{stats:?}");

    // The same on the wire: `results` is an array of maps with every field, `columns` and
    // `rows` empty arrays for a statement without a result set, `attempts` an uint.
    let mut raw = RawConn::connect(broker.addr).await;
    let response = call_raw(
        &mut raw,
        req(
            41,
            "tx",
            vec![(
                "statements",
                Msgpack::Array(vec![
                    statement("INSERT INTO auto (v) VALUES ('c')"),
                    statement("INSERT INTO plain VALUES (11, 0)"),
                    statement("SELECT v FROM auto WHERE id = 3"),
                ]),
            )],
        ),
    )
    .await;
    assert_raw_ok(&response, 41);
    assert_eq!(
        field(&response, "attempts").and_then(Msgpack::as_u64),
        Some(1)
    );
    let results = field(&response, "results")
        .and_then(Msgpack::as_array)
        .expect("results is an array");
    assert_eq!(results.len(), 3);
    for result in results {
        assert!(result.is_map(), "a result is a map: {result}");
        assert!(field(result, "affected")
            .and_then(Msgpack::as_u64)
            .is_some());
        assert!(field(result, "columns").is_some_and(Msgpack::is_array));
        assert!(field(result, "rows").is_some_and(Msgpack::is_array));
    }
    assert_eq!(
        field(&results[0], "last_insert_id").and_then(Msgpack::as_u64),
        Some(3)
    );
    assert!(
        field(&results[1], "last_insert_id").is_none_or(Msgpack::is_nil),
        "no auto-increment value: {}",
        results[1]
    );
    for result in &results[..2] {
        assert_eq!(field(result, "columns"), Some(&Msgpack::Array(vec![])));
        assert_eq!(field(result, "rows"), Some(&Msgpack::Array(vec![])));
    }
    assert_eq!(
        field(&results[2], "columns"),
        Some(&Msgpack::Array(vec![Msgpack::from("v")]))
    );
    assert_eq!(
        field(&results[2], "rows"),
        Some(&Msgpack::Array(vec![Msgpack::Array(vec![Msgpack::from(
            "c"
        )])]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_tx_rejects_a_write_with_sql_error() {
    let (db, _broker, client) = setup(
        "ops_tx_read_only",
        &[
            "CREATE TABLE t (id INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1)",
        ],
    )
    .await;

    let outcome = client
        .tx()
        .read_only()
        .exec("SELECT COUNT(*) FROM t", vec![])
        .run()
        .await
        .expect("a read-only tx may read");
    assert_eq!(int(&outcome.results[0].rows[0][0]), 1);

    let error = expect_code(
        client
            .tx()
            .read_only()
            .exec("SELECT COUNT(*) FROM t", vec![])
            .exec("INSERT INTO t VALUES (2)", vec![])
            .run()
            .await,
        ErrorCode::Sql,
    );
    assert_eq!(error.mysql_code, Some(1792), "{error:?}");
    assert_eq!(error.sqlstate.as_deref(), Some("25006"), "{error:?}");
    assert_eq!(error.statement, Some(1));
    assert!(!error.retryable);
    assert_eq!(count(&db, "t").await, 1, "the write did not happen");

    // read_only does not stick to the session.
    client
        .tx()
        .exec("INSERT INTO t VALUES (3)", vec![])
        .run()
        .await
        .expect("a read-write tx after a read-only one");
    assert_eq!(count(&db, "t").await, 2);
}

/// `@@in_transaction` as the statement saw it, from the row a `tx` just inserted.
async fn last_in_transaction(db: &TestDb) -> i64 {
    db.scalar("SELECT in_tx FROM probe ORDER BY id DESC LIMIT 1")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_write_tx_runs_as_one_autocommit_statement_unless_configured_off() {
    let (db, _broker, client) = setup(
        "ops_single_write",
        &["CREATE TABLE probe (id INT AUTO_INCREMENT PRIMARY KEY, in_tx INT NOT NULL)"],
    )
    .await;
    let insert = "INSERT INTO probe (in_tx) SELECT @@in_transaction";

    let outcome = client
        .tx()
        .lock("probe")
        .exec(insert, vec![])
        .run()
        .await
        .expect("one write");
    assert_eq!((outcome.attempts, outcome.results[0].affected), (1, 1));
    assert_eq!(last_in_transaction(&db).await, 0, "ran in autocommit mode");

    client
        .tx()
        .exec(insert, vec![])
        .exec("SELECT 1", vec![])
        .run()
        .await
        .expect("two statements");
    assert_eq!(
        last_in_transaction(&db).await,
        1,
        "two statements: START TRANSACTION"
    );

    client
        .tx()
        .isolation(Isolation::ReadCommitted)
        .exec(insert, vec![])
        .run()
        .await
        .expect("one write at another isolation level");
    assert_eq!(last_in_transaction(&db).await, 0);
    let level = client
        .tx()
        .isolation(Isolation::ReadCommitted)
        .exec("SELECT @@tx_isolation", vec![])
        .run()
        .await
        .expect("read the level");
    assert_eq!(text(&level.results[0].rows[0][0]), "READ-COMMITTED");
    let level = client
        .exec("SELECT @@tx_isolation", vec![])
        .await
        .expect("autocommit read of the level");
    assert_eq!(
        text(&level.rows[0][0]),
        "REPEATABLE-READ",
        "an autocommit exec runs at default_isolation, whatever the tx before it used"
    );

    let explicit_broker = TestBroker::start(Config {
        single_write_autocommit: false,
        ..db.config()
    });
    explicit_broker
        .client()
        .await
        .tx()
        .exec(insert, vec![])
        .run()
        .await
        .expect("one write, explicit");
    assert_eq!(
        last_in_transaction(&db).await,
        1,
        "switched off: START TRANSACTION"
    );
    assert_eq!(count(&db, "probe").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_write_tx_that_fails_names_statement_0_and_changes_nothing() {
    let (db, _broker, client) = setup(
        "ops_single_write_fails",
        &[
            "CREATE TABLE t (id INT PRIMARY KEY)",
            "INSERT INTO t VALUES (1)",
        ],
    )
    .await;
    let error = expect_code(
        client
            .tx()
            .lock("t")
            .exec("INSERT INTO t VALUES (5), (1)", vec![])
            .run()
            .await,
        ErrorCode::Sql,
    );
    assert_eq!((error.mysql_code, error.statement), (Some(1062), Some(0)));
    assert_eq!(
        count(&db, "t").await,
        1,
        "the row before the duplicate is gone too"
    );
    let stats = client.stats().await.expect("stats");
    assert_eq!((stats.locks_held, stats.transactions_rolled_back), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_levels_are_accepted_and_applied() {
    let (db, broker, client) =
        setup("ops_tx_isolation", &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;

    // An uncommitted row on another connection: only read_uncommitted sees it.
    let mut other = db.conn().await;
    other.query_drop("START TRANSACTION").await.unwrap();
    other.query_drop("INSERT INTO t VALUES (1)").await.unwrap();

    let seen = |outcome: txbroker::client::TxOutcome| int(&outcome.results[0].rows[0][0]);
    let dirty = client
        .tx()
        .isolation(Isolation::ReadUncommitted)
        .exec("SELECT COUNT(*) FROM t", vec![])
        .run()
        .await
        .expect("read_uncommitted tx");
    assert_eq!(seen(dirty), 1, "read_uncommitted sees the uncommitted row");

    for level in [
        Some(Isolation::ReadCommitted),
        Some(Isolation::RepeatableRead),
        None,
    ] {
        let mut tx = client.tx().exec("SELECT COUNT(*) FROM t", vec![]);
        if let Some(level) = level {
            tx = tx.isolation(level);
        }
        let outcome = tx.run().await.expect("tx");
        assert_eq!(
            seen(outcome),
            0,
            "{level:?} must not see the uncommitted row (the level must not leak from an earlier tx)"
        );
    }

    // Interactive: begin with an isolation level.
    client
        .begin(TxOptions {
            isolation: Some(Isolation::ReadUncommitted),
            ..TxOptions::default()
        })
        .await
        .expect("begin read_uncommitted");
    let result = client
        .exec("SELECT COUNT(*) FROM t", vec![])
        .await
        .expect("exec");
    assert_eq!(int(&result.rows[0][0]), 1);
    client.commit().await.expect("commit");

    other.query_drop("ROLLBACK").await.unwrap();
    other.disconnect().await.ok();

    // Every spelling of the contract is accepted on the wire.
    let mut raw = RawConn::connect(broker.addr).await;
    for (index, level) in [
        "read_uncommitted",
        "read_committed",
        "repeatable_read",
        "serializable",
    ]
    .into_iter()
    .enumerate()
    {
        let id = 100 + index as u64;
        let response = call_raw(
            &mut raw,
            req(
                id,
                "tx",
                vec![
                    ("statements", Msgpack::Array(vec![statement("SELECT 1")])),
                    ("isolation", Msgpack::from(level)),
                ],
            ),
        )
        .await;
        assert_raw_ok(&response, id);
        let id = 200 + index as u64;
        let response = call_raw(
            &mut raw,
            req(id, "begin", vec![("isolation", Msgpack::from(level))]),
        )
        .await;
        assert_raw_ok(&response, id);
        let response = call_raw(&mut raw, req(id + 50, "rollback", vec![])).await;
        assert_raw_ok(&response, id + 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_in_tx_names_its_index_and_rolls_back_the_earlier_ones() {
    let (db, _broker, client) = setup(
        "ops_tx_statement_index",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;

    let error = expect_code(
        client
            .tx()
            .lock("t")
            .exec("INSERT INTO t VALUES (?)", vec![1.into()])
            .exec("INSERT INTO t VALUES (?)", vec![1.into()])
            .exec("INSERT INTO t VALUES (?)", vec![2.into()])
            .run()
            .await,
        ErrorCode::Sql,
    );
    assert_eq!(error.mysql_code, Some(1062), "{error:?}");
    assert_eq!(error.sqlstate.as_deref(), Some("23000"), "{error:?}");
    assert_eq!(error.statement, Some(1), "{error:?}");
    assert!(!error.retryable);
    assert_eq!(count(&db, "t").await, 0, "statement 0 was rolled back");

    // A syntax error in the third statement: index 2.
    let error = expect_code(
        client
            .tx()
            .exec("INSERT INTO t VALUES (5)", vec![])
            .exec("INSERT INTO t VALUES (6)", vec![])
            .exec("SELEC nonsense FROM", vec![])
            .run()
            .await,
        ErrorCode::Sql,
    );
    assert_eq!(error.mysql_code, Some(1064), "{error:?}");
    assert_eq!(error.statement, Some(2), "{error:?}");
    assert_eq!(
        count(&db, "t").await,
        0,
        "statements 0 and 1 were rolled back"
    );

    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.transactions_rolled_back, 2, "{stats:?}");
    assert_eq!(stats.transactions_committed, 0, "{stats:?}");
    assert_eq!(stats.locks_held, 0, "the key was released: {stats:?}");

    // The session is usable afterwards.
    client
        .tx()
        .exec("INSERT INTO t VALUES (1)", vec![])
        .run()
        .await
        .expect("a later tx");
    assert_eq!(count(&db, "t").await, 1);
}

// ---------------------------------------------------------------------------------------
// Interactive transactions
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_exec_commit_persists() {
    let (db, _broker, client) = setup(
        "ops_interactive_commit",
        &["CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"],
    )
    .await;
    client.begin(TxOptions::default()).await.expect("begin");
    let result = client
        .exec("INSERT INTO t (v) VALUES (?)", vec![5.into()])
        .await
        .expect("exec");
    assert_eq!(result.affected, 1);
    assert_eq!(result.last_insert_id, Some(1));
    let result = client
        .exec("SELECT v FROM t", vec![])
        .await
        .expect("exec sees its own write");
    assert_eq!(int(&result.rows[0][0]), 5);
    assert_eq!(count(&db, "t").await, 0, "not visible before commit");
    client.commit().await.expect("commit");
    assert_eq!(count(&db, "t").await, 1, "visible after commit");
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.transactions_committed, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_exec_rollback_discards() {
    let (db, _broker, client) = setup(
        "ops_interactive_rollback",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;
    client
        .begin(TxOptions {
            locks: LockRequest::new(vec!["t:1".to_string()], vec![]),
            ..TxOptions::default()
        })
        .await
        .expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("exec");
    assert_eq!(client.stats().await.expect("stats").locks_held, 1);
    client.rollback().await.expect("rollback");
    assert_eq!(count(&db, "t").await, 0);
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.locks_held, 0, "{stats:?}");
    assert_eq!(stats.transactions_rolled_back, 1, "{stats:?}");
    assert_eq!(stats.transactions_committed, 0, "{stats:?}");
    // The transaction is over: commit has nothing to commit.
    expect_code(client.commit().await, ErrorCode::NoTransaction);
    assert_eq!(count(&db, "t").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_outside_a_transaction_autocommits() {
    let (db, _broker, client) = setup(
        "ops_autocommit",
        &["CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"],
    )
    .await;
    let result = client
        .exec("INSERT INTO t (v) VALUES (?)", vec![1.into()])
        .await
        .expect("exec");
    assert_eq!(result.affected, 1);
    assert_eq!(result.last_insert_id, Some(1));
    assert_eq!(count(&db, "t").await, 1, "committed at once");
    // A failing autocommit statement takes nothing with it.
    expect_code(
        client
            .exec("INSERT INTO t (id, v) VALUES (1, 2)", vec![])
            .await,
        ErrorCode::Sql,
    );
    assert_eq!(count(&db, "t").await, 1);
    // No transaction was left open by either.
    expect_code(client.commit().await, ErrorCode::NoTransaction);
    client.begin(TxOptions::default()).await.expect("begin");
    client.rollback().await.expect("rollback");
    assert_eq!(count(&db, "t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_error_inside_a_transaction_leaves_it_open() {
    let (db, _broker, client) = setup(
        "ops_sql_error_keeps_tx",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("first insert");
    let error = expect_code(
        client.exec("INSERT INTO t VALUES (1)", vec![]).await,
        ErrorCode::Sql,
    );
    assert_eq!(error.mysql_code, Some(1062));
    assert_eq!(error.sqlstate.as_deref(), Some("23000"));
    expect_code(client.exec("SELEC 1", vec![]).await, ErrorCode::Sql);
    assert_eq!(count(&db, "t").await, 0, "nothing committed by the errors");
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the transaction is still open and usable");
    client.commit().await.expect("commit");
    assert_eq!(count(&db, "t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_state_errors() {
    let (db, _broker, client) =
        setup("ops_state_errors", &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;

    let error = expect_code(client.commit().await, ErrorCode::NoTransaction);
    assert!(!error.retryable);
    expect_code(
        client
            .lock(LockRequest::new(vec!["k".to_string()], vec![]).unwrap())
            .await,
        ErrorCode::NoTransaction,
    );
    expect_code(
        client
            .lock(LockRequest::new(vec![], vec!["k".to_string()]).unwrap())
            .await,
        ErrorCode::NoTransaction,
    );
    assert_eq!(
        client.stats().await.expect("stats").locks_held,
        0,
        "a refused lock holds nothing"
    );
    client.rollback().await.expect("rollback with none open");
    client.rollback().await.expect("rollback is idempotent");

    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("exec");
    let error = expect_code(
        client.begin(TxOptions::default()).await,
        ErrorCode::TxActive,
    );
    assert!(!error.retryable);
    expect_code(
        client
            .tx()
            .exec("INSERT INTO t VALUES (2)", vec![])
            .run()
            .await,
        ErrorCode::TxActive,
    );
    // Neither touched the open transaction: it is still open, and the refused tx never ran.
    client
        .exec("INSERT INTO t VALUES (3)", vec![])
        .await
        .expect("still open");
    assert_eq!(count(&db, "t").await, 0);
    client.commit().await.expect("commit");
    assert_eq!(count(&db, "t").await, 2, "rows 1 and 3, never 2");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM t WHERE id IN (1, 3)").await,
        2
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM t WHERE id = 2").await, 0);

    // Inside a transaction `lock` works, then the state is clean again after commit.
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .lock(LockRequest::new(vec!["k".to_string()], vec![]).unwrap())
        .await
        .expect("lock inside a transaction");
    assert_eq!(client.stats().await.expect("stats").locks_held, 1);
    client.rollback().await.expect("rollback");
    assert_eq!(client.stats().await.expect("stats").locks_held, 0);
    expect_code(client.commit().await, ErrorCode::NoTransaction);
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_through_params_and_rows() {
    let (_db, broker, client) = setup(
        "ops_values",
        &["CREATE TABLE v (
            id INT PRIMARY KEY,
            n INT NULL,
            b TINYINT,
            i BIGINT,
            u BIGINT UNSIGNED,
            f FLOAT,
            d DOUBLE,
            s VARCHAR(50),
            txt TEXT,
            vb VARBINARY(20),
            bl BLOB,
            amount DECIMAL(20,6),
            dt DATE,
            dtm DATETIME(6),
            ts TIMESTAMP(6) NULL DEFAULT NULL,
            tm TIME,
            e ENUM('red','green'),
            j JSON
        ) DEFAULT CHARSET = utf8mb4"],
    )
    .await;

    let long_text = format!("{}✓", "x".repeat(1000));
    let json = r#"{"a": [1, 2.5, "três"], "b": null}"#;
    let insert = "INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    client
        .tx()
        .exec(
            insert,
            vec![
                1.into(),
                Value::Null,
                true.into(),
                i64::MIN.into(),
                u64::MAX.into(),
                1.5f32.into(),
                0.1f64.into(),
                "héllo ✓".into(),
                long_text.clone().into(),
                vec![0u8, 255, 1, 128].into(),
                vec![1u8, 2, 3, 0, 254].into(),
                "1.5".into(),
                "2024-02-29".into(),
                "2024-02-29 13:45:07.123456".into(),
                "2030-06-15 08:09:10.000250".into(),
                "-838:59:59".into(),
                "green".into(),
                json.into(),
            ],
        )
        .exec(
            insert,
            vec![
                2.into(),
                42.into(),
                false.into(),
                i64::MAX.into(),
                0u64.into(),
                (-2.25f32).into(),
                (-1.0e300f64).into(),
                "".into(),
                "".into(),
                Vec::<u8>::new().into(),
                Vec::<u8>::new().into(),
                "12345678901234.123456".into(),
                "1000-01-01".into(),
                "9999-12-31 23:59:59.999999".into(),
                Value::Null,
                "100:00:00".into(),
                "red".into(),
                "[]".into(),
            ],
        )
        .exec(
            "INSERT INTO v (id, amount, tm) VALUES (3, ?, ?)",
            vec!["-0.000001".into(), "-01:02:03".into()],
        )
        .run()
        .await
        .expect("insert values");

    let result = client
        .exec(
            "SELECT id, n, b, i, u, f, d, s, txt, vb, bl, amount, dt, dtm, ts, tm, e, j \
             FROM v ORDER BY id",
            vec![],
        )
        .await
        .expect("select values");
    assert_eq!(
        result.columns,
        [
            "id", "n", "b", "i", "u", "f", "d", "s", "txt", "vb", "bl", "amount", "dt", "dtm",
            "ts", "tm", "e", "j"
        ]
        .map(String::from)
        .to_vec()
    );
    assert_eq!(result.rows.len(), 3);

    let row = &result.rows[0];
    assert_eq!(int(&row[0]), 1);
    assert_eq!(row[1], Value::Null, "NULL is nil");
    assert_eq!(int(&row[2]), 1, "bool true is read back as the integer 1");
    assert_eq!(int(&row[3]), i128::from(i64::MIN));
    assert_eq!(int(&row[4]), i128::from(u64::MAX));
    assert_eq!(float(&row[5]), 1.5);
    assert_eq!(float(&row[6]), 0.1);
    assert_eq!(text(&row[7]), "héllo ✓");
    assert_eq!(text(&row[8]), long_text);
    assert_eq!(bytes(&row[9]), &[0u8, 255, 1, 128]);
    assert_eq!(bytes(&row[10]), &[1u8, 2, 3, 0, 254]);
    assert_eq!(text(&row[11]), "1.500000", "DECIMAL keeps its scale");
    assert_eq!(text(&row[12]), "2024-02-29");
    assert_eq!(text(&row[13]), "2024-02-29 13:45:07.123456");
    assert_eq!(text(&row[14]), "2030-06-15 08:09:10.000250");
    assert_eq!(text(&row[15]), "-838:59:59");
    assert_eq!(text(&row[16]), "green");
    let stored: serde_json::Value = serde_json::from_str(text(&row[17])).expect("JSON text");
    let sent: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(stored, sent);

    let row = &result.rows[1];
    assert_eq!(int(&row[1]), 42);
    assert_eq!(int(&row[2]), 0, "bool false is read back as the integer 0");
    assert_eq!(int(&row[3]), i128::from(i64::MAX));
    assert_eq!(int(&row[4]), 0);
    assert_eq!(float(&row[5]), -2.25);
    assert_eq!(float(&row[6]), -1.0e300);
    assert_eq!(text(&row[7]), "");
    assert_eq!(text(&row[8]), "");
    assert_eq!(bytes(&row[9]), b"");
    assert_eq!(bytes(&row[10]), b"");
    assert_eq!(
        text(&row[11]),
        "12345678901234.123456",
        "DECIMAL is exact text, never through a float"
    );
    assert_eq!(text(&row[12]), "1000-01-01");
    assert_eq!(text(&row[13]), "9999-12-31 23:59:59.999999");
    assert_eq!(row[14], Value::Null);
    assert_eq!(text(&row[15]), "100:00:00", "TIME beyond 24 hours");
    assert_eq!(text(&row[16]), "red");
    assert_eq!(text(&row[17]), "[]");

    let row = &result.rows[2];
    assert_eq!(text(&row[11]), "-0.000001");
    assert_eq!(
        text(&row[15]),
        "-01:02:03",
        "negative TIME, two-digit hours"
    );

    // Parameters come back as they went, without a table in between.
    let result = client
        .exec(
            "SELECT ? AS flag, ? AS nothing, ? AS big, ? AS small, ? AS word",
            vec![
                true.into(),
                Value::Null,
                u64::MAX.into(),
                i64::MIN.into(),
                "plain".into(),
            ],
        )
        .await
        .expect("select params");
    let row = &result.rows[0];
    assert_eq!(int(&row[0]), 1, "a bool param is 1");
    assert_eq!(row[1], Value::Null);
    assert_eq!(int(&row[2]), i128::from(u64::MAX));
    assert_eq!(int(&row[3]), i128::from(i64::MIN));
    assert_eq!(text(&row[4]), "plain");

    // On the wire: binary columns are msgpack bin, text, DECIMAL and dates msgpack str.
    let mut raw = RawConn::connect(broker.addr).await;
    let response = call_raw(
        &mut raw,
        exec_req(
            5,
            "SELECT vb, bl, s, amount, dt, tm, j, n FROM v WHERE id = ?",
            vec![Msgpack::from(1)],
        ),
    )
    .await;
    assert_raw_ok(&response, 5);
    let rows = field(field(&response, "result").expect("result"), "rows")
        .and_then(Msgpack::as_array)
        .expect("rows");
    let cells = rows[0].as_array().expect("a row is an array");
    assert_eq!(cells[0], Msgpack::Binary(vec![0, 255, 1, 128]));
    assert_eq!(cells[1], Msgpack::Binary(vec![1, 2, 3, 0, 254]));
    assert_eq!(cells[2], Msgpack::from("héllo ✓"));
    assert_eq!(cells[3], Msgpack::from("1.500000"));
    assert_eq!(cells[4], Msgpack::from("2024-02-29"));
    assert_eq!(cells[5], Msgpack::from("-838:59:59"));
    assert!(cells[6].is_str(), "JSON is a str: {}", cells[6]);
    assert!(cells[7].is_nil());
    // A bin parameter goes into a binary column byte for byte.
    let response = call_raw(
        &mut raw,
        exec_req(
            6,
            "SELECT COUNT(*) FROM v WHERE vb = ?",
            vec![Msgpack::Binary(vec![0, 255, 1, 128])],
        ),
    )
    .await;
    assert_raw_ok(&response, 6);
    let rows = field(field(&response, "result").expect("result"), "rows").unwrap();
    assert_eq!(
        rows,
        &Msgpack::Array(vec![Msgpack::Array(vec![Msgpack::from(1)])])
    );
}

// ---------------------------------------------------------------------------------------
// bad_request
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_echo_the_id_and_keep_the_connection_open() {
    let (db, broker, _client) =
        setup("ops_bad_request", &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let mut raw = RawConn::connect(broker.addr).await;
    let key = |text: String| Msgpack::Array(vec![Msgpack::from(text)]);
    let select_1 = || Msgpack::Array(vec![statement("SELECT 1")]);
    let cases: Vec<(&str, Msgpack)> = vec![
        ("unknown op", req(1, "frobnicate", vec![])),
        (
            "op of the wrong type",
            map(vec![("id", Msgpack::from(2)), ("op", Msgpack::from(5))]),
        ),
        ("missing op", map(vec![("id", Msgpack::from(3))])),
        ("exec without sql", req(4, "exec", vec![])),
        (
            "exec with sql nil",
            req(5, "exec", vec![("sql", Msgpack::Nil)]),
        ),
        (
            "exec with sql not a str",
            req(6, "exec", vec![("sql", Msgpack::from(1))]),
        ),
        (
            "exec with empty sql",
            req(7, "exec", vec![("sql", Msgpack::from("  "))]),
        ),
        (
            "tx with empty statements",
            req(8, "tx", vec![("statements", Msgpack::Array(vec![]))]),
        ),
        ("tx without statements", req(9, "tx", vec![])),
        (
            "tx with a statement without sql",
            req(
                10,
                "tx",
                vec![("statements", Msgpack::Array(vec![map(vec![])]))],
            ),
        ),
        (
            "tx with a bad isolation",
            req(
                11,
                "tx",
                vec![
                    ("statements", select_1()),
                    ("isolation", Msgpack::from("chaos")),
                ],
            ),
        ),
        (
            "begin with a bad isolation",
            req(
                12,
                "begin",
                vec![("isolation", Msgpack::from("READ COMMITTED"))],
            ),
        ),
        (
            "tx with an empty key",
            req(
                13,
                "tx",
                vec![("statements", select_1()), ("locks", key(String::new()))],
            ),
        ),
        (
            "tx with a 513-byte key",
            req(
                14,
                "tx",
                vec![("statements", select_1()), ("locks", key("k".repeat(513)))],
            ),
        ),
        (
            "tx with a 513-byte read key",
            req(
                15,
                "tx",
                vec![
                    ("statements", select_1()),
                    ("read_locks", key("k".repeat(513))),
                ],
            ),
        ),
        (
            "begin with a key of 171 three-byte chars (513 bytes)",
            req(16, "begin", vec![("locks", key("✓".repeat(171)))]),
        ),
        (
            "begin with an empty key",
            req(17, "begin", vec![("read_locks", key(String::new()))]),
        ),
        (
            "exec with a nested array param",
            exec_req(18, "SELECT ?", vec![Msgpack::Array(vec![Msgpack::from(1)])]),
        ),
        (
            "exec with a map param",
            exec_req(19, "SELECT ?", vec![map(vec![("a", Msgpack::from(1))])]),
        ),
        (
            "tx with a nested array param",
            req(
                20,
                "tx",
                vec![(
                    "statements",
                    Msgpack::Array(vec![map(vec![
                        ("sql", Msgpack::from("SELECT ?")),
                        ("params", Msgpack::Array(vec![Msgpack::Array(vec![])])),
                    ])]),
                )],
            ),
        ),
        ("exec with too few params", exec_req(21, "SELECT ?", vec![])),
        (
            "exec with too many params",
            exec_req(22, "SELECT ?", vec![Msgpack::from(1), Msgpack::from(2)]),
        ),
        (
            "tx with too few params",
            req(
                23,
                "tx",
                vec![("statements", Msgpack::Array(vec![statement("SELECT ?, ?")]))],
            ),
        ),
        (
            "exec with params not an array",
            req(
                24,
                "exec",
                vec![
                    ("sql", Msgpack::from("SELECT 1")),
                    ("params", Msgpack::from(1)),
                ],
            ),
        ),
        (
            "read_only not a bool",
            req(25, "begin", vec![("read_only", Msgpack::from("yes"))]),
        ),
        (
            "retries negative",
            req(
                26,
                "tx",
                vec![("statements", select_1()), ("retries", Msgpack::from(-1))],
            ),
        ),
    ];
    for (what, request) in cases {
        let id = field(&request, "id").and_then(Msgpack::as_u64).unwrap();
        let response = call_raw(&mut raw, request).await;
        assert_raw_error(&response, Some(id), "bad_request");
        assert_eq!(
            field(field(&response, "error").unwrap(), "retryable"),
            Some(&Msgpack::Boolean(false)),
            "{what}: bad_request is not retryable"
        );
        assert_ping_works(&mut raw, 1000 + id).await;
    }

    // The limits themselves are allowed: 1 byte, 512 bytes, 170 three-byte chars (510 bytes).
    for (index, key_text) in ["k".to_string(), "k".repeat(512), "✓".repeat(170)]
        .into_iter()
        .enumerate()
    {
        let id = 300 + index as u64;
        let response = call_raw(
            &mut raw,
            req(
                id,
                "tx",
                vec![("statements", select_1()), ("locks", key(key_text))],
            ),
        )
        .await;
        assert_raw_ok(&response, id);
    }

    // None of it reached the database, and the session holds nothing.
    assert_eq!(count(&db, "t").await, 0);
    let response = call_raw(&mut raw, req(400, "stats", vec![])).await;
    let stats = field(&response, "stats").unwrap();
    assert_eq!(
        field(stats, "locks_held").and_then(Msgpack::as_u64),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_inside_a_transaction_leaves_it_open() {
    let (db, broker, _client) = setup(
        "ops_bad_request_in_tx",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;
    let mut raw = RawConn::connect(broker.addr).await;
    assert_raw_ok(&call_raw(&mut raw, req(1, "begin", vec![])).await, 1);
    assert_raw_ok(
        &call_raw(&mut raw, exec_req(2, "INSERT INTO t VALUES (1)", vec![])).await,
        2,
    );
    assert_raw_error(
        &call_raw(&mut raw, req(3, "nope", vec![])).await,
        Some(3),
        "bad_request",
    );
    assert_raw_error(
        &call_raw(&mut raw, exec_req(4, "", vec![])).await,
        Some(4),
        "bad_request",
    );
    assert_raw_error(
        &call_raw(
            &mut raw,
            exec_req(5, "SELECT ?", vec![Msgpack::Array(vec![])]),
        )
        .await,
        Some(5),
        "bad_request",
    );
    assert_raw_error(
        &call_raw(
            &mut raw,
            req(
                6,
                "lock",
                vec![("locks", Msgpack::Array(vec![Msgpack::from("")]))],
            ),
        )
        .await,
        Some(6),
        "bad_request",
    );
    assert_raw_ok(
        &call_raw(&mut raw, exec_req(7, "INSERT INTO t VALUES (2)", vec![])).await,
        7,
    );
    assert_eq!(count(&db, "t").await, 0, "still uncommitted");
    assert_raw_ok(&call_raw(&mut raw, req(8, "commit", vec![])).await, 8);
    assert_eq!(count(&db, "t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_parameter_count_is_bad_request_and_the_session_carries_on() {
    let (db, _broker, client) =
        setup("ops_param_count", &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;

    // Outside a transaction: the next autocommit statement runs normally.
    expect_code(client.exec("SELECT ?", vec![]).await, ErrorCode::BadRequest);
    let result = client.exec("INSERT INTO t VALUES (1)", vec![]).await;
    assert!(
        result.is_ok(),
        "an exec right after a refused parameter count: {result:?}"
    );
    assert_eq!(count(&db, "t").await, 1);

    // Inside a transaction: the refusal leaves the transaction open with its work.
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (10)", vec![])
        .await
        .expect("exec");
    expect_code(
        client.exec("SELECT ?, ?", vec![1.into()]).await,
        ErrorCode::BadRequest,
    );
    let result = client.exec("INSERT INTO t VALUES (11)", vec![]).await;
    assert!(
        result.is_ok(),
        "the transaction is still open after a bad_request: {result:?}"
    );
    client.commit().await.expect("commit");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM t WHERE id IN (10, 11)")
            .await,
        2,
        "both inserts of the transaction were committed"
    );
}

/// A multi-statement `sql` may be refused by the broker or fail in the database, but it must
/// fail.
fn refused<T: Debug>(result: Result<T, ClientError>, what: &str) {
    let error = server_error(result);
    assert!(
        matches!(error.code, ErrorCode::BadRequest | ErrorCode::Sql),
        "{what}: unexpected {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_statement_sql_is_an_error_and_runs_nothing() {
    let (db, _broker, client) = setup(
        "ops_multi_statement",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;
    refused(
        client.exec("SELECT 1; SELECT 2", vec![]).await,
        "exec SELECT 1; SELECT 2",
    );
    refused(
        client
            .exec("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)", vec![])
            .await,
        "exec two inserts",
    );
    refused(
        client
            .exec(
                "INSERT INTO t VALUES (?); INSERT INTO t VALUES (4)",
                vec![3.into()],
            )
            .await,
        "exec two inserts with a param",
    );
    refused(
        client
            .tx()
            .exec("INSERT INTO t VALUES (5); INSERT INTO t VALUES (6)", vec![])
            .run()
            .await,
        "tx two inserts",
    );
    client.begin(TxOptions::default()).await.expect("begin");
    refused(
        client
            .exec("INSERT INTO t VALUES (7); INSERT INTO t VALUES (8)", vec![])
            .await,
        "exec two inserts in a transaction",
    );
    client.rollback().await.expect("rollback");
    assert_eq!(
        count(&db, "t").await,
        0,
        "no part of any multi-statement ran"
    );
}

// ---------------------------------------------------------------------------------------
// Transaction control and DDL through exec
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_control_sql_is_refused_outside_a_transaction() {
    let (db, _broker, client) = setup(
        "ops_txcontrol_outside",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;
    for sql in [
        "COMMIT",
        "START TRANSACTION",
        "BEGIN",
        "SET autocommit=0",
        "SET @@session.autocommit = 0",
        "ROLLBACK",
    ] {
        let error = expect_code(client.exec(sql, vec![]).await, ErrorCode::BadRequest);
        assert!(!error.retryable, "{sql}");
    }
    // autocommit is still on: an exec commits at once.
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("exec");
    assert_eq!(count(&db, "t").await, 1, "autocommit was not turned off");
    // And no transaction was opened behind the session's back.
    expect_code(client.commit().await, ErrorCode::NoTransaction);

    // Through tx: refused before anything runs.
    let error = expect_code(
        client
            .tx()
            .exec("INSERT INTO t VALUES (2)", vec![])
            .exec("COMMIT", vec![])
            .exec("INSERT INTO t VALUES (3)", vec![])
            .run()
            .await,
        ErrorCode::BadRequest,
    );
    assert!(!error.retryable);
    expect_code(
        client.tx().exec("SET autocommit = 0", vec![]).run().await,
        ErrorCode::BadRequest,
    );
    assert_eq!(count(&db, "t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_inside_a_transaction_keeps_it_open() {
    let (db, _broker, client) = setup(
        "ops_txcontrol_inside",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("exec");
    for sql in [
        "COMMIT",
        "commit work",
        "  -- a comment\n COMMIT",
        "/* hidden */ COMMIT",
        "/*!COMMIT*/",
        "START TRANSACTION",
        "BEGIN",
        "SET autocommit=0",
        "SET autocommit=1",
        "ROLLBACK",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    ] {
        expect_code(client.exec(sql, vec![]).await, ErrorCode::BadRequest);
        assert_eq!(
            count(&db, "t").await,
            0,
            "after {sql:?} the earlier insert is still uncommitted"
        );
    }
    // Still open, not aborted: more work runs inside it.
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the transaction is still open");
    client.rollback().await.expect("rollback");
    assert_eq!(count(&db, "t").await, 0, "rollback discarded both inserts");
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.transactions_committed, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wrapped_in_set_statement_is_refused_inside_a_transaction() {
    // MariaDB's `SET STATEMENT var=value FOR <statement>` runs <statement>: wrapped around a
    // COMMIT or a DDL it ends the open transaction like the bare statement would.
    let (db, _broker, client) = setup(
        "ops_txcontrol_set_statement",
        &["CREATE TABLE t (id INT PRIMARY KEY)"],
    )
    .await;
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("exec");
    let outcome = client
        .exec("SET STATEMENT max_statement_time=100 FOR COMMIT", vec![])
        .await;
    assert_eq!(
        count(&db, "t").await,
        0,
        "the open transaction was committed through exec (answer: {outcome:?})"
    );
    expect_code(outcome, ErrorCode::BadRequest);
    let outcome = client
        .exec(
            "SET STATEMENT max_statement_time=100 FOR CREATE TABLE x (id INT)",
            vec![],
        )
        .await;
    assert_eq!(
        count(&db, "t").await,
        0,
        "the open transaction was committed implicitly (answer: {outcome:?})"
    );
    expect_code(outcome, ErrorCode::BadRequest);
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the transaction is still open");
    client.rollback().await.expect("rollback");
    assert_eq!(count(&db, "t").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_inside_a_transaction_is_refused_and_the_transaction_stays_open() {
    let (db, _broker, client) =
        setup("ops_ddl_in_tx", &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("exec");
    for sql in [
        "CREATE TABLE x (id INT)",
        "create or replace table x (id INT)",
        "ALTER TABLE t ADD COLUMN z INT",
        "DROP TABLE t",
        "TRUNCATE TABLE t",
        "RENAME TABLE t TO t2",
        "CREATE INDEX i ON t (id)",
    ] {
        let error = expect_code(client.exec(sql, vec![]).await, ErrorCode::BadRequest);
        assert!(!error.retryable);
        assert_eq!(count(&db, "t").await, 0, "{sql:?} committed implicitly");
    }
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the transaction is still open");
    client.rollback().await.expect("rollback");
    assert_eq!(count(&db, "t").await, 0, "rollback discarded both inserts");
    assert!(!table_exists(&db, "x").await);
    assert!(table_exists(&db, "t").await);
    assert!(!table_exists(&db, "t2").await);

    // In a tx too, before anything runs.
    expect_code(
        client
            .tx()
            .exec("INSERT INTO t VALUES (3)", vec![])
            .exec("CREATE TABLE y (id INT)", vec![])
            .run()
            .await,
        ErrorCode::BadRequest,
    );
    assert_eq!(count(&db, "t").await, 0);
    assert!(!table_exists(&db, "y").await);

    // Outside a transaction DDL is allowed.
    client
        .exec("CREATE TABLE z (id INT)", vec![])
        .await
        .expect("DDL in autocommit mode");
    assert!(table_exists(&db, "z").await);
}

// ---------------------------------------------------------------------------------------
// Pipelining
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pipelined_requests_are_answered_in_order() {
    let (db, broker, _client) =
        setup("ops_pipeline_raw", &["CREATE TABLE p (id INT PRIMARY KEY)"]).await;
    let count_sql = "SELECT COUNT(*) AS n FROM p";
    let insert = |id: u64, n: i64| exec_req(id, "INSERT INTO p VALUES (?)", vec![Msgpack::from(n)]);
    let count_req = |id: u64| exec_req(id, count_sql, vec![]);
    // (request, expected error code or None for ok, expected count for count queries)
    let plan: Vec<(Msgpack, Option<&str>, Option<i64>)> = vec![
        (req(907, "ping", vec![]), None, None),
        (insert(3, 1), None, None),
        (count_req(u64::MAX), None, Some(1)),
        (req(55, "no_such_op", vec![]), Some("bad_request"), None),
        (
            req(
                0,
                "tx",
                vec![(
                    "statements",
                    Msgpack::Array(vec![statement("INSERT INTO p VALUES (2)")]),
                )],
            ),
            None,
            None,
        ),
        (count_req(12), None, Some(2)),
        (insert(11, 1), Some("sql"), None),
        (req(10, "stats", vec![]), None, None),
        (req(9, "begin", vec![]), None, None),
        (insert(8, 3), None, None),
        (req(7, "begin", vec![]), Some("tx_active"), None),
        (req(6, "rollback", vec![]), None, None),
        (count_req(5), None, Some(2)),
        (req(4, "commit", vec![]), Some("no_transaction"), None),
        (req(2, "exec", vec![]), Some("bad_request"), None),
        (req(1, "hello", vec![]), None, None),
        (
            req(
                100,
                "lock",
                vec![("locks", Msgpack::Array(vec![Msgpack::from("k")]))],
            ),
            Some("no_transaction"),
            None,
        ),
        (insert(101, 4), None, None),
        (count_req(102), None, Some(3)),
        (req(103, "ping", vec![]), None, None),
    ];
    assert_eq!(plan.len(), 20);

    let mut raw = RawConn::connect(broker.addr).await;
    let mut burst = Vec::new();
    for (request, _, _) in &plan {
        burst.extend_from_slice(&framed(request));
    }
    raw.send_bytes(&burst).await;

    for (index, (request, error, expected_count)) in plan.iter().enumerate() {
        let id = field(request, "id").and_then(Msgpack::as_u64).unwrap();
        let response = read_raw(&mut raw).await;
        match error {
            None => assert_raw_ok(&response, id),
            Some(code) => assert_raw_error(&response, Some(id), code),
        }
        if let Some(expected) = expected_count {
            let rows = field(field(&response, "result").expect("result"), "rows").unwrap();
            assert_eq!(
                rows,
                &Msgpack::Array(vec![Msgpack::Array(vec![Msgpack::from(*expected)])]),
                "answer {index} (id {id}) sees the effects of every earlier request and no later one"
            );
        }
    }
    assert_ping_works(&mut raw, 104).await;
    assert_eq!(count(&db, "p").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_keeps_several_requests_in_flight() {
    let (db, _broker, client) = setup(
        "ops_pipeline_client",
        &["CREATE TABLE p (id INT PRIMARY KEY)"],
    )
    .await;
    let exec = |sql: &str, params: Vec<Value>| Request::Exec(Statement::new(sql, params));
    let mut inserts = Vec::new();
    for n in 1..=10 {
        inserts.push(client.send(exec("INSERT INTO p VALUES (?)", vec![n.into()])));
    }
    let duplicate = client.send(exec("INSERT INTO p VALUES (?)", vec![5.into()]));
    let counted = client.send(exec("SELECT COUNT(*) FROM p", vec![]));
    let pinged = client.send(Request::Ping);
    let unknown_state = client.send(Request::Commit);

    // Awaited in reverse order: each answer still goes to its own request.
    match unknown_state.await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::NoTransaction),
        other => panic!("commit with none open: {other:?}"),
    }
    assert_eq!(pinged.await.expect("ping"), Reply::Done);
    match counted.await.expect("count") {
        Reply::Exec { result } => assert_eq!(int(&result.rows[0][0]), 10),
        other => panic!("unexpected {other:?}"),
    }
    let error = server_error(duplicate.await);
    assert_eq!(error.code, ErrorCode::Sql);
    assert_eq!(error.mysql_code, Some(1062));
    for insert in inserts.into_iter().rev() {
        match insert.await.expect("insert") {
            Reply::Exec { result } => assert_eq!(result.affected, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(count(&db, "p").await, 10);

    // Concurrent tasks sharing one client.
    let client = std::sync::Arc::new(client);
    let mut tasks = Vec::new();
    for n in 11..=20 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .exec("INSERT INTO p VALUES (?)", vec![n.into()])
                .await
                .map(|result| result.affected)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("insert"), 1);
    }
    assert_eq!(count(&db, "p").await, 20);
}

// ---------------------------------------------------------------------------------------
// Frames that are not requests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_messagepack_that_is_not_a_request_map_is_bad_request_with_id_nil() {
    let db = TestDb::create("ops_not_a_map").await;
    let broker = TestBroker::start(db.config());
    let mut raw = RawConn::connect(broker.addr).await;
    let not_maps = [
        Msgpack::Array(vec![Msgpack::from(1), Msgpack::from("ping")]),
        Msgpack::from(5),
        Msgpack::from("ping"),
        Msgpack::Nil,
        Msgpack::Boolean(true),
        Msgpack::Binary(vec![1, 2, 3]),
        // Maps whose id cannot be read.
        map(vec![("op", Msgpack::from("ping"))]),
        map(vec![
            ("id", Msgpack::from("7")),
            ("op", Msgpack::from("ping")),
        ]),
        map(vec![
            ("id", Msgpack::from(-1)),
            ("op", Msgpack::from("ping")),
        ]),
        Msgpack::Map(vec![(Msgpack::from(1), Msgpack::from("ping"))]),
    ];
    for (index, value) in not_maps.iter().enumerate() {
        let response = call_raw(&mut raw, value.clone()).await;
        assert_raw_error(&response, None, "bad_request");
        assert_ping_works(&mut raw, 500 + index as u64).await;
    }

    // Unknown keys are ignored, and a nil field counts as absent.
    let response = call_raw(
        &mut raw,
        req(
            600,
            "exec",
            vec![
                ("sql", Msgpack::from("SELECT 1")),
                ("params", Msgpack::Nil),
                ("future_field", map(vec![("x", Msgpack::from(1))])),
            ],
        ),
    )
    .await;
    assert_raw_ok(&response, 600);
    let response = call_raw(
        &mut raw,
        req(
            601,
            "tx",
            vec![
                ("statements", Msgpack::Array(vec![statement("SELECT 1")])),
                ("locks", Msgpack::Nil),
                ("isolation", Msgpack::Nil),
                ("read_only", Msgpack::Nil),
                ("retries", Msgpack::Nil),
            ],
        ),
    )
    .await;
    assert_raw_ok(&response, 601);
}
