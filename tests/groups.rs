//! Group execution (protocol 1.1) against the real database: requests queued on a key that a
//! session holds run in one database transaction, each between savepoints, with one COMMIT.
//! Each test makes a group form on purpose: a client holds the key in an interactive
//! transaction, the requests queue behind it (seen in `stats`), and the holder lets go.

mod common;
mod private_mariadb;

use common::answers::{expect_code, server_error};
use common::raw::{req, statement, RawConn};
use common::requests::with_keys;
use common::{answered, close_the_deadlock_and_commit, setup, stats_until, TestBroker, TestDb};
use mysql_async::prelude::Queryable;
use tokio::task::JoinHandle;
use txbroker::client::{Client, ClientError, TxBuilder, TxOutcome};
use txbroker::error::ErrorCode;
use txbroker::protocol::{Isolation, Stats, TxRequest, Value};

const KEY: &str = "hot:1";

/// Holds `KEY` in an interactive transaction on a client of its own: requests for it queue.
async fn hold_key(broker: &TestBroker) -> Client {
    let holder = broker.client().await;
    holder.begin(with_keys(&[KEY])).await.expect("begin");
    holder
}

/// A `tx` that declares `KEY` and runs `statements` (no parameters).
fn tx_on_key(statements: &[&str]) -> TxRequest {
    statements
        .iter()
        .fold(TxBuilder::new().lock(KEY), |tx, sql| tx.exec(*sql, vec![]))
        .into_request()
}

/// Sends `tx` from a client of its own and waits until it is queued in the broker (the
/// number of waiters reaches `waiters`), so that requests queue in the order they are sent.
async fn queue(
    broker: &TestBroker,
    observer: &Client,
    tx: TxRequest,
    waiters: u64,
) -> JoinHandle<Result<TxOutcome, ClientError>> {
    let sent = broker.send_tx(tx).await;
    stats_until(observer, "the request is queued", |s| {
        s.lock_waiters == waiters
    })
    .await;
    sent
}

fn grouped_since(before: &Stats, after: &Stats) -> (u64, u64) {
    (
        after.groups_committed - before.groups_committed,
        after.transactions_grouped - before.transactions_grouped,
    )
}

#[actix_rt::test]
async fn a_failing_member_is_absent_and_the_rest_of_its_group_commits() {
    let (db, broker, observer) = setup(
        "group_failing_member",
        &["CREATE TABLE t (id INT PRIMARY KEY, who VARCHAR(16) NOT NULL) ENGINE=InnoDB"],
    )
    .await;
    let holder = hold_key(&broker).await;
    let before = observer.stats().await.expect("stats");
    let leader = queue(
        &broker,
        &observer,
        tx_on_key(&[
            "INSERT INTO t VALUES (1, 'leader')",
            "INSERT INTO t VALUES (2, 'leader')",
        ]),
        1,
    )
    .await;
    let first = queue(
        &broker,
        &observer,
        tx_on_key(&["INSERT INTO t VALUES (3, 'first')"]),
        2,
    )
    .await;
    // Its second statement hits the leader's row: rolled back to its savepoint, it is absent.
    let failing = queue(
        &broker,
        &observer,
        tx_on_key(&[
            "INSERT INTO t VALUES (4, 'failing')",
            "INSERT INTO t VALUES (1, 'failing')",
        ]),
        3,
    )
    .await;
    let last = queue(
        &broker,
        &observer,
        tx_on_key(&[
            "INSERT INTO t VALUES (5, 'last')",
            "INSERT INTO t VALUES (6, 'last')",
        ]),
        4,
    )
    .await;
    holder.rollback().await.expect("let go of the key");

    for sent in [leader, first, last] {
        assert_eq!(answered(sent).await.expect("committed").attempts, 1);
    }
    let error = server_error(answered(failing).await);
    assert_eq!(error.code, ErrorCode::Sql);
    assert_eq!((error.mysql_code, error.statement), (Some(1062), Some(1)));
    let rows: Vec<(i32, String)> = db
        .conn()
        .await
        .query("SELECT id, who FROM t ORDER BY id")
        .await
        .expect("rows");
    assert_eq!(
        rows,
        [
            (1, "leader"),
            (2, "leader"),
            (3, "first"),
            (5, "last"),
            (6, "last")
        ]
        .map(|(id, who)| (id, who.to_string()))
    );
    let after = stats_until(&observer, "every key is released", |s| s.locks_held == 0).await;
    assert_eq!(
        grouped_since(&before, &after),
        (1, 3),
        "one group of three committed"
    );
}

