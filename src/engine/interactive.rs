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
use crate::locks::{Grouping, LockRequest};
use crate::protocol::{Reply, Statement, TxOptions};
use crate::sql_guard;
use crate::txn::{TxMode, TxState};

impl SessionEngine {
    pub(super) async fn begin(&mut self, options: TxOptions) -> Result<(), BrokerError> {
        self.start_transaction(&options, TxShape::Explicit, Grouping::Alone, None)
            .await?;
        self.state = TxState::Active;
        Ok(())
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
        let failure = match self.keys.acquire(keys.clone()).await {
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

    pub(super) async fn commit(&mut self) -> Result<(), BrokerError> {
        if self.current.statements == StatementRecord::AllSucceeded {
            self.hand_over_keys();
        }
        let error = match self.db.commit().await {
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
