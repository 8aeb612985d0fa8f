//! Transaction control and DDL sent as SQL through `exec` or `tx` (`COMMIT`, `BEGIN`,
//! `SET autocommit`, `SET STATEMENT ... FOR COMMIT`, `CREATE TABLE`, ...): refused with
//! `bad_request` before it runs, so that it can neither end nor reconfigure the transaction the
//! broker tracks, which stays open; DDL outside a transaction is allowed.
//!
//! Every test has its own database (label `ops_*`) and its own broker, so rows and counters
//! are the test's alone; what the broker claims is checked directly in the database where
//! it matters.

mod common;

use common::answers::expect_code;
use common::setup;
use txbroker::error::ErrorCode;
use txbroker::protocol::TxOptions;

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
    assert_eq!(db.count("t").await, 1, "autocommit was not turned off");
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
    assert_eq!(db.count("t").await, 1);
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
            db.count("t").await,
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
    assert_eq!(db.count("t").await, 0, "rollback discarded both inserts");
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
        db.count("t").await,
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
        db.count("t").await,
        0,
        "the open transaction was committed implicitly (answer: {outcome:?})"
    );
    expect_code(outcome, ErrorCode::BadRequest);
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the transaction is still open");
    client.rollback().await.expect("rollback");
    assert_eq!(db.count("t").await, 0);
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
        assert_eq!(db.count("t").await, 0, "{sql:?} committed implicitly");
    }
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the transaction is still open");
    client.rollback().await.expect("rollback");
    assert_eq!(db.count("t").await, 0, "rollback discarded both inserts");
    assert!(!db.table_exists("x").await);
    assert!(db.table_exists("t").await);
    assert!(!db.table_exists("t2").await);

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
    assert_eq!(db.count("t").await, 0);
    assert!(!db.table_exists("y").await);

    // Outside a transaction DDL is allowed.
    client
        .exec("CREATE TABLE z (id INT)", vec![])
        .await
        .expect("DDL in autocommit mode");
    assert!(db.table_exists("z").await);
}
