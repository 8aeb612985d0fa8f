//! Faults injected from outside, with real processes: the `txbroker` binary on a free port,
//! client processes killed with SIGKILL, SIGTERM under load, twice `max_sessions` clients,
//! a client that floods requests and never reads (the broker's RSS measured), and clients
//! that stall mid-frame. Each test has its own database (`txb_fp_*`) on the shared MariaDB,
//! waits on events (stats, process state) with deadlines, and kills what it spawns on drop.

mod common;
mod fault_support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, map, stats_until, RawConn, TestDb};
use fault_support::{BrokerProcess, ScriptClient};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use txbroker::client::{Client, ClientError};
use txbroker::error::ErrorCode;
use txbroker::locks::LockRequest;
use txbroker::protocol::{Reply, Request, Response, Statement, TxOptions, TxRequest, Value};

type Msgpack = rmpv::Value;

const PATIENCE: Duration = Duration::from_secs(20);

fn with_keys(exclusive: &[&str]) -> TxOptions {
    TxOptions {
        locks: Some(
            LockRequest::new(exclusive.iter().map(|k| k.to_string()), Vec::new())
                .expect("at least one key"),
        ),
        ..TxOptions::default()
    }
}

/// A database with `accounts` (ids 1..=rows, balance `balance`) and an empty `ledger`.
async fn accounts(label: &str, rows: u32, balance: i64) -> TestDb {
    let db = TestDb::create(label).await;
    db.run(&[
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, from_id INT NOT NULL, \
         to_id INT NOT NULL, amount BIGINT NOT NULL) ENGINE=InnoDB",
    ])
    .await;
    let values: Vec<String> = (1..=rows).map(|id| format!("({id}, {balance})")).collect();
    db.run(&[&format!("INSERT INTO accounts VALUES {}", values.join(","))])
        .await;
    db
}

fn broker_config(db: &TestDb, extra: &str) -> String {
    format!("database_url = \"{}\"\n{extra}\n", db.url)
}

async fn connect(broker: &BrokerProcess) -> Client {
    let client = Client::connect(broker.addr).await.expect("connect");
    client.ping().await.expect("admitted and served");
    client
}

