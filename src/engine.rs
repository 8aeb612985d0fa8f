//! The rules of protocol v1 for one session, independent of how requests arrive. A
//! `SessionEngine` owns the session's database connection, its transaction state and its
//! handle on the lock coordinator; it takes one typed request at a time and returns the
//! typed answer. The TCP session actor drives it, and so can any other transport, so the
//! rules (ordered keys, retries, the aborted state) exist exactly once.
//!
//! **Invariant:** keys are held only while a transaction is open or being started; every
//! path that ends a transaction (commit, rollback, failure, abort, close) releases them after
//! the database has committed or rolled back.
//!
//! **Invariant:** a statement runs inside a database transaction exactly when the state is
//! `Active` (or inside a `tx`); `exec` in any other state either runs in autocommit mode
//! (`Idle`) or is refused (`Aborted`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use rand::Rng;
use slog::{debug, Logger};

use crate::config::Config;
use crate::coordinator::{Coordinator, LockClient, LockFailure};
use crate::db::{classify_conflict, Conflict, Database, DbConnection, DbError, TxMode};
use crate::error::{AbortReason, BrokerError};
use crate::locks::LockRequest;
use crate::metrics::Metrics;
use crate::protocol::{
    Isolation, QueryResult, Reply, Request, Statement, Stats, TxOptions, TxRequest,
    PROTOCOL_VERSION,
};
use crate::sql_guard;
use crate::txn::{ServerPhase, TxState};

/// The name and version a `hello` answers with.
pub const SERVER_NAME: &str = concat!("txbroker ", env!("CARGO_PKG_VERSION"));

/// Longest pause between two attempts of a `tx`; retries hold the keys, so keep it short.
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// A statement that carries its own commit (an autocommit `exec`, a one-write `tx`) pings its
/// connection first when it has been idle this long: a connection that died unnoticed would
/// otherwise turn a statement that never ran into `commit_unknown`. Under load a session's gap
/// between requests is a few milliseconds and never pays the round trip.
const AUTOCOMMIT_PING_AFTER: Duration = Duration::from_millis(50);

/// How a `tx` reaches the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxShape {
    /// `START TRANSACTION`, the statements, `COMMIT`: protocol step 2.
    Explicit,
    /// One `INSERT`, `UPDATE`, `DELETE` or `REPLACE`, run alone in autocommit mode. InnoDB
    /// makes a single statement atomic and durable by itself, so this is the same transaction
    /// in one round trip instead of three. A connection lost while it runs leaves its outcome
    /// unknown (`commit_unknown`, where the explicit shape could say `db_unavailable`), which
    /// is why `single_write_autocommit = false` turns it off.
    SingleWrite,
}

impl TxShape {
    fn of(tx: &TxRequest, config: &Config) -> TxShape {
        match tx.statements.as_slice() {
            [only]
                if config.single_write_autocommit
                    && !tx.options.read_only
                    && sql_guard::is_single_data_change(&only.sql) =>
            {
                TxShape::SingleWrite
            }
            _ => TxShape::Explicit,
        }
    }
}

/// What every session of one broker shares, and the one place where sessions' engines are
/// made, for TCP and embedded sessions alike.
#[derive(Clone)]
pub struct SessionFactory {
    pub config: Arc<Config>,
    pub database: Database,
    pub coordinator: Addr<Coordinator>,
    pub metrics: Arc<Metrics>,
    pub log: Logger,
}

impl SessionFactory {
    /// Counts a new session and makes its engine; `peer` names the client in the logs.
    pub fn new_engine(&self, peer: &str) -> SessionEngine {
        let id = self.metrics.session_started();
        SessionEngine::new(
            id,
            self.database.connection(),
            LockClient::new(self.coordinator.clone(), id),
            self.config.clone(),
            self.metrics.clone(),
            self.log
                .new(slog::o!("session" => id, "peer" => peer.to_string())),
        )
    }
}

