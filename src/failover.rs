//! A client of several brokers that share one database (`coordination = "database"`,
//! `docs/scaling.md`): it keeps one connection, to the first broker that accepts it, and
//! moves to the next address when a connection is refused, lost, or turned away (`busy`,
//! `shutting_down`: nothing of the request ran).
//!
//! A request without an idempotency key whose connection is lost while it is in flight is
//! never sent again: it may have committed before the broker vanished, so its caller gets
//! `ClientError::Disconnected` and decides. A `tx` that carries a key (`TxBuilder::
//! idempotency_key`) is carried across instead: after a lost connection or `commit_unknown`
//! the client moves to the next broker and sends the same request with the same key, once per
//! address and once more (`client::retry_idempotent`), so its answer is the truth: run once,
//! or the recorded outcome of the run that committed (`replayed`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), txbroker::client::ClientError> {
//! use txbroker::client::{new_idempotency_key, TxBuilder};
//! use txbroker::failover::FailoverClient;
//! let client = FailoverClient::new(["10.0.0.1:7306", "10.0.0.2:7306", "10.0.0.3:7306"]);
//! // With a key, a transfer lost in flight is sent again to the next broker (module doc).
//! let transfer = TxBuilder::new()
//!     .idempotency_key(new_idempotency_key())
//!     .lock("accounts:1")
//!     .exec("UPDATE accounts SET balance = balance - 1 WHERE id = 1", vec![])
//!     .into_request();
//! client.run_tx(transfer).await?;
//! # Ok(())
//! # }
//! ```

use tokio::sync::Mutex;

use crate::client::{retry_idempotent, Client, ClientError, TxOutcome};
use crate::error::ErrorCode;
use crate::protocol::{Stats, TxRequest};

/// The connection in use, and the index of the address it went to.
struct Connected {
    index: usize,
    client: Client,
}

/// Where the client is: the connection in use, or the address to try first.
enum Route {
    Connected(Connected),
    TryFrom(usize),
}

/// A client of the brokers at `addresses`, connected to one of them at a time.
pub struct FailoverClient {
    addresses: Vec<String>,
    route: Mutex<Route>,
}

impl FailoverClient {
    /// Connects lazily, at the first request, to the first address that accepts.
    pub fn new<A: Into<String>>(addresses: impl IntoIterator<Item = A>) -> FailoverClient {
        FailoverClient {
            addresses: addresses.into_iter().map(Into::into).collect(),
            route: Mutex::new(Route::TryFrom(0)),
        }
    }

    /// The address of the broker in use, if connected.
    pub async fn current_address(&self) -> Option<String> {
        match &*self.route.lock().await {
            Route::Connected(connected) => Some(self.addresses[connected.index].clone()),
            Route::TryFrom(_) => None,
        }
    }

    /// Runs `tx` on the broker in use, connecting or moving on first if needed. Without an
    /// idempotency key it is sent again, to the next broker, only when one turned it away
    /// without running it. With one it is also sent again after a lost connection or
    /// `commit_unknown` (moving to the next broker first) or a retryable error, at most one
    /// try per address plus one, so that an outcome the caller gets is the broker's.
    pub async fn run_tx(&self, tx: TxRequest) -> Result<TxOutcome, ClientError> {
        let Some(key) = tx.options.idempotency_key.clone() else {
            return self.run_tx_once(&tx).await;
        };
        let attempts = u32::try_from(self.addresses.len() + 1).unwrap_or(u32::MAX);
        retry_idempotent(attempts, Some(key), |_same_key| self.run_tx_once(&tx)).await
    }

    /// One try of `tx`: on the broker in use, or on the next ones that turn it away. After a
    /// lost connection, or a `commit_unknown` of a keyed `tx`, the next try goes to the next
    /// broker.
    async fn run_tx_once(&self, tx: &TxRequest) -> Result<TxOutcome, ClientError> {
        let mut route = self.route.lock().await;
        for _ in 0..self.addresses.len() {
            let client = self.connection(&mut route).await?;
            match client.run_tx(tx.clone()).await {
                Err(error) if turned_away(&error) => self.move_on(&mut route),
                Err(error @ (ClientError::Disconnected | ClientError::Io(_))) => {
                    // In flight when the connection went: its outcome is unknown. Without
                    // an idempotency key it must not be sent again (module doc).
                    self.move_on(&mut route);
                    return Err(error);
                }
                Err(error)
                    if tx.options.idempotency_key.is_some()
                        && error.code() == Some(ErrorCode::CommitUnknown) =>
                {
                    // This broker cannot learn the outcome; the next one reads it from the
                    // key's record when `run_tx` sends it again.
                    self.move_on(&mut route);
                    return Err(error);
                }
                outcome => return outcome,
            }
        }
        Err(ClientError::Protocol(
            "every broker turned the request away".into(),
        ))
    }

    /// The `stats` of the broker in use.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let mut route = self.route.lock().await;
        let outcome = self.connection(&mut route).await?.stats().await;
        if outcome.is_err() {
            self.move_on(&mut route);
        }
        outcome
    }

    /// The live connection; when there is none, or the one there is known closed, a new one
    /// to the first address from the next that accepts. Fails when none accepts.
    async fn connection<'a>(&self, route: &'a mut Route) -> Result<&'a Client, ClientError> {
        if matches!(route, Route::Connected(connected) if connected.client.is_closed()) {
            self.move_on(route);
        }
        let start = match route {
            Route::Connected(connected) => return Ok(&connected.client),
            Route::TryFrom(start) => *start,
        };
        let mut last_error = None;
        for offset in 0..self.addresses.len() {
            let index = (start + offset) % self.addresses.len();
            match Client::connect(self.addresses[index].as_str()).await {
                Ok(client) => {
                    *route = Route::Connected(Connected { index, client });
                    let Route::Connected(connected) = route else {
                        unreachable!("just connected");
                    };
                    return Ok(&connected.client);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Protocol("no broker address".into())))
    }

    /// Drops the connection in use; the next one goes first to the address after it.
    fn move_on(&self, route: &mut Route) {
        if let Route::Connected(gone) = route {
            *route = Route::TryFrom((gone.index + 1) % self.addresses.len());
        }
    }
}

/// Whether the broker refused `error`'s request before running any of it.
fn turned_away(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::Busy | ErrorCode::ShuttingDown)
    )
}
