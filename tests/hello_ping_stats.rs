//! `hello`, `ping` and `stats` against the real broker: answers are string-keyed maps that echo
//! the request's id (0 and `u64::MAX` included), sessions get distinct ids, every `stats`
//! counter is an unsigned integer, and the Rust client sees the same.
//!
//! Every test has its own database (label `ops_*`) and its own broker, so rows and counters
//! are the test's alone; what the broker claims is checked directly in the database where
//! it matters.

mod common;

use common::raw::{assert_raw_ok, call_raw, field, req, RawConn};
use common::{TestBroker, TestDb};
use rmpv::Value as Msgpack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_ping_and_stats_answer_string_keyed_maps_echoing_the_id() {
    let db = TestDb::create("ops_hello").await;
    let broker = TestBroker::start(db.config());

    let mut first = RawConn::connect(broker.addr).await;
    let hello = call_raw(
        &mut first,
        req(7, "hello", vec![("client", Msgpack::from("ops-test/1"))]),
    )
    .await;
    assert_raw_ok(&hello, 7);
    let server = field(&hello, "server")
        .and_then(Msgpack::as_str)
        .expect("server is a str");
    assert!(!server.trim().is_empty(), "server names the broker");
    assert_eq!(field(&hello, "protocol").and_then(Msgpack::as_u64), Some(1));
    let first_session = field(&hello, "session")
        .and_then(Msgpack::as_u64)
        .expect("session is an unsigned integer");

    let mut second = RawConn::connect(broker.addr).await;
    let hello = call_raw(&mut second, req(8, "hello", vec![])).await;
    assert_raw_ok(&hello, 8);
    let second_session = field(&hello, "session")
        .and_then(Msgpack::as_u64)
        .expect("session is an unsigned integer");
    assert_ne!(first_session, second_session, "session ids are distinct");

    // The largest id is echoed exactly, and ping's answer is just ok.
    let ping = call_raw(&mut first, req(u64::MAX, "ping", vec![])).await;
    assert_raw_ok(&ping, u64::MAX);
    let ping = call_raw(&mut first, req(0, "ping", vec![])).await;
    assert_raw_ok(&ping, 0);

    let stats = call_raw(&mut second, req(9, "stats", vec![])).await;
    assert_raw_ok(&stats, 9);
    let counters = field(&stats, "stats").expect("a stats field");
    assert!(counters.is_map(), "stats is a map: {counters}");
    for name in [
        "sessions",
        "transactions_committed",
        "transactions_rolled_back",
        "retries",
        "deadlocks",
        "lock_waits",
        "lock_timeouts",
        "locks_held",
        "lock_waiters",
    ] {
        let value = field(counters, name).unwrap_or_else(|| panic!("stats lacks {name}"));
        assert!(
            value.as_u64().is_some(),
            "stats.{name} is not an unsigned integer: {value}"
        );
    }
    let sessions = field(counters, "sessions").and_then(Msgpack::as_u64);
    assert!(sessions >= Some(2), "two sessions are open: {counters}");
    assert_eq!(
        field(counters, "transactions_committed").and_then(Msgpack::as_u64),
        Some(0),
        "nothing committed yet on a fresh broker"
    );
    assert_eq!(
        field(counters, "mean_group_size").and_then(Msgpack::as_f64),
        Some(0.0),
        "no group yet: the derived mean is sent as 0.0"
    );

    // The Rust client sees the same.
    let client = broker.client().await;
    let info = client.hello(None).await.expect("hello");
    assert_eq!(info.protocol, 1);
    assert_eq!(info.server, server);
    assert!(info.session != first_session && info.session != second_session);
    client.ping().await.expect("ping");
    let stats = client.stats().await.expect("stats");
    assert!(stats.sessions >= 3, "{stats:?}");
}
