//! Database faults injected for real, each test on a private MariaDB instance of its own
//! (`tests/private_mariadb`: own data directory, own port), never the shared server:
//!
//! - MariaDB stopped (SIGTERM) or killed (SIGKILL) and started again, three times, under a
//!   transfer load through the broker (8 clients, 6 accounts, declared keys, a ledger row
//!   with a unique id per transfer): sessions answer `db_unavailable` while it is down (or
//!   `commit_unknown` for a COMMIT in flight), the broker keeps serving (`ping`, `stats`, new
//!   clients), every session reconnects when the database is back (after a short outage and
//!   one longer than the broker's 1 s stale-connection threshold, idle sessions included),
//!   and afterwards the database holds every acknowledged transfer, none answered as failed,
//!   each transfer whole, and the sum of the balances; at rest no key is held and nobody
//!   waits. Interactive transactions the database lost end in `db_unavailable` then
//!   `tx_aborted`, or in `commit_unknown`, never in success, and nothing sent in them runs on
//!   its own. `commit_unknown` answers are counted, checked against the ledger and printed.
//! - The database refusing connections (`max_connections`, below `max_sessions`): the clients
//!   past the limit get a quick, retryable `db_unavailable` naming "too many connections"
//!   (for `tx`, `begin` and autocommit `exec` alike, leaving no transaction and no key), the
//!   others are unaffected, and a refused client succeeds on retry once slots free up.
//!
//! - Exactly once: clients retry every logical transfer with one idempotency key on every
//!   outcome that is not `ok`, while MariaDB is stopped (SIGTERM), restarted, killed
//!   (SIGKILL) and restarted; afterwards the ledger holds each logical transfer exactly once
//!   and the balances are exactly what they make.
//!
//! The tests wait on events (answers recorded by the clients, `stats`, the server's port and
//! process) with deadlines, and run one at a time (each starts a MariaDB and a broker), so
//! that they stay well inside their time limits on a loaded two-core machine. Each scenario
//! reads as a sequence of named phases; the phases follow their test.

mod common;
mod private_mariadb;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::answers::server_error;
use common::exactly_once::{assert_exactly_once, KeyedLoad, CREATE_TRANSFERS};
use common::requests::{transfer_tx, with_keys};
use common::{insert_accounts, stats_until, TestBroker, CREATE_ACCOUNTS, CREATE_LEDGER};
use mysql_async::prelude::Queryable;
use private_mariadb::PrivateMariaDb;
use txbroker::client::{Client, ClientError, TxBuilder};
use txbroker::error::ErrorCode;
use txbroker::protocol::{QueryResult, Reply, Request, Stats};
use txbroker::Config;

/// Accounts the transfers move money between; few, so that transfers contend for keys.
const ACCOUNTS: u64 = 6;
const INITIAL_BALANCE: i64 = 1_000;
/// Clients running transfers at once.
const CLIENTS: usize = 8;
/// A request not answered within this is a hang of the broker.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// How long any awaited event may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// Transfers committed before each fault is injected (the load is really running).
const WARM_UP_COMMITS: usize = 40;
/// Faults injected per test, each followed by a restart.
const FAULT_CYCLES: usize = 3;
/// The second outage lasts at least this: longer than the broker's 1 s threshold after which
/// an idle connection is pinged before use.
const LONG_OUTAGE: Duration = Duration::from_millis(1_500);
/// A `db_unavailable` while the database is down must come at once: well under this.
const REFUSAL_LIMIT: Duration = Duration::from_secs(5);

/// One test at a time: each starts its own MariaDB and broker.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn broker_config(database_url: String) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        database_url,
        session_threads: 2,
        lock_wait_timeout_ms: 2_000,
        innodb_lock_wait_timeout_s: 5,
        shutdown_grace_ms: 2_000,
        // No purge connection coming and going while the tests count connections.
        idempotency_purge_interval_ms: 3_600_000,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// MariaDB restarted during a transfer load
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGTERM: MariaDB shuts down cleanly, ending every connection.
    Stop,
    /// SIGKILL: MariaDB crashes; InnoDB recovers on the next start.
    Kill,
}

/// What a client was answered for one transfer.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Committed,
    /// Answered an error other than `commit_unknown`: nothing may have been committed.
    Failed(ErrorCode, String),
    /// `commit_unknown`: the outcome is unknown; counted and reported.
    Unknown(String),
    /// Not an answer from the server: the connection broke or the answer made no sense.
    Transport(String),
    /// No answer within `ANSWER_LIMIT`.
    Hang,
}

#[derive(Clone, Debug)]
struct Record {
    client: usize,
    id: String,
    from: u64,
    to: u64,
    amount: i64,
    sent: Instant,
    answered: Instant,
    outcome: Outcome,
}

impl Record {
    fn is_fatal(&self) -> bool {
        matches!(self.outcome, Outcome::Transport(_) | Outcome::Hang)
    }
}

/// An autocommit statement that changes nothing.
const AUTOCOMMIT_NOOP: &str = "UPDATE accounts SET balance = balance + 0 WHERE id = 1";

/// When one fault cycle's events happened.
struct Cycle {
    /// The signal is sent.
    fault_at: Instant,
    /// mariadbd has exited.
    down_at: Instant,
    /// mariadbd is started again.
    restart_at: Instant,
    /// It accepts connections.
    up_at: Instant,
    /// Every client has committed again.
    recovered_at: Instant,
}

type Journal = Arc<Mutex<Vec<Record>>>;

