//! Idempotency keys (`docs/protocol.md` §19) against the real database: a keyed request that
//! committed is answered again from its record, `replayed`, with the same results and running
//! nothing; the same key with another request is refused; a failed request records nothing;
//! two copies sent at once from two connections run once; an expired record lets the key run
//! again and is purged; a large answer is recorded without its rows; a keyed interactive
//! transaction records its commit, and a later `begin` with its key opens nothing; requests
//! with keys still run in groups, each recorded. The faults (MariaDB and the broker killed
//! under retrying clients) are in `faults_db.rs` and `faults_process.rs`.

mod common;

use common::answers::{expect_code, int, server_error};
use common::requests::{keyed, money_move, transfer_tx, with_keys};
use common::{
    answered, bank, begin_and_update_account, eventually, stats_until, TestBroker, TestDb, PATIENCE,
};
use txbroker::client::{Begun, Client, TxBuilder, TxOutcome};
use txbroker::error::ErrorCode;
use txbroker::protocol::{Request, TxOptions, TxRequest};
use txbroker::Config;

async fn balance(db: &TestDb, id: u64) -> i64 {
    db.scalar(&format!("SELECT balance FROM accounts WHERE id = {id}"))
        .await
}

/// One statement that adds 1 to account 1 and reads it back.
fn increment(key: &str) -> TxRequest {
    keyed(
        TxBuilder::new()
            .lock("accounts:1")
            .exec(
                "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
                vec![],
            )
            .exec("SELECT balance FROM accounts WHERE id = 1", vec![])
            .into_request(),
        key,
    )
}

fn config_with(db: &TestDb, change: impl FnOnce(&mut Config)) -> Config {
    let mut config = db.config();
    change(&mut config);
    config
}

