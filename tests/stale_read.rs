//! No stale read, no lost update, no lost commit, under hand-over and group execution, with
//! and without connections killed during COMMIT.
//!
//! Clients increment one counter row through the broker, every transaction declaring the
//! row's key, in three ways: an interactive transaction that reads the value with a plain
//! SELECT and writes value + 1 (logging the value it read); a `tx` that reads with a plain
//! SELECT and then increments (it runs alone, its read gated by hand-over); and a `tx` that
//! reads with SELECT ... FOR UPDATE and increments (it may be grouped). Each transaction
//! reports the value it read. Afterwards the values read by committed transactions are each
//! exactly one of 0..final: a value read twice is a stale read or a lost update, a value
//! missing is a lost commit (or, with faults, a transaction whose outcome was unknown).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestBroker, TestDb};
use mysql_async::prelude::Queryable;
use tokio::sync::Mutex;
use txbroker::client::{Client, ClientError, TxBuilder};
use txbroker::error::ErrorCode;
use txbroker::protocol::{QueryResult, Value};
use txbroker::Config;

const KEY: &str = "counter:1";
const CLIENTS: usize = 12;
const LOAD: Duration = Duration::from_millis(1500);

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Values read by transactions answered `ok`.
    committed_reads: Vec<i64>,
    /// Transactions answered `commit_unknown`, or whose connection to the broker broke.
    unknown: usize,
    failed: usize,
}

fn int(result: &QueryResult) -> i64 {
    match result.rows.first().and_then(|row| row.first()) {
        Some(Value::Int(n)) => *n,
        Some(Value::UInt(n)) => *n as i64,
        other => panic!("not an integer: {other:?}"),
    }
}

/// One increment of the counter, the `kind`-th way; the value it read when it committed.
async fn increment(client: &Client, kind: usize) -> Result<i64, ClientError> {
    match kind % 3 {
        0 => {
            client.begin(common::requests::with_keys(&[KEY])).await?;
            let read = client
                .exec("SELECT v FROM counter WHERE id = 1", vec![])
                .await;
            let read = match read {
                Ok(read) => int(&read),
                Err(error) => {
                    client.rollback().await?;
                    return Err(error);
                }
            };
            let written = async {
                client
                    .exec(
                        "UPDATE counter SET v = ? WHERE id = 1",
                        vec![(read + 1).into()],
                    )
                    .await?;
                client
                    .exec("INSERT INTO log (v) VALUES (?)", vec![read.into()])
                    .await?;
                client.commit().await
            }
            .await;
            if written.is_err() {
                let _ = client.rollback().await;
            }
            written.map(|()| read)
        }
        1 => {
            let outcome = TxBuilder::new()
                .lock(KEY)
                .exec("SELECT v FROM counter WHERE id = 1", vec![])
                .exec("UPDATE counter SET v = v + 1 WHERE id = 1", vec![])
                .into_request();
            Ok(int(&client.run_tx(outcome).await?.results[0]))
        }
        _ => {
            let outcome = TxBuilder::new()
                .lock(KEY)
                .exec("SELECT v FROM counter WHERE id = 1 FOR UPDATE", vec![])
                .exec("UPDATE counter SET v = v + 1 WHERE id = 1", vec![])
                .into_request();
            Ok(int(&client.run_tx(outcome).await?.results[0]))
        }
    }
}

