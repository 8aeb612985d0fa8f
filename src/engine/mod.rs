//! The rules of the protocol for one session, independent of how requests arrive. A
//! `SessionEngine` owns the session's database connection, its transaction state and its
//! handle on the lock coordinator; it takes one typed request at a time and returns the
//! typed answer. The TCP session actor drives it, and so do embedded sessions, so the rules
//! (ordered keys, retries, the aborted state) exist exactly once.
//!
//! One file per operation:
//! - `start.rs`: taking a transaction's keys and starting it, for `tx` and `begin`.
//! - `tx.rs`: the `tx` op, its shapes and its retries.
//! - `alone.rs`: a statement run alone in autocommit mode (`exec` outside a transaction, the
//!   one-write `tx`).
//! - `interactive.rs`: `begin`, `exec` inside a transaction, `lock`, `commit`, `rollback`.
//! - `group.rs`: group execution, as a group's leader and as a member of another's.
//! - `idempotent.rs`: idempotency keys: the record written just before a keyed request's
//!   `COMMIT`, and looked up when a keyed `tx` failed and before a keyed `begin` runs.
//! - `ending.rs`: `end_transaction`, the one way every transaction ends.
//! - `cross_broker.rs`: keys taken as named locks in the database (`coordination =
//!   "database"`), so that brokers sharing a database order their transactions too.
//!
//! **Invariant:** keys are held only while a transaction is open or being started; every
//! transaction ends in `end_transaction`, which releases them after the database has
//! committed or rolled back, moves the state and counts the outcome.
//!
//! **Invariant:** a statement runs inside a database transaction exactly when the state is
//! `Active` (or inside a `tx`); `exec` in any other state either runs in autocommit mode
//! (`Idle`) or is refused (`Aborted`).

mod alone;
mod cross_broker;
mod ending;
mod group;
mod idempotent;
mod interactive;
mod start;
mod tx;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use slog::Logger;

use crate::config::{Config, Coordination};
use crate::coordinator::{Coordinator, ReadGate};
use crate::db::{ConnectionIdentity, Database, DbConnection};
use crate::error::{AbortReason, BrokerError};
use crate::idempotency::{Claim, OutcomeTable};
use crate::keys::{CommitGate, LockClient};
use crate::locks::LockRequest;
use crate::metrics::{Metrics, TxKind};
use crate::protocol::{Isolation, Reply, Request, Statement, Stats, PROTOCOL_VERSION};
use crate::sql_class::{Access, ClassCache, SessionUse, StatementClass};
use crate::txn::{ServerPhase, TxState};

use cross_broker::CrossBrokerKeys;
use ending::TxEnd;

/// The name and version a `hello` answers with.
pub const SERVER_NAME: &str = concat!("txbroker ", env!("CARGO_PKG_VERSION"));

/// What every session of one broker shares, and the one place where sessions' engines are
/// made and their ids minted, for TCP and embedded sessions alike: an id is also the
/// session's owner id in the lock table, so both kinds draw from one counter.
#[derive(Clone)]
pub struct SessionFactory {
    pub config: Arc<Config>,
    pub database: Database,
    pub coordinator: Addr<Coordinator>,
    pub metrics: Arc<Metrics>,
    pub log: Logger,
    outcomes: Arc<OutcomeTable>,
    last_session_id: Arc<AtomicU64>,
}

