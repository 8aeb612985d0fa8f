//! `FailoverClient` against real broker processes: an address that refuses is skipped, and a
//! broker killed with SIGKILL leaves its request in flight answered with an error the caller
//! sees (never sent again), after which the client carries on through the next broker.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::process::BrokerProcess;
use common::requests::{transfer_tx, transfer_tx_keyed, with_keys};
use common::{bank, stats_until, within};
use txbroker::client::ClientError;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_brokers_request_in_flight_fails_visibly_and_the_next_broker_takes_over() {
    // Named locks are server-wide: keys of this test's own.
    const KEYS: &str = "failover_killed:";
    let db = bank("failover_killed", 2, 100).await;
    let config = db.config_file_text("coordination = \"database\"");
    let mut first = BrokerProcess::start("failover_killed_1", &config);
    let second = BrokerProcess::start("failover_killed_2", &config);
    let client = FailoverClient::new([first.addr.to_string(), second.addr.to_string()]);
    client
        .run_tx(transfer_tx_keyed(KEYS, "before", 1, 2, 5))
        .await
        .expect("on the first broker");
    assert_eq!(client.current_address().await, Some(first.addr.to_string()));
    // Another client of the first broker holds account 1's key, so the next transfer waits.
    let holder = first.client().await;
    holder
        .begin(with_keys(&[format!("{KEYS}accounts:1")]))
        .await
        .expect("hold the key");
    let client = std::sync::Arc::new(client);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .run_tx(transfer_tx_keyed(KEYS, "in_flight", 1, 2, 5))
                .await
        }
    });
    stats_until(&holder, "the transfer waits for the key", |stats| {
        stats.lock_waiters >= 1
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(20));
    let lost = within("the request in flight is answered", in_flight)
        .await
        .expect("the request's task");
    assert!(
        matches!(lost, Err(ClientError::Disconnected | ClientError::Io(_))),
        "{lost:?}"
    );
    client
        .run_tx(transfer_tx_keyed(KEYS, "after", 1, 2, 5))
        .await
        .expect("on the second broker");
    assert_eq!(
        client.current_address().await,
        Some(second.addr.to_string())
    );
    // The one in flight waited for its key and never ran; it was not sent again.
    let ledger = db
        .scalar("SELECT COUNT(*) FROM ledger WHERE id = 'in_flight'")
        .await;
    assert_eq!(ledger, 0);
    assert_eq!(db.count("ledger").await, 2);
}
