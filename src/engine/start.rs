//! Taking a transaction's keys and starting it, for `tx` and `begin`: the one place where a
//! transaction's deadline is set and its keys are asked for.

use std::time::Instant;

use super::alone::AUTOCOMMIT_PING_AFTER;
use super::ending::TxEnd;
use super::tx::TxShape;
use super::SessionEngine;
use crate::db::{DbConnection, DbError};
use crate::error::BrokerError;
use crate::protocol::TxOptions;

impl SessionEngine {
    /// Grants the keys and starts the database transaction at the same time: `START
    /// TRANSACTION` takes no row locks and no snapshot, so overlapping it with the wait keeps
    /// one round trip out of the time the keys are held. A single write starts nothing: its
    /// statement carries its own commit, so its connection is checked for life beforehand.
    pub(super) async fn start_transaction(
        &mut self,
        options: &TxOptions,
        shape: TxShape,
    ) -> Result<(), BrokerError> {
        match shape {
            TxShape::Explicit => self.db.ensure_connected().await,
            TxShape::SingleWrite => self.db.ensure_live(AUTOCOMMIT_PING_AFTER).await,
        }?;
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
            Some(keys) => futures_util::join!(self.keys.acquire(keys), begin),
            None => (Ok(()), begin.await),
        };
        let failure = match (granted, begun) {
            (Ok(()), Ok(())) => return Ok(()),
            (_, Err(error)) => BrokerError::from(error),
            (Err(failure), Ok(())) => BrokerError::from(failure),
        };
        self.end_transaction(TxEnd::NotStarted).await;
        Err(failure)
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