fn snapshot(journal: &Journal) -> Vec<Record> {
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Whether every client has a record that satisfies `condition`.
fn every_client(records: &[Record], condition: impl Fn(&Record) -> bool) -> bool {
    let clients: HashSet<usize> = records
        .iter()
        .filter(|r| r.client < CLIENTS && condition(r))
        .map(|r| r.client)
        .collect();
    clients.len() == CLIENTS
}

/// Waits until the journal satisfies `condition`; fails at once on a hang or a broken
/// connection, and with the journal's summary after `PATIENCE`.
async fn journal_until(journal: &Journal, what: &str, condition: impl Fn(&[Record]) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let records = snapshot(journal);
        if let Some(fatal) = records.iter().find(|r| r.is_fatal()) {
            panic!("while waiting until {what}: a client got no proper answer: {fatal:?}");
        }
        if condition(&records) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; {}",
            summary(&records)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn summary(records: &[Record]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for record in records {
        let name = match &record.outcome {
            Outcome::Committed => "committed".to_string(),
            Outcome::Failed(code, _) => format!("failed {code:?}"),
            Outcome::Unknown(_) => "commit_unknown".to_string(),
            Outcome::Transport(_) => "transport error".to_string(),
            Outcome::Hang => "hang".to_string(),
        };
        *counts.entry(name).or_default() += 1;
    }
    format!("{} transfers: {counts:?}", records.len())
}

/// Sends one transfer, waits for its answer (a hang is an answer too, after
/// `ANSWER_LIMIT`) and records it in the journal.
async fn run_transfer(
    client: &Client,
    index: usize,
    id: String,
    (from, to, amount): (u64, u64, i64),
    journal: &Journal,
) -> Outcome {
    let sent = Instant::now();
    let request = Request::Tx(transfer_tx(&id, from, to, amount));
    let answer = tokio::time::timeout(ANSWER_LIMIT, client.send(request)).await;
    let outcome = match answer {
        Err(_) => Outcome::Hang,
        Ok(Ok(Reply::Tx { .. })) => Outcome::Committed,
        Ok(Ok(other)) => Outcome::Transport(format!("not a tx reply: {other:?}")),
        Ok(Err(ClientError::Server(error))) if error.code == ErrorCode::CommitUnknown => {
            Outcome::Unknown(error.message)
        }
        Ok(Err(ClientError::Server(error))) => Outcome::Failed(error.code, error.message),
        Ok(Err(other)) => Outcome::Transport(other.to_string()),
    };
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(Record {
            client: index,
            id,
            from,
            to,
            amount,
            sent,
            answered: Instant::now(),
            outcome: outcome.clone(),
        });
    outcome
}

/// Runs transfers one after another until `stop`, recording every answer. A client that
/// is answered a failure backs off briefly before its next transfer, as a real one would.
async fn transfer_client(index: usize, client: Client, journal: Journal, stop: Arc<AtomicBool>) {
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let from = (index as u64 + seq) % ACCOUNTS;
        let to = (from + 1 + seq % (ACCOUNTS - 1)) % ACCOUNTS;
        let amount = 1 + (seq % 7) as i64;
        let id = format!("c{index}-{seq}");
        let outcome = run_transfer(&client, index, id, (from + 1, to + 1, amount), &journal).await;
        match outcome {
            Outcome::Committed => {}
            Outcome::Transport(_) | Outcome::Hang => return,
            Outcome::Failed(..) | Outcome::Unknown(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
        }
    }
}

#[test]
fn mariadb_stopped_with_sigterm_and_restarted_during_a_transfer_load() {
    let _serial = serial();
    runtime().block_on(restart_during_transfer_load(Fault::Stop));
}

#[test]
fn mariadb_killed_with_sigkill_and_restarted_during_a_transfer_load() {
    let _serial = serial();
    runtime().block_on(restart_during_transfer_load(Fault::Kill));
}

/// The scenario of both tests above. Fault cycles: the load runs, MariaDB goes away under it,
/// the broker answers and keeps serving while it is down, MariaDB comes back on the same data
/// directory and port, and every session reconnects. Then what the clients were told and
/// what the database holds are checked against each other.
async fn restart_during_transfer_load(fault: Fault) {
    let began = Instant::now();
    let mut db = launch_the_bank(fault).await;
    let launched = began.elapsed();
    let broker = TestBroker::start(broker_config(db.url()));
    let observer = broker.client().await;
    observer.ping().await.expect("ping");
    let mut load = TransferLoad::start(&broker).await;
    let mut others = OtherSessions::start(&broker).await;

    let mut cycles: Vec<Cycle> = Vec::new();
    let mut down_stats = None;
    for cycle in 0..FAULT_CYCLES {
        let since = cycles.last().map_or(began, |c: &Cycle| c.up_at);
        the_load_commits_transfers(&load.journal, cycle, since).await;
        let idle_last_used = others
            .use_their_connections_before_the_fault(cycle, &load.journal)
            .await;

        let (fault_at, down_at) = inject_the_fault(&mut db, fault);
        every_client_has_a_transfer_since(
            &load.journal,
            down_at,
            "every client is answered for a transfer sent while the database is down",
            |outcome| *outcome != Outcome::Committed,
        )
        .await;
        if cycle == 1 {
            the_outage_outlasts_the_stale_connection_threshold(&load.journal, down_at).await;
        }
        down_stats = Some(the_broker_serves_while_the_database_is_down(&broker, &observer).await);

        let restart_at = Instant::now();
        tokio::task::block_in_place(|| db.start());
        let up_at = Instant::now();
        others
            .reconnect_after_the_restart(cycle, idle_last_used, &load.journal)
            .await;
        every_client_has_a_transfer_since(
            &load.journal,
            up_at,
            "every client commits a transfer sent after the database is back",
            |outcome| *outcome == Outcome::Committed,
        )
        .await;
        cycles.push(Cycle {
            fault_at,
            down_at,
            restart_at,
            up_at,
            recovered_at: Instant::now(),
        });
        if cycle == 0 {
            others.open_transactions_recover(&load.journal).await;
        }
    }

    load.stop().await;
    let rest = stats_until(&observer, "no key is held and nobody waits, at rest", |s| {
        s.locks_held == 0 && s.lock_waiters == 0
    })
    .await;
    assert_eq!(rest.locks_held, 0);
    assert_eq!(rest.lock_waiters, 0);

    let records = snapshot(&load.journal);
    let answers = the_answers_match_the_outages(&records, &cycles);
    let in_ledger = the_database_holds_every_acknowledged_transfer(&db, &records, fault).await;
    print_the_restart_report(RestartReport {
        fault,
        records: &records,
        cycles: &cycles,
        in_ledger: &in_ledger,
        answers,
        others: &others,
        down_stats,
        launched,
        began,
    });
    drop(observer);
    broker.shutdown();
}

/// A private MariaDB holding the bank (`ACCOUNTS` accounts, an empty ledger) and `notes`, the
/// table the open transactions write to.
async fn launch_the_bank(fault: Fault) -> PrivateMariaDb {
    let label = match fault {
        Fault::Stop => "term",
        Fault::Kill => "kill",
    };
    let db = PrivateMariaDb::launch(label, "bank", &[]).await;
    db.run(&[
        CREATE_ACCOUNTS,
        CREATE_LEDGER,
        "CREATE TABLE notes (id VARCHAR(16) PRIMARY KEY) ENGINE=InnoDB",
        &insert_accounts(ACCOUNTS as u32, INITIAL_BALANCE),
    ])
    .await;
    db
}

/// `CLIENTS` clients running transfers, each recording every answer in the journal.
struct TransferLoad {
    journal: Journal,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TransferLoad {
    async fn start(broker: &TestBroker) -> TransferLoad {
        let journal = Journal::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for index in 0..CLIENTS {
            let client = broker.client().await;
            client.ping().await.expect("the client is admitted");
            tasks.push(tokio::spawn(transfer_client(
                index,
                client,
                journal.clone(),
                stop.clone(),
            )));
        }
        TransferLoad {
            journal,
            stop,
            tasks,
        }
    }

    /// Lets every client finish its last transfer.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            tokio::time::timeout(ANSWER_LIMIT + Duration::from_secs(5), task)
                .await
                .expect("a client finishes its last transfer")
                .expect("a client task does not panic");
        }
    }
}

/// Four more sessions that meet the faults in other states: two idle (their connections
/// will be dead when they next send: a transfer, an autocommit statement), two inside an
/// interactive transaction. What they were answered is kept for the report.
struct OtherSessions {
    idle: Client,
    autocommit: Client,
    open_a: Client,
    open_b: Client,
    /// How long the idle session sat idle across each outage it met.
    idle_gaps: Vec<Duration>,
    /// The first autocommit statement after the first restart: ok or its error code.
    autocommit_after_restart: Option<String>,
    /// How the commit of `open_b`'s lost transaction was answered.
    open_b_commit: Option<ErrorCode>,
}

impl OtherSessions {
    async fn start(broker: &TestBroker) -> OtherSessions {
        let others = OtherSessions {
            idle: broker.client().await,
            autocommit: broker.client().await,
            open_a: broker.client().await,
            open_b: broker.client().await,
            idle_gaps: Vec::new(),
            autocommit_after_restart: None,
            open_b_commit: None,
        };
        for (client, note) in [(&others.open_a, "a1"), (&others.open_b, "b1")] {
            client
                .begin(with_keys(&[format!("notes:{note}")]))
                .await
                .expect("begin");
            insert_note(client, note)
                .await
                .expect("insert a note in the open transaction");
        }
        others
    }

    /// The idle sessions use their connections just before the fault, and not again until
    /// the database is back: the autocommit one before fault 0, the transfer one before
    /// faults 0 and 1 (a short and a long outage). Returns when the idle session last used
    /// its connection, if it did.
    async fn use_their_connections_before_the_fault(
        &self,
        cycle: usize,
        journal: &Journal,
    ) -> Option<Instant> {
        if cycle == 0 {
            self.autocommit
                .exec(AUTOCOMMIT_NOOP, vec![])
                .await
                .expect("an autocommit exec before the fault");
        }
        if cycle >= 2 {
            return None;
        }
        let id = format!("idle-{cycle}-before");
        let outcome = run_transfer(&self.idle, CLIENTS, id, (1, 2, 1), journal).await;
        assert_eq!(outcome, Outcome::Committed, "the idle session's transfer");
        Some(Instant::now())
    }

    /// After restart 0, an autocommit statement on a connection that died while it sat idle
    /// is answered (success, db_unavailable, or conservatively commit_unknown, since such a
    /// statement is its own commit), and the session reconnects for the next one. After
    /// every outage the idle session met, its next transfer reconnects (whether the broker
    /// notices at START TRANSACTION or by its ping).
    async fn reconnect_after_the_restart(
        &mut self,
        cycle: usize,
        idle_last_used: Option<Instant>,
        journal: &Journal,
    ) {
        if cycle == 0 {
            let first = self.autocommit.exec(AUTOCOMMIT_NOOP, vec![]).await;
            let first = match first {
                Ok(_) => "ok".to_string(),
                Err(ClientError::Server(error))
                    if matches!(
                        error.code,
                        ErrorCode::DbUnavailable | ErrorCode::CommitUnknown
                    ) =>
                {
                    format!("{:?}", error.code)
                }
                Err(other) => panic!("an autocommit exec after the restart: {other}"),
            };
            self.autocommit
                .exec(AUTOCOMMIT_NOOP, vec![])
                .await
                .expect("the autocommit session reconnects");
            self.autocommit_after_restart = Some(first);
        }
        if let Some(last_used) = idle_last_used {
            let idle_for = last_used.elapsed();
            let id = format!("idle-{cycle}-after");
            let outcome = run_transfer(&self.idle, CLIENTS, id, (2, 3, 1), journal).await;
            assert_eq!(
                outcome,
                Outcome::Committed,
                "a session idle for {idle_for:?} across the outage reconnects for its next \
                 transfer"
            );
            self.idle_gaps.push(idle_for);
        }
    }

    /// After the first restart: a session whose open transaction died with the server is
    /// answered `db_unavailable` for its next statement, then `tx_aborted` until it rolls
    /// back (the statement never runs on its own); one that commits it is answered
    /// `commit_unknown` (or `db_unavailable`), never success. Both work again afterwards.
    async fn open_transactions_recover(&mut self, journal: &Journal) {
        let open_a = &self.open_a;
        assert_eq!(
            server_error(insert_note(open_a, "a2").await).code,
            ErrorCode::DbUnavailable,
            "a statement in a transaction the database lost is answered db_unavailable"
        );
        assert_eq!(
            server_error(insert_note(open_a, "a3").await).code,
            ErrorCode::TxAborted,
            "then the session is in the aborted state"
        );
        assert_eq!(
            server_error(open_a.commit().await).code,
            ErrorCode::TxAborted
        );
        open_a
            .rollback()
            .await
            .expect("rollback leaves the aborted state");
        let after = run_transfer(open_a, CLIENTS + 1, "a-after".into(), (3, 4, 1), journal).await;
        assert_eq!(
            after,
            Outcome::Committed,
            "the session works again after rollback"
        );

        let code = server_error(self.open_b.commit().await).code;
        assert!(
            matches!(code, ErrorCode::CommitUnknown | ErrorCode::DbUnavailable),
            "COMMIT of a transaction the database lost is never acknowledged: {code:?}"
        );
        let after = run_transfer(
            &self.open_b,
            CLIENTS + 2,
            "b-after".into(),
            (4, 5, 1),
            journal,
        )
        .await;
        assert_eq!(
            after,
            Outcome::Committed,
            "the session works again after its commit failed"
        );
        self.open_b_commit = Some(code);
    }
}

/// Writes a row into `notes`, the table the open transactions write to.
async fn insert_note(client: &Client, note: &str) -> Result<QueryResult, ClientError> {
    client
        .exec("INSERT INTO notes (id) VALUES (?)", vec![note.into()])
        .await
}

/// The load commits `WARM_UP_COMMITS` transfers sent since `since` (the start, or the last
/// restart) before fault `cycle`: it is really running.
async fn the_load_commits_transfers(journal: &Journal, cycle: usize, since: Instant) {
    journal_until(
        journal,
        &format!("the load commits transfers before fault {cycle}"),
        |records| {
            records
                .iter()
                .filter(|r| r.sent >= since && r.outcome == Outcome::Committed)
                .count()
                >= WARM_UP_COMMITS
        },
    )
    .await;
}

/// Stops (SIGTERM) or kills (SIGKILL) mariadbd and waits until it has exited; returns when
/// the signal was sent and when it was down.
fn inject_the_fault(db: &mut PrivateMariaDb, fault: Fault) -> (Instant, Instant) {
    let fault_at = Instant::now();
    let status = tokio::task::block_in_place(|| match fault {
        Fault::Stop => db.stop(),
        Fault::Kill => db.kill(),
    });
    let down_at = Instant::now();
    if fault == Fault::Stop {
        assert!(
            status.success(),
            "mariadbd exits cleanly on SIGTERM: {status}"
        );
    }
    (fault_at, down_at)
}

/// Waits until every load client has a transfer sent since `since` whose outcome satisfies
/// `outcome`: each has been answered while the database is down, or has committed again.
async fn every_client_has_a_transfer_since(
    journal: &Journal,
    since: Instant,
    what: &str,
    outcome: impl Fn(&Outcome) -> bool,
) {
    journal_until(journal, what, |records| {
        every_client(records, |r| r.sent >= since && outcome(&r.outcome))
    })
    .await;
}

/// One outage outlasts the broker's stale-connection threshold (1 s), so that an idle
/// session's next request finds its connection dead by pinging it.
async fn the_outage_outlasts_the_stale_connection_threshold(journal: &Journal, down_at: Instant) {
    journal_until(
        journal,
        &format!("the database has been down for {LONG_OUTAGE:?}"),
        |_| down_at.elapsed() >= LONG_OUTAGE,
    )
    .await;
}

/// While the database is down the broker answers `ping` and `stats`, and a new client
/// connects and is served; returns the stats.
async fn the_broker_serves_while_the_database_is_down(
    broker: &TestBroker,
    observer: &Client,
) -> Stats {
    observer
        .ping()
        .await
        .expect("the broker answers ping while the database is down");
    let newcomer = tokio::time::timeout(ANSWER_LIMIT, broker.client())
        .await
        .expect("a new client connects while the database is down");
    newcomer
        .ping()
        .await
        .expect("a new client is served while the database is down");
    observer
        .stats()
        .await
        .expect("the broker answers stats while the database is down")
}

/// What the clients were told, checked against the outages.
struct AnswersAtFaults {
    /// Transfers sent before a fault and answered after it.
    in_flight: usize,
    /// The slowest answer to a transfer sent while the database was down.
    slowest_refusal: Duration,
}

/// Every transfer got a proper answer; an outage is answered `db_unavailable` (at once) or
/// `commit_unknown`, or `lock_timeout` for a key wait it cut short; and between a restart
/// and the next fault nothing is answered as an outage.
fn the_answers_match_the_outages(records: &[Record], cycles: &[Cycle]) -> AnswersAtFaults {
    let fatal: Vec<&Record> = records.iter().filter(|r| r.is_fatal()).collect();
    assert!(
        fatal.is_empty(),
        "every transfer gets a proper answer from the broker: {fatal:?}"
    );
    let unexpected: Vec<&Record> = records
        .iter()
        .filter(|r| match &r.outcome {
            Outcome::Failed(code, _) => {
                !matches!(code, ErrorCode::DbUnavailable | ErrorCode::LockTimeout)
            }
            _ => false,
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "a database outage is answered db_unavailable or commit_unknown (a key wait cut \
         short by it, lock_timeout); got: {unexpected:#?}"
    );
    let mut answers = AnswersAtFaults {
        in_flight: 0,
        slowest_refusal: Duration::ZERO,
    };
    for (index, cycle) in cycles.iter().enumerate() {
        let during_outage: Vec<&Record> = records
            .iter()
            .filter(|r| r.sent >= cycle.down_at && r.answered <= cycle.restart_at)
            .collect();
        assert!(!during_outage.is_empty());
        let wrong_while_down: Vec<&&Record> = during_outage
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Failed(ErrorCode::DbUnavailable, _)))
            .collect();
        let slowest = during_outage
            .iter()
            .map(|r| r.answered - r.sent)
            .max()
            .unwrap_or_default();
        assert!(
            slowest < REFUSAL_LIMIT,
            "outage {index}: db_unavailable comes at once, not after {slowest:?}"
        );
        answers.slowest_refusal = answers.slowest_refusal.max(slowest);
        assert!(
            wrong_while_down.is_empty(),
            "outage {index}: a transfer sent while the database is down is answered \
             db_unavailable: {wrong_while_down:#?}"
        );
        // Between this restart and the next fault, nothing is answered as an outage.
        let next_fault = cycles.get(index + 1).map(|c| c.fault_at);
        let wrong_after: Vec<&Record> = records
            .iter()
            .filter(|r| {
                r.sent >= cycle.up_at
                    && next_fault.is_none_or(|at| r.answered < at)
                    && matches!(
                        r.outcome,
                        Outcome::Unknown(_) | Outcome::Failed(ErrorCode::DbUnavailable, _)
                    )
            })
            .collect();
        assert!(
            wrong_after.is_empty(),
            "after restart {index}, sessions reconnect and transfers succeed: {wrong_after:#?}"
        );
        answers.in_flight += records
            .iter()
            .filter(|r| r.sent < cycle.fault_at && r.answered > cycle.fault_at)
            .count();
    }
    answers
}