#[actix_rt::test]
async fn a_deadlock_in_a_group_reruns_every_request_that_had_run() {
    let (db, broker, observer) = setup(
        "group_deadlock",
        &[
            "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
            "INSERT INTO accounts SELECT seq, 0 FROM seq_1_to_20",
        ],
    )
    .await;
    // The other party, straight on the database: it has changed many rows (so InnoDB picks
    // the group's lighter transaction as the victim) and holds row 2.
    let heavy = db.heavy_transaction_holding_row_2().await;
    let holder = hold_key(&broker).await;
    let before = observer.stats().await.expect("stats");
    let leader = queue(
        &broker,
        &observer,
        tx_on_key(&["UPDATE accounts SET balance = balance + 100 WHERE id = 1"]),
        1,
    )
    .await;
    let member = queue(
        &broker,
        &observer,
        tx_on_key(&["UPDATE accounts SET balance = balance + 10 WHERE id = 2"]),
        2,
    )
    .await;
    holder.rollback().await.expect("let go of the key");
    // The group holds row 1 and its member waits for row 2; heavy asking for row 1 closes
    // the cycle, and InnoDB rolls the whole group back.
    db.running_like("the member waits for row 2", "%balance + 10 WHERE id = 2%")
        .await;
    close_the_deadlock_and_commit(heavy).await;

    let attempts = (
        answered(leader).await.expect("leader").attempts,
        answered(member).await.expect("member").attempts,
    );
    let after = observer.stats().await.expect("stats");
    assert_eq!(attempts, (2, 2), "both reran: {after:?}");
    let balances: Vec<i64> = db
        .conn()
        .await
        .query("SELECT balance FROM accounts WHERE id IN (1, 2) ORDER BY id")
        .await
        .expect("balances");
    assert_eq!(balances, [101, 11], "each update applied once");
    assert!(after.deadlocks > before.deadlocks, "{after:?}");
    assert!(after.retries >= before.retries + 2, "{after:?}");
    assert_eq!(grouped_since(&before, &after), (1, 2));
}

