//! Hand-over at COMMIT (protocol 1.1) against the real database: a transaction's keys pass to
//! the next request as soon as its COMMIT is sent. Each test holds that COMMIT in flight on
//! purpose with a backup lock (`BACKUP STAGE BLOCK_COMMIT` makes commits wait, statements
//! not), so what the next holder may and may not do meanwhile can be seen. The lock holds
//! every commit of its server, so each test runs on a private MariaDB of its own.

mod common;
mod private_mariadb;

use common::answers::expect_code;
use common::{answered, stats_until, TestBroker, TestDb};
use mysql_async::prelude::Queryable;
use private_mariadb::PrivateMariaDb;
use tokio::task::JoinHandle;
use txbroker::client::{Client, ClientError, TxBuilder, TxOutcome};
use txbroker::error::ErrorCode;
use txbroker::locks::LockRequest;
use txbroker::protocol::{TxOptions, TxRequest, Value};

const KEY: &str = "row:1";

/// A private server with the table the tests share; the guard stops the server when dropped.
async fn table(label: &str) -> (PrivateMariaDb, TestDb) {
    let server = PrivateMariaDb::launch(label, "handover", &[]).await;
    let db = server.test_db();
    db.run(&[
        "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL, w INT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO t VALUES (1, 0, 0)",
    ])
    .await;
    (server, db)
}

/// Makes every commit on the server wait until the returned connection ends the backup.
async fn block_commits(db: &TestDb) -> mysql_async::Conn {
    let mut backup = db.conn().await;
    for stage in ["BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT"] {
        backup.query_drop(stage).await.expect(stage);
    }
    backup
}

async fn unblock_commits(mut backup: mysql_async::Conn) {
    backup
        .query_drop("BACKUP STAGE END")
        .await
        .expect("end the backup");
}

/// The previous holder: a two-statement `tx` on `KEY` (so that it has a COMMIT to send),
/// started from a client of its own; returns once its COMMIT waits on the server, with the
/// id of the connection running it.
async fn commit_in_flight(
    broker: &TestBroker,
    db: &TestDb,
) -> (JoinHandle<Result<TxOutcome, ClientError>>, i64) {
    let committing = broker
        .send_tx(
            TxBuilder::new()
                .lock(KEY)
                .exec("UPDATE t SET v = 42 WHERE id = 1", vec![])
                .exec("UPDATE t SET w = w + 1 WHERE id = 1", vec![])
                .into_request(),
        )
        .await;
    let connection = db
        .running("the COMMIT waits for the backup", "COMMIT")
        .await;
    (committing, connection)
}

/// The next holder's locking write.
fn add_ten_to_w() -> TxRequest {
    TxBuilder::new()
        .lock(KEY)
        .exec("UPDATE t SET w = w + 10 WHERE id = 1", vec![])
        .into_request()
}

fn shared_key() -> TxOptions {
    TxOptions {
        locks: LockRequest::new(Vec::new(), vec![KEY.to_string()]),
        ..TxOptions::default()
    }
}

#[actix_rt::test]
async fn a_locking_statement_goes_ahead_while_the_previous_commit_is_in_flight() {
    let (_server, db) = table("handover_locking").await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let backup = block_commits(&db).await;
    let (previous, _) = commit_in_flight(&broker, &db).await;
    let next = broker.send_tx(add_ten_to_w()).await;
    // It holds the key and its UPDATE waits in InnoDB for the committing transaction's row.
    db.blocked_on_row_lock("UPDATE t SET w = w + 10 WHERE id = 1")
        .await;
    let stats = observer.stats().await.expect("stats");
    assert_eq!((stats.locks_held, stats.lock_waiters), (1, 0), "{stats:?}");
    assert_eq!(stats.handovers, 1);
    unblock_commits(backup).await;

    answered(previous)
        .await
        .expect("the previous holder commits");
    answered(next)
        .await
        .expect("the next holder commits after it");
    let row: (i32, i32) = db
        .conn()
        .await
        .query_first("SELECT v, w FROM t WHERE id = 1")
        .await
        .expect("row")
        .expect("row 1");
    assert_eq!(row, (42, 11));
}

#[actix_rt::test]
async fn with_hand_over_off_the_key_passes_only_once_the_commit_has_answered() {
    let (_server, db) = table("handover_off").await;
    let broker = TestBroker::start(txbroker::Config {
        handover_at_commit: false,
        ..db.config()
    });
    let observer = broker.client().await;
    let backup = block_commits(&db).await;
    let (previous, _) = commit_in_flight(&broker, &db).await;
    let next = broker.send_tx(add_ten_to_w()).await;
    stats_until(&observer, "the next request waits for the key", |s| {
        s.lock_waiters == 1 && s.locks_held == 1
    })
    .await;
    unblock_commits(backup).await;
    answered(previous).await.expect("previous");
    answered(next).await.expect("next");
    assert_eq!(observer.stats().await.expect("stats").handovers, 0);
}

#[actix_rt::test]
async fn reads_without_locking_wait_for_the_handed_over_commit_and_see_it() {
    let (_server, db) = table("handover_reads").await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let backup = block_commits(&db).await;
    let (previous, _) = commit_in_flight(&broker, &db).await;
    // Two readers share the key: a `tx` and an interactive transaction, both plain SELECTs.
    let in_tx = broker
        .send_tx(
            TxBuilder::new()
                .read_lock(KEY)
                .exec("SELECT v, w FROM t WHERE id = 1", vec![])
                .into_request(),
        )
        .await;
    let interactive: Client = broker.client().await;
    let in_interactive = tokio::spawn(async move {
        interactive.begin(shared_key()).await?;
        let read = interactive
            .exec("SELECT v, w FROM t WHERE id = 1", vec![])
            .await?;
        interactive.commit().await?;
        Ok::<_, ClientError>(read)
    });
    stats_until(&observer, "both reads wait for the commit", |s| {
        s.reads_waiting == 2 && s.locks_held == 2
    })
    .await;
    unblock_commits(backup).await;

    answered(previous).await.expect("previous");
    let seen = [42.into(), 1.into()];
    assert_eq!(
        answered(in_tx).await.expect("tx read").results[0].rows,
        [seen.to_vec()]
    );
    assert_eq!(
        answered(in_interactive)
            .await
            .expect("interactive read")
            .rows,
        [seen.to_vec()]
    );
}

#[actix_rt::test]
async fn when_the_outcome_is_unknown_reads_wait_until_the_connection_is_gone() {
    let (_server, db) = table("handover_unknown").await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let backup = block_commits(&db).await;
    let (previous, connection) = commit_in_flight(&broker, &db).await;
    let read = broker
        .send_tx(
            TxBuilder::new()
                .lock(KEY)
                .exec("SELECT v FROM t WHERE id = 1", vec![])
                .into_request(),
        )
        .await;
    stats_until(&observer, "the read waits for the commit", |s| {
        s.reads_waiting == 1
    })
    .await;
    // The committing connection dies while its COMMIT waits: the server rolls it back.
    db.run(&[&format!("KILL CONNECTION {connection}")]).await;
    expect_code(answered(previous).await, ErrorCode::CommitUnknown);
    let outcome = answered(read)
        .await
        .expect("the read runs once the connection is gone");
    assert_eq!(outcome.results[0].rows, [vec![Value::Int(0)]]);
    unblock_commits(backup).await;
    stats_until(&observer, "every key is released", |s| s.locks_held == 0).await;
}