/// What the database holds: nothing of the open transactions it lost (and nothing sent in
/// them afterwards ran on its own); every acknowledged transfer and none answered as failed,
/// each ledger row the transfer that was sent, each transfer whole, the sum of the balances.
/// Returns the ledger by transfer id: (from, to, amount).
async fn the_database_holds_every_acknowledged_transfer(
    db: &PrivateMariaDb,
    records: &[Record],
    fault: Fault,
) -> HashMap<String, (u64, u64, i64)> {
    let notes = db.scalar("SELECT COUNT(*) FROM notes").await;
    assert_eq!(
        notes, 0,
        "no statement of a transaction the database lost took effect"
    );
    let mut conn = db.admin().await;
    let ledger: Vec<(String, u64, u64, i64)> = conn
        .query("SELECT id, from_id, to_id, amount FROM ledger")
        .await
        .expect("read the ledger");
    let balances: Vec<(u64, i64)> = conn
        .query("SELECT id, balance FROM accounts ORDER BY id")
        .await
        .expect("read the balances");
    conn.disconnect().await.ok();
    let in_ledger: HashMap<String, (u64, u64, i64)> = ledger
        .into_iter()
        .map(|(id, from, to, amount)| (id, (from, to, amount)))
        .collect();
    let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();

    let lost: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Committed && !in_ledger.contains_key(&r.id))
        .collect();
    assert!(
        lost.is_empty(),
        "every acknowledged transfer is in the database after the {fault:?}: {} lost: {lost:#?}",
        lost.len()
    );
    let failed_but_committed: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(..)) && in_ledger.contains_key(&r.id))
        .collect();
    assert!(
        failed_but_committed.is_empty(),
        "no transfer answered as failed is in the database: {failed_but_committed:#?}"
    );
    for (id, (from, to, amount)) in &in_ledger {
        let record = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("ledger row {id} belongs to no transfer that was sent"));
        assert_eq!(
            (record.from, record.to, record.amount),
            (*from, *to, *amount),
            "ledger row {id} is the transfer that was sent"
        );
    }
    let total: i64 = balances.iter().map(|(_, balance)| balance).sum();
    assert_eq!(
        total,
        ACCOUNTS as i64 * INITIAL_BALANCE,
        "the sum of the balances holds"
    );
    // Each transfer's two updates and its ledger row committed together.
    for (account, balance) in &balances {
        let expected = INITIAL_BALANCE
            + in_ledger
                .values()
                .map(|(from, to, amount)| {
                    (if to == account { *amount } else { 0 })
                        - (if from == account { *amount } else { 0 })
                })
                .sum::<i64>();
        assert_eq!(
            *balance, expected,
            "account {account}'s balance is what its ledger rows say"
        );
    }
    in_ledger
}

