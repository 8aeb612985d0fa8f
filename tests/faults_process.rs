//! Faults injected from outside, with real processes: the `txbroker` binary on a free port,
//! client processes killed with SIGKILL, SIGTERM under load, twice `max_sessions` clients,
//! a client that floods requests and never reads (the broker's RSS measured), and clients
//! that stall mid-frame, and the broker itself SIGKILLed and restarted twice under clients that
//! retry every logical transfer with one idempotency key (each lands exactly once). Each test has its own database (`txb_fp_*`) on the shared MariaDB,
//! waits on events (stats, process state) with deadlines, and kills what it spawns on drop.
//! The long scenarios are written as a sequence of named phases, each a function below its
//! test.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::answers::response_error;
use common::exactly_once::{assert_exactly_once, KeyedLoad, CREATE_TRANSFERS};
use common::process::{cpu_ticks, try_rss_kib, BrokerProcess};
use common::raw::{framed, read_frame_from, req, RawConn};
use common::requests::{transfer_tx, with_keys};
use common::script_client::ScriptClient;
use common::{bank, begin_and_update_account, eventually, stats_until, within, TestDb, PATIENCE};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use txbroker::client::{Client, ClientError, TxBuilder};
use txbroker::error::ErrorCode;
use txbroker::protocol::{Reply, Request, Response, TxOptions, Value};

type Msgpack = rmpv::Value;

fn balance_of(result: &txbroker::protocol::QueryResult) -> i64 {
    result.rows[0][0].as_i64().expect("an integer balance")
}

/// A raw `exec` request for `sql` (no params), framed.
fn exec_frame(id: u64, sql: &str) -> Vec<u8> {
    framed(&req(id, "exec", vec![("sql", Msgpack::from(sql))]))
}