pub struct SessionEngine {
    session_id: u64,
    db: DbConnection,
    locks: LockClient,
    state: TxState,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl SessionEngine {
    pub fn new(
        session_id: u64,
        db: DbConnection,
        locks: LockClient,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        log: Logger,
    ) -> SessionEngine {
        SessionEngine {
            session_id,
            db,
            locks,
            state: TxState::Idle,
            config,
            metrics,
            log,
        }
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    pub fn state(&self) -> &TxState {
        &self.state
    }

    /// Cancel it when the client is gone: a wait for keys in progress ends at once, and no
    /// new one starts.
    pub fn cancellation(&self) -> tokio_util::sync::CancellationToken {
        self.locks.cancellation()
    }

    /// Answers one request. Requests must come one at a time: the engine is the only user of
    /// its connection and its transaction.
    pub async fn handle(
        &mut self,
        request: Request,
        phase: ServerPhase,
    ) -> Result<Reply, BrokerError> {
        check_limits(&request, &self.config)?;
        if self.state.is_open() && self.deadline_passed() {
            self.abort(AbortReason::MaxDuration).await;
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
            Request::Tx(tx) => self.run_tx(tx).await,
            Request::Begin(options) => self.begin(options).await.map(|()| Reply::Done),
            Request::Exec(statement) if self.state.is_open() => {
                self.exec_in_transaction(&statement).await
            }
            Request::Exec(statement) => self.exec_autocommit(&statement).await,
            Request::Lock(keys) => self.lock(keys).await.map(|()| Reply::Done),
            Request::Commit => self.commit().await.map(|()| Reply::Done),
            Request::Rollback => self.rollback().await.map(|()| Reply::Done),
        }
    }

    /// Ends the session's work: rolls back an open transaction, releases every key and
    /// closes the database connection.
    pub async fn close(&mut self) {
        if self.state.is_open() {
            self.end_in_rollback().await;
        }
        self.transaction_over();
        self.state = TxState::Idle;
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
        self.abort(reason).await;
    }

    fn deadline_passed(&self) -> bool {
        self.db
            .deadline()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Every end of a transaction comes here: the keys go and the deadline with them.
    fn transaction_over(&mut self) {
        self.locks.release_all();
        self.db.set_deadline(None);
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        let locks = self
            .locks
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
        })
    }

    /// Grants the keys and starts the database transaction at the same time: `START
    /// TRANSACTION` takes no row locks and no snapshot, so overlapping it with the wait keeps
    /// one round trip out of the time the keys are held. A single write starts nothing: its
    /// statement carries its own commit, so its connection is checked for life beforehand.
    async fn start_transaction(
        &mut self,
        options: &TxOptions,
        shape: TxShape,
    ) -> Result<(), BrokerError> {
        match shape {
            TxShape::Explicit => self.db.ensure_connected().await,
            TxShape::SingleWrite => self.db.ensure_live(AUTOCOMMIT_PING_AFTER).await,
        }
        .map_err(db_error)?;
        self.db.set_deadline(
            self.config
                .max_tx_duration()
                .map(|limit| Instant::now() + limit),
        );
        let db = &mut self.db;
        let begin = async move {
            match shape {
                TxShape::Explicit => begin_on_live_connection(db, options).await,
                TxShape::SingleWrite => Ok(()),
            }
        };
        let (granted, begun) = match options.locks.clone() {
            Some(keys) => {
                let (granted, begun) = futures_util::join!(self.locks.acquire(keys), begin);
                (granted, begun)
            }
            None => (Ok(()), begin.await),
        };
        match (granted, begun) {
            (Ok(()), Ok(())) => Ok(()),
            (_, Err(error)) => {
                self.db.rollback().await.ok();
                self.transaction_over();
                Err(db_error(error))
            }
            (Err(failure), Ok(())) => {
                if shape == TxShape::Explicit {
                    self.db.rollback().await.ok();
                }
                self.transaction_over();
                Err(lock_error(failure))
            }
        }
    }

    async fn run_tx(&mut self, tx: TxRequest) -> Result<Reply, BrokerError> {
        for (index, statement) in tx.statements.iter().enumerate() {
            sql_guard::check(&statement.sql, true).map_err(|refusal| {
                BrokerError::BadRequest(format!("statements[{index}]: {}", refusal.message()))
            })?;
        }
        let retries = tx.retries.unwrap_or(self.config.default_retries);
        match TxShape::of(&tx, &self.config) {
            TxShape::Explicit => self.run_explicit_tx(&tx, retries).await,
            TxShape::SingleWrite => self.run_single_write(&tx, retries).await,
        }
    }

    async fn run_explicit_tx(
        &mut self,
        tx: &TxRequest,
        retries: u32,
    ) -> Result<Reply, BrokerError> {
        self.start_transaction(&tx.options, TxShape::Explicit)
            .await?;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let failure = match self.run_statements(&tx.statements).await {
                Ok(results) => match self.db.commit().await {
                    Ok(()) => return Ok(self.committed(results, attempts)),
                    Err(DbError::ConnectionLost(message)) => {
                        self.transaction_over();
                        return Err(BrokerError::CommitUnknown(message));
                    }
                    Err(DbError::DeadlineExceeded) => {
                        self.transaction_over();
                        return Err(BrokerError::CommitUnknown(
                            "COMMIT was still running at max_tx_duration_ms and was killed".into(),
                        ));
                    }
                    Err(error) => (None, error),
                },
                Err(failure) => failure,
            };
            let (index, error) = failure;
            self.db.rollback().await.ok();
            if !self.retry_after_conflict(&error, attempts, retries).await {
                return Err(self.failed(index, error));
            }
            if let Err(error) = self
                .db
                .begin(tx.options.isolation, tx.options.read_only)
                .await
            {
                self.db.rollback().await.ok();
                return Err(self.failed(None, error));
            }
        }
    }

