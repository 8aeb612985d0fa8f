//! The one way a transaction ends. Whatever ends it (a commit, a failed `tx`, the client's
//! `rollback`, an abort, keys that were not granted, a session closing), the engine calls
//! `end_transaction` with how it ended, and that function alone rolls back what may still be
//! open, releases the keys, clears the deadline, moves the state and counts the outcome. A
//! new way to end a transaction is a new `TxEnd`, not new calls.

use slog::debug;

use super::SessionEngine;
use crate::error::AbortReason;
use crate::txn::TxState;

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TxEnd {
    /// The database acknowledged the commit: a `COMMIT`, or the one statement that carried it.
    Committed,
    /// The connection was lost while the commit was in flight: nobody knows the outcome.
    CommitUnknown,
    /// It will not commit: the client asked for a rollback, or a `tx` failed.
    RolledBack,
    /// It never started, from the client's view: its keys were not granted or `START
    /// TRANSACTION` failed. Nothing is counted.
    NotStarted,
    /// The broker or the database ended an interactive transaction behind the client's back;
    /// the session answers `tx_aborted` until the client sends `rollback`.
    Aborted(AbortReason),
}

impl SessionEngine {
    pub(super) async fn end_transaction(&mut self, end: TxEnd) {
        if matches!(
            end,
            TxEnd::RolledBack | TxEnd::NotStarted | TxEnd::Aborted(_)
        ) && self.db.rollback().await.is_err()
        {
            // A rollback the server refuses leaves the connection in doubt; closing it makes
            // the server roll back.
            self.db.disconnect().await;
        }
        // Keys go only now, once nothing of the transaction can still change on the database.
        self.keys.release_all();
        self.db.set_deadline(None);
        match &end {
            TxEnd::Committed => self.metrics.committed(),
            TxEnd::RolledBack | TxEnd::Aborted(_) => self.metrics.rolled_back(),
            TxEnd::CommitUnknown | TxEnd::NotStarted => {}
        }
        self.state = match end {
            TxEnd::Aborted(reason) => {
                debug!(self.log, "transaction aborted"; "reason" => %reason);
                TxState::Aborted(reason)
            }
            _ => TxState::Idle,
        };
    }
}
