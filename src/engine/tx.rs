//! The `tx` op: a whole transaction in one request. Its keys are taken (`start.rs`); it
//! runs alone, leads a group or joins one (`group.rs`). Alone, its statements run, its keys
//! are handed over as its `COMMIT` is sent, and a conflict the database reports (1213, 1205,
//! SQLSTATE 40001) runs it again, keeping the keys, up to its retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use slog::debug;

use super::alone::nothing_sent;
use super::ending::{hand_over, TxEnd};
use super::start::{Started, TxShape};
use super::{ConnectionProfile, SessionEngine};
use crate::coordinator::GroupRequest;
use crate::db::DbError;
use crate::error::{BrokerError, CommitCarrier};
use crate::idempotency::{Claim, OutcomeTable};
use crate::locks::{GroupClass, Grouping};
use crate::metrics::TxKind;
use crate::protocol::{Isolation, QueryResult, Reply, TxRequest};
use crate::sql_class::StatementClass;
use crate::sql_guard;
use crate::txn::TxMode;

/// Longest pause between two attempts of a `tx`; retries hold the keys, so keep it short.
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// A statement of a `tx` that failed, and where.
pub(super) struct TxFailure {
    /// The failing statement's index, when a statement failed (not `COMMIT`).
    pub(super) statement: Option<usize>,
    pub(super) error: DbError,
}

impl TxFailure {
    pub(super) fn into_answer(self) -> BrokerError {
        let error = match (self.statement, self.error) {
            (Some(index), DbError::Server(failure)) => DbError::Server(failure.at_statement(index)),
            (_, error) => error,
        };
        BrokerError::from(error)
    }
}

impl SessionEngine {
    /// A keyed `tx` also takes its key's broker key, and a failure of it may turn out to be a
    /// duplicate's success, or its key's record an expired one (`idempotent.rs`).
    pub(super) async fn run_tx(
        &mut self,
        mut tx: TxRequest,
        arrived: Instant,
    ) -> Result<Reply, BrokerError> {
        for (index, statement) in tx.statements.iter().enumerate() {
            sql_guard::check(&statement.sql, TxMode::InTransaction).map_err(|refusal| {
                BrokerError::BadRequest(format!("statements[{index}]: {}", refusal.message()))
            })?;
        }
        let Some(claim) = Claim::of_tx(&tx) else {
            return self.execute_tx(Arc::new(tx), None, arrived).await;
        };
        tx.options.locks = Some(claim.with_lock_key(tx.options.locks.take()));
        self.run_keyed_tx(Arc::new(tx), &claim, arrived).await
    }

    pub(super) async fn execute_tx(
        &mut self,
        tx: Arc<TxRequest>,
        claim: Option<&Claim>,
        arrived: Instant,
    ) -> Result<Reply, BrokerError> {
        let isolation = tx
            .options
            .isolation
            .unwrap_or(self.config.default_isolation);
        let classes: Vec<StatementClass> = tx
            .statements
            .iter()
            .map(|statement| self.classify(&statement.sql, isolation))
            .collect();
        let grouping = self.grouping(&tx, &classes, isolation);
        let retries = tx.retries.unwrap_or(self.config.default_retries);
        let shape = TxShape::of(&tx, &self.config);
        let member = matches!(grouping, Grouping::Groupable(_)).then(|| GroupRequest {
            tx: tx.clone(),
            claim: claim.cloned(),
        });
        match self
            .start_retrying(&tx, arrived, shape, grouping, member, retries)
            .await?
        {
            Started::Alone => self.run_alone(&tx, &classes, shape, retries, claim).await,
            Started::Leading(inbox) => {
                let leader = GroupRequest {
                    tx,
                    claim: claim.cloned(),
                };
                self.lead_group(leader, shape, retries, inbox).await
            }
            Started::Joined(outcome) => self.run_as_member(outcome).await,
        }
    }

