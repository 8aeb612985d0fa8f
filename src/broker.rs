//! The broker as a whole: starts one arbiter per session thread, the lock coordinator on the
//! first of them (or on a thread of its own, `coordinator_thread = "own"`; on the caller's
//! arbiter when there is no listener), and (unless told not to) the acceptor with its TCP
//! listener, inside the caller's running actix `System`; and hands back a `Broker` handle:
//! the bound address, the actors' addresses, embedded sessions (`session()`), and
//! `shutdown()`.
//!
//! This is the embedding API: the binary's `main` uses it exactly as an application does.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use txbroker::{Broker, Config};
//! // Inside a running actix System (e.g. in `#[actix_web::main]`):
//! let broker = Broker::builder(Config::default()).without_listener().start().await?;
//! let mut session = broker.session();
//! let outcome = session
//!     .tx(txbroker::client::TxBuilder::new()
//!         .lock("accounts:1")
//!         .exec("UPDATE accounts SET balance = balance + 1 WHERE id = 1", vec![])
//!         .into_request())
//!     .await?;
//! assert_eq!(outcome.attempts, 1);
//! broker.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle};
use actix_web::dev::ServerHandle;
use slog::{info, warn, Logger};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::acceptor::{Acceptor, Shutdown};
use crate::config::{Config, Coordination, CoordinatorThread};
use crate::coordinator::{self, Coordinator};
use crate::db::Database;
use crate::engine::SessionFactory;
use crate::idempotency::{self, OutcomeTable};
use crate::local::LocalSession;
use crate::locks::GroupReach;
use crate::metrics::{Metrics, Timing};
use crate::monitor::Monitor;
use crate::txn::ServerPhase;

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
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot serve monitoring on {address}: {source}")]
    Monitoring {
        address: String,
        source: std::io::Error,
    },
}

/// A running broker. Dropping it does not stop it; call `shutdown`.
pub struct Broker {
    local_addr: Option<SocketAddr>,
    acceptor: Option<Addr<Acceptor>>,
    coordinator: Addr<Coordinator>,
    arbiters: Vec<Arbiter>,
    sessions: SessionFactory,
    phase: watch::Sender<ServerPhase>,
    monitor: Monitor,
    /// The monitoring HTTP server on `metrics_listen`, and the address it is bound to.
    monitoring: Option<(ServerHandle, SocketAddr)>,
    /// The background purge of expired idempotency records.
    purge: tokio::task::JoinHandle<()>,
    log: Logger,
}

/// Whether the broker listens for TCP clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Tcp,
    None,
}

/// Configures a broker before starting it.
pub struct BrokerBuilder {
    config: Config,
    log: Logger,
    listener: Listener,
}

impl BrokerBuilder {
    /// Logs through `log` instead of discarding.
    pub fn logger(mut self, log: Logger) -> BrokerBuilder {
        self.log = log;
        self
    }

    /// Serves embedded sessions only: no TCP listener, no acceptor.
    pub fn without_listener(mut self) -> BrokerBuilder {
        self.listener = Listener::None;
        self
    }

    /// Starts the broker. Must be called from within a running actix `System`.
    pub async fn start(self) -> Result<Broker, StartError> {
        let BrokerBuilder {
            config,
            log,
            listener,
        } = self;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(Timing::from_config(config.latency_metrics)));
        let database = Database::new(
            &config.database_url,
            config.default_isolation,
            config.innodb_lock_wait_timeout_s,
            metrics.clone(),
        )
        .map_err(|error| StartError::Database(error.to_string()))?;
        let tls = tls_acceptor(&config)?;
        let listener = match listener {
            Listener::Tcp => Some(bind(&config.listen).await?),
            Listener::None => None,
        };
        check_database(&database, &log).await;
        let purge = start_idempotency_table(&config, &database, &log).await;
        let threads = Threads::start(&config, listener.is_some());
        let coordinator = start_coordinator(&config, &threads);
        let (phase, _) = watch::channel(ServerPhase::Serving);
        let monitor = Monitor::new(
            metrics.clone(),
            coordinator.clone(),
            database.clone(),
            phase.subscribe(),
        );
        let monitoring = start_monitoring(&monitor, &config, &log)?;
        let sessions = SessionFactory::new(
            config.clone(),
            database,
            coordinator.clone(),
            metrics,
            log.clone(),
        );
        let acceptor = match listener {
            Some(listener) => Some(start_acceptor(&sessions, tls, listener, &threads)),
            None => {
                info!(log, "started without a listener");
                None
            }
        };
        Ok(Broker {
            local_addr: acceptor.as_ref().map(|(_, local_addr)| *local_addr),
            acceptor: acceptor.map(|(acceptor, _)| acceptor),
            coordinator,
            arbiters: threads.arbiters,
            sessions,
            phase,
            monitor,
            monitoring,
            purge,
            log,
        })
    }
}

