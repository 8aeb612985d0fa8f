//! Several `txbroker` processes on one database (issue 15). In `coordination = "local"`
//! each broker orders only its own transactions, so opposite transfers on two brokers
//! deadlock in InnoDB; in `coordination = "database"` every broker also takes its keys as
//! named locks, and the same load meets no deadlock at all. Also: a named lock held on one
//! broker makes another's request time out with the usual `lock_timeout`, long keys become
//! hashed names that still exclude each other, and no named lock outlives its transaction.
//!
//! Named locks are server-wide and the tests share one server, so each test gives its keys a
//! prefix of its own.

mod common;

use std::time::Duration;

use common::process::BrokerProcess;
use common::requests::transfer_tx_keyed;
use common::{bank, within, TestDb};
use txbroker::client::{Client, ClientError};
use txbroker::error::ErrorCode;
use txbroker::named_locks::lock_name;
use txbroker::protocol::Stats;

const CLIENTS_PER_BROKER: u64 = 6;
const TRANSFERS_PER_CLIENT: u64 = 40;
const BALANCE: i64 = 1_000;

fn start_brokers(db: &TestDb, name: &str, count: usize, coordination: &str) -> Vec<BrokerProcess> {
    (0..count)
        .map(|index| {
            BrokerProcess::start(
                &format!("{name}_{index}"),
                &db.config_file_text(&format!("coordination = \"{coordination}\"")),
            )
        })
        .collect()
}

/// What a transfer load came to.
struct LoadOutcome {
    committed: u64,
    failed: Vec<ClientError>,
    deadlocks: u64,
}

/// Transfers between accounts 1 and 2 from every client of every broker, in the direction
/// of its broker's parity (broker 0 takes from 1, broker 1 from 2, ...), each writing a
/// ledger row. Within a broker the keys order them; across brokers only the database can.
async fn opposite_transfers(brokers: &[BrokerProcess], keys: &str) -> LoadOutcome {
    let mut tasks = Vec::new();
    for (index, broker) in brokers.iter().enumerate() {
        for client_number in 0..CLIENTS_PER_BROKER {
            let client = broker.client().await;
            let (from, to) = if index % 2 == 0 { (1, 2) } else { (2, 1) };
            let keys = format!("{keys}:");
            tasks.push(tokio::spawn(async move {
                let mut outcome = (0u64, Vec::new());
                for transfer in 0..TRANSFERS_PER_CLIENT {
                    let ledger_id = format!("{index}-{client_number}-{transfer}");
                    let transfer = transfer_tx_keyed(&keys, &ledger_id, from, to, 1);
                    match client.run_tx(transfer).await {
                        Ok(_) => outcome.0 += 1,
                        Err(error) => outcome.1.push(error),
                    }
                }
                outcome
            }));
        }
    }
    let mut load = LoadOutcome {
        committed: 0,
        failed: Vec::new(),
        deadlocks: 0,
    };
    for task in tasks {
        let (committed, failed) = within("a client's transfers", task)
            .await
            .expect("a client task");
        load.committed += committed;
        load.failed.extend(failed);
    }
    for broker in brokers {
        load.deadlocks += stats(&broker.client().await).await.deadlocks;
    }
    load
}

async fn stats(client: &Client) -> Stats {
    client.stats().await.expect("stats")
}

/// The money is all there, and every committed transfer, and only those, is in the ledger.
async fn assert_consistent(db: &TestDb, committed: u64) {
    assert_eq!(
        db.scalar("SELECT SUM(balance) FROM accounts").await,
        2 * BALANCE,
        "no money made or lost"
    );
    assert_eq!(db.count("ledger").await, committed as i64);
    assert_eq!(
        db.scalar("SELECT CAST(SUM(IF(from_id = 1, 1, -1)) AS SIGNED) FROM ledger")
            .await,
        BALANCE - db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        "account 1 moved by exactly its ledger rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_local_brokers_deadlock_each_other_in_the_database() {
    let db = bank("mb_local", 2, BALANCE).await;
    let brokers = start_brokers(&db, "mb_local", 2, "local");
    let load = opposite_transfers(&brokers, "mb_local").await;
    assert!(
        load.deadlocks > 0,
        "opposite transfers on two local brokers met no database deadlock"
    );
    assert_consistent(&db, load.committed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_database_brokers_never_deadlock_and_keep_the_money() {
    let db = bank("mb_database", 2, BALANCE).await;
    let brokers = start_brokers(&db, "mb_database", 3, "database");
    let load = opposite_transfers(&brokers, "mb_database").await;
    assert_eq!(load.deadlocks, 0, "no database deadlock across brokers");
    assert!(
        load.failed.is_empty(),
        "every transfer committed: {:?}",
        load.failed
    );
    assert_eq!(
        load.committed,
        3 * CLIENTS_PER_BROKER * TRANSFERS_PER_CLIENT
    );
    assert_consistent(&db, load.committed).await;
    // Every named lock went with its transaction.
    for key in ["mb_database:accounts:1", "mb_database:accounts:2"] {
        let free = format!("SELECT IS_FREE_LOCK('{}')", lock_name(key));
        assert_eq!(db.scalar(&free).await, 1, "{key} is free again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_on_one_database_broker_times_out_on_another_even_when_hashed() {
    let db = bank("mb_timeout", 2, BALANCE).await;
    let db_config =
        |extra: &str| db.config_file_text(&format!("coordination = \"database\"\n{extra}"));
    let holder = BrokerProcess::start("mb_timeout_holder", &db_config(""));
    let waiter = BrokerProcess::start(
        "mb_timeout_waiter",
        &db_config("lock_wait_timeout_ms = 300"),
    );
    let long_key = format!("mb_timeout:{}:Accounts:1", "x".repeat(100));
    let holding = holder.client().await;
    holding
        .begin(common::requests::with_keys(std::slice::from_ref(&long_key)))
        .await
        .expect("begin with the long key");
    let free = format!("SELECT IS_FREE_LOCK('{}')", lock_name(&long_key));
    assert_eq!(
        db.scalar(&free).await,
        0,
        "held as a named lock from the begin"
    );
    let waiting = waiter.client().await;
    let touch_row_1 = || {
        waiting
            .tx()
            .lock(long_key.clone())
            .exec("UPDATE accounts SET balance = balance WHERE id = 1", vec![])
            .run()
    };
    let refused = touch_row_1()
        .await
        .expect_err("the key is held on the other broker");
    assert_eq!(refused.code(), Some(ErrorCode::LockTimeout), "{refused}");
    assert!(refused.is_retryable());
    // Once the holder commits, the other broker gets the key, and it is released after.
    holding.commit().await.expect("commit");
    touch_row_1()
        .await
        .expect("granted once the holder committed");
    assert_eq!(db.scalar(&free).await, 1, "released after its commit");
    // A session killed while it holds a key loses the lock with its connection.
    holding
        .begin(common::requests::with_keys(std::slice::from_ref(&long_key)))
        .await
        .expect("begin again");
    drop(holding);
    common::eventually(
        "the lock of a vanished client is freed",
        Duration::from_secs(20),
        || async { db.scalar(&free).await == 1 },
    )
    .await;
}