    /// Starts `tx`. A deadlock met while starting can only come from taking its keys as
    /// named locks (`coordination = "database"`): the start let go of every key, and runs
    /// again, like an attempt that met a deadlock, within the retries of the `tx`.
    async fn start_retrying(
        &mut self,
        tx: &Arc<TxRequest>,
        arrived: Instant,
        shape: TxShape,
        grouping: Grouping,
        member: Option<GroupRequest>,
        retries: u32,
    ) -> Result<Started, BrokerError> {
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            match self
                .start_transaction(
                    TxKind::Tx,
                    arrived,
                    &tx.options,
                    shape,
                    grouping,
                    member.clone(),
                )
                .await
            {
                Err(BrokerError::Deadlock(_)) if attempts <= retries => {
                    self.metrics.retried(crate::error::mysql_codes::DEADLOCK);
                    tokio::time::sleep(retry_backoff(attempts)).await;
                }
                started => return started,
            }
        }
    }

    /// Whether `tx` may run in a group: groups are on, it writes, each statement locks every
    /// row it reads and touches no session state, and this session's connection is like any
    /// other. Its class is its isolation level.
    fn grouping(
        &self,
        tx: &TxRequest,
        classes: &[StatementClass],
        isolation: Isolation,
    ) -> Grouping {
        let groupable = self.config.max_group_size > 1
            && !tx.options.read_only
            && self.connection == ConnectionProfile::Pristine
            && classes.iter().all(|class| class.may_be_grouped());
        if groupable {
            Grouping::Groupable(GroupClass(isolation as u8))
        } else {
            Grouping::Alone
        }
    }

    async fn run_alone(
        &mut self,
        tx: &TxRequest,
        classes: &[StatementClass],
        shape: TxShape,
        retries: u32,
        claim: Option<&Claim>,
    ) -> Result<Reply, BrokerError> {
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let attempt = match shape {
                TxShape::Explicit => self.attempt_explicit(tx, classes, attempts, claim).await,
                TxShape::SingleWrite => self.attempt_single_write(tx, attempts).await,
                TxShape::OneTrip => match claim {
                    Some(claim) => self.attempt_one_trip(tx, classes, attempts, claim).await,
                    None => unreachable!("only a keyed tx has the one-trip shape"),
                },
            };
            let failure = match attempt {
                Ok(reply) => {
                    self.end_transaction(TxEnd::Committed).await;
                    return Ok(reply);
                }
                Err(AttemptFailure::CommitUnknown(answer)) => {
                    self.end_transaction(TxEnd::CommitUnknown).await;
                    return Err(answer);
                }
                Err(AttemptFailure::Refused(answer)) => {
                    self.end_transaction(TxEnd::RolledBack).await;
                    return Err(answer);
                }
                Err(AttemptFailure::Failed(failure)) => failure,
            };
            // Keys handed over at a COMMIT that then failed are gone: no retry without them.
            let keys_kept = self.handed_over.is_none();
            if !keys_kept
                || !self
                    .retry_after_conflict(&failure.error, attempts, retries)
                    .await
            {
                self.end_transaction(TxEnd::RolledBack).await;
                return Err(failure.into_answer());
            }
            if let Err(error) = self.begin_again(tx, shape).await {
                self.end_transaction(TxEnd::RolledBack).await;
                return Err(BrokerError::from(error));
            }
        }
    }

    /// Starts the next attempt's database transaction (a single write needs none).
    async fn begin_again(&mut self, tx: &TxRequest, shape: TxShape) -> Result<(), DbError> {
        match shape {
            TxShape::Explicit => {
                self.db
                    .begin(tx.options.isolation, tx.options.read_only)
                    .await
            }
            TxShape::SingleWrite | TxShape::OneTrip => Ok(()),
        }
    }

    /// The statements, then `COMMIT`, in the transaction `start_transaction` began; a
    /// statement that reads without locking first waits for the commits its keys came from.
    /// The keys pass on as `COMMIT` is sent; a keyed request's record goes just before it.
    async fn attempt_explicit(
        &mut self,
        tx: &TxRequest,
        classes: &[StatementClass],
        attempts: u32,
        claim: Option<&Claim>,
    ) -> Result<Reply, AttemptFailure> {
        let mut results = Vec::with_capacity(tx.statements.len());
        for (index, (statement, class)) in tx.statements.iter().zip(classes).enumerate() {
            self.wait_for_reads(*class)
                .await
                .map_err(AttemptFailure::Refused)?;
            let result = self
                .db
                .execute(statement, TxMode::InTransaction)
                .await
                .map_err(|error| {
                    AttemptFailure::Failed(TxFailure {
                        statement: Some(index),
                        error,
                    })
                })?;
            results.push(result);
        }
        let reply = Reply::Tx { results, attempts };
        self.hand_over_keys();
        let records: Vec<(&Claim, &Reply)> =
            claim.map(|claim| (claim, &reply)).into_iter().collect();
        match self.commit_recording(&records).await {
            Ok(()) => Ok(reply),
            Err(error) => Err(AttemptFailure::of_commit(
                error,
                CommitCarrier::Commit,
                None,
            )),
        }
    }

    /// `START TRANSACTION`, the statements (each but the last followed by keeping its row
    /// count), the record and `COMMIT` in one query (`TxShape::OneTrip`). The keys pass on once
    /// the last statement has answered: its `COMMIT` is on its way by then, as when it is sent
    /// after the statements. A statement the server refuses stops the query there, with the
    /// transaction open, to be rolled back; a connection lost under it leaves the outcome
    /// unknown. A statement that cannot be written as text runs the explicit way instead.
    async fn attempt_one_trip(
        &mut self,
        tx: &TxRequest,
        classes: &[StatementClass],
        attempts: u32,
        claim: &Claim,
    ) -> Result<Reply, AttemptFailure> {
        for class in classes {
            self.wait_for_reads(*class)
                .await
                .map_err(AttemptFailure::Refused)?;
        }
        let failed = |error| {
            AttemptFailure::Failed(TxFailure {
                statement: None,
                error,
            })
        };
        self.db
            .set_isolation(tx.options.isolation)
            .await
            .map_err(|error| failed(nothing_sent(error)))?;
        let Some((script, answered)) = self.one_trip_script(tx, claim, attempts) else {
            self.db
                .begin(tx.options.isolation, false)
                .await
                .map_err(failed)?;
            return self
                .attempt_explicit(tx, classes, attempts, Some(claim))
                .await;
        };
        let connection = self.db.identity();
        // Straight into the session's state, so that a hand-over is settled even if this
        // future is dropped while the query is still answered.
        let (config, keys, metrics, handed_over) = (
            &self.config,
            &mut self.keys,
            &self.metrics,
            &mut self.handed_over,
        );
        let (results, error) = self
            .db
            .execute_transaction_script(&script, answered, || {
                if let Some(made) = hand_over(config, keys, metrics, connection) {
                    *handed_over = Some(made);
                }
            })
            .await;
        one_trip_answer(results, error, tx.statements.len(), attempts)
    }

    /// The query of a one-trip `tx`, and how many of its parts come before the record (the
    /// keys pass on once they have answered); `None` when a statement's values cannot be
    /// written in.
    fn one_trip_script(
        &mut self,
        tx: &TxRequest,
        claim: &Claim,
        attempts: u32,
    ) -> Option<(Vec<String>, usize)> {
        let statements = self.one_trip_statements(tx)?;
        let mut script = Vec::with_capacity(2 * statements.len() + 2);
        script.push("START TRANSACTION".to_string());
        let last = statements.len().checked_sub(1)?;
        for (index, statement) in statements.into_iter().enumerate() {
            script.push(statement);
            if index < last {
                script.push(OutcomeTable::keep_row_count(index));
            }
        }
        let answered = script.len();
        // The record's answer, whose row counts the server writes in.
        let template = Reply::Tx {
            results: vec![QueryResult::default(); tx.statements.len()],
            attempts,
        };
        script.push(
            self.outcomes
                .insert_counting(claim, &template, tx.statements.len()),
        );
        script.push("COMMIT".to_string());
        Some((script, answered))
    }

    /// The statements of `tx` with their values written in, or `None` when one cannot be.
    fn one_trip_statements(&mut self, tx: &TxRequest) -> Option<Vec<String>> {
        tx.statements
            .iter()
            .map(|statement| {
                let placeholders = self.classes.placeholders(&statement.sql)?;
                self.db.render(statement, &placeholders)
            })
            .collect()
    }

    /// The one statement, alone in autocommit mode: its own commit.
    async fn attempt_single_write(
        &mut self,
        tx: &TxRequest,
        attempts: u32,
    ) -> Result<Reply, AttemptFailure> {
        match self
            .execute_alone(&tx.statements[0], tx.options.isolation)
            .await
        {
            Ok(result) => Ok(Reply::Tx {
                results: vec![result],
                attempts,
            }),
            Err(error) => Err(AttemptFailure::of_commit(
                error,
                CommitCarrier::AutocommitStatement,
                Some(0),
            )),
        }
    }

    /// When the `tx` may run again after `error`: rolls back, waits the back-off and says so.
    /// The keys stay held across the retry.
    pub(super) async fn retry_after_conflict(
        &mut self,
        error: &DbError,
        attempts: u32,
        retries: u32,
    ) -> bool {
        let conflict = match error {
            DbError::Server(failure) if failure.conflict().is_some() => failure.mysql_code,
            _ => return false,
        };
        let retry = attempts <= retries && self.db.is_connected();
        if retry {
            // 1205 leaves the transaction open and 1213 may too on other engines.
            if self.db.rollback().await.is_err() {
                return false;
            }
            self.metrics.retried(conflict);
            debug!(self.log, "tx retry"; "attempt" => attempts, "error" => %error);
            tokio::time::sleep(retry_backoff(attempts)).await;
        }
        retry
    }
}