fn balance_of(result: &txbroker::protocol::QueryResult) -> i64 {
    result.rows[0][0].as_i64().expect("an integer balance")
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------
// 1. Client processes killed with SIGKILL.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_process_killed_while_waiting_for_a_key_leaves_the_queue_and_frees_its_keys() {
    let db = accounts("fp_kill_waiting", 2, 100).await;
    let broker = BrokerProcess::start("kill_waiting", &broker_config(&db, ""));
    let observer = connect(&broker).await;
    let holder = connect(&broker).await;
    holder
        .begin(with_keys(&["accounts:2"]))
        .await
        .expect("begin");
    holder
        .exec(
            "UPDATE accounts SET balance = balance + 1 WHERE id = 2",
            vec![],
        )
        .await
        .expect("update");

    // The process is granted accounts:1 and queues for accounts:2 (held above).
    let mut waiter = ScriptClient::start(
        broker.addr,
        &[],
        &[json!({"id": 1, "op": "begin", "locks": ["accounts:1", "accounts:2"]})],
    );
    waiter.expect_line("READY", PATIENCE).await;
    stats_until(
        &observer,
        "the process holds accounts:1 and waits for accounts:2",
        |s| s.sessions == 3 && s.lock_waiters == 1 && s.locks_held == 2,
    )
    .await;

    // Another client queues behind the process for accounts:1.
    let queued = connect(&broker).await;
    let behind = tokio::spawn(queued.send(Request::Tx(TxRequest {
        statements: vec![
            Statement::new(
                "UPDATE accounts SET balance = balance - 1 WHERE id = 1",
                vec![],
            ),
            Statement::new("SELECT balance FROM accounts WHERE id = 1", vec![]),
        ],
        options: with_keys(&["accounts:1"]),
        retries: None,
    })));
    stats_until(&observer, "the second waiter is queued", |s| {
        s.lock_waiters == 2
    })
    .await;

    waiter.kill();

    // The queued client proceeds at once: the process's accounts:1 is released while the
    // holder still holds accounts:2.
    let reply = within("the queued tx", behind)
        .await
        .expect("task")
        .expect("the queued tx commits");
    let Reply::Tx { results, attempts } = reply else {
        panic!("expected a tx reply, got {reply:?}");
    };
    assert_eq!(attempts, 1);
    assert_eq!(balance_of(&results[1]), 99);
    let stats = stats_until(
        &observer,
        "the killed session ended, its wait and its keys gone",
        |s| s.sessions == 3 && s.lock_waiters == 0 && s.locks_held == 1,
    )
    .await;
    println!("after the kill, holder still in its transaction: {stats:?}");

    holder.commit().await.expect("the holder commits");
    let stats = stats_until(&observer, "at rest", |s| {
        s.locks_held == 0 && s.lock_waiters == 0 && s.sessions == 3
    })
    .await;
    println!("at rest: {stats:?}");
    // Nothing of the killed process is left: the key it waited for is free at once.
    let outcome = within(
        "a tx on both keys",
        observer
            .tx()
            .lock("accounts:1")
            .lock("accounts:2")
            .exec("SELECT CAST(SUM(balance) AS SIGNED) FROM accounts", vec![])
            .run(),
    )
    .await
    .expect("both keys are free");
    assert_eq!(balance_of(&outcome.results[0]), 200);
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 2").await,
        101
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_process_killed_mid_transaction_loses_its_writes_and_its_keys() {
    let db = accounts("fp_kill_holding", 2, 100).await;
    let broker = BrokerProcess::start("kill_holding", &broker_config(&db, ""));
    let observer = connect(&broker).await;

    let mut victim = ScriptClient::start(
        broker.addr,
        &[
            json!({"id": 1, "op": "begin", "locks": ["accounts:1", "accounts:2"]}),
            json!({"id": 2, "op": "exec", "sql": "UPDATE accounts SET balance = 0 WHERE id = 1"}),
            json!({"id": 3, "op": "exec",
                   "sql": "INSERT INTO ledger VALUES ('killed', 1, 2, 100)"}),
            json!({"id": 4, "op": "exec",
                   "sql": "UPDATE accounts SET balance = balance + 100 WHERE id = 2"}),
        ],
        &[],
    );
    victim.expect_line("READY", PATIENCE).await;
    let stats = stats_until(&observer, "the process holds its keys", |s| {
        s.sessions == 2 && s.locks_held == 2
    })
    .await;
    let rolled_back_before = stats.transactions_rolled_back;

    // Two clients wait for the process's keys.
    let first = connect(&broker).await;
    let second = connect(&broker).await;
    let transfer = |client: &Client| {
        client.send(Request::Tx(TxRequest {
            statements: vec![
                Statement::new("SELECT balance FROM accounts WHERE id = 1", vec![]),
                Statement::new(
                    "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
                    vec![],
                ),
                Statement::new(
                    "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
                    vec![],
                ),
            ],
            options: with_keys(&["accounts:1", "accounts:2"]),
            retries: None,
        }))
    };
    let first_tx = tokio::spawn(transfer(&first));
    stats_until(&observer, "one client waits", |s| s.lock_waiters == 1).await;
    let second_tx = tokio::spawn(transfer(&second));
    stats_until(&observer, "two clients wait", |s| s.lock_waiters == 2).await;

    victim.kill();

    let mut seen = Vec::new();
    for (name, waiting) in [("first", first_tx), ("second", second_tx)] {
        let reply = within(name, waiting)
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("the {name} waiter's tx fails: {e}"));
        let Reply::Tx { results, .. } = reply else {
            panic!("expected a tx reply, got {reply:?}");
        };
        seen.push(balance_of(&results[0]));
    }
    assert_eq!(
        seen,
        vec![100, 90],
        "the killed process's write (balance 0) was rolled back; the waiters ran in order"
    );
    let stats = stats_until(&observer, "at rest", |s| {
        s.locks_held == 0 && s.lock_waiters == 0 && s.sessions == 3
    })
    .await;
    println!("at rest after the kill: {stats:?}");
    assert!(
        stats.transactions_rolled_back > rolled_back_before,
        "the killed session's transaction counts as rolled back: {stats:?}"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM ledger").await, 0);
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 1").await,
        80
    );
    assert_eq!(
        db.scalar("SELECT balance FROM accounts WHERE id = 2").await,
        120
    );
    // No row lock of the dead transaction lingers in InnoDB either.
    let mut direct = db.conn().await;
    mysql_async::prelude::Queryable::query_drop(
        &mut direct,
        "SET SESSION innodb_lock_wait_timeout = 1",
    )
    .await
    .expect("set timeout");
    mysql_async::prelude::Queryable::query_drop(
        &mut direct,
        "UPDATE accounts SET balance = balance WHERE id IN (1, 2)",
    )
    .await
    .expect("no row lock is left behind");
}

// ---------------------------------------------------------------------------------------
// 2. SIGTERM under load.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Outcomes {
    acknowledged: Vec<String>,
    failed: Vec<(String, ErrorCode)>,
    /// No answer (the connection ended): the outcome is unknown to the client.
    unknown: Vec<String>,
}