/// The lock coordinator, on its own arbiter when the configuration gives it one.
fn start_coordinator(config: &Config, threads: &Threads) -> Addr<Coordinator> {
    let (lock_wait_timeout, max_group_size, hot_keys) = (
        config.lock_wait_timeout(),
        config.max_group_size,
        config.hot_keys,
    );
    // A key a leader takes over for a member has no named lock on the leader's connection,
    // so across brokers only keys the leader already holds may join it.
    let group_reach = match config.coordination {
        Coordination::Local => GroupReach::HeldOrFree,
        Coordination::Database => GroupReach::HeldByLeader,
    };
    Coordinator::start_in_arbiter(&threads.coordinator, move |_| {
        Coordinator::new(lock_wait_timeout, max_group_size, group_reach, hot_keys)
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `metrics_listen`, when it is set.
fn start_monitoring(
    monitor: &Monitor,
    config: &Config,
    log: &Logger,
) -> Result<Option<(ServerHandle, SocketAddr)>, StartError> {
    let Some(address) = &config.metrics_listen else {
        return Ok(None);
    };
    let (handle, bound) = monitor
        .serve(address)
        .map_err(|source| StartError::Monitoring {
            address: address.to_string(),
            source,
        })?;
    info!(log, "serving monitoring"; "address" => %bound);
    Ok(Some((handle, bound)))
}

/// TLS for client connections when the config names a certificate and a key.
fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, StartError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::acceptor(cert, key)?)),
        _ => Ok(None),
    }
}

/// Starts the acceptor on `listener`.
fn start_acceptor(
    sessions: &SessionFactory,
    tls: Option<TlsAcceptor>,
    (listener, local_addr): (TcpListener, SocketAddr),
    threads: &Threads,
) -> (Addr<Acceptor>, SocketAddr) {
    let config = &sessions.config;
    let acceptor = Acceptor::new(sessions.clone(), tls, listener, threads.sessions.clone()).start();
    info!(sessions.log, "listening"; "address" => %local_addr,
        "session_threads" => config.session_thread_count(),
        "coordinator_thread" => ?config.coordinator_thread);
    (acceptor, local_addr)
}

/// The broker's threads: the arbiters it started (stopped at shutdown), where sessions run,
/// and where the coordinator runs.
struct Threads {
    arbiters: Vec<Arbiter>,
    sessions: Vec<ArbiterHandle>,
    coordinator: ArbiterHandle,
}

impl Threads {
    /// Session threads only with a listener: embedded sessions run on their callers'.
    fn start(config: &Config, listening: bool) -> Threads {
        let mut arbiters: Vec<Arbiter> = if listening {
            (0..config.session_thread_count())
                .map(|_| Arbiter::new())
                .collect()
        } else {
            Vec::new()
        };
        let sessions = arbiters.iter().map(Arbiter::handle).collect();
        // Measured on 2 cores shared with MariaDB: the coordinator on the (single) session
        // thread turns every grant and release into a same-thread message, +14-25 % tx/s
        // over a thread of its own (bench/README.md).
        let coordinator = match (config.coordinator_thread, arbiters.first()) {
            (CoordinatorThread::WithSessions, Some(first)) => first.handle(),
            (CoordinatorThread::WithSessions, None) => actix_rt::Arbiter::current(),
            (CoordinatorThread::Own, _) => {
                let own = Arbiter::new();
                let handle = own.handle();
                arbiters.push(own);
                handle
            }
        };
        Threads {
            arbiters,
            sessions,
            coordinator,
        }
    }
}

