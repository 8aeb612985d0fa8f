//! Keys held across brokers (`coordination = "database"`): once the coordinator has granted
//! a transaction its keys, the engine takes the ones its connection does not hold yet as
//! MariaDB named locks, in ascending key order, in one round trip, before the first
//! statement; `end_transaction` releases them once the transaction has ended, after its
//! `COMMIT` or `ROLLBACK` has answered. Named locks are not transactional, so the release
//! is the engine's to make; a connection closed or replaced loses them on the server by
//! itself, which is why a release that fails closes the connection.
//!
//! Why after `COMMIT` has answered and not as it is sent (no hand-over across brokers): a
//! successor on another broker may read without locking, and such a read must not run before
//! the predecessor's commit is visible (promise 1). Within one broker hand-over still passes
//! the local keys at `COMMIT`; the successor then waits in `GET_LOCK` for the release.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::SessionEngine;
use crate::db::{ConnectionIdentity, DbError};
use crate::error::{AbortReason, BrokerError, LockFailure};
use crate::locks::LockRequest;
use crate::named_locks::{lock_name, release_statement, take_script, NamedLockSet, NamedLockWait};
use crate::protocol::{QueryResult, Value};

/// Whether this broker also takes its keys in the database.
pub(super) enum CrossBrokerKeys {
    /// `coordination = "local"`: the keys are this broker's alone.
    LocalOnly,
    /// `coordination = "database"`: the keys this session's connection holds as named locks.
    NamedLocks(NamedLockSet),
}

/// Why the named locks of a grant were not all taken; those that were are released with the
/// rest when the transaction ends.
pub(super) enum TakeFailure {
    /// A lock was not free in time (`lock_timeout`), or an out-of-order key of a `lock` was
    /// busy (`lock_conflict`), as if the coordinator had said so.
    Lock(LockFailure),
    /// The server refused (a deadlock among named locks is 1213, retried like one) or the
    /// connection failed.
    Db(DbError),
}

impl From<TakeFailure> for BrokerError {
    fn from(failure: TakeFailure) -> BrokerError {
        match failure {
            TakeFailure::Lock(failure) => BrokerError::from(failure),
            TakeFailure::Db(error) => BrokerError::from(error),
        }
    }
}

impl TakeFailure {
    /// Why an interactive transaction whose `lock` failed this way is over.
    pub(super) fn abort_reason(&self) -> AbortReason {
        match self {
            TakeFailure::Lock(failure) => AbortReason::from(failure),
            TakeFailure::Db(error) => {
                AbortReason::caused_by(error).unwrap_or(AbortReason::ConnectionLost)
            }
        }
    }
}

impl SessionEngine {
    /// Takes as named locks the keys of `request`, granted by the coordinator, that the
    /// connection does not hold yet. A key above every key held may wait for what is left of
    /// `lock_wait_timeout_ms` since `asked`; one below (an out-of-order key of a `lock`) is
    /// only tried, as the coordinator tries it.
    pub(super) async fn take_named_locks(
        &mut self,
        request: &LockRequest,
        asked: Instant,
    ) -> Result<(), TakeFailure> {
        let CrossBrokerKeys::NamedLocks(set) = &self.cross_broker else {
            return Ok(());
        };
        let connection = self.db.identity();
        let left = self
            .config
            .lock_wait_timeout()
            .saturating_sub(asked.elapsed());
        let steps = steps_to_take(set.held_on(connection), request, left);
        let Some(connection) = connection.filter(|_| !steps.is_empty()) else {
            return match steps.is_empty() {
                true => Ok(()),
                false => Err(TakeFailure::Db(DbError::Unavailable(
                    "no database connection to take the keys on".into(),
                ))),
            };
        };
        let named: Vec<(String, NamedLockWait)> = steps
            .iter()
            .map(|(key, wait)| (lock_name(key), *wait))
            .collect();
        let (answers, error) = self.db.execute_script_anywhere(&take_script(&named)).await;
        let CrossBrokerKeys::NamedLocks(set) = &mut self.cross_broker else {
            return Ok(());
        };
        let failure = note_answers(
            set,
            connection,
            steps,
            &answers,
            self.config.lock_wait_timeout_ms,
        );
        match failure.or(error.map(TakeFailure::Db)) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Releases every named lock the connection holds for this session's keys; closes the
    /// connection when the release fails, since the server then releases them itself.
    pub(super) async fn release_named_locks(&mut self) {
        let CrossBrokerKeys::NamedLocks(set) = &mut self.cross_broker else {
            return;
        };
        let names = set.take_all(self.db.identity());
        if names.is_empty() {
            return;
        }
        let (_, error) = self
            .db
            .execute_script_anywhere(&[release_statement(&names)])
            .await;
        if error.is_some() {
            self.db.disconnect().await;
        }
    }
}

/// The keys of `request` the connection does not hold yet, each with how long it may wait: a
/// key above every key held waits for what is `left`; one below is only tried.
fn steps_to_take(
    held: &BTreeSet<String>,
    request: &LockRequest,
    left: Duration,
) -> Vec<(String, NamedLockWait)> {
    let highest = held.iter().next_back();
    request
        .keys()
        .iter()
        .filter(|(key, _)| !held.contains(key))
        .map(|(key, _)| {
            let wait = match highest {
                Some(highest) if key < highest => NamedLockWait::Try,
                _ => NamedLockWait::Upto(left),
            };
            (key.clone(), wait)
        })
        .collect()
}

/// Notes in `set` every lock the server's answers say was taken, also after one that was not
/// (a later `GET_LOCK` told not to wait still takes a free lock), and returns the first
/// refusal.
fn note_answers(
    set: &mut NamedLockSet,
    connection: ConnectionIdentity,
    steps: Vec<(String, NamedLockWait)>,
    answers: &[QueryResult],
    lock_wait_timeout_ms: u64,
) -> Option<TakeFailure> {
    let mut failure = None;
    for ((key, wait), answer) in steps.into_iter().zip(answers) {
        let refused = match answer.rows.first().and_then(|row| row.first()) {
            Some(Value::Int(1) | Value::UInt(1)) => {
                set.taken(connection, key);
                continue;
            }
            Some(Value::Int(0) | Value::UInt(0)) => TakeFailure::Lock(match wait {
                NamedLockWait::Try => LockFailure::Conflict { key },
                NamedLockWait::Upto(_) => LockFailure::Timeout {
                    key,
                    waited_ms: lock_wait_timeout_ms,
                },
            }),
            _ => TakeFailure::Db(DbError::Unavailable(format!(
                "GET_LOCK for key {key:?} answered NULL (the server failed or the query was killed)"
            ))),
        };
        failure.get_or_insert(refused);
    }
    failure
}
