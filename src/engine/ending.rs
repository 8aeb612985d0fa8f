//! The one way a transaction ends, and the life cycle of its keys. Whatever ends it (a
//! commit, a failed `tx`, the client's `rollback`, an abort, keys that were not granted, a
//! session closing), the engine calls `end_transaction` with how it ended, and that function
//! alone rolls back what may still be open, releases the keys or settles their hand-over,
//! clears the deadline, moves the state and counts the outcome. A new way to end a
//! transaction is a new `TxEnd`, not new calls.
//!
//! A transaction's keys are held from the grant; when its statements all succeeded and its
//! `COMMIT` is about to be sent they may be handed over (`hand_over_keys`), and then
//! `end_transaction` settles the hand-over with the commit's outcome instead of releasing.
//! With `coordination = "database"` the keys are also named locks on the connection from
//! just after the grant (`cross_broker.rs`), and those go only in `end_transaction`, once the
//! `COMMIT` or `ROLLBACK` has answered: they are never handed over.
//!
//! ```text
//! granted ─▶ named-locked ──(statements ok, COMMIT sent)──▶ handed over ──(COMMIT answered)──▶ settled
//!    │            │                                               └──(end_transaction)──▶ named locks released
//!    └────────────┴──────────(end_transaction)──────────────────────────────────────────▶ released
//! ```

use slog::debug;

use super::{HandedOver, SessionEngine, TxContext};
use crate::config::Config;
use crate::coordinator::Settlement;
use crate::db::ConnectionIdentity;
use crate::error::AbortReason;
use crate::keys::LockClient;
use crate::metrics::{Metrics, TxOutcome, TxTimes};
use crate::txn::TxState;

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TxEnd {
    /// The database acknowledged the commit: a `COMMIT`, or the one statement that carried it.
    Committed,
    /// A group's transaction committed its members, but the leader's own request had failed
    /// and was rolled back to before it.
    CommittedWithoutOwn,
    /// The connection was lost while the commit was in flight: nobody knows the outcome.
    CommitUnknown,
    /// It will not commit: the client asked for a rollback, or a `tx` failed.
    RolledBack,
    /// It never started, from the client's view: its keys were not granted, `START
    /// TRANSACTION` failed, or it joined a group. Nothing is counted.
    NotStarted,
    /// The broker or the database ended an interactive transaction behind the client's back;
    /// the session answers `tx_aborted` until the client sends `rollback`.
    Aborted(AbortReason),
    /// A keyed `begin` was answered with its key's recorded outcome: that transaction ended
    /// long ago, and none was opened. The session answers `tx_aborted` until `rollback`, so
    /// that nothing meant for the transaction runs in autocommit mode. Nothing is counted.
    Replayed,
}

impl TxEnd {
    /// What the metrics call it. A group that committed without the leader's own request
    /// rolled that request back; its members count their own ends in their sessions.
    fn outcome(&self) -> TxOutcome {
        match self {
            TxEnd::Committed => TxOutcome::Committed,
            TxEnd::CommittedWithoutOwn | TxEnd::RolledBack => TxOutcome::RolledBack,
            TxEnd::CommitUnknown => TxOutcome::CommitUnknown,
            // A replayed request ran nothing now; it has no clock, so this is never observed.
            TxEnd::NotStarted | TxEnd::Replayed => TxOutcome::NotStarted,
            TxEnd::Aborted(_) => TxOutcome::Aborted,
        }
    }
}

impl SessionEngine {
    /// Passes the keys on as `COMMIT` is about to be sent, when hand-over is on and the
    /// transaction holds keys. Call only once every statement has succeeded.
    pub(super) fn hand_over_keys(&mut self) {
        let connection = self.db.identity();
        if let Some(handed_over) =
            hand_over(&self.config, &mut self.keys, &self.metrics, connection)
        {
            self.handed_over = Some(handed_over);
        }
    }

    pub(super) async fn end_transaction(&mut self, end: TxEnd) {
        let rolls_back = matches!(
            end,
            TxEnd::RolledBack | TxEnd::NotStarted | TxEnd::Aborted(_)
        );
        if rolls_back && self.db.rollback().await.is_err() {
            // A rollback the server refuses leaves the connection in doubt; closing it makes
            // the server roll back.
            self.db.disconnect().await;
        }
        // Keys go only now, once nothing of the transaction can still change on the database.
        self.keys.release_all();
        if let Some(handed_over) = self.handed_over.take() {
            self.settle(handed_over, &end);
        }
        self.db.set_deadline(None);
        // After the commit's answer, never before: a successor on another broker may read
        // without locking as soon as it has the lock.
        self.release_named_locks().await;
        let finished = std::mem::replace(
            &mut self.current,
            TxContext::new(self.config.default_isolation),
        );
        if let Some(clock) = finished.clock {
            let times = TxTimes {
                total: clock.started.elapsed(),
                key_wait: clock.key_wait,
                database: self.db.take_time_in_database(),
            };
            self.metrics
                .transaction_ended(clock.kind, end.outcome(), times);
        }
        self.state = match end {
            TxEnd::Aborted(reason) => {
                debug!(self.log, "transaction aborted"; "reason" => %reason);
                TxState::Aborted(reason)
            }
            TxEnd::Replayed => TxState::Aborted(AbortReason::AlreadyCommitted),
            _ => TxState::Idle,
        };
    }

    /// Opens the reads of whoever took the keys: at once when the outcome is known, once the
    /// connection is gone from the server when it is not.
    fn settle(&self, handed_over: HandedOver, end: &TxEnd) {
        let settlement = match end {
            TxEnd::Committed | TxEnd::CommittedWithoutOwn => Settlement::Committed,
            TxEnd::CommitUnknown => {
                let database = self.db.database().clone();
                match handed_over.connection {
                    Some(connection) => handed_over
                        .gate
                        .settle_after(async move { database.until_gone(connection).await }),
                    // Never connected means never committed.
                    None => handed_over.gate.settle(Settlement::RolledBack),
                }
                return;
            }
            TxEnd::RolledBack | TxEnd::NotStarted | TxEnd::Aborted(_) | TxEnd::Replayed => {
                Settlement::RolledBack
            }
        };
        handed_over.gate.settle(settlement);
    }
}

/// An engine dropped in the middle of a commit (its future abandoned while the broker stops)
/// still keeps the promise of its hand-over: the successors' reads open once its connection,
/// dropped with it, is gone from the server.
impl Drop for SessionEngine {
    fn drop(&mut self) {
        if let Some(handed_over) = self.handed_over.take() {
            self.settle(handed_over, &TxEnd::CommitUnknown);
        }
    }
}

/// `hand_over_keys`, for a caller that has the session's connection borrowed (a one-trip `tx`
/// hands over while its query is still being answered): the hand-over of `keys`, if there is
/// one to make.
pub(super) fn hand_over(
    config: &Config,
    keys: &mut LockClient,
    metrics: &Metrics,
    connection: Option<ConnectionIdentity>,
) -> Option<HandedOver> {
    if !config.handover_at_commit || !keys.holds_keys() {
        return None;
    }
    metrics.handed_over();
    Some(HandedOver {
        gate: keys.hand_over(),
        connection,
    })
}