/// What `restart_during_transfer_load` prints once every check has passed.
struct RestartReport<'a> {
    fault: Fault,
    records: &'a [Record],
    cycles: &'a [Cycle],
    in_ledger: &'a HashMap<String, (u64, u64, i64)>,
    answers: AnswersAtFaults,
    others: &'a OtherSessions,
    down_stats: Option<Stats>,
    launched: Duration,
    began: Instant,
}

/// Prints the counts and timings of the run, and each `commit_unknown` with whether it had
/// committed.
fn print_the_restart_report(report: RestartReport) {
    let RestartReport {
        fault,
        records,
        cycles,
        in_ledger,
        answers,
        others,
        down_stats,
        launched,
        began,
    } = report;
    let unknown: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Unknown(_)))
        .collect();
    let unknown_committed = unknown
        .iter()
        .filter(|r| in_ledger.contains_key(&r.id))
        .count();
    let unavailable = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(ErrorCode::DbUnavailable, _)))
        .count();
    let committed = records
        .iter()
        .filter(|r| r.outcome == Outcome::Committed)
        .count();
    let longest = |part: fn(&Cycle) -> Duration| cycles.iter().map(part).max().unwrap_or_default();
    println!(
        "[faults_db] MariaDB {fault:?} x{FAULT_CYCLES}: {} transfers ({} in flight at \
         a fault): {committed} committed, {unavailable} db_unavailable, {} commit_unknown of \
         which {unknown_committed} had committed; instance ready in {launched:?}; longest \
         fault {:?}, outage {:?}, restart {:?}, reconnection of every client {:?}; sessions \
         while down {}; slowest db_unavailable while down {:?}; idle session \
         reconnected after {:?} idle; commit of a lost open transaction answered \
         {:?}; first autocommit exec after the restart answered \
         {:?}; total {:?}",
        records.len(),
        answers.in_flight,
        unknown.len(),
        longest(|c| c.down_at - c.fault_at),
        longest(|c| c.restart_at - c.down_at),
        longest(|c| c.up_at - c.restart_at),
        longest(|c| c.recovered_at - c.up_at),
        down_stats.map_or(0, |s| s.sessions),
        answers.slowest_refusal,
        others.idle_gaps,
        others.open_b_commit,
        others.autocommit_after_restart,
        began.elapsed()
    );
    for record in &unknown {
        println!(
            "[faults_db]   commit_unknown {} ({}): {:?}",
            record.id,
            if in_ledger.contains_key(&record.id) {
                "committed"
            } else {
                "not committed"
            },
            record.outcome
        );
    }
}

