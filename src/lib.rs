//! txbroker: a transaction broker for MySQL and MariaDB.
//!
//! Clients send whole transactions (or interactive ones) over a small MessagePack protocol.
//! Each client gets a session actor that owns one database connection; a lock coordinator
//! grants the row-lock keys each transaction declares, in ascending key order with a FIFO
//! queue per key, so declared transactions never deadlock each other. Deadlocks and lock
//! wait timeouts that still come from the database are retried.
//!
//! # Layout
//! - [`config`]: the configuration struct, read once and passed down.
//! - [`error`]: error codes of the protocol and the broker's error enum.
//! - [`protocol`]: typed requests, responses and values, and their MessagePack form.
//! - [`frame`]: length-prefixed framing; the only code that splits bytes into frames.
//! - [`tls`]: TLS acceptor and connector for client connections.
//! - [`locks`]: the pure lock table (ascending order, FIFO per key, shared/exclusive).
//! - [`txn`]: the pure transaction state machine and which request is allowed when.
//! - [`sql_guard`]: statements refused because they would change transaction state.
//! - [`db`]: the session's database connection; the only module that uses `mysql_async`.
//! - [`metrics`]: every count and timing, on the Prometheus registry `stats` also reads.
//! - [`hot_keys`]: the keys requests waited for longest lately, with bounded memory; kept
//!   by the coordinator.
//! - [`latency_window`]: percentiles of the last seconds' transactions, for `stats`.
//! - [`monitor`]: `/metrics`, `/healthz` and `/readyz` over HTTP, served or mounted.
//! - [`sql_class`]: what a statement does to row locks and to its session (hand-over, groups).
//! - [`coordinator`]: the lock coordinator actor around [`locks::LockTable`], and what its
//!   grants carry (read gates of handed-over commits, group inboxes).
//! - [`keys`]: a session's handle on its keys: acquire, hand over at `COMMIT`, release.
//! - [`idempotency`]: the outcomes table of idempotency keys, the claim a keyed request makes,
//!   and the purge of expired records.
//! - [`named_locks`]: keys as MariaDB named locks, for brokers that share a database.
//! - [`engine`]: the rules of the protocol for one session, independent of transport.
//! - [`session`]: the session actor, one per TCP client.
//! - [`acceptor`]: the listener actor: session limit, session ids, drain.
//! - [`broker`]: starts everything inside a running actix `System`; the embedding API.
//! - [`local`]: embedded sessions, for application code in the broker's process.
//! - [`client`]: the async Rust client.
//! - [`failover`]: a client of several brokers, moving to the next when one fails.
//! - [`admin`]: the operator's `stats` and `exec` commands.
//! - [`top`]: the screen of `txbroker top`, a live view of a running broker.
//! - [`logging`]: the slog root logger.

pub mod acceptor;
pub mod broker;
pub mod local;
pub mod client;
pub mod failover;
pub mod admin;
pub mod config;
pub mod coordinator;
pub mod db;
pub mod engine;
pub mod error;
pub mod frame;
pub mod hot_keys;
pub mod idempotency;
pub mod keys;
pub mod named_locks;
pub mod tls;
pub mod top;
pub mod latency_window;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod protocol;
pub mod session;
pub mod sql_class;
pub mod sql_guard;
pub mod txn;

pub use broker::{Broker, BrokerBuilder, StartError};
pub use config::Config;
pub use local::LocalSession;

/// The README's Rust examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