    /// Runs a `tx` of one data change as one autocommit statement (see `TxShape`).
    async fn run_single_write(
        &mut self,
        tx: &TxRequest,
        retries: u32,
    ) -> Result<Reply, BrokerError> {
        let statement = &tx.statements[0];
        self.start_transaction(&tx.options, TxShape::SingleWrite)
            .await?;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let error = match self.execute_alone(statement, tx.options.isolation).await {
                Ok(result) => return Ok(self.committed(vec![result], attempts)),
                Err(DbError::ConnectionLost(message)) => {
                    self.transaction_over();
                    return Err(BrokerError::CommitUnknown(format!(
                        "{message}; the statement ran as its own autocommit transaction, so it may have committed"
                    )));
                }
                Err(DbError::DeadlineExceeded) => {
                    self.transaction_over();
                    return Err(BrokerError::CommitUnknown(
                        "the statement was still running at max_tx_duration_ms and was killed; it ran as its own autocommit transaction, so it may have committed".into(),
                    ));
                }
                Err(error) => error,
            };
            if !self.retry_after_conflict(&error, attempts, retries).await {
                return Err(self.failed(Some(0), error));
            }
        }
    }

    /// Runs `statement` alone in autocommit mode at `isolation` (`None`: the configured
    /// default). A connection found dead before the statement was sent on it is replaced once.
    async fn execute_alone(
        &mut self,
        statement: &Statement,
        isolation: Option<Isolation>,
    ) -> Result<QueryResult, DbError> {
        match self.try_execute_alone(statement, isolation).await {
            Err(DbError::Unavailable(_)) => {
                self.db.ensure_connected().await?;
                self.try_execute_alone(statement, isolation).await
            }
            outcome => outcome,
        }
    }

    async fn try_execute_alone(
        &mut self,
        statement: &Statement,
        isolation: Option<Isolation>,
    ) -> Result<QueryResult, DbError> {
        match self.db.set_isolation(isolation).await {
            // The statement itself was not sent.
            Err(DbError::ConnectionLost(message)) => return Err(DbError::Unavailable(message)),
            Err(error) => return Err(error),
            Ok(()) => {}
        }
        self.db.execute(statement, TxMode::Autocommit).await
    }

    fn committed(&mut self, results: Vec<QueryResult>, attempts: u32) -> Reply {
        self.transaction_over();
        self.metrics.committed();
        Reply::Tx { results, attempts }
    }

    /// Counts a conflict the database reported and, when the `tx` may run again, waits the
    /// back-off and says so. The keys stay held across the retry.
    async fn retry_after_conflict(&mut self, error: &DbError, attempts: u32, retries: u32) -> bool {
        let conflict = error.conflict();
        if conflict == Some(Conflict::Deadlock) {
            self.metrics.deadlock_reported();
        }
        let retry = conflict.is_some() && attempts <= retries && self.db.is_connected();
        if retry {
            self.metrics.retried();
            debug!(self.log, "tx retry"; "attempt" => attempts, "error" => %error);
            tokio::time::sleep(retry_backoff(attempts)).await;
        }
        retry
    }

    /// Ends a `tx` that will not commit (already rolled back) with the answer for `error`,
    /// which names the failing statement's index when there is one.
    fn failed(&mut self, index: Option<usize>, error: DbError) -> BrokerError {
        self.transaction_over();
        self.metrics.rolled_back();
        let error = match (index, error) {
            (Some(index), DbError::Server(failure)) => DbError::Server(failure.at_statement(index)),
            (_, error) => error,
        };
        db_error(error)
    }

    async fn run_statements(
        &mut self,
        statements: &[Statement],
    ) -> Result<Vec<QueryResult>, (Option<usize>, DbError)> {
        let mut results = Vec::with_capacity(statements.len());
        for (index, statement) in statements.iter().enumerate() {
            let result = self
                .db
                .execute(statement, TxMode::InTransaction)
                .await
                .map_err(|error| (Some(index), error))?;
            results.push(result);
        }
        Ok(results)
    }

    async fn begin(&mut self, options: TxOptions) -> Result<(), BrokerError> {
        self.start_transaction(&options, TxShape::Explicit).await?;
        self.state = TxState::Active;
        Ok(())
    }

    async fn exec_autocommit(&mut self, statement: &Statement) -> Result<Reply, BrokerError> {
        sql_guard::check(&statement.sql, false)
            .map_err(|refusal| BrokerError::BadRequest(refusal.message()))?;
        self.db
            .ensure_live(AUTOCOMMIT_PING_AFTER)
            .await
            .map_err(db_error)?;
        match self.execute_alone(statement, None).await {
            Ok(result) => Ok(Reply::Exec { result }),
            // An autocommit statement is its own commit: if the connection died under it,
            // nobody knows whether it took effect.
            Err(DbError::ConnectionLost(message)) => Err(BrokerError::CommitUnknown(message)),
            Err(error) => {
                if error.conflict() == Some(Conflict::Deadlock) {
                    self.metrics.deadlock_reported();
                }
                Err(db_error(error))
            }
        }
    }

    async fn exec_in_transaction(&mut self, statement: &Statement) -> Result<Reply, BrokerError> {
        sql_guard::check(&statement.sql, true)
            .map_err(|refusal| BrokerError::BadRequest(refusal.message()))?;
        match self.db.execute(statement, TxMode::InTransaction).await {
            Ok(result) => Ok(Reply::Exec { result }),
            Err(error) => match abort_reason_for(&error) {
                Some(reason) => {
                    if reason == AbortReason::Deadlock {
                        self.metrics.deadlock_reported();
                    }
                    self.abort(reason.clone()).await;
                    Err(match error {
                        DbError::TransactionEnded | DbError::DeadlineExceeded => {
                            BrokerError::TxAborted(reason)
                        }
                        other => db_error(other),
                    })
                }
                // A plain SQL error leaves the transaction open, as MySQL does.
                None => Err(db_error(error)),
            },
        }
    }

    async fn lock(&mut self, keys: LockRequest) -> Result<(), BrokerError> {
        match self.locks.acquire(keys).await {
            Ok(()) => Ok(()),
            Err(failure) => {
                let reason = match &failure {
                    LockFailure::Conflict { key } => AbortReason::LockConflict { key: key.clone() },
                    LockFailure::Timeout { key, .. } => {
                        AbortReason::LockTimeout { key: key.clone() }
                    }
                    LockFailure::Cancelled => AbortReason::ConnectionLost,
                };
                self.abort(reason).await;
                Err(lock_error(failure))
            }
        }
    }

    async fn commit(&mut self) -> Result<(), BrokerError> {
        match self.db.commit().await {
            Ok(()) => {
                self.transaction_over();
                self.state = TxState::Idle;
                self.metrics.committed();
                Ok(())
            }
            Err(DbError::ConnectionLost(message)) => {
                self.transaction_over();
                self.state = TxState::Idle;
                Err(BrokerError::CommitUnknown(message))
            }
            Err(DbError::DeadlineExceeded) => {
                self.transaction_over();
                self.state = TxState::Idle;
                Err(BrokerError::CommitUnknown(
                    "COMMIT was still running at max_tx_duration_ms and was killed".into(),
                ))
            }
            Err(error) => {
                let reason = abort_reason_for(&error).unwrap_or(AbortReason::CommitFailed);
                if reason == AbortReason::Deadlock {
                    self.metrics.deadlock_reported();
                }
                self.abort(reason).await;
                Err(db_error(error))
            }
        }
    }

    async fn rollback(&mut self) -> Result<(), BrokerError> {
        if self.state.is_open() {
            self.end_in_rollback().await;
        }
        self.state = TxState::Idle;
        Ok(())
    }

    /// Rolls back on the database, then releases the keys. A rollback the server refuses
    /// leaves the connection in doubt, so it is closed: the server rolls back on disconnect.
    async fn end_in_rollback(&mut self) {
        if self.db.rollback().await.is_err() {
            self.db.disconnect().await;
        }
        self.transaction_over();
        self.metrics.rolled_back();
    }

    /// The broker or the database ended the open transaction: roll back, release, and make
    /// the client acknowledge with `rollback`.
    async fn abort(&mut self, reason: AbortReason) {
        debug!(self.log, "transaction aborted"; "reason" => %reason);
        self.end_in_rollback().await;
        self.state = TxState::Aborted(reason);
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

/// `START TRANSACTION`; if the connection turns out to be dead, nothing has run on it yet, so
/// one reconnect and a second try are safe.
async fn begin_on_live_connection(
    db: &mut DbConnection,
    options: &TxOptions,
) -> Result<(), DbError> {
    match db.begin(options.isolation, options.read_only).await {
        Err(DbError::ConnectionLost(_)) => {
            db.ensure_connected().await?;
            db.begin(options.isolation, options.read_only).await
        }
        other => other,
    }
}

/// What an error inside an interactive transaction does to it, if it ends it.
fn abort_reason_for(error: &DbError) -> Option<AbortReason> {
    match error {
        DbError::Server(failure) => classify_conflict(failure).map(|conflict| match conflict {
            Conflict::Deadlock => AbortReason::Deadlock,
            Conflict::LockWaitTimeout => AbortReason::DbLockWaitTimeout,
        }),
        DbError::ConnectionLost(_) | DbError::Unavailable(_) => Some(AbortReason::ConnectionLost),
        DbError::TransactionEnded => Some(AbortReason::EndedByStatement),
        DbError::DeadlineExceeded => Some(AbortReason::MaxDuration),
        DbError::Rejected(_) => None,
    }
}

fn db_error(error: DbError) -> BrokerError {
    match error {
        DbError::Server(failure) => match classify_conflict(&failure) {
            Some(Conflict::Deadlock) => BrokerError::Deadlock(failure),
            Some(Conflict::LockWaitTimeout) => BrokerError::DbLockTimeout(failure),
            None => BrokerError::Sql(failure),
        },
        DbError::Unavailable(message) | DbError::ConnectionLost(message) => {
            BrokerError::DbUnavailable(message)
        }
        DbError::Rejected(message) => BrokerError::BadRequest(message),
        DbError::DeadlineExceeded => BrokerError::TxAborted(AbortReason::MaxDuration),
        DbError::TransactionEnded => BrokerError::BadRequest(
            "the statement ended the transaction on the database; it was rolled back where possible"
                .into(),
        ),
    }
}

fn lock_error(failure: LockFailure) -> BrokerError {
    match failure {
        LockFailure::Timeout { key, waited_ms } => BrokerError::LockTimeout { key, waited_ms },
        LockFailure::Conflict { key } => BrokerError::LockConflict { key },
        LockFailure::Cancelled => BrokerError::Internal("the lock wait was cancelled".into()),
    }
}

/// A random pause in [cap/2, cap], with cap doubling per attempt up to `MAX_RETRY_BACKOFF`,
/// so that transactions that collided once do not collide again in step.
fn retry_backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(1u64 << attempt.min(5)).min(MAX_RETRY_BACKOFF);
    let micros = cap.as_micros() as u64;
    Duration::from_micros(rand::thread_rng().gen_range(micros / 2..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(statements: &[&str], read_only: bool) -> TxRequest {
        TxRequest {
            statements: statements
                .iter()
                .map(|sql| Statement::new(*sql, Vec::new()))
                .collect(),
            options: TxOptions {
                read_only,
                ..TxOptions::default()
            },
            retries: None,
        }
    }

    #[test]
    fn only_a_lone_data_change_skips_start_transaction() {
        let on = Config::default();
        let off = Config {
            single_write_autocommit: false,
            ..Config::default()
        };
        let update = "UPDATE t SET v = 1 WHERE id = 1";
        assert_eq!(
            TxShape::of(&tx(&[update], false), &on),
            TxShape::SingleWrite
        );
        assert_eq!(TxShape::of(&tx(&[update], false), &off), TxShape::Explicit);
        assert_eq!(TxShape::of(&tx(&[update], true), &on), TxShape::Explicit);
        assert_eq!(
            TxShape::of(&tx(&[update, update], false), &on),
            TxShape::Explicit
        );
        for single in ["SELECT v FROM t", "CALL p()", "SELECT v FROM t FOR UPDATE"] {
            assert_eq!(
                TxShape::of(&tx(&[single], false), &on),
                TxShape::Explicit,
                "{single}"
            );
        }
    }
}