// ---------------------------------------------------------------------------------------
// Exactly once through MariaDB restarts, with idempotency keys
// ---------------------------------------------------------------------------------------

/// Clients of the exactly-once test, and the accounts they move money between.
const KEYED_CLIENTS: u64 = 6;

#[test]
fn keyed_transfers_retried_through_mariadb_stopped_and_killed_land_exactly_once() {
    let _serial = serial();
    runtime().block_on(keyed_transfers_through_restarts());
}

async fn keyed_transfers_through_restarts() {
    let began = Instant::now();
    let mut db = PrivateMariaDb::launch("once", "bank", &[]).await;
    db.run(&[
        CREATE_ACCOUNTS,
        CREATE_TRANSFERS,
        &insert_accounts(ACCOUNTS as u32, INITIAL_BALANCE),
    ])
    .await;
    let broker = TestBroker::start(broker_config(db.url()));
    let load = KeyedLoad::start(broker.addr, KEYED_CLIENTS, ACCOUNTS);
    for fault in [Fault::Stop, Fault::Kill] {
        load.until_more_committed(20, "transfers commit before the fault")
            .await;
        inject_the_fault(&mut db, fault);
        tokio::task::block_in_place(|| db.start());
        load.until_more_committed(20, "transfers commit after the restart")
            .await;
    }
    let journal = load.stop().await;
    assert_exactly_once(&db.test_db(), &journal, ACCOUNTS, INITIAL_BALANCE).await;
    println!(
        "[faults_db] exactly once through a stop and a kill of MariaDB: {} logical transfers, attempts answered {:?}, in {:?}",
        journal.committed.len(),
        journal.answers,
        began.elapsed()
    );
    broker.shutdown();
}

