//! `FailoverClient` against real broker processes: an address that refuses is skipped; a
//! broker killed with SIGKILL leaves its request in flight answered with an error the caller
//! sees (never sent again), after which the client carries on through the next broker; and
//! a request in flight that carries an idempotency key is carried to the next broker with it
//! and committed there exactly once.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use common::process::BrokerProcess;
use common::requests::{keyed, transfer_tx, transfer_tx_keyed, with_keys};
use common::{bank, stats_until, within, TestDb};
use txbroker::client::{new_idempotency_key, ClientError, TxOutcome};
use txbroker::failover::FailoverClient;

/// An address on which nothing listens: a port the system just handed out and took back.
fn refusing_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = listener.local_addr().expect("its address").to_string();
    drop(listener);
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_refuses_is_skipped_for_the_next() {
    let db = bank("failover_refused", 2, 100).await;
    let broker = BrokerProcess::start("failover_refused", &db.config_file_text(""));
    let client = FailoverClient::new([refusing_address(), broker.addr.to_string()]);
    client
        .run_tx(transfer_tx("t1", 1, 2, 5))
        .await
        .expect("runs on the broker that listens");
    assert_eq!(
        client.current_address().await,
        Some(broker.addr.to_string())
    );
    assert_eq!(db.count("ledger").await, 1);
}

/// Two database-mode brokers; a transfer (`idempotency_key`, if any) waits on the first
/// for a key another client holds, and the first is SIGKILLed under it. Returns what the
/// client answered for it, the client, and the second broker.
async fn in_flight_when_the_first_broker_is_killed(
    name: &str,
    db: &TestDb,
    idempotency_key: Option<&str>,
) -> (
    Result<TxOutcome, ClientError>,
    FailoverClient,
    BrokerProcess,
) {
    // Named locks are server-wide: keys of this test's own.
    let keys = format!("{name}:");
    let config = db.config_file_text("coordination = \"database\"");
    let mut first = BrokerProcess::start(&format!("{name}_1"), &config);
    let second = BrokerProcess::start(&format!("{name}_2"), &config);
    let client = FailoverClient::new([first.addr.to_string(), second.addr.to_string()]);
    client
        .run_tx(transfer_tx_keyed(&keys, "before", 1, 2, 5))
        .await
        .expect("on the first broker");
    assert_eq!(client.current_address().await, Some(first.addr.to_string()));
    // Another client of the first broker holds account 1's key, so the next transfer waits.
    let holder = first.client().await;
    holder
        .begin(with_keys(&[format!("{keys}accounts:1")]))
        .await
        .expect("hold the key");
    let mut transfer = transfer_tx_keyed(&keys, "in_flight", 1, 2, 5);
    if let Some(key) = idempotency_key {
        transfer = keyed(transfer, key);
    }
    let client = Arc::new(client);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.run_tx(transfer).await }
    });
    stats_until(&holder, "the transfer waits for the key", |stats| {
        stats.lock_waiters >= 1
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(20));
    let answer = within("the request in flight is answered", in_flight)
        .await
        .expect("the request's task");
    let client = Arc::into_inner(client).expect("the task is done with the client");
    (answer, client, second)
}

/// The ledger rows of the transfer that was in flight when the first broker was killed.
async fn runs_of_the_one_in_flight(db: &TestDb) -> i64 {
    db.scalar("SELECT COUNT(*) FROM ledger WHERE id = 'in_flight'")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_brokers_request_in_flight_fails_visibly_and_the_next_broker_takes_over() {
    let db = bank("failover_killed", 2, 100).await;
    let (lost, client, second) =
        in_flight_when_the_first_broker_is_killed("failover_killed", &db, None).await;
    assert!(
        matches!(lost, Err(ClientError::Disconnected | ClientError::Io(_))),
        "{lost:?}"
    );
    client
        .run_tx(transfer_tx_keyed("failover_killed:", "after", 1, 2, 5))
        .await
        .expect("on the second broker");
    assert_eq!(
        client.current_address().await,
        Some(second.addr.to_string())
    );
    // The one in flight waited for its key and never ran; it was not sent again.
    assert_eq!(runs_of_the_one_in_flight(&db).await, 0);
    assert_eq!(db.count("ledger").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_tx_in_flight_on_a_killed_broker_commits_once_through_the_next() {
    let db = bank("failover_keyed", 2, 100).await;
    let key = new_idempotency_key();
    let (carried, client, second) =
        in_flight_when_the_first_broker_is_killed("failover_keyed", &db, Some(&key)).await;
    let outcome = carried.expect("sent again with its key, to the second broker");
    // It waited for its key on the first broker and never ran there: the second ran it.
    assert!(!outcome.replayed, "{outcome:?}");
    assert_eq!(
        client.current_address().await,
        Some(second.addr.to_string())
    );
    assert_eq!(
        runs_of_the_one_in_flight(&db).await,
        1,
        "committed exactly once"
    );
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        90
    );
    assert_eq!(db.count("ledger").await, 2);
}
