//! Keys, waits, aborts and retries, with several clients and real contention: the promises
//! that only show when transactions meet.

mod common;

use std::time::Duration;

use common::answers::{expect_code, server_error};
use common::raw::{req, statement, RawConn};
use common::requests::{keys, with_keys};
use common::{
    bank, begin_and_update_account, eventually, stats_until, TestBroker, TestDb, PATIENCE,
};
use mysql_async::prelude::Queryable;
use txbroker::client::{Client, ClientError, TxBuilder};
use txbroker::error::ErrorCode;
use txbroker::protocol::{Reply, Request, Statement, TxOptions, Value};
use txbroker::Config;

/// A database with `rows` accounts of balance 100.
async fn accounts(label: &str, rows: u32) -> TestDb {
    bank(label, rows, 100).await
}

const ROW_2_UPDATE: &str = "UPDATE accounts SET balance = balance + 5 WHERE id = 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_waits_for_the_key_then_runs_after_the_first() {
    let db = accounts("cc_wait", 1).await;
    let broker = TestBroker::start(db.config());
    let first = broker.client().await;
    let second = broker.client().await;
    let observer = broker.client().await;

    begin_and_update_account(&first, 1, "balance = balance + 1").await;
    let waiting = second.send(Request::Tx(
        TxBuilder::new()
            .lock("accounts:1")
            .exec(
                "UPDATE accounts SET balance = balance * 2 WHERE id = 1",
                vec![],
            )
            .exec("SELECT balance FROM accounts WHERE id = 1", vec![])
            .into_request(),
    ));
    let waiting = tokio::spawn(waiting);
    stats_until(
        &observer,
        "the second client waits in the coordinator",
        |s| s.lock_waiters == 1,
    )
    .await;
    assert!(
        !waiting.is_finished(),
        "the second transaction must wait for the key"
    );

    first.commit().await.expect("commit");
    let reply = waiting.await.expect("task").expect("second tx commits");
    let Reply::Tx { results, attempts } = reply else {
        panic!("expected tx reply, got {reply:?}");
    };
    assert_eq!(attempts, 1);
    assert_eq!(
        results[1].rows,
        vec![vec![Value::Int(202)]],
        "ran after the first committed"
    );
    let stats = stats_until(&observer, "every key is released", |s| s.locks_held == 0).await;
    assert!(stats.lock_waits >= 1);
    assert_eq!(stats.deadlocks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_transaction_loses_its_writes_and_keys() {
    let db = accounts("cc_disconnect", 1).await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    {
        let leaver = broker.client().await;
        begin_and_update_account(&leaver, 1, "balance = 0").await;
        stats_until(&observer, "the leaver holds its key", |s| s.locks_held == 1).await;
    }
    stats_until(&observer, "the session ended and released its key", |s| {
        s.locks_held == 0 && s.sessions == 1
    })
    .await;
    let outcome = observer
        .tx()
        .lock("accounts:1")
        .exec("SELECT balance FROM accounts WHERE id = 1", vec![])
        .run()
        .await
        .expect("the key is free");
    assert_eq!(
        outcome.results[0].rows,
        vec![vec![Value::Int(100)]],
        "write rolled back"
    );
    assert!(
        observer
            .stats()
            .await
            .expect("stats")
            .transactions_rolled_back
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_waiting_leaves_the_queue() {
    let db = accounts("cc_wait_leave", 1).await;
    let broker = TestBroker::start(db.config());
    let holder = broker.client().await;
    let observer = broker.client().await;
    holder.begin(with_keys(&["k"])).await.expect("begin");
    {
        let waiter = broker.client().await;
        let pending = waiter.send(Request::Begin(with_keys(&["k"])));
        stats_until(&observer, "the waiter is queued", |s| s.lock_waiters == 1).await;
        drop(pending);
    }
    stats_until(&observer, "the waiter left the queue", |s| {
        s.lock_waiters == 0 && s.sessions == 2
    })
    .await;
    holder.commit().await.expect("commit");
    stats_until(&observer, "nothing is held", |s| s.locks_held == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_aborted_and_answers_tx_aborted_until_rollback() {
    let db = accounts("cc_idle", 1).await;
    let broker = TestBroker::start(Config {
        idle_tx_timeout_ms: 200,
        ..db.config()
    });
    let client = broker.client().await;
    let observer = broker.client().await;
    begin_and_update_account(&client, 1, "balance = 7").await;
    stats_until(&observer, "the idle transaction's key is released", |s| {
        s.locks_held == 0
    })
    .await;

    let error = client.exec("SELECT 1", vec![]).await.expect_err("aborted");
    assert_eq!(error.code(), Some(ErrorCode::TxAborted));
    assert!(error.to_string().contains("idle"), "reason named: {error}");
    expect_code(client.commit().await, ErrorCode::TxAborted);
    client
        .rollback()
        .await
        .expect("rollback clears the aborted state");
    client
        .exec("SELECT 1", vec![])
        .await
        .expect("autocommit works again");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_order_lock_conflict_aborts_and_releases_everything() {
    let db = accounts("cc_conflict", 2).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let other = broker.client().await;
    let observer = broker.client().await;
    client.begin(with_keys(&["b"])).await.expect("begin b");
    other.begin(with_keys(&["a"])).await.expect("begin a");

    let error = client
        .lock(keys(&["a"]))
        .await
        .expect_err("a is taken and below b");
    assert_eq!(error.code(), Some(ErrorCode::LockConflict));
    assert!(error.is_retryable());
    stats_until(&observer, "b was released by the abort", |s| {
        s.locks_held == 1
    })
    .await;

    expect_code(client.exec("SELECT 1", vec![]).await, ErrorCode::TxAborted);
    expect_code(client.lock(keys(&["z"])).await, ErrorCode::TxAborted);
    expect_code(client.commit().await, ErrorCode::TxAborted);
    expect_code(
        client.begin(TxOptions::default()).await,
        ErrorCode::TxAborted,
    );
    expect_code(
        client.tx().exec("SELECT 1", vec![]).run().await,
        ErrorCode::TxAborted,
    );
    client.ping().await.expect("ping works while aborted");
    client.stats().await.expect("stats works while aborted");
    client.rollback().await.expect("rollback");
    client
        .begin(with_keys(&["b"]))
        .await
        .expect("a new transaction may start");
    client.rollback().await.expect("rollback");
    other.rollback().await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greater_key_is_waited_for_inside_a_transaction() {
    let db = accounts("cc_extend", 1).await;
    let broker = TestBroker::start(db.config());
    let holder = broker.client().await;
    let extender = broker.client().await;
    let observer = broker.client().await;
    holder.begin(with_keys(&["b"])).await.expect("begin b");
    extender.begin(with_keys(&["a"])).await.expect("begin a");
    let lock = tokio::spawn(extender.send(Request::Lock(keys(&["b"]))));
    stats_until(&observer, "the extension waits", |s| s.lock_waiters == 1).await;
    holder.commit().await.expect("commit");
    lock.await
        .expect("task")
        .expect("b granted after the holder committed");
    extender.commit().await.expect("commit");
    stats_until(&observer, "nothing is held", |s| s.locks_held == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_not_granted_in_time_is_lock_timeout_and_releases_the_lower_keys() {
    let db = accounts("cc_lock_timeout", 1).await;
    let broker = TestBroker::start(Config {
        lock_wait_timeout_ms: 200,
        ..db.config()
    });
    let holder = broker.client().await;
    let waiter = broker.client().await;
    let observer = broker.client().await;
    holder.begin(with_keys(&["k"])).await.expect("begin");
    let error = waiter
        .tx()
        .lock("j")
        .lock("k")
        .exec("SELECT 1", vec![])
        .run()
        .await
        .expect_err("k stays taken");
    assert_eq!(error.code(), Some(ErrorCode::LockTimeout));
    assert!(error.is_retryable());
    let stats = observer.stats().await.expect("stats");
    assert_eq!(stats.lock_timeouts, 1);
    assert_eq!(stats.locks_held, 1, "only the holder's key; j was released");
    observer
        .tx()
        .lock("j")
        .exec("SELECT 1", vec![])
        .run()
        .await
        .expect("j is free");
    // A failed begin leaves nothing open.
    expect_code(
        waiter.begin(with_keys(&["k"])).await,
        ErrorCode::LockTimeout,
    );
    expect_code(waiter.commit().await, ErrorCode::NoTransaction);
    holder.rollback().await.expect("rollback");
}

/// A transaction that declares no keys runs into a database deadlock it cannot avoid; the
/// broker rolls back and runs it again, and it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_deadlock_in_tx_is_retried_to_success() {
    let db = accounts("cc_deadlock_retry", 200).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let heavy = db.heavy_transaction_holding_row_2().await;

    let tx = tokio::spawn(
        client.send(Request::Tx(
            TxBuilder::new()
                .retries(3)
                .exec(
                    "UPDATE accounts SET balance = balance - 5 WHERE id = 1",
                    vec![],
                )
                .exec(ROW_2_UPDATE, vec![])
                .into_request(),
        )),
    );
    db.blocked_on_row_lock(ROW_2_UPDATE).await;
    common::close_the_deadlock_and_commit(heavy).await;

    let reply = tx
        .await
        .expect("task")
        .expect("the broker's tx commits after a retry");
    let Reply::Tx { attempts, .. } = reply else {
        panic!("expected tx reply, got {reply:?}");
    };
    assert_eq!(attempts, 2);
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.deadlocks, 1);
    assert_eq!(stats.retries, 1);
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100 + 1 - 5
    );
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 2").await,
        100 + 1 + 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_deadlock_inside_an_interactive_transaction_aborts_it() {
    let db = accounts("cc_deadlock_interactive", 200).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec(
            "UPDATE accounts SET balance = balance - 5 WHERE id = 1",
            vec![],
        )
        .await
        .expect("row 1");
    let heavy = db.heavy_transaction_holding_row_2().await;
    let blocked = tokio::spawn(client.send(Request::Exec(Statement::new(ROW_2_UPDATE, vec![]))));
    db.blocked_on_row_lock(ROW_2_UPDATE).await;
    common::close_the_deadlock_and_commit(heavy).await;

    let error = blocked.await.expect("task").expect_err("deadlock victim");
    assert_eq!(error.code(), Some(ErrorCode::Deadlock));
    assert!(error.is_retryable());
    let ClientError::Server(reply) = &error else {
        panic!("server error expected");
    };
    assert_eq!(reply.mysql_code, Some(1213));
    expect_code(client.commit().await, ErrorCode::TxAborted);
    client.rollback().await.expect("rollback");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        101
    );
    assert_eq!(client.stats().await.expect("stats").deadlocks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lock_wait_timeout_is_retried_in_tx_and_aborts_interactive() {
    let db = accounts("cc_db_lock_timeout", 1).await;
    let broker = TestBroker::start(Config {
        innodb_lock_wait_timeout_s: 1,
        ..db.config()
    });
    let client = broker.client().await;
    let mut holder = db.conn().await;
    holder.query_drop("START TRANSACTION").await.expect("begin");
    holder
        .query_drop("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await
        .expect("hold row 1");

    let error = client
        .tx()
        .retries(1)
        .exec("UPDATE accounts SET balance = 1 WHERE id = 1", vec![])
        .run()
        .await
        .expect_err("row 1 stays locked");
    assert_eq!(error.code(), Some(ErrorCode::DbLockTimeout));
    assert!(error.is_retryable());
    let ClientError::Server(reply) = &error else {
        panic!("server error expected");
    };
    assert_eq!((reply.mysql_code, reply.statement), (Some(1205), Some(0)));
    assert_eq!(client.stats().await.expect("stats").retries, 1);

    client.begin(TxOptions::default()).await.expect("begin");
    client
        .exec("INSERT INTO accounts VALUES (2, 5)", vec![])
        .await
        .expect("insert");
    let error = client
        .exec("UPDATE accounts SET balance = 1 WHERE id = 1", vec![])
        .await
        .expect_err("lock wait timeout");
    assert_eq!(error.code(), Some(ErrorCode::DbLockTimeout));
    // 1205 rolls back only the statement in MariaDB; the broker must roll back the rest.
    expect_code(client.exec("SELECT 1", vec![]).await, ErrorCode::TxAborted);
    client.rollback().await.expect("rollback");
    holder.query_drop("ROLLBACK").await.expect("rollback");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM accounts").await,
        1,
        "insert rolled back"
    );
}

async fn connection_id(client: &Client) -> i64 {
    let result = client
        .exec("SELECT CONNECTION_ID()", vec![])
        .await
        .expect("connection id");
    result.rows[0][0].as_i64().expect("integer id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_before_commit_answers_commit_unknown_and_the_session_recovers() {
    let db = accounts("cc_commit_unknown", 1).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    begin_and_update_account(&client, 1, "balance = 0").await;
    let id = connection_id(&client).await;
    db.run(&[&format!("KILL CONNECTION {id}")]).await;
    let error = client.commit().await.expect_err("connection is gone");
    assert_eq!(error.code(), Some(ErrorCode::CommitUnknown));
    assert!(!error.is_retryable());
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
    assert_eq!(client.stats().await.expect("stats").locks_held, 0);
    let outcome = client
        .tx()
        .exec("SELECT CONNECTION_ID()", vec![])
        .run()
        .await
        .expect("the session reconnects");
    assert_ne!(outcome.results[0].rows[0][0].as_i64(), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_write_tx_whose_connection_dies_under_it_answers_commit_unknown() {
    let db = accounts("cc_single_write_lost", 1).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let slow_write = "UPDATE accounts SET balance = 7 + SLEEP(30) WHERE id = 1";
    let killer = async {
        let id = db.running("the write is running", slow_write).await;
        db.run(&[&format!("KILL CONNECTION {id}")]).await;
    };
    let (outcome, ()) = tokio::join!(
        client
            .tx()
            .lock("accounts:1")
            .exec(slow_write, vec![])
            .run(),
        killer
    );
    let error = outcome.expect_err("the connection was killed");
    assert_eq!(error.code(), Some(ErrorCode::CommitUnknown), "{error}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("autocommit"), "{error}");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100,
        "killed before it finished, so InnoDB rolled it back"
    );
    assert_eq!(client.stats().await.expect("stats").locks_held, 0);
    client
        .tx()
        .exec("UPDATE accounts SET balance = 8 WHERE id = 1", vec![])
        .run()
        .await
        .expect("the session reconnects");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_write_tx_on_a_connection_that_died_while_idle_runs_on_a_fresh_one() {
    let db = accounts("cc_single_write_idle", 1).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let write = |balance: i64| {
        client
            .tx()
            .exec(
                "UPDATE accounts SET balance = ? WHERE id = 1",
                vec![Value::Int(balance)],
            )
            .run()
    };
    // The statement is now prepared on the connection, so sending it again needs no prepare
    // round trip that would notice a dead connection.
    write(1).await.expect("first write");
    let id = connection_id(&client).await;
    db.run(&[&format!("KILL CONNECTION {id}")]).await;
    // The broker pings a connection idle for over 50 ms before a statement that carries its
    // own commit; being idle that long is the condition under test.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let outcome = write(2)
        .await
        .expect("the dead connection is replaced, not answered commit_unknown");
    assert_eq!(outcome.attempts, 1);
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        2
    );
    assert_ne!(connection_id(&client).await, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_idle_connection_is_replaced_on_the_next_transaction() {
    let db = accounts("cc_reconnect", 1).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let id = connection_id(&client).await;
    db.run(&[&format!("KILL CONNECTION {id}")]).await;
    client
        .tx()
        .exec("UPDATE accounts SET balance = 1 WHERE id = 1", vec![])
        .run()
        .await
        .expect("a fresh connection runs the tx");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        1
    );

    // An autocommit statement on a connection killed a moment ago: it cannot have run, so
    // the session reconnects and runs it instead of answering commit_unknown.
    let id = connection_id(&client).await;
    db.run(&[&format!("KILL CONNECTION {id}")]).await;
    client
        .exec("UPDATE accounts SET balance = 2 WHERE id = 1", vec![])
        .await
        .expect("a fresh connection runs the statement");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_answers_db_unavailable_and_the_broker_keeps_serving() {
    let broker = TestBroker::start(Config {
        listen: "127.0.0.1:0".into(),
        database_url: "mysql://root@127.0.0.1:1/test?prefer_socket=false".into(),
        session_threads: 1,
        ..Config::default()
    });
    let client = broker.client().await;
    client.hello(None).await.expect("hello needs no database");
    let error = client
        .tx()
        .exec("SELECT 1", vec![])
        .run()
        .await
        .expect_err("no database");
    assert_eq!(error.code(), Some(ErrorCode::DbUnavailable));
    assert!(error.is_retryable());
    expect_code(
        client.begin(with_keys(&["k"])).await,
        ErrorCode::DbUnavailable,
    );
    assert_eq!(
        server_error(client.commit().await).code,
        ErrorCode::NoTransaction,
        "begin left nothing open"
    );
    expect_code(
        client.exec("SELECT 1", vec![]).await,
        ErrorCode::DbUnavailable,
    );
    let stats = client.stats().await.expect("stats");
    assert_eq!((stats.locks_held, stats.lock_waiters), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_open_transactions_finish_and_refuses_new_ones() {
    let db = accounts("cc_shutdown_finish", 1).await;
    let mut broker = TestBroker::start(Config {
        shutdown_grace_ms: 20_000,
        ..db.config()
    });
    let open = broker.client().await;
    let idle = broker.client().await;
    begin_and_update_account(&open, 1, "balance = 55").await;
    broker.begin_shutdown();
    eventually("new transactions are refused", PATIENCE, || async {
        match idle.tx().exec("SELECT 1", vec![]).run().await {
            Err(error) => {
                assert_eq!(error.code(), Some(ErrorCode::ShuttingDown));
                assert!(error.is_retryable());
                true
            }
            Ok(_) => false,
        }
    })
    .await;
    open.exec(
        "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
        vec![],
    )
    .await
    .expect("statements inside the open transaction go on");
    open.commit().await.expect("commit");
    broker.shutdown();
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        56
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_rolls_back_what_is_still_open_after_the_grace() {
    let db = accounts("cc_shutdown_grace", 1).await;
    let broker = TestBroker::start(Config {
        shutdown_grace_ms: 200,
        ..db.config()
    });
    let open = broker.client().await;
    begin_and_update_account(&open, 1, "balance = 0").await;
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || broker.shutdown())
        .await
        .expect("shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain is bounded by the grace"
    );
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
    assert!(open.ping().await.is_err(), "the connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_right_after_sending_never_waits_or_runs() {
    let db = accounts("cc_hangup_at_once", 1).await;
    let broker = TestBroker::start(Config {
        lock_wait_timeout_ms: 120_000,
        ..db.config()
    });
    let holder = broker.client().await;
    let observer = broker.client().await;
    holder
        .begin(with_keys(&["accounts:1"]))
        .await
        .expect("begin");
    {
        let mut raw = RawConn::connect(broker.addr).await;
        let tx = req(
            1,
            "tx",
            vec![
                ("locks", rmpv::Value::Array(vec!["accounts:1".into()])),
                (
                    "statements",
                    rmpv::Value::Array(vec![statement(
                        "UPDATE accounts SET balance = 0 WHERE id = 1",
                    )]),
                ),
            ],
        );
        raw.send_value(&tx).await;
    }
    stats_until(
        &observer,
        "the hung-up session is gone and waits for nothing",
        |s| s.sessions == 2 && s.lock_waiters == 0,
    )
    .await;
    holder.commit().await.expect("commit");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_max_tx_duration_is_killed_and_answered_tx_aborted() {
    let db = accounts("cc_max_duration", 1).await;
    let broker = TestBroker::start(Config {
        max_tx_duration_ms: 400,
        ..db.config()
    });
    let client = broker.client().await;
    let observer = broker.client().await;

    // A statement still running at the deadline is killed.
    begin_and_update_account(&client, 1, "balance = 1").await;
    let started = std::time::Instant::now();
    let error = client
        .exec("SELECT SLEEP(30)", vec![])
        .await
        .expect_err("killed at the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "killed, not waited out"
    );
    assert_eq!(error.code(), Some(ErrorCode::TxAborted));
    assert!(error.to_string().contains("max_tx_duration_ms"), "{error}");
    expect_code(client.commit().await, ErrorCode::TxAborted);
    client.rollback().await.expect("rollback");
    assert_eq!(observer.stats().await.expect("stats").locks_held, 0);
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100
    );

    // A whole tx is bounded too, and the session carries on afterwards.
    let error = client
        .tx()
        .lock("accounts:1")
        .exec("UPDATE accounts SET balance = 2 WHERE id = 1", vec![])
        .exec("SELECT SLEEP(30)", vec![])
        .run()
        .await
        .expect_err("killed at the deadline");
    assert_eq!(error.code(), Some(ErrorCode::TxAborted));
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
    client
        .exec("SELECT 1", vec![])
        .await
        .expect("the session reconnects");

    // An open transaction that goes quiet is ended at its deadline, not at the idle timeout.
    client
        .begin(with_keys(&["accounts:1"]))
        .await
        .expect("begin");
    stats_until(&observer, "the quiet transaction's key is released", |s| {
        s.locks_held == 0
    })
    .await;
    let error = client.exec("SELECT 1", vec![]).await.expect_err("aborted");
    assert!(error.to_string().contains("max_tx_duration_ms"), "{error}");
    client.rollback().await.expect("rollback");
    // Transactions that finish in time are untouched.
    client
        .tx()
        .lock("accounts:1")
        .exec("UPDATE accounts SET balance = 3 WHERE id = 1", vec![])
        .run()
        .await
        .expect("a quick tx commits");
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        3
    );
}