/// Why an attempt of a `tx` did not commit.
enum AttemptFailure {
    /// It did not commit: the database said so, or nothing was sent that could have.
    Failed(TxFailure),
    /// The broker stopped it (a read waited too long for a previous holder's commit).
    Refused(BrokerError),
    /// The connection was lost while its commit was in flight.
    CommitUnknown(BrokerError),
}

impl AttemptFailure {
    fn of_commit(error: DbError, carrier: CommitCarrier, statement: Option<usize>) -> Self {
        match BrokerError::commit_unknown(error, carrier) {
            Ok(unknown) => AttemptFailure::CommitUnknown(unknown),
            Err(error) => AttemptFailure::Failed(TxFailure { statement, error }),
        }
    }
}

/// A random pause in [cap/2, cap], with cap doubling per attempt up to `MAX_RETRY_BACKOFF`,
/// so that transactions that collided once do not collide again in step.
pub(super) fn retry_backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(1u64 << attempt.min(5)).min(MAX_RETRY_BACKOFF);
    let micros = cap.as_micros() as u64;
    Duration::from_micros(rand::thread_rng().gen_range(micros / 2..=micros))
}

/// What a one-trip `tx` of `statements` statements came to, from the answers of its query
/// (`results`, of the parts that ran) and the error that stopped it, if one did.
fn one_trip_answer(
    results: Vec<QueryResult>,
    error: Option<DbError>,
    statements: usize,
    attempts: u32,
) -> Result<Reply, AttemptFailure> {
    match error {
        None => Ok(Reply::Tx {
            results: one_trip_results(results, statements),
            attempts,
        }),
        Some(error @ DbError::Server(_)) => Err(AttemptFailure::Failed(TxFailure {
            statement: one_trip_statement(results.len(), statements),
            error,
        })),
        Some(error) => Err(AttemptFailure::of_commit(
            error,
            CommitCarrier::Script,
            None,
        )),
    }
}

