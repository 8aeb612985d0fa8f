//! Embedded sessions: application code in the broker's own process (an actix actor, an
//! actix-web handler, any async fn) submits requests without a socket or MessagePack.
//!
//! A `LocalSession` owns a `SessionEngine`, the very type the TCP session actor drives, so
//! declared keys, retries, the aborted state and the error codes are one implementation for
//! both. Like a TCP session it owns one database connection for its whole life and handles
//! one request at a time, which `&mut self` enforces.

use std::sync::Arc;

use tokio::sync::watch;

use crate::client::TxOutcome;
use crate::engine::SessionEngine;
use crate::error::BrokerError;
use crate::locks::LockRequest;
use crate::metrics::Metrics;
use crate::protocol::{QueryResult, Reply, Request, Statement, Stats, TxOptions, TxRequest, Value};
use crate::txn::{ServerPhase, TxState};

/// A session inside the broker's process. Dropping it rolls back an open transaction and
/// releases its keys.
pub struct LocalSession {
    engine: Option<SessionEngine>,
    phase: watch::Receiver<ServerPhase>,
    metrics: Arc<Metrics>,
}

impl LocalSession {
    pub(crate) fn new(
        engine: SessionEngine,
        phase: watch::Receiver<ServerPhase>,
        metrics: Arc<Metrics>,
    ) -> LocalSession {
        LocalSession {
            engine: Some(engine),
            phase,
            metrics,
        }
    }

    /// The session's transaction state.
    pub fn state(&self) -> &TxState {
        match &self.engine {
            Some(engine) => engine.state(),
            None => &TxState::Idle,
        }
    }

    /// Answers any request of protocol v1, exactly as a TCP session would.
    pub async fn request(&mut self, request: Request) -> Result<Reply, BrokerError> {
        let phase = *self.phase.borrow();
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| BrokerError::Internal("the session is closed".into()))?;
        engine.handle(request, phase).await
    }

    /// Runs a whole transaction: keys granted in order, statements, commit, retries.
    pub async fn tx(&mut self, tx: TxRequest) -> Result<TxOutcome, BrokerError> {
        TxOutcome::from_reply(self.request(Request::Tx(tx)).await?)
            .map_err(|other| unexpected(*other))
    }

    pub async fn begin(&mut self, options: TxOptions) -> Result<(), BrokerError> {
        self.expect_done(Request::Begin(options)).await
    }

    /// Runs one statement: inside the open transaction, or in autocommit mode.
    pub async fn exec(
        &mut self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<QueryResult, BrokerError> {
        match self
            .request(Request::Exec(Statement::new(sql, params)))
            .await?
        {
            Reply::Exec { result } => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    pub async fn lock(&mut self, keys: LockRequest) -> Result<(), BrokerError> {
        self.expect_done(Request::Lock(keys)).await
    }

    pub async fn commit(&mut self) -> Result<(), BrokerError> {
        self.expect_done(Request::Commit).await
    }

    pub async fn rollback(&mut self) -> Result<(), BrokerError> {
        self.expect_done(Request::Rollback).await
    }

    pub async fn stats(&mut self) -> Result<Stats, BrokerError> {
        match self.request(Request::Stats).await? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(unexpected(other)),
        }
    }

    /// Rolls back whatever is open, releases every key and closes the database connection.
    pub async fn close(mut self) {
        if let Some(mut engine) = self.engine.take() {
            engine.close().await;
            self.metrics.session_ended();
        }
    }

    async fn expect_done(&mut self, request: Request) -> Result<(), BrokerError> {
        match self.request(request).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> BrokerError {
    BrokerError::Internal(format!("unexpected reply {reply:?}"))
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        let Some(mut engine) = self.engine.take() else {
            return;
        };
        self.metrics.session_ended();
        // Roll back politely when a runtime is at hand; otherwise dropping the engine closes
        // its connection (the server rolls back) and its lock client releases the keys.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { engine.close().await });
        }
    }
}
