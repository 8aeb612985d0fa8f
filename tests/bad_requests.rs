//! `bad_request`: requests the broker refuses before anything reaches the database (bad or
//! missing fields, keys past the limits, wrong parameter counts, multi-statement SQL, valid
//! MessagePack that is not a request map). The answer echoes the id when it can be read (nil
//! otherwise), the connection stays open and in sync, and an open transaction stays open.
//!
//! Every test has its own database (label `ops_*`) and its own broker, so rows and counters
//! are the test's alone; what the broker claims is checked directly in the database where
//! it matters.

mod common;

use std::fmt::Debug;

use common::answers::{expect_code, server_error};
use common::raw::{
    assert_ping_works, assert_raw_error, assert_raw_ok, call_raw, exec_req, field, map, req,
    statement, RawConn,
};
use common::{setup, TestBroker, TestDb};
use rmpv::Value as Msgpack;
use txbroker::client::ClientError;
use txbroker::error::ErrorCode;
use txbroker::protocol::TxOptions;

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
    assert_eq!(db.count("t").await, 0);
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
    assert_eq!(db.count("t").await, 0, "still uncommitted");
    assert_raw_ok(&call_raw(&mut raw, req(8, "commit", vec![])).await, 8);
    assert_eq!(db.count("t").await, 2);
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
    assert_eq!(db.count("t").await, 1);

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
    assert_eq!(db.count("t").await, 0, "no part of any multi-statement ran");
}

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