// ---------------------------------------------------------------------------------------
// The database refuses connections
// ---------------------------------------------------------------------------------------

/// MariaDB's smallest `max_connections` (a smaller value is raised to it).
const DB_MAX_CONNECTIONS: usize = 10;
/// Clients of the broker, more than the database takes and fewer than `max_sessions`.
const CROWD: usize = 15;
const _: () = assert!(
    CROWD > DB_MAX_CONNECTIONS,
    "more clients than the database takes"
);
/// Winners that leave to make room for refused clients.
const LEAVING: usize = 2;

/// How a client fared with one transaction.
#[derive(Debug)]
enum Attempt {
    Committed,
    Refused,
}

/// One `tx` on client `index`'s own row; a refusal must be the clear, retryable error.
async fn crowd_tx(client: &Client, index: usize) -> Attempt {
    let started = Instant::now();
    let request = Request::Tx(
        TxBuilder::new()
            .lock(format!("counters:{index}"))
            .exec(
                "UPDATE counters SET n = n + 1 WHERE id = ?",
                vec![(index as u64).into()],
            )
            .into_request(),
    );
    let answer = tokio::time::timeout(ANSWER_LIMIT, client.send(request))
        .await
        .unwrap_or_else(|_| panic!("client {index}: no answer within {ANSWER_LIMIT:?}"));
    match answer {
        Ok(Reply::Tx { .. }) => Attempt::Committed,
        Ok(other) => panic!("client {index}: not a tx reply: {other:?}"),
        Err(error) => {
            assert_refusal(&format!("client {index}'s tx"), error, started.elapsed());
            Attempt::Refused
        }
    }
}