async fn bind(address: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen_error = |source| StartError::Listen {
        address: address.to_string(),
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(listen_error)?;
    let local_addr = listener.local_addr().map_err(listen_error)?;
    Ok((listener, local_addr))
}

impl Broker {
    /// A builder, for a broker without a listener or with a logger.
    pub fn builder(config: Config) -> BrokerBuilder {
        BrokerBuilder {
            config,
            log: crate::logging::discard(),
            listener: Listener::Tcp,
        }
    }

    /// Starts a broker listening on `config.listen` (port 0 picks a free port). Must be
    /// called from within a running actix `System`.
    pub async fn start(config: Config, log: Logger) -> Result<Broker, StartError> {
        Broker::builder(config).logger(log).start().await
    }

    /// The address the listener is bound to; `None` without a listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn coordinator(&self) -> &Addr<Coordinator> {
        &self.coordinator
    }

    /// The monitoring routes, to mount in an application's own actix-web `App`
    /// (`Monitor::configure`); served on their own by the broker too when `metrics_listen`
    /// is set.
    pub fn monitor(&self) -> Monitor {
        self.monitor.clone()
    }

    /// The address `/metrics` is served on; `None` without `metrics_listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.monitoring.as_ref().map(|(_, address)| *address)
    }

    /// The acceptor actor; `None` without a listener.
    pub fn acceptor(&self) -> Option<&Addr<Acceptor>> {
        self.acceptor.as_ref()
    }

    /// A new embedded session with its own database connection (made on first use). It
    /// follows exactly the rules of a TCP session. Embedded sessions do not count against
    /// `max_sessions` but do appear in `stats`.
    pub fn session(&self) -> LocalSession {
        let engine = self.sessions.new_engine("embedded");
        LocalSession::new(
            engine,
            self.phase.subscribe(),
            self.sessions.metrics.clone(),
        )
    }

    /// Drains as protocol v1 says: stop accepting, refuse new transactions (embedded sessions
    /// too), let open ones finish for up to `shutdown_grace_ms`, roll back the rest, close
    /// every TCP session; then stops the broker's arbiters. Embedded sessions are owned by the
    /// application, which finishes or drops them; after shutdown they answer errors.
    pub async fn shutdown(self) {
        self.phase.send_replace(ServerPhase::Draining);
        if let Some(acceptor) = &self.acceptor {
            let _ = acceptor.send(Shutdown).await;
        }
        self.purge.abort();
        let _ = self.coordinator.send(coordinator::Stop).await;
        if let Some((server, _)) = &self.monitoring {
            server.stop(true).await;
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        info!(self.log, "stopped");
    }
}

/// Creates the idempotency table when it is missing (the purge tries again later if the
/// database cannot be reached now) and starts the purge of expired records.
async fn start_idempotency_table(
    config: &Config,
    database: &Database,
    log: &Logger,
) -> tokio::task::JoinHandle<()> {
    let table = OutcomeTable::new(config);
    let mut connection = database.connection();
    match tokio::time::timeout(STARTUP_DB_CHECK_TIMEOUT, table.create(&mut connection)).await {
        Ok(Ok(())) => connection.disconnect().await,
        Ok(Err(error)) => {
            warn!(log, "idempotency table not created at start-up; the purge tries again"; "error" => %error)
        }
        Err(_) => warn!(
            log,
            "idempotency table not created at start-up: the database did not answer"
        ),
    }
    actix_rt::spawn(idempotency::purge_expired(
        database.clone(),
        table,
        log.clone(),
    ))
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