/// The results of a one-trip `tx`'s `statements` among those of its whole query: every
/// other answer from the second on (between them come the `SET`s that keep row counts).
fn one_trip_results(script_results: Vec<QueryResult>, statements: usize) -> Vec<QueryResult> {
    script_results
        .into_iter()
        .skip(1)
        .step_by(2)
        .take(statements)
        .collect()
}

/// Which of a one-trip `tx`'s `statements` the part `failed` of its query is (counting from
/// 0, `START TRANSACTION` first): `None` for the parts that are not (a `SET`, the record,
/// `COMMIT`).
fn one_trip_statement(failed: usize, statements: usize) -> Option<usize> {
    (failed % 2 == 1 && failed / 2 < statements).then_some(failed / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-trip `tx` of two statements is sent as `START TRANSACTION`, statement 0, the
    /// `SET` keeping its row count, statement 1, the record, `COMMIT`.
    #[test]
    fn the_parts_of_a_one_trip_query_map_back_to_their_statements() {
        let named: Vec<Option<usize>> = (0..6).map(|part| one_trip_statement(part, 2)).collect();
        assert_eq!(named, [None, Some(0), None, Some(1), None, None]);
        let answers: Vec<QueryResult> = (0..6)
            .map(|part| QueryResult {
                affected: part,
                ..QueryResult::default()
            })
            .collect();
        let affected: Vec<u64> = one_trip_results(answers, 2)
            .iter()
            .map(|result| result.affected)
            .collect();
        assert_eq!(affected, [1, 3]);
        assert_eq!(one_trip_statement(1, 1), Some(0));
        assert_eq!(
            one_trip_statement(2, 1),
            None,
            "the record of a one-statement tx"
        );
    }
}
