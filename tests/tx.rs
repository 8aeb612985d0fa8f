//! The `tx` operation: the shape of its results (through the Rust client and on the wire),
//! read-only transactions, a one-write `tx` run as one autocommit statement (unless
//! `single_write_autocommit = false`), isolation levels, and a failing statement named by its
//! index with the statements before it rolled back.
//!
//! Every test has its own database (label `ops_*`) and its own broker, so rows and counters
//! are the test's alone; what the broker claims is checked directly in the database where
//! it matters.

mod common;

use common::answers::{expect_code, int, text};
use common::raw::{assert_raw_ok, call_raw, field, req, statement, RawConn};
use common::{setup, TestBroker, TestDb};
use mysql_async::prelude::Queryable;
use rmpv::Value as Msgpack;
use txbroker::error::ErrorCode;
use txbroker::protocol::{Isolation, TxOptions};
use txbroker::Config;

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
    assert_eq!(db.count("auto").await, 2);
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
    assert_eq!(db.count("t").await, 1, "the write did not happen");

    // read_only does not stick to the session.
    client
        .tx()
        .exec("INSERT INTO t VALUES (3)", vec![])
        .run()
        .await
        .expect("a read-write tx after a read-only one");
    assert_eq!(db.count("t").await, 2);
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
    assert_eq!(db.count("probe").await, 4);
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
        db.count("t").await,
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
    assert_eq!(db.count("t").await, 0, "statement 0 was rolled back");

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
        db.count("t").await,
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
    assert_eq!(db.count("t").await, 1);
}
