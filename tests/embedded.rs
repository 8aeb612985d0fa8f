//! The broker embedded in an actix application: no socket, no MessagePack, the same rules.

mod common;

use common::requests::{keys, with_keys};
use common::TestDb;
use txbroker::client::TxBuilder;
use txbroker::error::ErrorCode;
use txbroker::protocol::Value;
use txbroker::txn::TxState;
use txbroker::{Broker, Config};

async fn embedded(label: &str) -> (TestDb, Broker) {
    let db = TestDb::create_with(
        label,
        &[
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)",
            "INSERT INTO accounts VALUES (1, 100), (2, 100)",
        ],
    )
    .await;
    let broker = Broker::builder(Config {
        idle_tx_timeout_ms: 60_000,
        ..db.config()
    })
    .without_listener()
    .start()
    .await
    .expect("broker starts");
    (db, broker)
}

#[actix_rt::test]
async fn an_embedded_session_runs_transactions_with_declared_keys() {
    let (db, broker) = embedded("emb_tx").await;
    assert_eq!(broker.local_addr(), None);
    assert!(broker.acceptor().is_none());
    let mut session = broker.session();
    let outcome = session
        .tx(TxBuilder::new()
            .lock("accounts:1")
            .lock("accounts:2")
            .exec(
                "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                vec![10.into(), 1.into()],
            )
            .exec(
                "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                vec![10.into(), 2.into()],
            )
            .exec("SELECT SUM(balance) FROM accounts", vec![])
            .into_request())
        .await
        .expect("tx commits");
    assert_eq!(outcome.attempts, 1);
    assert_eq!(outcome.results[2].rows[0][0].as_str(), Some("200"));
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        90
    );
    let stats = session.stats().await.expect("stats");
    assert_eq!(
        (
            stats.sessions,
            stats.transactions_committed,
            stats.locks_held
        ),
        (1, 1, 0)
    );
    session.close().await;
    broker.shutdown().await;
}

#[actix_rt::test]
async fn embedded_sessions_contend_for_keys_and_keep_the_aborted_state() {
    let (db, broker) = embedded("emb_rules").await;
    let mut first = broker.session();
    let mut second = broker.session();
    first.begin(with_keys(&["b"])).await.expect("begin b");
    second.begin(with_keys(&["a"])).await.expect("begin a");
    let error = first
        .lock(keys(&["a"]))
        .await
        .expect_err("a is below b and taken");
    assert_eq!(error.code(), ErrorCode::LockConflict);
    assert!(error.is_retryable());
    assert!(matches!(first.state(), TxState::Aborted(_)));
    let error = first.exec("SELECT 1", vec![]).await.expect_err("aborted");
    assert_eq!(error.code(), ErrorCode::TxAborted);
    first.rollback().await.expect("rollback");
    assert_eq!(first.state(), &TxState::Idle);

    second
        .exec("UPDATE accounts SET balance = 0 WHERE id = 1", vec![])
        .await
        .expect("update");
    drop(second);
    // Dropping a session with an open transaction rolls it back and releases its key: the
    // next transaction on `a` waits for that, then sees the old balance.
    let outcome = broker
        .session()
        .tx(TxBuilder::new()
            .lock("a")
            .exec("SELECT balance FROM accounts WHERE id = 1", vec![])
            .into_request())
        .await
        .expect("a is free again");
    assert_eq!(outcome.results[0].rows, vec![vec![Value::Int(100)]]);
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
    broker.shutdown().await;
}

#[actix_rt::test]
async fn after_shutdown_starts_embedded_sessions_refuse_new_transactions() {
    let (_db, broker) = embedded("emb_shutdown").await;
    let mut session = broker.session();
    session.exec("SELECT 1", vec![]).await.expect("serving");
    broker.shutdown().await;
    let error = session
        .tx(TxBuilder::new().exec("SELECT 1", vec![]).into_request())
        .await
        .expect_err("draining");
    assert_eq!(error.code(), ErrorCode::ShuttingDown);
}