#[actix_rt::test]
async fn every_request_of_a_group_whose_connection_dies_in_commit_is_answered_commit_unknown() {
    // A backup lock holds the group's COMMIT in flight; it would hold every commit of the
    // shared server, so this test has a private one.
    let server =
        private_mariadb::PrivateMariaDb::launch("group_commit_unknown", "groups", &[]).await;
    let db = server.test_db();
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB"])
        .await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let holder = hold_key(&broker).await;
    let leader = queue(
        &broker,
        &observer,
        tx_on_key(&["INSERT INTO t VALUES (1, 1)", "INSERT INTO t VALUES (2, 1)"]),
        1,
    )
    .await;
    let members = [
        queue(
            &broker,
            &observer,
            tx_on_key(&["INSERT INTO t VALUES (3, 1)", "INSERT INTO t VALUES (4, 1)"]),
            2,
        )
        .await,
        queue(
            &broker,
            &observer,
            tx_on_key(&["INSERT INTO t VALUES (5, 1)", "INSERT INTO t VALUES (6, 1)"]),
            3,
        )
        .await,
    ];
    // Commits wait while a backup blocks them; the group's COMMIT is then killed.
    let mut backup = db.conn().await;
    backup
        .query_drop("BACKUP STAGE START")
        .await
        .expect("backup start");
    backup
        .query_drop("BACKUP STAGE BLOCK_COMMIT")
        .await
        .expect("block commits");
    holder.rollback().await.expect("let go of the key");
    let committing = db.running("the group's COMMIT waits", "COMMIT").await;
    db.run(&[&format!("KILL CONNECTION {committing}")]).await;

    expect_code(answered(leader).await, ErrorCode::CommitUnknown);
    for member in members {
        expect_code(answered(member).await, ErrorCode::CommitUnknown);
    }
    backup
        .query_drop("BACKUP STAGE END")
        .await
        .expect("backup end");
    // The keys are free, and a plain read of what they guard runs once the killed
    // connection is gone; the group's one COMMIT took all of it or none (the kill usually
    // lands while the COMMIT waits for the backup, so none, but a COMMIT past that point
    // finishes).
    let read = observer
        .run_tx(tx_on_key(&["SELECT COUNT(*) FROM t"]))
        .await
        .expect("a read after the unknown commit");
    let rows = &read.results[0].rows[0][0];
    assert!(*rows == 0.into() || *rows == 6.into(), "{rows:?}");
    stats_until(&observer, "every key is released", |s| s.locks_held == 0).await;
}

#[actix_rt::test]
async fn a_member_whose_client_left_does_not_run_and_its_group_goes_on() {
    let (db, broker, observer) = setup(
        "group_member_left",
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
            "INSERT INTO t VALUES (100, 0)",
        ],
    )
    .await;
    // Holds row 100 straight on the database, so the group's leader waits there.
    let mut blocker = db.conn().await;
    blocker
        .query_drop("START TRANSACTION")
        .await
        .expect("begin");
    blocker
        .query_drop("SELECT v FROM t WHERE id = 100 FOR UPDATE")
        .await
        .expect("row 100");
    let holder = hold_key(&broker).await;
    let leader = queue(
        &broker,
        &observer,
        // Its last statement returns rows, so its members go in a later round trip.
        tx_on_key(&[
            "UPDATE t SET v = v + 1 WHERE id = 100",
            "SELECT v FROM t WHERE id = 100 FOR UPDATE",
        ]),
        1,
    )
    .await;
    let mut leaving = RawConn::connect(broker.addr).await;
    leaving
        .send_value(&raw_tx(1, "INSERT INTO t VALUES (1, 1)"))
        .await;
    stats_until(&observer, "the raw client's request is queued", |s| {
        s.lock_waiters == 2
    })
    .await;
    let staying = queue(
        &broker,
        &observer,
        tx_on_key(&["INSERT INTO t VALUES (2, 1)"]),
        3,
    )
    .await;
    holder.rollback().await.expect("let go of the key");
    db.running_like(
        "the leader waits for row 100",
        "UPDATE t SET v = v + 1 WHERE id = 100%",
    )
    .await;
    // Both members joined the group when the leader was granted; one client now leaves.
    let sessions = observer.stats().await.expect("stats").sessions;
    drop(leaving);
    stats_until(&observer, "the leaving client's session ended", |s| {
        s.sessions == sessions - 1
    })
    .await;
    blocker
        .query_drop("COMMIT")
        .await
        .expect("let the leader go");

    assert_eq!(answered(leader).await.expect("leader").attempts, 1);
    assert_eq!(answered(staying).await.expect("member").attempts, 1);
    let ids: Vec<i32> = db
        .conn()
        .await
        .query("SELECT id FROM t ORDER BY id")
        .await
        .expect("ids");
    assert_eq!(
        ids,
        [2, 100],
        "the request of the client that left never ran"
    );
    stats_until(&observer, "every key is released", |s| s.locks_held == 0).await;
}

