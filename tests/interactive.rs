//! Interactive transactions (`begin`, `exec`, `lock`, `commit`, `rollback`) and autocommit
//! `exec`: what is committed when, an SQL error that leaves the transaction open, and the
//! state errors (`no_transaction`, `tx_active`) that touch nothing.
//!
//! Every test has its own database (label `ops_*`) and its own broker, so rows and counters
//! are the test's alone; what the broker claims is checked directly in the database where
//! it matters.

mod common;

use common::answers::{expect_code, int};
use common::requests::{keys, with_keys};
use common::setup;
use txbroker::error::ErrorCode;
use txbroker::locks::LockRequest;
use txbroker::protocol::TxOptions;

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
    assert_eq!(db.count("t").await, 0, "not visible before commit");
    client.commit().await.expect("commit");
    assert_eq!(db.count("t").await, 1, "visible after commit");
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
    client.begin(with_keys(&["t:1"])).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("exec");
    assert_eq!(client.stats().await.expect("stats").locks_held, 1);
    client.rollback().await.expect("rollback");
    assert_eq!(db.count("t").await, 0);
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.locks_held, 0, "{stats:?}");
    assert_eq!(stats.transactions_rolled_back, 1, "{stats:?}");
    assert_eq!(stats.transactions_committed, 0, "{stats:?}");
    // The transaction is over: commit has nothing to commit.
    expect_code(client.commit().await, ErrorCode::NoTransaction);
    assert_eq!(db.count("t").await, 0);
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
    assert_eq!(db.count("t").await, 1, "committed at once");
    // A failing autocommit statement takes nothing with it.
    expect_code(
        client
            .exec("INSERT INTO t (id, v) VALUES (1, 2)", vec![])
            .await,
        ErrorCode::Sql,
    );
    assert_eq!(db.count("t").await, 1);
    // No transaction was left open by either.
    expect_code(client.commit().await, ErrorCode::NoTransaction);
    client.begin(TxOptions::default()).await.expect("begin");
    client.rollback().await.expect("rollback");
    assert_eq!(db.count("t").await, 1);
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
    assert_eq!(db.count("t").await, 0, "nothing committed by the errors");
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the transaction is still open and usable");
    client.commit().await.expect("commit");
    assert_eq!(db.count("t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_state_errors() {
    let (db, _broker, client) =
        setup("ops_state_errors", &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;

    let error = expect_code(client.commit().await, ErrorCode::NoTransaction);
    assert!(!error.retryable);
    expect_code(client.lock(keys(&["k"])).await, ErrorCode::NoTransaction);
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
    assert_eq!(db.count("t").await, 0);
    client.commit().await.expect("commit");
    assert_eq!(db.count("t").await, 2, "rows 1 and 3, never 2");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM t WHERE id IN (1, 3)").await,
        2
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM t WHERE id = 2").await, 0);

    // Inside a transaction `lock` works, then the state is clean again after commit.
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .lock(keys(&["k"]))
        .await
        .expect("lock inside a transaction");
    assert_eq!(client.stats().await.expect("stats").locks_held, 1);
    client.rollback().await.expect("rollback");
    assert_eq!(client.stats().await.expect("stats").locks_held, 0);
    expect_code(client.commit().await, ErrorCode::NoTransaction);
}
