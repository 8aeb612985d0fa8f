//! The shortest path through the broker, on each thread layout it supports.

mod common;

use common::{TestBroker, TestDb};
use txbroker::config::CoordinatorThread;
use txbroker::protocol::Value;
use txbroker::Config;

async fn transfer_through(
    label: &str,
    session_threads: usize,
    coordinator_thread: CoordinatorThread,
) {
    let db = TestDb::create_with(
        label,
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
            "INSERT INTO t VALUES (1, 10)",
        ],
    )
    .await;
    let broker = TestBroker::start(Config {
        session_threads,
        coordinator_thread,
        ..db.config()
    });
    let clients = [
        broker.client().await,
        broker.client().await,
        broker.client().await,
    ];
    let runs = clients.iter().map(|client| {
        client
            .tx()
            .lock("t:1")
            .exec(
                "UPDATE t SET v = v + ? WHERE id = ?",
                vec![5.into(), 1.into()],
            )
            .exec("SELECT v FROM t WHERE id = 1", vec![])
            .run()
    });
    let outcomes = futures_util::future::join_all(runs).await;
    let mut seen: Vec<i64> = outcomes
        .into_iter()
        .map(|outcome| {
            outcome.expect("tx").results[1].rows[0][0]
                .as_i64()
                .expect("int")
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        vec![15, 20, 25],
        "each transaction saw the one before it"
    );
    let stats = clients[0].stats().await.expect("stats");
    assert_eq!((stats.transactions_committed, stats.locks_held), (3, 0));
    assert_eq!(
        clients[0]
            .exec("SELECT v FROM t", vec![])
            .await
            .expect("select")
            .rows,
        vec![vec![Value::Int(25)]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_thread_with_the_coordinator_on_it() {
    transfer_through("smoke_shared", 1, CoordinatorThread::WithSessions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_session_threads_and_a_coordinator_thread_of_its_own() {
    transfer_through("smoke_own", 3, CoordinatorThread::Own).await;
}