#[actix_rt::test]
async fn requests_that_touch_session_state_or_another_isolation_level_are_never_grouped() {
    let (db, broker, observer) = setup(
        "group_session_state",
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, v INT NULL) ENGINE=InnoDB",
            "INSERT INTO t SELECT seq, 0 FROM seq_1_to_6",
        ],
    )
    .await;
    let customized = broker.client().await;
    customized
        .exec("SET @y = 1", vec![])
        .await
        .expect("a variable on that session");
    let holder = hold_key(&broker).await;
    let before = observer.stats().await.expect("stats");
    let leader = queue(
        &broker,
        &observer,
        tx_on_key(&["UPDATE t SET v = v + 1 WHERE id = 1"]),
        1,
    )
    .await;
    let reads_a_variable = queue(
        &broker,
        &observer,
        tx_on_key(&["UPDATE t SET v = @x WHERE id = 2"]),
        2,
    )
    .await;
    let from_customized = tokio::spawn(async move {
        customized
            .run_tx(tx_on_key(&["UPDATE t SET v = v + 1 WHERE id = 3"]))
            .await
    });
    stats_until(
        &observer,
        "the customized session's request is queued",
        |s| s.lock_waiters == 3,
    )
    .await;
    let serializable = TxBuilder::new()
        .lock(KEY)
        .isolation(Isolation::Serializable)
        .exec("UPDATE t SET v = v + 1 WHERE id = 4", vec![])
        .into_request();
    let other_isolation = queue(&broker, &observer, serializable, 4).await;
    let joins = queue(
        &broker,
        &observer,
        tx_on_key(&["UPDATE t SET v = v + 1 WHERE id = 5"]),
        5,
    )
    .await;
    holder.rollback().await.expect("let go of the key");

    for sent in [
        leader,
        reads_a_variable,
        from_customized,
        other_isolation,
        joins,
    ] {
        answered(sent).await.expect("committed");
    }
    let values: Vec<Option<i32>> = db
        .conn()
        .await
        .query("SELECT v FROM t ORDER BY id")
        .await
        .expect("values");
    assert_eq!(values, [Some(1), None, Some(1), Some(1), Some(1), Some(0)]);
    let after = stats_until(&observer, "every key is released", |s| s.locks_held == 0).await;
    assert_eq!(
        grouped_since(&before, &after),
        (1, 2),
        "only the leader and the last request share a transaction"
    );
}

#[actix_rt::test]
async fn with_groups_turned_off_queued_requests_run_one_by_one() {
    let db = TestDb::create_with(
        "group_off",
        &["CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB"],
    )
    .await;
    let broker = TestBroker::start(txbroker::Config {
        max_group_size: 1,
        ..db.config()
    });
    let observer = broker.client().await;
    let holder = hold_key(&broker).await;
    let mut sent = Vec::new();
    for id in 1..=3 {
        let sql = format!("INSERT INTO t VALUES ({id})");
        sent.push(queue(&broker, &observer, tx_on_key(&[&sql]), id).await);
    }
    holder.rollback().await.expect("let go of the key");
    for request in sent {
        answered(request).await.expect("committed");
    }
    assert_eq!(db.count("t").await, 3);
    let stats = observer.stats().await.expect("stats");
    assert_eq!((stats.groups_committed, stats.transactions_grouped), (0, 0));
}

/// A `tx` frame built by hand, for a client that can vanish at a chosen moment.
fn raw_tx(id: u64, sql: &str) -> rmpv::Value {
    req(
        id,
        "tx",
        vec![
            ("locks", rmpv::Value::Array(vec![KEY.into()])),
            ("statements", rmpv::Value::Array(vec![statement(sql)])),
        ],
    )
}

