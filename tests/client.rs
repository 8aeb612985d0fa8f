//! The Rust client's conveniences: interactive transactions that roll back when dropped, the
//! retry helper, and several requests in flight on one connection.

mod common;

use std::time::Duration;

use common::requests::with_keys;
use common::{stats_until, TestBroker, TestDb};
use txbroker::client::{retry, ClientError};
use txbroker::error::ErrorCode;
use txbroker::protocol::{Reply, Request, TxOptions, Value};
use txbroker::Config;

/// A database with one row to update: `t` (id 1, v 0).
async fn table(label: &str) -> TestDb {
    TestDb::create_with(
        label,
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)",
            "INSERT INTO t VALUES (1, 0)",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_without_commit_is_rolled_back() {
    let db = table("client_drop").await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    {
        let tx = client
            .transaction(with_keys(&["t:1"]))
            .await
            .expect("begin");
        tx.exec("UPDATE t SET v = 5 WHERE id = 1", vec![])
            .await
            .expect("update");
    }
    let row = client
        .exec("SELECT v FROM t WHERE id = 1", vec![])
        .await
        .expect("select");
    assert_eq!(
        row.rows,
        vec![vec![Value::Int(0)]],
        "rolled back, and the session is idle again"
    );
    assert_eq!(client.stats().await.expect("stats").locks_held, 0);

    let tx = client
        .transaction(TxOptions::default())
        .await
        .expect("begin");
    tx.exec("UPDATE t SET v = 6 WHERE id = 1", vec![])
        .await
        .expect("update");
    tx.commit().await.expect("commit");
    assert_eq!(db.scalar("SELECT v FROM t WHERE id = 1").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_a_transaction_again_after_a_retryable_error() {
    let db = table("client_retry").await;
    let broker = TestBroker::start(Config {
        lock_wait_timeout_ms: 100,
        ..db.config()
    });
    let holder = broker.client().await;
    let client = broker.client().await;
    let observer = broker.client().await;
    holder.begin(with_keys(&["t:1"])).await.expect("begin");
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let outcome = retry(50, || {
        let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == 1 {
            // Let go after the first lock_timeout, so the next attempt gets the key.
            drop(holder.send(Request::Rollback));
        }
        client
            .tx()
            .lock("t:1")
            .exec("UPDATE t SET v = v + 1 WHERE id = 1", vec![])
            .run()
    })
    .await
    .expect("succeeds once the key is free");
    assert_eq!(outcome.attempts, 1);
    assert!(attempts.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert!(observer.stats().await.expect("stats").lock_timeouts >= 1);

    let error = retry(3, || client.tx().exec("SELEC 1", vec![]).run())
        .await
        .expect_err("a syntax error is not retried");
    assert_eq!(error.code(), Some(ErrorCode::Sql));
    assert!(matches!(error, ClientError::Server(_)));
    stats_until(&observer, "nothing held", |s| s.locks_held == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_requests_are_in_flight_on_one_connection() {
    let db = table("client_pipeline").await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let answers: Vec<_> = (0..50)
        .map(|n| {
            client.send(Request::Exec(txbroker::protocol::Statement::new(
                "SELECT ?",
                vec![Value::from(n)],
            )))
        })
        .collect();
    let replies = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(answers),
    )
    .await
    .expect("all answered");
    for (n, reply) in replies.into_iter().enumerate() {
        let Reply::Exec { result } = reply.expect("exec") else {
            panic!("exec reply expected");
        };
        assert_eq!(result.rows[0][0].as_i64(), Some(n as i64));
    }
}