impl Outcomes {
    fn record(&mut self, id: String, result: &Result<impl Sized, ClientError>) -> bool {
        match result {
            Ok(_) => {
                self.acknowledged.push(id);
                true
            }
            Err(error) => {
                match error.code() {
                    Some(code) => self.failed.push((id, code)),
                    None => self.unknown.push(id),
                }
                false
            }
        }
    }

    fn merge(&mut self, other: Outcomes) {
        self.acknowledged.extend(other.acknowledged);
        self.failed.extend(other.failed);
        self.unknown.extend(other.unknown);
    }
}

fn transfer_tx(id: &str, from: i64, to: i64) -> TxRequest {
    TxRequest {
        statements: vec![
            Statement::new(
                "UPDATE accounts SET balance = balance - 1 WHERE id = ?",
                vec![from.into()],
            ),
            Statement::new(
                "UPDATE accounts SET balance = balance + 1 WHERE id = ?",
                vec![to.into()],
            ),
            Statement::new(
                "INSERT INTO ledger VALUES (?, ?, ?, 1)",
                vec![id.into(), from.into(), to.into()],
            ),
        ],
        options: with_keys(&[&format!("accounts:{from}"), &format!("accounts:{to}")]),
        retries: None,
    }
}

/// Transfers between accounts 1..=10 until the broker answers `shutting_down` or the
/// connection ends.
async fn transfer_worker(client: Client, worker: u64, done: Arc<AtomicU64>) -> Outcomes {
    let mut outcomes = Outcomes::default();
    let mut state = worker * 7919 + 17;
    for seq in 0.. {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let from = (state >> 33) % 10 + 1;
        let to = (from + (state >> 17) % 9) % 10 + 1;
        let id = format!("w{worker}-{seq}");
        let result = client
            .run_tx(transfer_tx(&id, from as i64, to as i64))
            .await;
        if outcomes.record(id, &result) {
            done.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match result.err().and_then(|e| e.code()) {
            Some(ErrorCode::ShuttingDown) | None => break,
            Some(_) => continue,
        }
    }
    outcomes
}

/// An interactive transfer between `from` and `to` that debits, says it is inside, waits for
/// `go`, then credits, writes its ledger row and commits.
async fn interactive_transfer(
    client: Client,
    id: String,
    from: i64,
    to: i64,
    inside: tokio::sync::mpsc::Sender<()>,
    mut go: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ClientError> {
    client
        .begin(with_keys(&[
            &format!("accounts:{from}"),
            &format!("accounts:{to}"),
        ]))
        .await?;
    client
        .exec(
            "UPDATE accounts SET balance = balance - 1 WHERE id = ?",
            vec![from.into()],
        )
        .await?;
    let _ = inside.send(()).await;
    let _ = go.wait_for(|go| *go).await;
    client
        .exec(
            "UPDATE accounts SET balance = balance + 1 WHERE id = ?",
            vec![to.into()],
        )
        .await?;
    client
        .exec(
            "INSERT INTO ledger VALUES (?, ?, ?, 1)",
            vec![id.as_str().into(), from.into(), to.into()],
        )
        .await?;
    client.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_to_transaction_boundaries_and_loses_no_acknowledged_commit() {
    const GRACE_MS: u64 = 4000;
    const ACCOUNTS: u32 = 16;
    const INITIAL: i64 = 1000;
    let db = accounts("fp_sigterm", ACCOUNTS, INITIAL).await;
    let mut broker = BrokerProcess::start(
        "sigterm",
        &broker_config(
            &db,
            &format!("shutdown_grace_ms = {GRACE_MS}\nlock_wait_timeout_ms = 15000"),
        ),
    );
    let idle = connect(&broker).await;

    // Three interactive transactions hold accounts 11..=16, in pairs.
    let (inside_sender, mut inside) = tokio::sync::mpsc::channel(8);
    let (go_sender, go) = tokio::sync::watch::channel(false);
    let mut interactive = Vec::new();
    for (n, (from, to)) in [(11, 12), (13, 14), (15, 16)].into_iter().enumerate() {
        let client = connect(&broker).await;
        let id = format!("i{n}");
        interactive.push((
            id.clone(),
            tokio::spawn(interactive_transfer(
                client,
                id,
                from,
                to,
                inside_sender.clone(),
                go.clone(),
            )),
        ));
    }
    for _ in 0..3 {
        within("an interactive transaction is open", inside.recv())
            .await
            .expect("inside");
    }
    // A tx admitted before the signal waits for keys an interactive transaction holds.
    let blocked_client = connect(&broker).await;
    let blocked = tokio::spawn(blocked_client.send(Request::Tx(transfer_tx("blocked", 11, 12))));
    stats_until(&idle, "the blocked tx waits for its keys", |s| {
        s.lock_waiters == 1 && s.locks_held == 6
    })
    .await;

    // Transfer load.
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..6 {
        let client = connect(&broker).await;
        workers.push(tokio::spawn(transfer_worker(client, worker, done.clone())));
    }
    eventually("the load is running", PATIENCE, || async {
        done.load(Ordering::Relaxed) >= 60
    })
    .await;

    broker.signal("TERM");
    let signalled = Instant::now();
    let committed_at_signal = done.load(Ordering::Relaxed);

    // New transactions are refused, retryably; ping and stats still answered.
    eventually("a new tx is answered shutting_down", PATIENCE, || async {
        match idle.tx().exec("SELECT 1", vec![]).run().await {
            Err(error) => error.code() == Some(ErrorCode::ShuttingDown) && error.is_retryable(),
            Ok(_) => false,
        }
    })
    .await;
    let begin = idle.begin(TxOptions::default()).await;
    assert_eq!(
        begin.as_ref().err().and_then(|e| e.code()),
        Some(ErrorCode::ShuttingDown),
        "{begin:?}"
    );
    let autocommit = idle.exec("SELECT 1", vec![]).await;
    assert_eq!(
        autocommit.as_ref().err().and_then(|e| e.code()),
        Some(ErrorCode::ShuttingDown),
        "{autocommit:?}"
    );
    idle.ping().await.expect("ping is answered while draining");
    let draining = idle
        .stats()
        .await
        .expect("stats are answered while draining");
    println!("draining: {draining:?}");
    // New connections are refused while the broker is still up, draining.
    eventually("new connections are refused", PATIENCE, || async {
        tokio::net::TcpStream::connect(broker.addr).await.is_err()
    })
    .await;
    assert!(
        broker.is_running(),
        "the broker waits for the open transactions"
    );

    // The open transactions go on to their boundary.
    go_sender.send(true).expect("go");
    let mut outcomes = Outcomes::default();
    for (id, task) in interactive {
        let result = within("an interactive transaction", task)
            .await
            .expect("task");
        assert!(
            result.is_ok(),
            "{id}: an open transaction commits during the drain: {result:?}"
        );
        outcomes.record(id, &result);
    }
    let blocked = within("the blocked tx", blocked).await.expect("task");
    assert!(
        blocked.is_ok(),
        "a tx admitted before the signal reaches its boundary: {blocked:?}"
    );
    outcomes.record("blocked".into(), &blocked);

    let status =
        tokio::task::block_in_place(|| broker.wait_exit(Duration::from_millis(GRACE_MS + 10_000)));
    let exited_after = signalled.elapsed();
    for worker in workers {
        outcomes.merge(within("a transfer worker", worker).await.expect("task"));
    }
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
    assert!(
        exited_after < Duration::from_millis(GRACE_MS),
        "exits within shutdown_grace_ms ({GRACE_MS} ms): took {exited_after:?}"
    );

    // The ledger: every acknowledged commit is there, nothing answered as failed is.
    let mut conn = db.conn().await;
    let rows: Vec<String> =
        mysql_async::prelude::Queryable::query(&mut conn, "SELECT id FROM ledger")
            .await
            .expect("ledger");
    let ledger: HashSet<String> = rows.into_iter().collect();
    let missing: Vec<_> = outcomes
        .acknowledged
        .iter()
        .filter(|id| !ledger.contains(*id))
        .collect();
    let failed_but_present: Vec<_> = outcomes
        .failed
        .iter()
        .filter(|(id, _)| ledger.contains(id))
        .collect();
    let unknown: HashSet<&String> = outcomes.unknown.iter().collect();
    let acknowledged: HashSet<&String> = outcomes.acknowledged.iter().collect();
    let unaccounted: Vec<_> = ledger
        .iter()
        .filter(|id| !acknowledged.contains(id) && !unknown.contains(id))
        .collect();
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for (_, code) in &outcomes.failed {
        *by_code.entry(code.as_str().to_string()).or_default() += 1;
    }
    println!(
        "SIGTERM under load: {} acknowledged ({committed_at_signal} transfers before the \
         signal), failed by code {by_code:?}, {} without an answer, {} ledger rows; exit 0 \
         after {exited_after:?} (grace {GRACE_MS} ms)",
        outcomes.acknowledged.len(),
        outcomes.unknown.len(),
        ledger.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not in the database: {missing:?}"
    );
    assert!(
        failed_but_present.is_empty(),
        "answered as failed but committed: {failed_but_present:?}"
    );
    assert!(
        unaccounted.is_empty(),
        "in the ledger but never acknowledged: {unaccounted:?}"
    );
    assert!(
        by_code.keys().all(|code| code == "shutting_down"),
        "transfers with declared keys fail only because of the drain: {by_code:?}"
    );
    // Every balance matches the ledger exactly, and the total holds.
    assert_eq!(
        db.scalar("SELECT SUM(balance) FROM accounts").await,
        INITIAL * ACCOUNTS as i64
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM accounts a WHERE a.balance <> {INITIAL} \
             - COALESCE((SELECT SUM(amount) FROM ledger WHERE from_id = a.id), 0) \
             + COALESCE((SELECT SUM(amount) FROM ledger WHERE to_id = a.id), 0)"
        ))
        .await,
        0,
        "every balance is what the ledger says"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Overload: twice max_sessions clients.
// ---------------------------------------------------------------------------------------

fn error_of(response: &Response) -> &txbroker::protocol::ErrorReply {
    match &response.outcome {
        Err(error) => error,
        Ok(reply) => panic!("expected an error, got {reply:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twice_max_sessions_clients_the_extra_ones_get_busy_and_the_others_are_unaffected() {
    const N: usize = 4;
    let db = TestDb::create("fp_overload").await;
    db.run(&["CREATE TABLE events (client INT, seq INT, PRIMARY KEY (client, seq))"])
        .await;
    let broker = BrokerProcess::start(
        "overload",
        &broker_config(&db, &format!("max_sessions = {N}")),
    );
    let mut admitted = Vec::new();
    for _ in 0..N {
        admitted.push(Arc::new(connect(&broker).await));
    }
    // The admitted clients keep running transactions throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..N).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut workers = Vec::new();
    for (n, client) in admitted.iter().enumerate() {
        let (client, stop, counter) = (client.clone(), stop.clone(), counters[n].clone());
        workers.push(tokio::spawn(async move {
            let mut seq = 0i64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .tx()
                    .lock(format!("client:{n}"))
                    .exec(
                        "INSERT INTO events VALUES (?, ?)",
                        vec![(n as i64).into(), seq.into()],
                    )
                    .run()
                    .await
                    .map_err(|e| format!("client {n}, tx {seq}: {e}"))?;
                seq += 1;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<i64, String>(seq)
        }));
    }
    eventually("every admitted client commits", PATIENCE, || async {
        counters.iter().all(|c| c.load(Ordering::Relaxed) >= 5)
    })
    .await;

    // N more clients at once: every one is refused with busy (id nil, retryable), then closed.
    let refused = futures_util::future::join_all((0..N).map(|_| async {
        let mut conn = RawConn::connect(broker.addr).await;
        let body = conn.read_frame().await.expect("the busy answer");
        let response = Response::decode(&body).expect("a response");
        let closed = conn.is_closed_by_server().await;
        (response, closed)
    }))
    .await;
    for (response, closed) in &refused {
        assert_eq!(response.id, None, "busy is sent with id nil");
        let error = error_of(response);
        assert_eq!(error.code, ErrorCode::Busy, "{error:?}");
        assert!(error.retryable, "busy is retryable");
        assert!(closed, "the refused connection is closed");
    }
    println!("refused: {}", error_of(&refused[0].0).message);

    // The admitted ones went on and go on.
    let marks: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eventually(
        "every admitted client keeps committing",
        PATIENCE,
        || async {
            counters
                .iter()
                .zip(&marks)
                .all(|(c, mark)| c.load(Ordering::Relaxed) >= mark + 5)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let committed = within("an admitted client's worker", worker)
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("an admitted client was affected: {e}"));
        total += committed;
    }
    assert_eq!(db.scalar("SELECT COUNT(*) FROM events").await, total);
    let stats = admitted[0].stats().await.expect("stats");
    assert_eq!(
        stats.sessions, N as u64,
        "only the admitted sessions: {stats:?}"
    );
    assert_eq!(stats.locks_held, 0);
    println!("overload: {total} transactions committed by the {N} admitted clients, {N} refused");

    // Retryable indeed: once one admitted client leaves, a new one is admitted.
    drop(admitted.pop());
    stats_until(&admitted[0], "the departed session ended", |s| {
        s.sessions == N as u64 - 1
    })
    .await;
    let newcomer = connect(&broker).await;
    newcomer
        .tx()
        .exec("SELECT 1", vec![])
        .run()
        .await
        .expect("the newcomer is served");
}

// ---------------------------------------------------------------------------------------
// 4. A client that pipelines and never reads: held back, memory bounded.
// ---------------------------------------------------------------------------------------

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Vec<u8> {
    let mut length = [0u8; 4];
    within("a frame", reader.read_exact(&mut length))
        .await
        .expect("read length");
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    within("a frame body", reader.read_exact(&mut body))
        .await
        .expect("read body");
    body
}

fn exec_frame(id: u64, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    rmpv::encode::write_value(
        &mut body,
        &map(vec![
            ("id", Msgpack::from(id)),
            ("op", Msgpack::from("exec")),
            ("sql", Msgpack::from(sql)),
        ]),
    )
    .expect("encode");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_pipelines_and_never_reads_is_held_back_and_memory_stays_bounded() {
    const FLOODERS: usize = 4;
    const MIN_FLOOD: Duration = Duration::from_secs(3);
    const STALLED_FOR: Duration = Duration::from_millis(1500);
    const FLOOD_SQL: &str = "SELECT REPEAT('x', 10000)";
    let db = TestDb::create("fp_flood").await;
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY, n BIGINT NOT NULL)"])
        .await;
    db.run(&["INSERT INTO t VALUES (1, 0)"]).await;
    let broker = BrokerProcess::start("flood", &broker_config(&db, "max_pipelined_requests = 64"));
    let bystander = connect(&broker).await;
    // Warm up: the bystander and every flooder's session have served a few requests.
    for _ in 0..20 {
        bystander.exec(FLOOD_SQL, vec![]).await.expect("warm up");
    }
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let mut conn = RawConn::connect(broker.addr).await;
        conn.send_bytes(&exec_frame(1, FLOOD_SQL)).await;
        let response = Response::decode(&conn.read_frame().await.expect("answer")).expect("ok");
        assert!(response.outcome.is_ok(), "{response:?}");
        flooders.push(conn);
    }
    stats_until(&bystander, "every session is up", |s| {
        s.sessions == 1 + FLOODERS as u64
    })
    .await;
    let rss_before = broker.rss_kib();

    // Sample the broker's RSS throughout.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (sampling, peak, pid) = (sampling.clone(), peak.clone(), broker.pid());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = fault_support::try_rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // Flood: each flooder writes requests as fast as the socket takes them, never reading.
    let written: Vec<Arc<AtomicU64>> = (0..FLOODERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    let mut tasks = Vec::new();
    for (n, conn) in flooders.into_iter().enumerate() {
        let (reader, mut writer) = conn.stream.into_split();
        readers.push(reader);
        let (written, mut stop) = (written[n].clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = 2u64;
            loop {
                let mut chunk = Vec::new();
                for _ in 0..64 {
                    chunk.extend_from_slice(&exec_frame(id, FLOOD_SQL));
                    id += 1;
                }
                tokio::select! {
                    result = writer.write_all(&chunk) => {
                        if result.is_err() {
                            return writer;
                        }
                        written.fetch_add(64, Ordering::Relaxed);
                    }
                    _ = stop.wait_for(|stop| *stop) => return writer,
                }
            }
        }));
    }

    // Meanwhile the bystander is served normally; the flood ends once every flooder has
    // made no progress for STALLED_FOR (it is held back), after at least MIN_FLOOD.
    let started = Instant::now();
    let mut last_seen: Vec<(u64, Instant)> = vec![(0, started); FLOODERS];
    let mut served = 0u64;
    let mut slowest = Duration::ZERO;
    let mut rss_at_last_progress = rss_before;
    loop {
        let asked = Instant::now();
        within(
            "the bystander's tx",
            bystander
                .tx()
                .lock("t:1")
                .exec("UPDATE t SET n = n + 1 WHERE id = 1", vec![])
                .exec("SELECT REPEAT('y', 100)", vec![])
                .run(),
        )
        .await
        .expect("the bystander is served during the flood");
        slowest = slowest.max(asked.elapsed());
        served += 1;
        let now = Instant::now();
        for (n, counter) in written.iter().enumerate() {
            let count = counter.load(Ordering::Relaxed);
            if count != last_seen[n].0 {
                last_seen[n] = (count, now);
                rss_at_last_progress = broker.rss_kib();
            }
        }
        let held_back = last_seen
            .iter()
            .all(|(_, at)| now.duration_since(*at) >= STALLED_FOR);
        if started.elapsed() >= MIN_FLOOD && held_back {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flooders were never held back: requests written so far {:?}",
            last_seen.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    }
    let flood_time = started.elapsed();
    let rss_held = broker.rss_kib();
    let _ = stop_sender.send(true);
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(within("a flooder stops", task).await.expect("task"));
    }

    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let rss_peak = peak.load(Ordering::Relaxed).max(rss_held);
    let requests: Vec<u64> = written.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let growth_kib = rss_peak.saturating_sub(rss_before);
    println!(
        "flood: {FLOODERS} clients wrote {requests:?} requests of `{FLOOD_SQL}` in \
         {flood_time:?} and were then held back (no progress for {STALLED_FOR:?}); broker \
         VmRSS before {rss_before} KiB, peak {rss_peak} KiB (+{growth_kib} KiB), while held \
         {rss_held} KiB ({rss_at_last_progress} KiB when the flooders last made progress); \
         the bystander ran {served} transactions meanwhile, slowest {slowest:?}"
    );
    assert!(
        growth_kib < 64 * 1024,
        "the broker's memory grew by {growth_kib} KiB under the flood"
    );
    // Held back by the broker, not only by full kernel buffers: once the flooders could no
    // longer write, the broker stopped reading and answering them, so its memory stopped
    // growing.
    assert!(
        rss_held.saturating_sub(rss_at_last_progress) < 8 * 1024,
        "the broker kept reading the flooders after they were stalled: VmRSS {} KiB -> {} KiB",
        rss_at_last_progress,
        rss_held
    );
    assert!(served >= 10, "the bystander was served: {served}");
    assert!(
        slowest < Duration::from_secs(2),
        "the bystander was held up: slowest {slowest:?}"
    );

    // Nothing was lost: the first answers wait, in order, for the flooder to read them.
    for reader in &mut readers {
        for id in 2..=4u64 {
            let response = Response::decode(&read_frame(reader).await).expect("a response");
            assert_eq!(response.id, Some(id));
            match response.outcome {
                Ok(Reply::Exec { result }) => {
                    assert_eq!(result.rows[0][0], Value::Text("x".repeat(10_000)))
                }
                other => panic!("expected the exec result, got {other:?}"),
            }
        }
    }
    // The flooders hang up with answers unread: their sessions end and the memory is freed.
    drop(writers);
    drop(readers);
    let stats = stats_until(&bystander, "the flooders' sessions ended", |s| {
        s.sessions == 1
    })
    .await;
    assert_eq!(stats.locks_held, 0);
    bystander.ping().await.expect("still served");
    println!(
        "flood: after the flooders left, broker VmRSS {} KiB",
        broker.rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_floods_then_hangs_up_ends_its_session_and_leaves_the_broker_idle() {
    const FLOOD_SQL: &str = "SELECT REPEAT('x', 10000)";
    let db = TestDb::create("fp_flood_hangup").await;
    let broker = BrokerProcess::start("flood_hangup", &broker_config(&db, ""));
    let observer = connect(&broker).await;
    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_bytes(&exec_frame(1, FLOOD_SQL)).await;
    assert!(conn.read_frame().await.is_some(), "the flooder is served");
    // A short flood, never reading: the writes stop when the socket takes no more.
    let mut written = 0u64;
    let flood = async {
        let mut id = 2u64;
        loop {
            let mut chunk = Vec::new();
            for _ in 0..64 {
                chunk.extend_from_slice(&exec_frame(id, FLOOD_SQL));
                id += 1;
            }
            if conn.stream.write_all(&chunk).await.is_err() {
                return;
            }
            written += 64;
        }
    };
    // Flooding for a while is the behaviour under test.
    let _ = tokio::time::timeout(Duration::from_secs(2), flood).await;
    drop(conn);
    let hung_up = Instant::now();
    let cpu_before = cpu_ticks(broker.pid());
    let stats = stats_until(&observer, "the flooder's session ended", |s| {
        s.sessions == 1
    })
    .await;
    println!(
        "flood then hang-up: {written} requests written; session ended {:?} after the \
         hang-up; {stats:?}",
        hung_up.elapsed()
    );
    println!(
        "broker CPU until the session ended: {} ticks",
        cpu_ticks(broker.pid()) - cpu_before
    );
    // Idle again: the broker does not spin on the dead connection. Quiet for a second is the
    // behaviour under test.
    let idle_from = cpu_ticks(broker.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_ticks = cpu_ticks(broker.pid()) - idle_from;
    assert!(
        idle_ticks < 30,
        "the idle broker used {idle_ticks} clock ticks of CPU in one second"
    );
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

// ---------------------------------------------------------------------------------------
// 5. Half-open clients stalled mid-frame.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_clients_stalled_mid_frame_are_closed_after_the_read_timeout_and_hold_up_nobody() {
    const TIMEOUT_MS: u64 = 1500;
    let db = TestDb::create("fp_stalled").await;
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let broker = BrokerProcess::start(
        "stalled",
        &broker_config(&db, &format!("client_read_timeout_ms = {TIMEOUT_MS}")),
    );
    let observer = connect(&broker).await;
    let other = connect(&broker).await;

    // One stalled client is inside a transaction holding key k, with an uncommitted insert.
    let mut holder = RawConn::connect(broker.addr).await;
    for (id, request) in [
        (
            1u64,
            vec![
                ("op", Msgpack::from("begin")),
                ("locks", Msgpack::Array(vec![Msgpack::from("k")])),
            ],
        ),
        (
            2,
            vec![
                ("op", Msgpack::from("exec")),
                ("sql", Msgpack::from("INSERT INTO t VALUES (1)")),
            ],
        ),
    ] {
        let mut entries = vec![("id", Msgpack::from(id))];
        entries.extend(request);
        holder.send_value(&map(entries)).await;
        let response = holder.read_response().await.expect("an answer");
        assert!(response.outcome.is_ok(), "{response:?}");
    }

    // Partial frames of every shape: part of the length, the length and part of the body.
    let full = exec_frame(9, "SELECT 1");
    let partials: Vec<Vec<u8>> = vec![
        vec![0, 0],
        vec![0],
        vec![0, 0, 0, 40, 0x82],
        full[..4].to_vec(),
        full[..full.len() - 1].to_vec(),
        vec![0, 0, 0, 40, 0x82],
    ];
    let mut stalled = Vec::new();
    holder.send_bytes(&[0, 0, 0, 40, 0x83]).await;
    let holder_stalled_at = Instant::now();
    stalled.push((holder, holder_stalled_at));
    for bytes in &partials {
        let mut conn = RawConn::connect(broker.addr).await;
        conn.send_bytes(bytes).await;
        stalled.push((conn, Instant::now()));
    }
    let count = stalled.len() as u64;
    stats_until(&observer, "every stalled client has a session", |s| {
        s.sessions == 2 + count
    })
    .await;

    // Every stalled client is closed by the server, not before the timeout.
    let closings = tokio::spawn(async move {
        futures_util::future::join_all(stalled.into_iter().map(|(mut conn, at)| async move {
            let closed = conn.is_closed_by_server().await;
            (closed, at.elapsed())
        }))
        .await
    });

    // A client waits for k, held by the stalled holder: it gets it once the holder is closed,
    // and the uncommitted insert is gone.
    let waiter = connect(&broker).await;
    let waiting = tokio::spawn(waiter.send(Request::Tx(TxRequest {
        statements: vec![
            Statement::new("SELECT COUNT(*) FROM t", vec![]),
            Statement::new("INSERT INTO t VALUES (2)", vec![]),
        ],
        options: with_keys(&["k"]),
        retries: None,
    })));

    // Meanwhile everybody else is served, while the stalled sessions are still open.
    let mut served_while_stalled = 0;
    let mut slowest = Duration::ZERO;
    loop {
        let asked = Instant::now();
        other.ping().await.expect("ping");
        other
            .tx()
            .lock(format!("other:{served_while_stalled}"))
            .exec("SELECT COUNT(*) FROM t", vec![])
            .run()
            .await
            .expect("a tx of another client");
        slowest = slowest.max(asked.elapsed());
        let stats = observer.stats().await.expect("stats");
        if stats.sessions < 3 + count {
            break;
        }
        served_while_stalled += 1;
        if served_while_stalled >= 20 {
            break;
        }
    }
    assert!(
        served_while_stalled >= 3,
        "other clients are served while the stalled ones are open: {served_while_stalled}"
    );

    let closings = within("the stalled clients are closed", closings)
        .await
        .expect("task");
    for (n, (closed, _)) in closings.iter().enumerate() {
        assert!(closed, "stalled client {n} is disconnected");
    }
    let reply = within("the waiter", waiting)
        .await
        .expect("task")
        .expect("the waiter gets k once the stalled holder is closed");
    let Reply::Tx { results, .. } = reply else {
        panic!("expected a tx reply, got {reply:?}");
    };
    assert_eq!(
        results[0].rows[0][0].as_i64(),
        Some(0),
        "the stalled holder's insert was rolled back"
    );
    let stats = stats_until(&observer, "at rest", |s| {
        s.sessions == 3 && s.locks_held == 0 && s.lock_waiters == 0
    })
    .await;
    println!(
        "stalled: {count} clients closed after {:?}; others served {served_while_stalled} \
         times meanwhile (slowest {slowest:?}); at rest {stats:?}",
        closings.iter().map(|(_, after)| *after).collect::<Vec<_>>()
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM t").await, 1);
    let timeout = Duration::from_millis(TIMEOUT_MS);
    for (n, (_, after)) in closings.iter().enumerate() {
        assert!(
            *after >= timeout - Duration::from_millis(20),
            "stalled client {n} closed after {after:?}, before client_read_timeout_ms"
        );
        // The documented meaning: how long a client may leave a partial frame without
        // sending more. Slack for scheduling, not for a second period.
        assert!(
            *after < timeout + Duration::from_millis(750),
            "stalled client {n} closed {after:?} after its last byte, client_read_timeout_ms \
             is {TIMEOUT_MS}"
        );
    }
}
