//! Interactive transactions: `begin`, `exec` inside the open transaction, `lock`, `commit`
//! and `rollback`. Nothing here is retried: a conflict the database reports, a lock the
//! coordinator refuses or a lost connection aborts the transaction, and the session answers
//! `tx_aborted` until its client acknowledges with `rollback`.

use std::time::Instant;

use super::ending::TxEnd;
use super::start::TxShape;
use super::{SessionEngine, StatementRecord};
use crate::coordinator::Admission;
use crate::db::DbError;
use crate::error::{AbortReason, BrokerError, CommitCarrier};
use crate::idempotency::Claim;
use crate::locks::{Grouping, LockRequest};
use crate::metrics::TxKind;
use crate::protocol::{Reply, Statement, TxOptions};
use crate::sql_guard;
use crate::txn::{TxMode, TxState};

impl SessionEngine {
    /// A keyed `begin` whose key has a record (its transaction committed already) is
    /// answered that record and opens nothing: the session is then aborted, so that a client
    /// which missed `replayed` cannot run its statements in autocommit mode. Otherwise the
    /// transaction also holds its key's broker key until it ends, and records at `commit`.
    pub(super) async fn begin(
        &mut self,
        mut options: TxOptions,
        arrived: Instant,
    ) -> Result<Reply, BrokerError> {
        let claim = Claim::of_begin(&options);
        if let Some(claim) = &claim {
            if let Some(answer) = self.recorded_answer(claim).await? {
                self.end_transaction(TxEnd::Replayed).await;
                return Ok(answer);
            }
            options.locks = Some(claim.with_lock_key(options.locks.take()));
        }
        self.start_transaction(
            TxKind::Interactive,
            arrived,
            &options,
            TxShape::Explicit,
            Grouping::Alone,
            None,
        )
        .await?;
        self.current.claim = claim;
        self.state = TxState::Active;
        Ok(Reply::Done)
    }

    pub(super) async fn exec_in_transaction(
        &mut self,
        statement: &Statement,
    ) -> Result<Reply, BrokerError> {
        sql_guard::check(&statement.sql, TxMode::InTransaction)
            .map_err(|refusal| BrokerError::BadRequest(refusal.message()))?;
        let class = self.classify(&statement.sql, self.current.isolation);
        if let Err(timeout) = self.wait_for_reads(class).await {
            let BrokerError::LockTimeout { key, .. } = &timeout else {
                return Err(timeout);
            };
            let reason = AbortReason::LockTimeout { key: key.clone() };
            self.end_transaction(TxEnd::Aborted(reason)).await;
            return Err(timeout);
        }
        let error = match self.db.execute(statement, TxMode::InTransaction).await {
            Ok(result) => return Ok(Reply::Exec { result }),
            Err(error) => error,
        };
        // A plain SQL error leaves the transaction open, as MySQL does; its keys then stay
        // until `COMMIT` has answered.
        let Some(reason) = AbortReason::caused_by(&error) else {
            self.current.statements = StatementRecord::SomeFailed;
            return Err(BrokerError::from(error));
        };
        self.end_transaction(TxEnd::Aborted(reason.clone())).await;
        Err(match error {
            DbError::TransactionEnded | DbError::DeadlineExceeded => BrokerError::TxAborted(reason),
            other => BrokerError::from(other),
        })
    }

    pub(super) async fn lock(&mut self, keys: LockRequest) -> Result<(), BrokerError> {
        let asked = Instant::now();
        let admitted = self.keys.acquire(keys.clone()).await;
        let waited = asked.elapsed();
        self.metrics.lock_waited(waited);
        self.add_key_wait(waited);
        let failure = match admitted {
            Ok(Admission::Granted { read_gate, .. }) => {
                self.current.read_gate.extend(read_gate);
                let Err(failure) = self.take_named_locks(&keys, asked).await else {
                    return Ok(());
                };
                self.end_transaction(TxEnd::Aborted(failure.abort_reason()))
                    .await;
                return Err(BrokerError::from(failure));
            }
            // A request asked alone never joins a group.
            Ok(Admission::Joined(_)) => {
                return Err(BrokerError::Internal(
                    "a lock request joined a group".into(),
                ))
            }
            Err(failure) => failure,
        };
        self.end_transaction(TxEnd::Aborted(AbortReason::from(&failure)))
            .await;
        Err(BrokerError::from(failure))
    }

    /// Commits; a keyed transaction's record goes just before its `COMMIT`, and when the
    /// commit fails, a duplicate's record written meanwhile is the answer (`idempotent.rs`).
    pub(super) async fn commit(&mut self) -> Result<Reply, BrokerError> {
        let claim = self.current.claim.clone();
        match (self.commit_open().await, claim) {
            (Err(failure), Some(claim)) => self.replayed_instead_of(&claim, failure).await,
            (outcome, _) => outcome.map(|()| Reply::Done),
        }
    }

    async fn commit_open(&mut self) -> Result<(), BrokerError> {
        if self.current.statements == StatementRecord::AllSucceeded {
            self.hand_over_keys();
        }
        let claim = self.current.claim.clone();
        let records: Vec<(&Claim, &Reply)> =
            claim.iter().map(|claim| (claim, &Reply::Done)).collect();
        let error = match self.commit_recording(&records).await {
            Ok(()) => {
                self.end_transaction(TxEnd::Committed).await;
                return Ok(());
            }
            Err(error) => error,
        };
        match BrokerError::commit_unknown(error, CommitCarrier::Commit) {
            Ok(unknown) => {
                self.end_transaction(TxEnd::CommitUnknown).await;
                Err(unknown)
            }
            Err(error) => {
                let reason = AbortReason::caused_by(&error).unwrap_or(AbortReason::CommitFailed);
                self.end_transaction(TxEnd::Aborted(reason)).await;
                Err(BrokerError::from(error))
            }
        }
    }

    /// Rolls back an open transaction; in the aborted state it is the client's
    /// acknowledgement, and with nothing open it does nothing: `rollback` always succeeds.
    pub(super) async fn rollback(&mut self) -> Result<(), BrokerError> {
        match self.state {
            TxState::Active => self.end_transaction(TxEnd::RolledBack).await,
            TxState::Aborted(_) => self.state = TxState::Idle,
            TxState::Idle => {}
        }
        Ok(())
    }
}