/// A database refusing connections is answered `db_unavailable`, retryable, with a message
/// naming the cause, at once.
fn assert_refusal(what: &str, error: ClientError, elapsed: Duration) {
    let ClientError::Server(error) = error else {
        panic!("{what}: the broker did not answer: {error}");
    };
    assert_eq!(
        error.code,
        ErrorCode::DbUnavailable,
        "{what}: a database refusing connections is db_unavailable: {error:?}"
    );
    assert!(error.retryable, "{what}: retryable: {error:?}");
    assert!(
        error
            .message
            .to_lowercase()
            .contains("too many connections"),
        "{what}: the message names the cause: {:?}",
        error.message
    );
    assert!(
        elapsed < REFUSAL_LIMIT,
        "{what}: refused quickly, not after {elapsed:?}"
    );
}

#[test]
fn the_database_refusing_connections_is_a_clear_retryable_error() {
    let _serial = serial();
    runtime().block_on(database_refuses_connections());
}

/// The scenario of the test above: `CROWD` clients on a database with room for
/// `DB_MAX_CONNECTIONS - 1` of them (the test's admin connection holds one slot).
async fn database_refuses_connections() {
    let began = Instant::now();
    let db = launch_a_database_with_few_connections().await;
    let mut admin = db.admin().await;
    only_the_admin_connection_is_left(&mut admin).await;
    let slots = DB_MAX_CONNECTIONS - 1;

    let mut config = broker_config(db.url_as("app"));
    config.max_sessions = 20;
    assert!(
        config.max_sessions > CROWD,
        "the broker admits every client"
    );
    let broker = TestBroker::start(config);
    let observer = broker.client().await;
    let mut clients: Vec<Option<Client>> = Vec::new();
    for _ in 0..CROWD {
        let client = broker.client().await;
        client.ping().await.expect("admitted by the broker");
        clients.push(Some(client));
    }

    let (winners, refused) = one_after_another_the_first_slots_commit(&clients, slots).await;
    all_at_once_the_same_clients_commit(&clients, &winners, &refused, slots).await;
    let loser = clients[refused[0]].as_ref().expect("connected");
    the_other_ways_in_are_refused_cleanly(loser, &observer).await;
    refused_clients_get_in_once_winners_leave(&mut clients, &winners, &refused, &observer).await;

    let rest = stats_until(&observer, "no key is held and nobody waits, at rest", |s| {
        s.locks_held == 0 && s.lock_waiters == 0
    })
    .await;
    assert_eq!(rest.sessions as usize, CROWD + 1 - LEAVING);
    the_broker_holds_one_connection_per_free_slot(&mut admin, slots).await;
    // Every committed transaction, and only those, shows in its client's counter.
    let sum: i64 = admin
        .query_first("SELECT CAST(SUM(n) AS SIGNED) FROM counters")
        .await
        .expect("read the counters")
        .expect("a row");
    let expected = slots // first round
        + slots // all at once
        + LEAVING // the refused that got in
        + (slots - LEAVING); // the remaining winners, once more
    assert_eq!(
        sum, expected as i64,
        "committed transactions, and only they, took effect"
    );
    admin.disconnect().await.ok();
    println!(
        "[faults_db] max_connections {DB_MAX_CONNECTIONS}: {slots} sessions served, {} refused \
         with db_unavailable (too many connections), {LEAVING} got in on retry; total {:?}",
        refused.len(),
        began.elapsed()
    );
    drop(clients);
    drop(observer);
    broker.shutdown();
}

/// A private MariaDB with `max_connections` at its smallest, a counter row per client, and
/// the user `app` the broker logs in as.
async fn launch_a_database_with_few_connections() -> PrivateMariaDb {
    let max_connections = format!("--max-connections={DB_MAX_CONNECTIONS}");
    let db = PrivateMariaDb::launch("maxconn", "crowd", &[&max_connections]).await;
    let values: Vec<String> = (0..CROWD).map(|id| format!("({id}, 0)")).collect();
    db.run(&[
        "CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
        &format!("INSERT INTO counters VALUES {}", values.join(",")),
        // The broker logs in as a user without SUPER, so MariaDB's extra connection for
        // SUPER stays with the test's admin connection.
        "CREATE USER 'app'@'127.0.0.1'",
        "GRANT ALL ON crowd.* TO 'app'@'127.0.0.1'",
    ])
    .await;
    db
}

/// Waits until only the admin connection is left (earlier ones may still be closing); it
/// holds one of the slots, so the broker can have the others. Polls on the admin connection
/// itself: a new connection per probe would take a slot.
async fn only_the_admin_connection_is_left(admin: &mut mysql_async::Conn) {
    let limit: u64 = admin
        .query_first("SELECT @@max_connections")
        .await
        .expect("read max_connections")
        .expect("a row");
    assert_eq!(limit as usize, DB_MAX_CONNECTIONS);
    let others = "SELECT CAST((SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                  WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon' \
                  AND USER <> 'system user') + (SELECT VARIABLE_VALUE - 1 \
                  FROM information_schema.GLOBAL_STATUS \
                  WHERE VARIABLE_NAME = 'THREADS_CONNECTED') AS SIGNED)";
    admin_query_until(
        admin,
        others,
        |count| count == 0,
        |count| format!("{count} other connections stay open"),
    )
    .await;
}