/// Kills, again and again until told to stop, the connections of `db` that run a COMMIT.
async fn kill_commits(db: TestDb, stop: Arc<Mutex<bool>>) -> usize {
    let mut admin = db.conn().await;
    let mut killed = 0;
    while !*stop.lock().await {
        let running: Vec<u64> = admin
            .query(format!(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{}' AND INFO = 'COMMIT'",
                db.name
            ))
            .await
            .expect("processlist");
        for id in running {
            // Gone meanwhile: "Unknown thread id", fine.
            if admin
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed
}

async fn run_load(label: &str, config: impl Fn(Config) -> Config, faults: bool) {
    let db = TestDb::create_with(
        label,
        &[
            "CREATE TABLE counter (id INT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB",
            "INSERT INTO counter VALUES (1, 0)",
            "CREATE TABLE log (n INT AUTO_INCREMENT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB",
        ],
    )
    .await;
    let broker = TestBroker::start(config(db.config()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_killing = Arc::new(Mutex::new(false));
    let killer = faults.then(|| tokio::spawn(kill_commits(db.clone(), stop_killing.clone())));
    let until = Instant::now() + LOAD;
    let mut clients = Vec::new();
    for number in 0..CLIENTS {
        let addr = broker.addr;
        let seen = seen.clone();
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await.expect("connect");
            let mut kind = number;
            while Instant::now() < until {
                let outcome = increment(&client, kind).await;
                kind += 1;
                let mut seen = seen.lock().await;
                match outcome {
                    Ok(read) => seen.committed_reads.push(read),
                    Err(error) if error.code() == Some(ErrorCode::CommitUnknown) => {
                        seen.unknown += 1
                    }
                    Err(ClientError::Io(_) | ClientError::Disconnected) => {
                        seen.unknown += 1;
                        client = Client::connect(addr).await.expect("reconnect");
                    }
                    Err(_) => seen.failed += 1,
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client task");
    }
    *stop_killing.lock().await = true;
    let killed = match killer {
        Some(killer) => killer.await.expect("killer task"),
        None => 0,
    };
    let seen = seen.lock().await;
    let last = db.scalar("SELECT v FROM counter WHERE id = 1").await;
    check(label, &seen, last, killed);
    let logged: Vec<i64> = db
        .conn()
        .await
        .query("SELECT v FROM log")
        .await
        .expect("log");
    let distinct: BTreeSet<i64> = logged.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        logged.len(),
        "{label}: a value logged twice"
    );
    assert!(logged.iter().all(|v| (0..last).contains(v)), "{label}");
    if faults {
        assert!(killed > 0, "{label}: the fault was injected");
    }
}

fn check(label: &str, seen: &Seen, last: i64, killed: usize) {
    let committed = seen.committed_reads.len();
    let reads: BTreeSet<i64> = seen.committed_reads.iter().copied().collect();
    assert!(
        committed > 50,
        "{label}: the load ran ({committed} committed)"
    );
    assert_eq!(
        reads.len(),
        committed,
        "{label}: a value was read by two committed transactions (stale read or lost update)"
    );
    assert!(
        reads.iter().all(|v| (0..last).contains(v)),
        "{label}: a committed read of a value never written"
    );
    let missing = (0..last).filter(|v| !reads.contains(v)).count();
    assert!(
        missing <= seen.unknown,
        "{label}: {missing} increments committed that no committed or unknown transaction explains ({} unknown, {killed} killed)",
        seen.unknown
    );
    assert!(seen.failed < committed, "{label}: {} failed", seen.failed);
}

fn handover_only(config: Config) -> Config {
    Config {
        max_group_size: 1,
        ..config
    }
}

fn groups_only(config: Config) -> Config {
    Config {
        handover_at_commit: false,
        ..config
    }
}

#[actix_rt::test]
async fn hand_over_and_groups() {
    run_load("stale_both", |config| config, false).await;
}

#[actix_rt::test]
async fn hand_over_alone() {
    run_load("stale_handover", handover_only, false).await;
}

#[actix_rt::test]
async fn groups_alone() {
    run_load("stale_groups", groups_only, false).await;
}

#[actix_rt::test]
async fn hand_over_and_groups_with_commits_killed() {
    run_load("stale_both_killed", |config| config, true).await;
}

#[actix_rt::test]
async fn hand_over_alone_with_commits_killed() {
    run_load("stale_handover_killed", handover_only, true).await;
}