/// Values whose literal is easy to get wrong: quotes, backslashes, a NUL, non-ASCII text,
/// extreme integers, floats that only a DOUBLE literal keeps, NULL, bytes.
fn tricky_values() -> Vec<Vec<Value>> {
    vec![
        vec![
            1.into(),
            "it's a \\ \"quoted\" \0 line\nbreak".into(),
            Value::Bytes(b"bytes \\ ' \"".to_vec()),
            Value::Double(0.1),
            "12345.678901".into(),
            Value::UInt(u64::MAX),
            Value::Int(i64::MIN),
            Value::Null,
        ],
        vec![
            2.into(),
            "héllo wörld ✓ 日本".into(),
            Value::Bytes(Vec::new()),
            Value::Double(-1.5e300),
            "-0.000001".into(),
            Value::UInt(0),
            Value::Int(-1),
            Value::Float(3.25),
        ],
    ]
}

const TRICKY_TABLE: &str = "CREATE TABLE v (id INT PRIMARY KEY, s VARCHAR(100), b VARBINARY(100), \
     f DOUBLE, d DECIMAL(20,6), u BIGINT UNSIGNED, i BIGINT, n FLOAT NULL) ENGINE=InnoDB";

/// Inserts each row of `tricky_values` as a group member (queued behind a held key, so that
/// its statement is sent as text with the values written in), then reads the rows back.
async fn tricky_values_through_a_group(db: &TestDb) -> Vec<Vec<Value>> {
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let holder = hold_key(&broker).await;
    // The leader's last statement returns rows, so the members are one script after it.
    let leader = queue(
        &broker,
        &observer,
        tx_on_key(&["SELECT COUNT(*) FROM v FOR UPDATE"]),
        1,
    )
    .await;
    let mut members = Vec::new();
    for (queued, row) in tricky_values().into_iter().enumerate() {
        let tx = TxBuilder::new()
            .lock(KEY)
            .exec("INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            .into_request();
        members.push(queue(&broker, &observer, tx, queued as u64 + 2).await);
    }
    holder.rollback().await.expect("let go of the key");
    answered(leader).await.expect("leader");
    for member in members {
        answered(member).await.expect("member");
    }
    let stats = observer.stats().await.expect("stats");
    assert_eq!((stats.groups_committed, stats.transactions_grouped), (1, 3));
    assert_eq!(stats.mean_group_size(), Some(3.0));
    observer
        .exec("SELECT * FROM v ORDER BY id", vec![])
        .await
        .expect("read back")
        .rows
}

#[actix_rt::test]
async fn values_written_into_a_groups_statements_arrive_as_prepared_statements_send_them() {
    let db = TestDb::create_with("group_values", &[TRICKY_TABLE]).await;
    let rows = tricky_values_through_a_group(&db).await;
    // The same rows inserted the usual way, as prepared statements, read back the same way.
    let reference = TestDb::create_with("group_values_prepared", &[TRICKY_TABLE]).await;
    let broker = TestBroker::start(reference.config());
    let client = broker.client().await;
    for row in tricky_values() {
        client
            .tx()
            .exec("INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            .run()
            .await
            .expect("insert");
    }
    let expected = client
        .exec("SELECT * FROM v ORDER BY id", vec![])
        .await
        .expect("read back")
        .rows;
    assert_eq!(rows, expected);
}

#[actix_rt::test]
async fn values_are_written_right_when_backslashes_are_not_escapes() {
    let server = private_mariadb::PrivateMariaDb::launch(
        "group_values_no_backslash",
        "groups",
        &[
            "--sql-mode=NO_BACKSLASH_ESCAPES,STRICT_TRANS_TABLES",
            "--character-set-server=utf8mb4",
        ],
    )
    .await;
    let db = server.test_db();
    db.run(&[TRICKY_TABLE]).await;
    let rows = tricky_values_through_a_group(&db).await;
    assert_eq!(rows[0][1], "it's a \\ \"quoted\" \0 line\nbreak".into());
    assert_eq!(rows[0][2], Value::Bytes(b"bytes \\ ' \"".to_vec()));
    assert_eq!(rows.len(), 2);
}