/// One after another: the first `slots` sessions get a database connection (and keep it),
/// the rest are refused by the database, each at once and with the clear error. Returns the
/// winners and the refused, by index.
async fn one_after_another_the_first_slots_commit(
    clients: &[Option<Client>],
    slots: usize,
) -> (Vec<usize>, Vec<usize>) {
    let mut winners = Vec::new();
    let mut refused = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        match crowd_tx(client.as_ref().expect("connected"), index).await {
            Attempt::Committed => winners.push(index),
            Attempt::Refused => refused.push(index),
        }
    }
    assert_eq!(
        winners,
        (0..slots).collect::<Vec<_>>(),
        "the sessions within the database's limit commit"
    );
    assert_eq!(refused.len(), CROWD - slots);
    (winners, refused)
}

/// All at once: the winners are unaffected, the refused are refused again (some at the
/// server's accept, some at its login check), nobody hangs, the broker does not crash.
async fn all_at_once_the_same_clients_commit(
    clients: &[Option<Client>],
    winners: &[usize],
    refused: &[usize],
    slots: usize,
) {
    let round = futures_util::future::join_all(clients.iter().enumerate().map(|(index, c)| {
        let client = c.as_ref().expect("connected");
        async move { (index, crowd_tx(client, index).await) }
    }))
    .await;
    for (index, attempt) in &round {
        match attempt {
            Attempt::Committed => assert!(winners.contains(index), "client {index} commits"),
            Attempt::Refused => assert!(refused.contains(index), "client {index} is refused"),
        }
    }
    assert_eq!(
        round
            .iter()
            .filter(|(_, attempt)| matches!(attempt, Attempt::Committed))
            .count(),
        slots,
        "every winner commits again: {round:?}"
    );
    for client in clients.iter().flatten() {
        client.ping().await.expect("every session is still served");
    }
}

/// The other ways in are refused the same way, and leave the session clean: a `begin` that
/// could not start leaves no transaction and no key; an autocommit `exec` that never reached
/// the database is db_unavailable (nothing ran), not commit_unknown.
async fn the_other_ways_in_are_refused_cleanly(loser: &Client, observer: &Client) {
    let started = Instant::now();
    let begin = loser.begin(with_keys(&["counters:begin"])).await;
    assert_refusal(
        "begin",
        begin.expect_err("begin is refused"),
        started.elapsed(),
    );
    assert_eq!(
        server_error(loser.commit().await).code,
        ErrorCode::NoTransaction,
        "a refused begin leaves no transaction open"
    );
    let started = Instant::now();
    let exec = loser
        .exec("UPDATE counters SET n = n + 100 WHERE id = 0", vec![])
        .await;
    assert_refusal(
        "autocommit exec",
        exec.expect_err("exec is refused"),
        started.elapsed(),
    );
    stats_until(observer, "the refused begin holds no key", |s| {
        s.locks_held == 0 && s.lock_waiters == 0
    })
    .await;
    let stats = observer.stats().await.expect("stats");
    assert_eq!(stats.sessions as usize, CROWD + 1, "no session was lost");
}

/// `LEAVING` winners leave; their database connections close, and as many refused clients
/// get in on retry. The rest are still refused, clearly, and the remaining winners still
/// commit.
async fn refused_clients_get_in_once_winners_leave(
    clients: &mut [Option<Client>],
    winners: &[usize],
    refused: &[usize],
    observer: &Client,
) {
    for index in &winners[..LEAVING] {
        clients[*index] = None;
    }
    stats_until(observer, "the leaving sessions have ended", |s| {
        s.sessions as usize == CROWD + 1 - LEAVING
    })
    .await;
    let mut admitted = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while admitted.len() < LEAVING {
        assert!(
            Instant::now() < deadline,
            "refused clients get in on retry once slots are free: {admitted:?}"
        );
        for index in refused {
            if admitted.contains(index) || admitted.len() == LEAVING {
                continue;
            }
            let client = clients[*index].as_ref().expect("connected");
            if let Attempt::Committed = crowd_tx(client, *index).await {
                admitted.push(*index);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for index in refused.iter().filter(|index| !admitted.contains(index)) {
        let client = clients[*index].as_ref().expect("connected");
        assert!(
            matches!(crowd_tx(client, *index).await, Attempt::Refused),
            "client {index} is refused while the database is full again"
        );
    }
    for index in &winners[LEAVING..] {
        let client = clients[*index].as_ref().expect("connected");
        assert!(
            matches!(crowd_tx(client, *index).await, Attempt::Committed),
            "winner {index} still commits"
        );
    }
}

/// The broker holds exactly the database's free slots, one connection per served session.
async fn the_broker_holds_one_connection_per_free_slot(
    admin: &mut mysql_async::Conn,
    slots: usize,
) {
    let app_connections = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'";
    admin_query_until(
        admin,
        app_connections,
        |count| count == slots as i64,
        |count| format!("the broker holds {count} database connections, not {slots}"),
    )
    .await;
}

/// Polls `sql` (one integer) on the admin connection until `condition` holds; fails with
/// `failure(last value)` after `PATIENCE`. The probe uses the admin connection itself: a new
/// connection per probe would take one of the database's few slots.
async fn admin_query_until(
    admin: &mut mysql_async::Conn,
    sql: &str,
    condition: impl Fn(i64) -> bool,
    failure: impl Fn(i64) -> String,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value: i64 = admin.query_first(sql).await.expect(sql).expect("a row");
        if condition(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{}", failure(value));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
