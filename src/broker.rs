//! The broker as a whole: starts the lock coordinator on its own arbiter, one arbiter per
//! session thread, and the acceptor, inside the caller's running actix `System`; and hands
//! back a `Broker` handle with the bound address and `shutdown()`.
//!
//! This is the embedding API: the binary's `main` uses it exactly as an application does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::Arbiter;
use slog::{info, warn, Logger};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::acceptor::{Acceptor, Shared, Shutdown};
use crate::config::Config;
use crate::coordinator::{self, Coordinator};
use crate::db::Database;
use crate::metrics::Metrics;

/// How long the start-up check waits for the database before warning and going on.
const STARTUP_DB_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Database(String),
}

/// A running broker. Dropping it does not stop it; call `shutdown`.
pub struct Broker {
    local_addr: SocketAddr,
    acceptor: Addr<Acceptor>,
    coordinator: Addr<Coordinator>,
    arbiters: Vec<Arbiter>,
    log: Logger,
}

impl Broker {
    /// Starts a broker listening on `config.listen` (port 0 picks a free port). Must be
    /// called from within a running actix `System`.
    pub async fn start(config: Config, log: Logger) -> Result<Broker, StartError> {
        let config = Arc::new(config);
        let database = Database::new(
            &config.database_url,
            config.default_isolation,
            config.innodb_lock_wait_timeout_s,
        )
        .map_err(|error| StartError::Database(error.to_string()))?;
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    address: config.listen.clone(),
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            address: config.listen.clone(),
            source,
        })?;
        check_database(&database, &log).await;

        let coordinator_arbiter = Arbiter::new();
        let lock_wait_timeout = config.lock_wait_timeout();
        let coordinator = Coordinator::start_in_arbiter(&coordinator_arbiter.handle(), move |_| {
            Coordinator::new(lock_wait_timeout)
        });
        let session_arbiters: Vec<Arbiter> = (0..config.session_thread_count())
            .map(|_| Arbiter::new())
            .collect();
        let shared = Shared {
            config: config.clone(),
            database,
            coordinator: coordinator.clone(),
            metrics: Arc::new(Metrics::default()),
            log: log.clone(),
        };
        let handles = session_arbiters.iter().map(Arbiter::handle).collect();
        let acceptor = Acceptor::new(shared, listener, handles).start();
        info!(log, "listening"; "address" => %local_addr, "session_threads" => session_arbiters.len());
        let mut arbiters = session_arbiters;
        arbiters.push(coordinator_arbiter);
        Ok(Broker {
            local_addr,
            acceptor,
            coordinator,
            arbiters,
            log,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn coordinator(&self) -> &Addr<Coordinator> {
        &self.coordinator
    }

    pub fn acceptor(&self) -> &Addr<Acceptor> {
        &self.acceptor
    }

    /// Drains as protocol v1 says: stop accepting, refuse new transactions, let open ones
    /// finish for up to `shutdown_grace_ms`, roll back the rest, close every session; then
    /// stops the broker's arbiters.
    pub async fn shutdown(self) {
        let _ = self.acceptor.send(Shutdown).await;
        let _ = self.coordinator.send(coordinator::Stop).await;
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        info!(self.log, "stopped");
    }
}

/// Connects once, so that a wrong URL or a stopped server is reported at start-up. The broker
/// serves either way: sessions answer `db_unavailable` until the database is back.
async fn check_database(database: &Database, log: &Logger) {
    let mut connection = database.connection();
    match tokio::time::timeout(STARTUP_DB_CHECK_TIMEOUT, connection.ensure_connected()).await {
        Ok(Ok(())) => connection.disconnect().await,
        Ok(Err(error)) => {
            warn!(log, "database unreachable at start-up; serving anyway, sessions answer db_unavailable until it is back"; "error" => %error)
        }
        Err(_) => {
            warn!(log, "database did not answer at start-up; serving anyway"; "address" => database.address())
        }
    }
}
