//! A statement run alone in autocommit mode, as its own transaction: `exec` outside a
//! transaction, and the one-write `tx` (`TxShape::SingleWrite`). Both set the isolation level
//! first and both replace a connection found dead before the statement was sent on it.

use std::time::{Duration, Instant};

use super::SessionEngine;
use crate::db::DbError;
use crate::error::{BrokerError, CommitCarrier};
use crate::metrics::{TxKind, TxOutcome, TxTimes};
use crate::protocol::{Isolation, QueryResult, Reply, Statement};
use crate::sql_guard;
use crate::txn::TxMode;

/// A statement that carries its own commit (an autocommit `exec`, a one-write `tx`) pings its
/// connection first when it has been idle this long: a connection that died unnoticed would
/// otherwise turn a statement that never ran into `commit_unknown`. Under load a session's gap
/// between requests is a few milliseconds and never pays the round trip.
pub(super) const AUTOCOMMIT_PING_AFTER: Duration = Duration::from_millis(50);

impl SessionEngine {
    pub(super) async fn exec_autocommit(
        &mut self,
        statement: &Statement,
        arrived: Instant,
    ) -> Result<Reply, BrokerError> {
        sql_guard::check(&statement.sql, TxMode::Autocommit)
            .map_err(|refusal| BrokerError::BadRequest(refusal.message()))?;
        // Only for what it does to the session: it takes no keys.
        self.classify(&statement.sql, self.config.default_isolation);
        self.db.take_time_in_database();
        let answer = self.run_autocommit(statement).await;
        let outcome = match &answer {
            Ok(_) => TxOutcome::Committed,
            Err(BrokerError::CommitUnknown(_)) => TxOutcome::CommitUnknown,
            Err(_) => TxOutcome::RolledBack,
        };
        let times = TxTimes {
            total: arrived.elapsed(),
            key_wait: Duration::ZERO,
            database: self.db.take_time_in_database(),
        };
        self.metrics
            .transaction_ended(TxKind::Autocommit, outcome, times);
        answer
    }

    async fn run_autocommit(&mut self, statement: &Statement) -> Result<Reply, BrokerError> {
        self.db.ensure_live(AUTOCOMMIT_PING_AFTER).await?;
        match self.execute_alone(statement, None).await {
            Ok(result) => Ok(Reply::Exec { result }),
            // An autocommit statement is its own commit: if the connection died under it,
            // nobody knows whether it took effect.
            Err(error) => Err(BrokerError::commit_unknown(
                error,
                CommitCarrier::AutocommitStatement,
            )
            .unwrap_or_else(BrokerError::from)),
        }
    }

    /// Runs `statement` alone in autocommit mode at `isolation` (`None`: the configured
    /// default). A connection found dead before the statement was sent on it is replaced once.
    pub(super) async fn execute_alone(
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
        self.db
            .set_isolation(isolation)
            .await
            .map_err(nothing_sent)?;
        self.db.execute(statement, TxMode::Autocommit).await
    }
}

/// `error` of a step before a statement that carries its own commit (setting the isolation
/// level): a connection lost there sent nothing of the transaction, so the database was
/// unavailable, not the commit unknown.
pub(super) fn nothing_sent(error: DbError) -> DbError {
    match error {
        DbError::ConnectionLost(message) => DbError::Unavailable(message),
        other => other,
    }
}