#[actix_rt::test]
async fn a_committed_key_is_answered_again_replayed_with_the_same_results_and_commits_nothing() {
    let db = bank("idem_replay", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let first_client = broker.client().await;
    let transfer = keyed(transfer_tx("t-1", 1, 2, 10), "logical-1");
    let first = first_client.run_tx(transfer.clone()).await.expect("runs");
    assert!(!first.replayed);
    // From another connection, as after a reconnect.
    let again = broker
        .client()
        .await
        .run_tx(transfer.clone())
        .await
        .expect("answered");
    assert!(again.replayed, "{again:?}");
    assert!(!again.results_omitted);
    assert_eq!(again.results, first.results);
    assert_eq!(again.attempts, first.attempts);
    assert_eq!((balance(&db, 1).await, balance(&db, 2).await), (90, 110));
    assert_eq!(db.count("ledger").await, 1);
    assert_eq!(db.count("txbroker_outcomes").await, 1);
    // Another retry count is the same request.
    let mut more_retries = transfer;
    more_retries.retries = Some(7);
    assert!(
        first_client
            .run_tx(more_retries)
            .await
            .expect("answered")
            .replayed
    );
}

#[actix_rt::test]
async fn the_same_key_with_another_request_is_refused_and_nothing_commits() {
    let db = bank("idem_mismatch", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    client
        .run_tx(keyed(transfer_tx("t-1", 1, 2, 10), "k"))
        .await
        .expect("runs");
    let refused = expect_code(
        client
            .run_tx(keyed(transfer_tx("t-2", 1, 2, 11), "k"))
            .await,
        ErrorCode::IdempotencyMismatch,
    );
    assert!(!refused.retryable);
    assert!(refused.message.contains("\"k\""), "{}", refused.message);
    assert_eq!(db.count("ledger").await, 1);
    assert_eq!(balance(&db, 1).await, 90);
    // A begin is another request than the tx of its key.
    expect_code(
        client
            .begin_idempotent(TxOptions {
                idempotency_key: Some("k".into()),
                ..with_keys(&["accounts:1", "accounts:2"])
            })
            .await,
        ErrorCode::IdempotencyMismatch,
    );
    // The refused begin opened nothing.
    expect_code(client.commit().await, ErrorCode::NoTransaction);
}

#[actix_rt::test]
async fn a_failed_request_records_nothing_and_runs_when_sent_again() {
    let db = bank("idem_failed", 2, 100).await;
    db.run(&["INSERT INTO ledger VALUES ('t-1', 9, 9, 0)"])
        .await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let transfer = keyed(transfer_tx("t-1", 1, 2, 10), "k");
    expect_code(client.run_tx(transfer.clone()).await, ErrorCode::Sql);
    assert_eq!(db.count("txbroker_outcomes").await, 0);
    db.run(&["DELETE FROM ledger"]).await;
    let outcome = client.run_tx(transfer).await.expect("runs now");
    assert!(!outcome.replayed);
    assert_eq!((balance(&db, 1).await, db.count("ledger").await), (90, 1));
}

#[actix_rt::test]
async fn a_duplicate_sent_at_once_from_two_connections_runs_once() {
    let db = bank("idem_concurrent", 2, 100).await;
    duplicates_run_once(&db, keyed(transfer_tx("t-1", 1, 2, 10), "twice")).await;
    assert_eq!(db.count("ledger").await, 1);
}

/// Sends `request` twice at once, from two connections, while a holder of `accounts:1` keeps
/// the first copy waiting for it, holding the key's broker key, so that the second copy
/// queues behind the first: one copy commits, the other is its replay, and the transfer of 10
/// from account 1 to account 2 lands once.
async fn duplicates_run_once(db: &TestDb, request: TxRequest) {
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let holder = broker.client().await;
    begin_and_update_account(&holder, 1, "balance = balance").await;
    let first = broker.send_tx(request.clone()).await;
    stats_until(&observer, "the first copy waits", |s| s.lock_waiters == 1).await;
    let second = broker.send_tx(request).await;
    stats_until(&observer, "both copies wait", |s| s.lock_waiters == 2).await;
    holder.commit().await.expect("the holder lets go");
    let answers: Vec<TxOutcome> = vec![
        answered(first).await.expect("the first copy commits"),
        answered(second).await.expect("the second copy is answered"),
    ];
    assert_eq!(
        answers.iter().filter(|answer| answer.replayed).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(answers[0].results, answers[1].results);
    assert_eq!((balance(db, 1).await, balance(db, 2).await), (90, 110));
}

#[actix_rt::test]
async fn an_expired_key_runs_again_and_expired_records_are_purged() {
    let db = bank("idem_expired", 1, 0).await;
    let broker = TestBroker::start(config_with(&db, |config| {
        config.idempotency_ttl_s = 1;
        config.idempotency_purge_interval_ms = 60_000;
    }));
    let client = broker.client().await;
    let first = client.run_tx(increment("short")).await.expect("runs");
    assert_eq!(int(&first.results[1].rows[0][0]), 1);
    let expired = "SELECT COUNT(*) FROM txbroker_outcomes WHERE expires_at < NOW(6)";
    eventually("the record has expired", PATIENCE, || async {
        db.scalar(expired).await == 1
    })
    .await;
    let second = client.run_tx(increment("short")).await.expect("runs again");
    assert!(!second.replayed);
    assert_eq!(int(&second.results[1].rows[0][0]), 2);
    assert!(
        client
            .run_tx(increment("short"))
            .await
            .expect("replayed")
            .replayed
    );
    assert_eq!(balance(&db, 1).await, 2);
    drop(client);
    broker.shutdown();

    // A broker that purges often deletes the expired record on its own.
    let purging = TestBroker::start(config_with(&db, |config| {
        config.idempotency_ttl_s = 1;
        config.idempotency_purge_interval_ms = 50;
    }));
    eventually("the expired record is purged", PATIENCE, || async {
        db.count("txbroker_outcomes").await == 0
    })
    .await;
    drop(purging);
}

#[actix_rt::test]
async fn a_large_answer_is_recorded_without_its_rows_and_its_replay_says_so() {
    let db = bank("idem_large", 1, 0).await;
    let broker = TestBroker::start(config_with(&db, |config| {
        config.idempotency_max_response_bytes = 200;
    }));
    let client = broker.client().await;
    let large = keyed(
        TxBuilder::new()
            .exec(
                "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
                vec![],
            )
            .exec(
                "SELECT REPEAT('x', 500) AS filler, balance FROM accounts",
                vec![],
            )
            .into_request(),
        "large",
    );
    let first = client.run_tx(large.clone()).await.expect("runs");
    assert_eq!(first.results[1].rows.len(), 1);
    let replay = client.run_tx(large).await.expect("replayed");
    assert!(replay.replayed && replay.results_omitted, "{replay:?}");
    assert_eq!(replay.results[1].columns, first.results[1].columns);
    assert!(replay.results[1].rows.is_empty());
    assert_eq!(replay.results[0], first.results[0]);
    assert_eq!(balance(&db, 1).await, 1);
}

/// `begin` options that declare `accounts:1` and carry the idempotency key `key`.
fn keyed_options(key: &str) -> TxOptions {
    TxOptions {
        idempotency_key: Some(key.into()),
        ..with_keys(&["accounts:1"])
    }
}

async fn begun(client: &Client, options: &TxOptions) -> Begun {
    client
        .begin_idempotent(options.clone())
        .await
        .expect("a keyed begin is answered")
}

#[actix_rt::test]
async fn a_keyed_interactive_transaction_records_its_commit_and_a_later_begin_opens_nothing() {
    let db = bank("idem_interactive", 1, 0).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let options = keyed_options("interactive");
    assert_eq!(begun(&client, &options).await, Begun::Opened);
    client
        .exec(
            "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
            vec![],
        )
        .await
        .expect("exec");
    assert!(
        !client.commit_idempotent().await.expect("commit"),
        "a first commit"
    );

    let later = broker.client().await;
    assert_eq!(begun(&later, &options).await, Begun::AlreadyCommitted);
    // Nothing is open, and nothing meant for it runs on its own.
    let refused = expect_code(
        later
            .exec(
                "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
                vec![],
            )
            .await,
        ErrorCode::TxAborted,
    );
    assert!(
        refused.message.contains("already committed"),
        "{}",
        refused.message
    );
    later.rollback().await.expect("rollback acknowledges");
    assert_eq!(balance(&db, 1).await, 1);
    let stats = later.stats().await.expect("stats");
    assert_eq!(stats.locks_held, 0);

    // A rolled-back keyed transaction records nothing: its key opens a transaction again.
    let options = keyed_options("rolled back");
    assert_eq!(begun(&client, &options).await, Begun::Opened);
    client.rollback().await.expect("rollback");
    assert_eq!(begun(&client, &options).await, Begun::Opened);
    client.rollback().await.expect("rollback");
}

#[actix_rt::test]
async fn keyed_requests_still_run_in_groups_and_each_is_recorded() {
    let db = bank("idem_groups", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let holder = broker.client().await;
    begin_and_update_account(&holder, 1, "balance = balance").await;
    let before = observer.stats().await.expect("stats");
    let mut sent = Vec::new();
    for index in 0..4u64 {
        let transfer = keyed(
            transfer_tx(&format!("g-{index}"), 1, 2, 1),
            &format!("g-{index}"),
        );
        sent.push((transfer.clone(), broker.send_tx(transfer).await));
        stats_until(&observer, "the transfer is queued", |s| {
            s.lock_waiters == index + 1
        })
        .await;
    }
    holder.commit().await.expect("the holder lets go");
    let mut firsts = Vec::new();
    for (transfer, task) in sent {
        firsts.push((transfer, answered(task).await.expect("commits")));
    }
    let after = observer.stats().await.expect("stats");
    assert!(
        after.groups_committed > before.groups_committed,
        "{after:?}"
    );
    assert_eq!(db.count("txbroker_outcomes").await, 4);
    for (transfer, first) in firsts {
        assert!(!first.replayed);
        let again = observer.run_tx(transfer).await.expect("replayed");
        assert!(again.replayed);
        assert_eq!(again.results, first.results);
    }
    assert_eq!((balance(&db, 1).await, balance(&db, 2).await), (96, 104));
}

#[actix_rt::test]
async fn the_table_and_database_are_configurable_and_created_at_start() {
    let db = TestDb::create_with("idem_where", &["CREATE TABLE t (v INT) ENGINE=InnoDB"]).await;
    let store = TestDb::create("idem_where_store").await;
    let broker = TestBroker::start(config_with(&db, |config| {
        config.idempotency_table = "my_outcomes".into();
        config.idempotency_database = Some(store.name.clone());
    }));
    assert!(store.table_exists("my_outcomes").await);
    assert!(!db.table_exists("txbroker_outcomes").await);
    let client = broker.client().await;
    let insert = keyed(
        TxBuilder::new()
            .exec("INSERT INTO t VALUES (1)", vec![])
            .into_request(),
        "where",
    );
    client.run_tx(insert.clone()).await.expect("runs");
    assert!(client.run_tx(insert).await.expect("replayed").replayed);
    assert_eq!(
        (db.count("t").await, store.count("my_outcomes").await),
        (1, 1)
    );
    // Old clients see no change: a request without a key runs every time.
    let plain = Request::Tx(
        TxBuilder::new()
            .exec("INSERT INTO t VALUES (2)", vec![])
            .into_request(),
    );
    client.request(plain.clone()).await.expect("runs");
    client.request(plain).await.expect("runs again");
    assert_eq!(db.count("t").await, 3);
}

fn add_one(key: &str) -> TxRequest {
    keyed(
        TxBuilder::new()
            .lock("accounts:1")
            .exec(
                "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
                vec![],
            )
            .into_request(),
        key,
    )
}

#[actix_rt::test]
async fn a_replay_queued_with_a_new_request_is_answered_from_its_record_and_the_new_one_commits() {
    let db = bank("idem_group_replay", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let first = observer.run_tx(add_one("r")).await.expect("runs");
    let holder = broker.client().await;
    begin_and_update_account(&holder, 1, "balance = balance").await;
    let replay = broker.send_tx(add_one("r")).await;
    stats_until(&observer, "the replay is queued", |s| s.lock_waiters == 1).await;
    let fresh = broker.send_tx(add_one("f")).await;
    stats_until(&observer, "the new one is queued", |s| s.lock_waiters == 2).await;
    holder.commit().await.expect("the holder lets go");
    let replayed = answered(replay).await.expect("answered");
    assert!(replayed.replayed, "{replayed:?}");
    assert_eq!(replayed.results, first.results);
    // Whether or not the two share a group, the replay changes nothing of the new one's
    // outcome (promise 3): it commits the first time it is sent.
    let fresh = answered(fresh).await.expect("the new request commits");
    assert!(!fresh.replayed, "{fresh:?}");
    assert_eq!(balance(&db, 1).await, 102);
    assert_eq!(db.count("txbroker_outcomes").await, 2);
}

/// A keyed move of `amount` from `from` to `to` without a ledger row: `UPDATE`s only, so it
/// runs in one query with its record (`TxShape::OneTrip`).
fn keyed_move(key: &str, from: u64, to: u64, amount: i64) -> TxRequest {
    keyed(money_move("", from, to, amount).into_request(), key)
}

#[actix_rt::test]
async fn a_keyed_tx_of_updates_and_deletes_is_replayed_with_the_row_counts_the_server_gave() {
    let db = bank("idem_row_counts", 4, 100).await;
    let broker = TestBroker::start(db.config());
    let request = keyed(
        TxBuilder::new()
            .lock("accounts")
            .exec(
                "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                vec![5.into(), 1.into()],
            )
            .exec(
                "UPDATE accounts SET balance = balance + 1 WHERE id >= 3",
                vec![],
            )
            .exec("DELETE FROM accounts WHERE id = 99", vec![])
            .exec("UPDATE accounts SET balance = balance WHERE id = 2", vec![])
            .exec("DELETE FROM accounts WHERE id = ?", vec![4.into()])
            .into_request(),
        "counts",
    );
    let first = broker
        .client()
        .await
        .run_tx(request.clone())
        .await
        .expect("runs");
    assert!(!first.replayed);
    let affected: Vec<u64> = first.results.iter().map(|result| result.affected).collect();
    assert_eq!(affected[..3], [1, 2, 0], "{affected:?}");
    assert_eq!(affected[4], 1, "{affected:?}");
    let again = broker
        .client()
        .await
        .run_tx(request)
        .await
        .expect("answered");
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.results, first.results);
    assert_eq!(again.attempts, first.attempts);
    assert_eq!(
        (balance(&db, 1).await, balance(&db, 3).await),
        (95, 101),
        "ran once"
    );
    assert_eq!(db.count("accounts").await, 3);
}

#[actix_rt::test]
async fn a_failing_statement_of_a_keyed_update_tx_is_named_rolls_back_and_records_nothing() {
    let db = bank("idem_one_trip_fails", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let request = keyed(
        TxBuilder::new()
            .lock("accounts")
            .exec(
                "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
                vec![],
            )
            // The primary key refuses it.
            .exec("UPDATE accounts SET id = 1 WHERE id = 2", vec![])
            .into_request(),
        "fails",
    );
    let refused = expect_code(client.run_tx(request.clone()).await, ErrorCode::Sql);
    assert_eq!(refused.statement, Some(1), "{refused:?}");
    assert_eq!(
        balance(&db, 1).await,
        100,
        "the first statement was rolled back"
    );
    assert_eq!(db.count("txbroker_outcomes").await, 0);
    // The session goes on, out of any transaction, and the key may run when sent again.
    let moved = client
        .run_tx(keyed_move("fails-then-other", 1, 2, 10))
        .await
        .expect("runs");
    assert!(!moved.replayed);
    assert_eq!((balance(&db, 1).await, balance(&db, 2).await), (90, 110));
    db.run(&["DELETE FROM accounts WHERE id = 2"]).await;
    let now = client.run_tx(request).await.expect("runs now");
    assert!(!now.replayed);
    assert_eq!(balance(&db, 1).await, 80);
}

#[actix_rt::test]
async fn a_keyed_update_tx_sent_at_once_from_two_connections_runs_once() {
    let db = bank("idem_one_trip_concurrent", 2, 100).await;
    duplicates_run_once(&db, keyed_move("twice", 1, 2, 10)).await;
}

#[actix_rt::test]
async fn an_outcomes_table_made_before_row_counts_is_upgraded_at_start() {
    let db = bank("idem_upgrade", 2, 100).await;
    db.run(&["CREATE TABLE txbroker_outcomes (\
              idempotency_key VARBINARY(128) NOT NULL PRIMARY KEY, \
              request_hash BINARY(32) NOT NULL, \
              response MEDIUMBLOB NOT NULL, \
              results_omitted BOOL NOT NULL, \
              created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
              expires_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
              KEY expires_at (expires_at)) ENGINE=InnoDB"])
        .await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let first = client
        .run_tx(keyed_move("old-table", 1, 2, 10))
        .await
        .expect("runs");
    let again = client
        .run_tx(keyed_move("old-table", 1, 2, 10))
        .await
        .expect("answered");
    assert!(again.replayed);
    assert_eq!(again.results, first.results);
    assert_eq!(first.results[0].affected, 1);
    assert_eq!(balance(&db, 1).await, 90);
}

#[actix_rt::test]
async fn a_keyed_update_tx_whose_connection_dies_under_it_is_commit_unknown_and_its_retry_runs_once(
) {
    let db = bank("idem_one_trip_lost", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    // Slow enough to be killed while it runs, quick enough to run again.
    let slow = keyed(
        TxBuilder::new()
            .lock("accounts:1")
            .exec(
                "UPDATE accounts SET balance = balance - 10 + SLEEP(2) WHERE id = 1",
                vec![],
            )
            .into_request(),
        "lost-once",
    );
    let killer = async {
        // The server lists the statement of the query it is running, with the line break
        // that ends it; the probe's own text starts otherwise.
        let id = db
            .running_like(
                "the keyed update is running",
                "UPDATE accounts SET balance = balance - 10 + SLEEP(2) WHERE id = 1%",
            )
            .await;
        db.run(&[&format!("KILL CONNECTION {id}")]).await;
    };
    let (outcome, ()) = tokio::join!(client.run_tx(slow.clone()), killer);
    let lost = expect_code(outcome, ErrorCode::CommitUnknown);
    assert!(lost.message.contains("one query"), "{}", lost.message);
    assert_eq!(balance(&db, 1).await, 100, "killed before its COMMIT ran");
    assert_eq!(db.count("txbroker_outcomes").await, 0);
    // The retry with the same key finds no record and runs; the next is its replay.
    let ran = client.run_tx(slow.clone()).await.expect("runs");
    assert!(!ran.replayed);
    let replay = client.run_tx(slow).await.expect("answered");
    assert!(replay.replayed);
    assert_eq!(replay.results, ran.results);
    assert_eq!(balance(&db, 1).await, 90);
}

#[actix_rt::test]
async fn a_request_queued_behind_a_failed_one_with_its_key_runs_since_nothing_was_recorded() {
    let db = bank("idem_after_failed_copy", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let observer = broker.client().await;
    let holder = broker.client().await;
    begin_and_update_account(&holder, 1, "balance = balance").await;
    // The first one fails on its primary key; the second asks something else with its key.
    let failing = keyed(
        money_move("", 1, 2, 10)
            .exec("UPDATE accounts SET id = 1 WHERE id = 2", vec![])
            .into_request(),
        "shared",
    );
    let first = broker.send_tx(failing).await;
    stats_until(&observer, "the failing one waits", |s| s.lock_waiters == 1).await;
    let second = broker.send_tx(keyed_move("shared", 1, 2, 5)).await;
    stats_until(&observer, "both wait", |s| s.lock_waiters == 2).await;
    holder.commit().await.expect("the holder lets go");
    // Its own failure, or, when the second has committed by the time it reads its key's
    // record again after failing, the mismatch with that record.
    let refused = server_error(answered(first).await);
    assert!(
        matches!(
            refused.code,
            ErrorCode::Sql | ErrorCode::IdempotencyMismatch
        ),
        "{refused:?}"
    );
    let ran = answered(second).await.expect("runs: the key has no record");
    assert!(!ran.replayed, "{ran:?}");
    assert_eq!((balance(&db, 1).await, balance(&db, 2).await), (95, 105));
    assert_eq!(db.count("txbroker_outcomes").await, 1);
}