/// `count` framed `exec` requests for `sql` with consecutive ids from `first_id`: one write
/// of a flooding client.
fn exec_frames(first_id: u64, count: u64, sql: &str) -> Vec<u8> {
    (first_id..first_id + count)
        .flat_map(|id| exec_frame(id, sql))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Client processes killed with SIGKILL.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_process_killed_while_waiting_for_a_key_leaves_the_queue_and_frees_its_keys() {
    let db = bank("fp_kill_waiting", 2, 100).await;
    let broker = BrokerProcess::start("kill_waiting", &db.config_file_text(""));
    let observer = broker.client().await;
    let holder = broker.client().await;
    begin_and_update_account(&holder, 2, "balance = balance + 1").await;

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
    let queued = broker.client().await;
    let behind = tokio::spawn(
        queued.send(Request::Tx(
            TxBuilder::new()
                .lock("accounts:1")
                .exec(
                    "UPDATE accounts SET balance = balance - 1 WHERE id = 1",
                    vec![],
                )
                .exec("SELECT balance FROM accounts WHERE id = 1", vec![])
                .into_request(),
        )),
    );
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
    let db = bank("fp_kill_holding", 2, 100).await;
    let broker = BrokerProcess::start("kill_holding", &db.config_file_text(""));
    let observer = broker.client().await;

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
    let first = broker.client().await;
    let second = broker.client().await;
    let transfer = |client: &Client| {
        client.send(Request::Tx(
            TxBuilder::new()
                .lock("accounts:1")
                .lock("accounts:2")
                .exec("SELECT balance FROM accounts WHERE id = 1", vec![])
                .exec(
                    "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
                    vec![],
                )
                .exec(
                    "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
                    vec![],
                )
                .into_request(),
        ))
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
// 1b. The broker itself killed with SIGKILL, under clients that retry with idempotency keys.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_transfers_retried_through_broker_sigkills_land_exactly_once() {
    const ACCOUNTS: u64 = 6;
    const INITIAL: i64 = 1_000;
    let db = TestDb::create_with(
        "fp_once",
        &[
            common::CREATE_ACCOUNTS,
            CREATE_TRANSFERS,
            &common::insert_accounts(ACCOUNTS as u32, INITIAL),
        ],
    )
    .await;
    let config = db.config_file_text("");
    let mut broker = BrokerProcess::start("once", &config);
    let load = KeyedLoad::start(broker.addr, 6, ACCOUNTS);
    for _ in 0..2 {
        load.until_more_committed(30, "transfers commit before the kill")
            .await;
        broker.signal("KILL");
        tokio::task::block_in_place(|| broker.wait_exit(PATIENCE));
        // A new process, on a new port: the clients reconnect there.
        broker = BrokerProcess::start("once", &config);
        load.point_at(broker.addr);
        load.until_more_committed(30, "transfers commit on the restarted broker")
            .await;
    }
    let journal = load.stop().await;
    assert_exactly_once(&db, &journal, ACCOUNTS, INITIAL).await;
    println!(
        "[faults_process] exactly once through two SIGKILLs of the broker: {} logical transfers, attempts answered {:?}",
        journal.committed.len(),
        journal.answers
    );
}

// ---------------------------------------------------------------------------------------
// 2. SIGTERM under load.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_to_transaction_boundaries_and_loses_no_acknowledged_commit() {
    const GRACE_MS: u64 = 4000;
    const ACCOUNTS: u32 = 16;
    const INITIAL: i64 = 1000;
    let db = bank("fp_sigterm", ACCOUNTS, INITIAL).await;
    let mut broker = BrokerProcess::start(
        "sigterm",
        &db.config_file_text(&format!(
            "shutdown_grace_ms = {GRACE_MS}\nlock_wait_timeout_ms = 15000"
        )),
    );
    let idle = broker.client().await;

    // Three interactive transactions hold accounts 11..=16, in pairs.
    let interactive = InteractiveTransfers::open(&broker, &[(11, 12), (13, 14), (15, 16)]).await;
    // A tx admitted before the signal waits for keys an interactive transaction holds.
    let blocked_client = broker.client().await;
    let blocked = tokio::spawn(blocked_client.send(Request::Tx(transfer_tx("blocked", 11, 12, 1))));
    stats_until(&idle, "the blocked tx waits for its keys", |s| {
        s.lock_waiters == 1 && s.locks_held == 6
    })
    .await;
    let load = TransferLoad::start(&broker, 6).await;

    broker.signal("TERM");
    let signalled = Instant::now();
    let committed_at_signal = load.done.load(Ordering::Relaxed);

    new_work_is_refused_while_draining(&idle, &mut broker).await;
    let mut outcomes = open_transactions_reach_their_boundary(interactive, blocked).await;

    let status =
        tokio::task::block_in_place(|| broker.wait_exit(Duration::from_millis(GRACE_MS + 10_000)));
    let exited_after = signalled.elapsed();
    for worker in load.workers {
        outcomes.merge(within("a transfer worker", worker).await.expect("task"));
    }
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
    assert!(
        exited_after < Duration::from_millis(GRACE_MS),
        "exits within shutdown_grace_ms ({GRACE_MS} ms): took {exited_after:?}"
    );

    println!(
        "SIGTERM under load: {committed_at_signal} transfers before the signal; exit 0 after \
         {exited_after:?} (grace {GRACE_MS} ms)"
    );
    let by_code = the_ledger_holds_exactly_the_acknowledged(&db, &outcomes).await;
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

/// What the clients were answered, transfer by transfer (by ledger id).
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

/// Interactive transfers, each inside its transaction (debited, keys held) and waiting for
/// `go` before it credits, writes its ledger row and commits.
struct InteractiveTransfers {
    tasks: Vec<(String, tokio::task::JoinHandle<Result<(), ClientError>>)>,
    go: tokio::sync::watch::Sender<bool>,
    /// Kept so that sending `go` cannot fail, even once every transfer has ended.
    _go_receiver: tokio::sync::watch::Receiver<bool>,
}

impl InteractiveTransfers {
    /// Opens one transfer per pair of accounts, each on a client of its own, and returns once
    /// every one is inside its transaction.
    async fn open(broker: &BrokerProcess, pairs: &[(u64, u64)]) -> InteractiveTransfers {
        let (inside_sender, mut inside) = tokio::sync::mpsc::channel(8);
        let (go, go_receiver) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for (n, (from, to)) in pairs.iter().copied().enumerate() {
            let client = broker.client().await;
            let id = format!("i{n}");
            tasks.push((
                id.clone(),
                tokio::spawn(interactive_transfer(
                    client,
                    id,
                    from,
                    to,
                    inside_sender.clone(),
                    go_receiver.clone(),
                )),
            ));
        }
        for _ in pairs {
            within("an interactive transaction is open", inside.recv())
                .await
                .expect("inside");
        }
        InteractiveTransfers {
            tasks,
            go,
            _go_receiver: go_receiver,
        }
    }
}

/// An interactive transfer between `from` and `to` that debits, says it is inside, waits for
/// `go`, then credits, writes its ledger row and commits.
async fn interactive_transfer(
    client: Client,
    id: String,
    from: u64,
    to: u64,
    inside: tokio::sync::mpsc::Sender<()>,
    mut go: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ClientError> {
    client
        .begin(with_keys(&[
            format!("accounts:{from}"),
            format!("accounts:{to}"),
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

/// Clients running transfers of 1 between accounts 1..=10 until the broker answers
/// `shutting_down` or the connection ends.
struct TransferLoad {
    workers: Vec<tokio::task::JoinHandle<Outcomes>>,
    /// Transfers acknowledged so far.
    done: Arc<AtomicU64>,
}

impl TransferLoad {
    /// Starts `clients` workers and returns once the load is really running.
    async fn start(broker: &BrokerProcess, clients: u64) -> TransferLoad {
        let done = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for worker in 0..clients {
            let client = broker.client().await;
            workers.push(tokio::spawn(transfer_worker(client, worker, done.clone())));
        }
        eventually("the load is running", PATIENCE, || async {
            done.load(Ordering::Relaxed) >= 60
        })
        .await;
        TransferLoad { workers, done }
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
        let result = client.run_tx(transfer_tx(&id, from, to, 1)).await;
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

/// Once the signal is in: new transactions (`tx`, `begin`, autocommit `exec`) are refused
/// with a retryable `shutting_down`, `ping` and `stats` are still answered, and new
/// connections are refused while the broker is still up, waiting for the open transactions.
async fn new_work_is_refused_while_draining(idle: &Client, broker: &mut BrokerProcess) {
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
    eventually("new connections are refused", PATIENCE, || async {
        tokio::net::TcpStream::connect(broker.addr).await.is_err()
    })
    .await;
    assert!(
        broker.is_running(),
        "the broker waits for the open transactions"
    );
}

/// The interactive transactions are let go and commit during the drain, and the tx admitted
/// before the signal (waiting for their keys) reaches its boundary too.
async fn open_transactions_reach_their_boundary(
    interactive: InteractiveTransfers,
    blocked: tokio::task::JoinHandle<Result<Reply, ClientError>>,
) -> Outcomes {
    interactive.go.send(true).expect("go");
    let mut outcomes = Outcomes::default();
    for (id, task) in interactive.tasks {
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
    outcomes
}

/// The ledger holds every acknowledged transfer, none answered as failed, and none that was
/// neither acknowledged nor left without an answer. Returns the failures counted by code.
async fn the_ledger_holds_exactly_the_acknowledged(
    db: &TestDb,
    outcomes: &Outcomes,
) -> BTreeMap<String, usize> {
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
        "SIGTERM under load: {} acknowledged, failed by code {by_code:?}, {} without an \
         answer, {} ledger rows",
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
    by_code
}

// ---------------------------------------------------------------------------------------
// 3. Overload: twice max_sessions clients.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twice_max_sessions_clients_the_extra_ones_get_busy_and_the_others_are_unaffected() {
    const N: usize = 4;
    let db = TestDb::create_with(
        "fp_overload",
        &["CREATE TABLE events (client INT, seq INT, PRIMARY KEY (client, seq))"],
    )
    .await;
    let broker = BrokerProcess::start(
        "overload",
        &db.config_file_text(&format!("max_sessions = {N}")),
    );
    let mut admitted = Vec::new();
    for _ in 0..N {
        admitted.push(Arc::new(broker.client().await));
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
        let response = conn.read_response().await.expect("the busy answer");
        let closed = conn.is_closed_by_server().await;
        (response, closed)
    }))
    .await;
    for (response, closed) in &refused {
        assert_eq!(response.id, None, "busy is sent with id nil");
        let error = response_error(response);
        assert_eq!(error.code, ErrorCode::Busy, "{error:?}");
        assert!(error.retryable, "busy is retryable");
        assert!(closed, "the refused connection is closed");
    }
    println!("refused: {}", response_error(&refused[0].0).message);

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
    assert_eq!(db.count("events").await, total);
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
    let newcomer = broker.client().await;
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

/// A statement whose answer is large (10 kB), so that unread answers would cost memory.
const FLOOD_SQL: &str = "SELECT REPEAT('x', 10000)";
/// Flooders that make no progress for this long are held back.
const STALLED_FOR: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_pipelines_and_never_reads_is_held_back_and_memory_stays_bounded() {
    const FLOODERS: usize = 4;
    let db = TestDb::create_with(
        "fp_flood",
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, n BIGINT NOT NULL)",
            "INSERT INTO t VALUES (1, 0)",
        ],
    )
    .await;
    let broker = BrokerProcess::start("flood", &db.config_file_text("max_pipelined_requests = 64"));
    let bystander = broker.client().await;
    let flooders = warmed_up_flooders(&broker, &bystander, FLOODERS).await;
    let rss_before = broker.rss_kib();
    let sampler = PeakRss::sample(broker.pid(), rss_before);

    let flood = Flood::start(flooders);
    let served = serve_the_bystander_until_the_flooders_are_held_back(
        &broker, &bystander, &flood, rss_before,
    )
    .await;
    let rss_held = broker.rss_kib();
    let (requests, readers, writers) = flood.stop().await;
    let rss_peak = sampler.stop().max(rss_held);

    let growth_kib = rss_peak.saturating_sub(rss_before);
    println!(
        "flood: {FLOODERS} clients wrote {requests:?} requests of `{FLOOD_SQL}` in \
         {:?} and were then held back (no progress for {STALLED_FOR:?}); broker \
         VmRSS before {rss_before} KiB, peak {rss_peak} KiB (+{growth_kib} KiB), while held \
         {rss_held} KiB ({} KiB when the flooders last made progress); \
         the bystander ran {} transactions meanwhile, slowest {:?}",
        served.flood_time, served.rss_at_last_progress, served.transactions, served.slowest
    );
    assert!(
        growth_kib < 64 * 1024,
        "the broker's memory grew by {growth_kib} KiB under the flood"
    );
    // Held back by the broker, not only by full kernel buffers: once the flooders could no
    // longer write, the broker stopped reading and answering them, so its memory stopped
    // growing.
    assert!(
        rss_held.saturating_sub(served.rss_at_last_progress) < 8 * 1024,
        "the broker kept reading the flooders after they were stalled: VmRSS {} KiB -> {} KiB",
        served.rss_at_last_progress,
        rss_held
    );
    assert!(
        served.transactions >= 10,
        "the bystander was served: {}",
        served.transactions
    );
    assert!(
        served.slowest < Duration::from_secs(2),
        "the bystander was held up: slowest {:?}",
        served.slowest
    );

    the_first_answers_wait_in_order(readers).await;
    // The flooders hang up with answers unread: their sessions end and the memory is freed.
    drop(writers);
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

/// `count` raw connections whose sessions have each served one `FLOOD_SQL`, after the
/// bystander has served a few; returns once every session is up.
async fn warmed_up_flooders(
    broker: &BrokerProcess,
    bystander: &Client,
    count: usize,
) -> Vec<RawConn> {
    for _ in 0..20 {
        bystander.exec(FLOOD_SQL, vec![]).await.expect("warm up");
    }
    let mut flooders = Vec::new();
    for _ in 0..count {
        let mut conn = RawConn::connect(broker.addr).await;
        conn.send_bytes(&exec_frame(1, FLOOD_SQL)).await;
        let response = conn.read_response().await.expect("answer");
        assert!(response.outcome.is_ok(), "{response:?}");
        flooders.push(conn);
    }
    stats_until(bystander, "every session is up", |s| {
        s.sessions == 1 + count as u64
    })
    .await;
    flooders
}

/// The peak resident set size of a process, sampled every 10 ms in a thread of its own.
struct PeakRss {
    sampling: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn sample(pid: u32, initial_kib: u64) -> PeakRss {
        let sampling = Arc::new(AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(initial_kib));
        let thread = {
            let (sampling, peak) = (sampling.clone(), peak.clone());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    if let Some(rss) = try_rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        PeakRss {
            sampling,
            peak,
            thread,
        }
    }

    /// Stops sampling and returns the peak in KiB.
    fn stop(self) -> u64 {
        self.sampling.store(false, Ordering::Relaxed);
        self.thread.join().expect("sampler");
        self.peak.load(Ordering::Relaxed)
    }
}

/// Flooding clients: each writes requests as fast as its socket takes them, never reading.
struct Flood {
    /// Requests written so far, per flooder.
    written: Vec<Arc<AtomicU64>>,
    readers: Vec<OwnedReadHalf>,
    tasks: Vec<tokio::task::JoinHandle<OwnedWriteHalf>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Flood {
    fn start(flooders: Vec<RawConn>) -> Flood {
        let written: Vec<Arc<AtomicU64>> = flooders
            .iter()
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut readers = Vec::new();
        let mut tasks = Vec::new();
        for (n, conn) in flooders.into_iter().enumerate() {
            let (reader, mut writer) = conn.stream.into_split();
            readers.push(reader);
            let (written, mut stopped) = (written[n].clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let mut id = 2u64;
                loop {
                    let chunk = exec_frames(id, 64, FLOOD_SQL);
                    id += 64;
                    tokio::select! {
                        result = writer.write_all(&chunk) => {
                            if result.is_err() {
                                return writer;
                            }
                            written.fetch_add(64, Ordering::Relaxed);
                        }
                        _ = stopped.wait_for(|stop| *stop) => return writer,
                    }
                }
            }));
        }
        Flood {
            written,
            readers,
            tasks,
            stop,
        }
    }

    /// Requests written so far, per flooder.
    fn written(&self) -> Vec<u64> {
        self.written
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops writing; returns the requests written per flooder and each flooder's halves,
    /// still open.
    async fn stop(self) -> (Vec<u64>, Vec<OwnedReadHalf>, Vec<OwnedWriteHalf>) {
        let _ = self.stop.send(true);
        let mut writers = Vec::new();
        for task in self.tasks {
            writers.push(within("a flooder stops", task).await.expect("task"));
        }
        let written = self
            .written
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (written, self.readers, writers)
    }
}

/// How the bystander fared during the flood.
struct BystanderDuringFlood {
    transactions: u64,
    slowest: Duration,
    flood_time: Duration,
    /// The broker's RSS when a flooder last made progress.
    rss_at_last_progress: u64,
}

/// The bystander runs transactions during the flood; it stops once every flooder has made
/// no progress for `STALLED_FOR` (it is held back), and the flood has lasted at least a few
/// seconds.
async fn serve_the_bystander_until_the_flooders_are_held_back(
    broker: &BrokerProcess,
    bystander: &Client,
    flood: &Flood,
    rss_before: u64,
) -> BystanderDuringFlood {
    const MIN_FLOOD: Duration = Duration::from_secs(3);
    let started = Instant::now();
    let mut last_seen: Vec<(u64, Instant)> = vec![(0, started); flood.written.len()];
    let mut served = BystanderDuringFlood {
        transactions: 0,
        slowest: Duration::ZERO,
        flood_time: Duration::ZERO,
        rss_at_last_progress: rss_before,
    };
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
        served.slowest = served.slowest.max(asked.elapsed());
        served.transactions += 1;
        let now = Instant::now();
        for (n, count) in flood.written().into_iter().enumerate() {
            if count != last_seen[n].0 {
                last_seen[n] = (count, now);
                served.rss_at_last_progress = broker.rss_kib();
            }
        }
        let held_back = last_seen
            .iter()
            .all(|(_, at)| now.duration_since(*at) >= STALLED_FOR);
        if started.elapsed() >= MIN_FLOOD && held_back {
            served.flood_time = started.elapsed();
            return served;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flooders were never held back: requests written so far {:?}",
            last_seen.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    }
}

/// Nothing was lost: each flooder's first answers wait, in order, for it to read them.
async fn the_first_answers_wait_in_order(mut readers: Vec<OwnedReadHalf>) {
    for reader in &mut readers {
        for id in 2..=4u64 {
            let body = read_frame_from(reader).await.expect("a frame");
            let response = Response::decode(&body).expect("a response");
            assert_eq!(response.id, Some(id));
            match response.outcome {
                Ok(Reply::Exec { result }) => {
                    assert_eq!(result.rows[0][0], Value::Text("x".repeat(10_000)))
                }
                other => panic!("expected the exec result, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_floods_then_hangs_up_ends_its_session_and_leaves_the_broker_idle() {
    let db = TestDb::create("fp_flood_hangup").await;
    let broker = BrokerProcess::start("flood_hangup", &db.config_file_text(""));
    let observer = broker.client().await;
    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_bytes(&exec_frame(1, FLOOD_SQL)).await;
    assert!(conn.read_frame().await.is_some(), "the flooder is served");
    // A short flood, never reading: the writes stop when the socket takes no more.
    let mut written = 0u64;
    let flood = async {
        let mut id = 2u64;
        loop {
            let chunk = exec_frames(id, 64, FLOOD_SQL);
            id += 64;
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

// ---------------------------------------------------------------------------------------
// 5. Half-open clients stalled mid-frame.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_clients_stalled_mid_frame_are_closed_after_the_read_timeout_and_hold_up_nobody() {
    const TIMEOUT_MS: u64 = 1500;
    let db = TestDb::create_with("fp_stalled", &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let broker = BrokerProcess::start(
        "stalled",
        &db.config_file_text(&format!("client_read_timeout_ms = {TIMEOUT_MS}")),
    );
    let observer = broker.client().await;
    let other = broker.client().await;

    // One stalled client is inside a transaction holding key k, with an uncommitted insert;
    // the others stall before any request.
    let holder = a_raw_client_holding_k_with_an_uncommitted_insert(&broker).await;
    let stalled = stall_mid_frame(&broker, holder).await;
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
    let waiter = broker.client().await;
    let waiting = tokio::spawn(
        waiter.send(Request::Tx(
            TxBuilder::new()
                .lock("k")
                .exec("SELECT COUNT(*) FROM t", vec![])
                .exec("INSERT INTO t VALUES (2)", vec![])
                .into_request(),
        )),
    );

    let (served_while_stalled, slowest) =
        others_are_served_while_the_stalled_are_open(&observer, &other, count).await;

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
    assert_eq!(db.count("t").await, 1);
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

/// A raw client that has begun a transaction holding key `k` and inserted row 1 in it.
async fn a_raw_client_holding_k_with_an_uncommitted_insert(broker: &BrokerProcess) -> RawConn {
    let mut holder = RawConn::connect(broker.addr).await;
    for request in [
        req(
            1,
            "begin",
            vec![("locks", Msgpack::Array(vec![Msgpack::from("k")]))],
        ),
        req(
            2,
            "exec",
            vec![("sql", Msgpack::from("INSERT INTO t VALUES (1)"))],
        ),
    ] {
        holder.send_value(&request).await;
        let response = holder.read_response().await.expect("an answer");
        assert!(response.outcome.is_ok(), "{response:?}");
    }
    holder
}

/// Leaves `holder` and six new clients stalled with partial frames of every shape (part of
/// the length, the length and part of the body); returns each with the time it stalled.
async fn stall_mid_frame(broker: &BrokerProcess, mut holder: RawConn) -> Vec<(RawConn, Instant)> {
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
    stalled
}

/// Another client runs pings and transactions while the `stalled` sessions are still open
/// (at most 20 rounds); returns the rounds served and the slowest.
async fn others_are_served_while_the_stalled_are_open(
    observer: &Client,
    other: &Client,
    stalled: u64,
) -> (u32, Duration) {
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
        if stats.sessions < 3 + stalled {
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
    (served_while_stalled, slowest)
}