impl SessionFactory {
    pub fn new(
        config: Arc<Config>,
        database: Database,
        coordinator: Addr<Coordinator>,
        metrics: Arc<Metrics>,
        log: Logger,
    ) -> SessionFactory {
        SessionFactory {
            outcomes: Arc::new(OutcomeTable::new(&config)),
            config,
            database,
            coordinator,
            metrics,
            log,
            last_session_id: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts a new session and makes its engine; `peer` names the client in the logs.
    pub fn new_engine(&self, peer: &str) -> SessionEngine {
        let id = self.last_session_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.session_started();
        SessionEngine {
            session_id: id,
            db: self.database.connection(),
            keys: LockClient::new(self.coordinator.clone(), id),
            state: TxState::Idle,
            current: TxContext::new(self.config.default_isolation),
            handed_over: None,
            cross_broker: match self.config.coordination {
                Coordination::Local => CrossBrokerKeys::LocalOnly,
                Coordination::Database => CrossBrokerKeys::NamedLocks(Default::default()),
            },
            classes: ClassCache::default(),
            connection: ConnectionProfile::Pristine,
            outcomes: self.outcomes.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            log: self
                .log
                .new(slog::o!("session" => id, "peer" => peer.to_string())),
        }
    }
}

pub struct SessionEngine {
    session_id: u64,
    db: DbConnection,
    keys: LockClient,
    state: TxState,
    /// The transaction in progress, beyond what its client sees of it.
    current: TxContext,
    /// A commit whose keys were handed over and whose outcome is not settled yet.
    handed_over: Option<HandedOver>,
    /// The keys it holds in the database too, with `coordination = "database"`.
    cross_broker: CrossBrokerKeys,
    classes: ClassCache,
    connection: ConnectionProfile,
    outcomes: Arc<OutcomeTable>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl SessionEngine {
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    pub fn state(&self) -> &TxState {
        &self.state
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The session's logger, with its id and peer; the session actor logs through it too.
    pub fn log(&self) -> &Logger {
        &self.log
    }

    /// Cancel it when the client is gone: a wait for keys in progress ends at once, and no
    /// new one starts.
    pub fn cancellation(&self) -> tokio_util::sync::CancellationToken {
        self.keys.cancellation()
    }

    /// Answers one request. Requests must come one at a time: the engine is the only user of
    /// its connection and its transaction.
    pub async fn handle(
        &mut self,
        request: Request,
        phase: ServerPhase,
    ) -> Result<Reply, BrokerError> {
        let arrived = Instant::now();
        check_limits(&request, &self.config)?;
        if self.state.is_open() && self.deadline_passed() {
            self.end_transaction(TxEnd::Aborted(AbortReason::MaxDuration))
                .await;
        }
        self.state.admit(&request, phase)?;
        match request {
            Request::Hello { .. } => Ok(Reply::Hello {
                server: SERVER_NAME.to_string(),
                protocol: PROTOCOL_VERSION,
                session: self.session_id,
            }),
            Request::Ping => Ok(Reply::Done),
            Request::Stats => self.stats().await.map(Reply::Stats),
            Request::Tx(tx) => self.run_tx(tx, arrived).await,
            Request::Begin(options) => self.begin(options, arrived).await,
            Request::Exec(statement) if self.state.is_open() => {
                self.exec_in_transaction(&statement).await
            }
            Request::Exec(statement) => self.exec_autocommit(&statement, arrived).await,
            Request::Lock(keys) => self.lock(keys).await.map(|()| Reply::Done),
            Request::Commit => self.commit().await,
            Request::Rollback => self.rollback().await.map(|()| Reply::Done),
        }
    }

    /// Ends the session's work: rolls back an open transaction, releases every key and
    /// closes the database connection.
    pub async fn close(&mut self) {
        if self.state.is_open() {
            self.end_transaction(TxEnd::RolledBack).await;
        }
        self.db.disconnect().await;
    }

    /// When the open transaction must be over, if `max_tx_duration_ms` is set.
    pub fn deadline(&self) -> Option<Instant> {
        self.db.deadline()
    }

    /// Aborts an open interactive transaction that sat idle too long or outlived
    /// `max_tx_duration_ms`.
    pub async fn abort_stale(&mut self) {
        if !self.state.is_open() {
            return;
        }
        let reason = if self.deadline_passed() {
            AbortReason::MaxDuration
        } else {
            AbortReason::IdleTimeout {
                idle_ms: self.config.idle_tx_timeout_ms,
            }
        };
        self.end_transaction(TxEnd::Aborted(reason)).await;
    }

    fn deadline_passed(&self) -> bool {
        self.db
            .deadline()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        let locks = self
            .keys
            .stats()
            .await
            .ok_or_else(|| BrokerError::Internal("the lock coordinator is gone".into()))?;
        let counters = self.metrics.snapshot();
        Ok(Stats {
            sessions: counters.sessions,
            transactions_committed: counters.transactions_committed,
            transactions_rolled_back: counters.transactions_rolled_back,
            retries: counters.retries,
            deadlocks: counters.deadlocks,
            lock_waits: locks.table.lock_waits,
            lock_timeouts: locks.lock_timeouts,
            locks_held: locks.table.locks_held,
            lock_waiters: locks.table.lock_waiters,
            handovers: counters.handovers,
            groups_committed: counters.groups_committed,
            transactions_grouped: counters.transactions_grouped,
            reads_waiting: counters.reads_waiting,
            latency: self.metrics.recent_latency(),
            hot_keys: locks.hot_keys,
        })
    }
}

/// What the engine knows of the transaction in progress, beyond its state.
struct TxContext {
    isolation: Isolation,
    /// The handed-over commits its statements that read without locking wait for.
    read_gate: ReadGate,
    statements: StatementRecord,
    /// Where its time goes; `None` between transactions.
    clock: Option<TxClock>,
    /// The idempotency key of an interactive transaction, recorded at its `COMMIT`.
    claim: Option<Claim>,
}

impl TxContext {
    fn new(isolation: Isolation) -> TxContext {
        TxContext {
            isolation,
            read_gate: ReadGate::default(),
            statements: StatementRecord::AllSucceeded,
            clock: None,
            claim: None,
        }
    }
}

/// A transaction's time so far, for the metrics when it ends. Its database time is counted by
/// the connection itself (`DbConnection::take_time_in_database`).
struct TxClock {
    kind: TxKind,
    started: Instant,
    key_wait: Duration,
}

impl TxClock {
    fn start(kind: TxKind, started: Instant) -> TxClock {
        TxClock {
            kind,
            started,
            key_wait: Duration::ZERO,
        }
    }
}

/// Whether every statement of an interactive transaction succeeded: only then may its keys
/// be handed over at `COMMIT` (protocol 1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatementRecord {
    AllSucceeded,
    SomeFailed,
}

/// A handed-over commit: the gate to settle, and the connection it was sent on, to wait for
/// it to be gone when its outcome is unknown.
struct HandedOver {
    gate: CommitGate,
    connection: Option<ConnectionIdentity>,
}

/// Whether this session's connection is like every other one, so that its requests may run
/// on another session's connection and others' on its own (group execution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionProfile {
    Pristine,
    /// A statement changed session state (a variable, a temporary table, a named lock...).
    Customized,
}

impl SessionEngine {
    /// Classifies `sql` at the transaction's isolation, and remembers a session it customizes.
    fn classify(&mut self, sql: &str, isolation: Isolation) -> StatementClass {
        let class = self.classes.classify(sql, isolation);
        if class.session == SessionUse::Changes {
            self.connection = ConnectionProfile::Customized;
        }
        class
    }

    /// Waits, before a statement of `class`, for the handed-over commits its transaction's
    /// reads must come after; bounded by `lock_wait_timeout_ms`.
    async fn wait_for_reads(&mut self, class: StatementClass) -> Result<(), BrokerError> {
        if class.access == Access::Locking || self.current.read_gate.is_open() {
            return Ok(());
        }
        let limit = self.config.lock_wait_timeout();
        let started = Instant::now();
        let waited = {
            let _waiting = self.metrics.read_waiting();
            tokio::time::timeout(limit, self.current.read_gate.wait()).await
        };
        self.add_key_wait(started.elapsed());
        match waited {
            Ok(()) => Ok(()),
            Err(_) => Err(BrokerError::LockTimeout {
                key: "(the commit of a previous holder of this transaction's keys)".into(),
                waited_ms: limit.as_millis() as u64,
            }),
        }
    }
}

impl SessionEngine {
    /// Counts time the open transaction spent waiting on other transactions.
    fn add_key_wait(&mut self, waited: Duration) {
        if let Some(clock) = &mut self.current.clock {
            clock.key_wait += waited;
        }
    }
}

/// Refuses requests past the configured sizes before anything runs.
fn check_limits(request: &Request, config: &Config) -> Result<(), BrokerError> {
    let (keys, statements): (Option<&LockRequest>, &[Statement]) = match request {
        Request::Tx(tx) => (tx.options.locks.as_ref(), &tx.statements),
        Request::Begin(options) => (options.locks.as_ref(), &[]),
        Request::Lock(keys) => (Some(keys), &[]),
        Request::Exec(statement) => (None, std::slice::from_ref(statement)),
        _ => return Ok(()),
    };
    if let Some(keys) = keys.filter(|keys| keys.len() > config.max_keys_per_request) {
        return Err(BrokerError::BadRequest(format!(
            "{} keys is more than max_keys_per_request ({})",
            keys.len(),
            config.max_keys_per_request
        )));
    }
    if statements.len() > config.max_statements_per_tx {
        return Err(BrokerError::BadRequest(format!(
            "{} statements is more than max_statements_per_tx ({})",
            statements.len(),
            config.max_statements_per_tx
        )));
    }
    match statements
        .iter()
        .position(|statement| statement.sql.len() > config.max_sql_bytes)
    {
        Some(index) => Err(BrokerError::BadRequest(format!(
            "statement {index}: sql of {} bytes is more than max_sql_bytes ({})",
            statements[index].sql.len(),
            config.max_sql_bytes
        ))),
        None => Ok(()),
    }
}
