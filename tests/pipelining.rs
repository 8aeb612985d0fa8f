//! Pipelining: many requests sent before any answer is read, raw on the wire and through the
//! Rust client (also from concurrent tasks sharing one client). Answers come in request order,
//! each seeing the effects of every earlier request and none of a later one.
//!
//! Every test has its own database (label `ops_*`) and its own broker, so rows and counters
//! are the test's alone; what the broker claims is checked directly in the database where
//! it matters.

mod common;

use common::answers::{int, server_error};
use common::raw::{
    assert_ping_works, assert_raw_error, assert_raw_ok, exec_req, field, framed, read_raw, req,
    statement, RawConn,
};
use common::setup;
use rmpv::Value as Msgpack;
use txbroker::client::ClientError;
use txbroker::error::ErrorCode;
use txbroker::protocol::{Reply, Request, Statement, Value};

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
    assert_eq!(db.count("p").await, 3);
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
    assert_eq!(db.count("p").await, 10);

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
    assert_eq!(db.count("p").await, 20);
}
