//! Shared helpers for the integration tests, one of each: look here before writing a helper.
//! This file: a private database per test on the real MariaDB (`TestDb`), a real broker on
//! port 0 in its own actix system (`TestBroker`), the set-up most tests start with (`setup`),
//! the bank the transfer tests share (`bank`: accounts and a ledger), and waiting for events
//! with deadlines (`eventually`, `stats_until`, `within`). The submodules:
//!
//! - `raw`: raw frame I/O (`RawConn`) and MessagePack requests and answers built and checked
//!   by hand, for tests that must send bytes no well-behaved client would, or see the wire
//!   as a client in another language does.
//! - `answers`: reading the Rust client's answers: the server's error, its code, and the
//!   values of a result row.
//! - `requests`: requests the tests send often: declared keys, the bank's transfer.
//! - `http`: plain HTTP GETs, for the monitoring routes and Prometheus's API.
//! - `process`: the `txbroker` binary as a real process (`BrokerProcess`), config files,
//!   signals, waiting for a process to exit.
//! - `script_client`: a client process in Python that a test can kill with SIGKILL.
//! - `exactly_once`: clients that retry logical transfers with one idempotency key each
//!   through any fault (`KeyedLoad`), and the check that each landed exactly once.
//!
//! Every test binary compiles this whole module and uses part of it, hence `dead_code`.

#![allow(dead_code)]

pub mod answers;
pub mod http;
pub mod exactly_once;
pub mod process;
pub mod raw;
pub mod requests;
pub mod script_client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::task::JoinHandle;
use txbroker::client::{Client, ClientError, TxOutcome};
use txbroker::protocol::{Stats, TxRequest};
use txbroker::{logging, Broker, Config};

/// How long an awaited event may take on a loaded two-core machine before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The server the tests use; `DATABASE_URL` overrides it.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A database that belongs to one test: dropped and created anew when the test starts.
#[derive(Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Named `txb_<label>`, or `<TXBROKER_TEST_DB_PREFIX>_<label>` so that two checkouts can
    /// run the suite against one server at once.
    pub async fn create(label: &str) -> TestDb {
        let prefix = std::env::var("TXBROKER_TEST_DB_PREFIX").unwrap_or_else(|_| "txb".into());
        let name = format!("{prefix}_{label}");
        let base = base_url();
        let mut admin = mysql_async::Conn::from_url(&base)
            .await
            .expect("connect to MariaDB");
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await
            .expect("drop test database");
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create test database");
        admin.disconnect().await.ok();
        let url = match base.rfind('/') {
            Some(slash) if slash > "mysql://".len() => format!("{}/{name}", &base[..slash]),
            _ => format!("{base}/{name}"),
        };
        TestDb { name, url }
    }

    /// A new database, then `statements` (its tables and rows) run on it.
    pub async fn create_with(label: &str, statements: &[&str]) -> TestDb {
        let db = TestDb::create(label).await;
        db.run(statements).await;
        db
    }

    pub async fn conn(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// Runs statements on a fresh direct connection.
    pub async fn run(&self, statements: &[&str]) {
        run_and_disconnect(self.conn().await, statements).await;
    }

    /// One integer from a query, read directly from the database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        scalar_and_disconnect(self.conn().await, sql).await
    }

    /// The number of rows in `table`, read directly from the database.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// Waits until a statement whose text is `statement` runs on a connection to this
    /// database, and returns that connection's id.
    pub async fn running(&self, what: &str, statement: &str) -> i64 {
        self.running_like(what, &statement.replace('%', "\\%"))
            .await
    }

    /// Waits until a statement whose text matches the SQL `LIKE` pattern runs on a connection
    /// to this database (a multi-statement query shows whole), and returns that connection's id.
    pub async fn running_like(&self, what: &str, pattern: &str) -> i64 {
        let probe = format!(
            "SELECT COALESCE(MAX(ID), 0) FROM information_schema.PROCESSLIST \
             WHERE DB = '{}' AND INFO LIKE '{}'",
            self.name,
            pattern.replace('\'', "''")
        );
        eventually(what, PATIENCE, || async { self.scalar(&probe).await > 0 }).await;
        self.scalar(&probe).await
    }

    /// Waits until `statement` runs, when it can only be running because it waits for a row
    /// lock another transaction holds.
    pub async fn blocked_on_row_lock(&self, statement: &str) {
        self.running("the statement waits for a row lock", statement)
            .await;
    }

    /// The other party of a database deadlock, working directly on the database (its
    /// `accounts` must have rows above 10, as `bank` makes): a transaction that has changed
    /// many rows (so that InnoDB picks the broker's lighter transaction as the deadlock
    /// victim) and holds row 2.
    pub async fn heavy_transaction_holding_row_2(&self) -> mysql_async::Conn {
        let mut heavy = self.conn().await;
        heavy.query_drop("START TRANSACTION").await.expect("begin");
        heavy
            .query_drop("UPDATE accounts SET balance = balance + 1 WHERE id > 10")
            .await
            .expect("many rows");
        heavy
            .query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
            .await
            .expect("row 2");
        heavy
    }

    pub async fn table_exists(&self, table: &str) -> bool {
        self.scalar(&format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = '{}' AND table_name = '{table}'",
            self.name
        ))
        .await
            > 0
    }

    /// A broker configuration pointing at this database, on a free port.
    pub fn config(&self) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            database_url: self.url.clone(),
            session_threads: 1,
            ..Config::default()
        }
    }

    /// The text of a config file for the `txbroker` binary pointing at this database, with
    /// `extra` lines (TOML) after it.
    pub fn config_file_text(&self, extra: &str) -> String {
        format!("database_url = \"{}\"\n{extra}\n", self.url)
    }
}

/// The bank the transfer tests share: `accounts` (ids from 1, one balance each) and a
/// `ledger` with one row per transfer, keyed by a client-chosen unique id.
pub const CREATE_ACCOUNTS: &str =
    "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB";
pub const CREATE_LEDGER: &str = "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, \
     from_id INT NOT NULL, to_id INT NOT NULL, amount BIGINT NOT NULL) ENGINE=InnoDB";

/// Inserts accounts 1..=rows, each with `balance`.
pub fn insert_accounts(rows: u32, balance: i64) -> String {
    let values: Vec<String> = (1..=rows).map(|id| format!("({id}, {balance})")).collect();
    format!("INSERT INTO accounts VALUES {}", values.join(","))
}

/// A database holding the bank: `rows` accounts with `balance` each and an empty ledger.
pub async fn bank(label: &str, rows: u32, balance: i64) -> TestDb {
    TestDb::create_with(
        label,
        &[
            CREATE_ACCOUNTS,
            CREATE_LEDGER,
            &insert_accounts(rows, balance),
        ],
    )
    .await
}

/// Closes the cycle once the broker's transaction holds row 1 and waits for row 2 (held by
/// `TestDb::heavy_transaction_holding_row_2`): the heavy transaction asks for row 1, survives
/// the deadlock, and commits.
pub async fn close_the_deadlock_and_commit(mut heavy: mysql_async::Conn) {
    heavy
        .query_drop("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        .await
        .expect("the heavy transaction survives the deadlock");
    heavy.query_drop("COMMIT").await.expect("commit");
}

/// Begins a transaction on `client` that declares `accounts:{id}` and updates that account
/// (`SET {set}`), and leaves it open: the key and the row lock stay held until it ends.
pub async fn begin_and_update_account(client: &Client, id: u64, set: &str) {
    client
        .begin(requests::with_keys(&[format!("accounts:{id}")]))
        .await
        .expect("begin");
    client
        .exec(
            &format!("UPDATE accounts SET {set} WHERE id = {id}"),
            vec![],
        )
        .await
        .expect("update");
}

/// A private database prepared with `statements`, a broker on it, and a client.
pub async fn setup(label: &str, statements: &[&str]) -> (TestDb, TestBroker, Client) {
    let db = TestDb::create_with(label, statements).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    (db, broker, client)
}

/// Runs `statements` on `conn`, then closes it.
pub async fn run_and_disconnect(mut conn: mysql_async::Conn, statements: &[&str]) {
    for sql in statements {
        conn.query_drop(*sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.disconnect().await.ok();
}

/// The integer `sql` returns on `conn`, which is then closed.
pub async fn scalar_and_disconnect(mut conn: mysql_async::Conn, sql: &str) -> i64 {
    let value: Option<i64> = conn.query_first(sql).await.expect(sql);
    conn.disconnect().await.ok();
    value.expect("query returns a row")
}

/// A broker running in a thread of its own, stopped (drained) when dropped.
pub struct TestBroker {
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, with `metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestBroker {
    pub fn start(config: Config) -> TestBroker {
        let (addr_sender, addr_receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let log = match std::env::var("TXBROKER_TEST_LOG") {
                    Ok(level) => logging::terminal(level.parse().unwrap_or(slog::Level::Debug)),
                    Err(_) => logging::discard(),
                };
                let broker = Broker::start(config, log).await.expect("broker starts");
                let addr = broker.local_addr().expect("the test broker listens");
                addr_sender
                    .send((addr, broker.metrics_addr()))
                    .expect("test waits for the address");
                let _ = stopped.await;
                broker.shutdown().await;
            });
        });
        let (addr, metrics_addr) = addr_receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("broker reports its address");
        TestBroker {
            addr,
            metrics_addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr)
            .await
            .expect("connect to the broker")
    }

    /// Sends `tx` from a client of its own, in a task: the task's handle, for `answered`.
    pub async fn send_tx(&self, tx: TxRequest) -> JoinHandle<Result<TxOutcome, ClientError>> {
        let client = self.client().await;
        tokio::spawn(async move { client.run_tx(tx).await })
    }

    /// Starts the drain and returns at once; the broker thread finishes on its own.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Drains and waits until the broker has stopped.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.begin_shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Polls `probe` until it returns true, failing the test after `limit`. For conditions that
/// are only observable by asking (a waiter queued in the coordinator, a row lock in InnoDB).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the broker's stats satisfy `condition`, for at most `PATIENCE`.
pub async fn stats_until(client: &Client, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = client.stats().await.expect("stats");
        if condition(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The answer of a request sent in a task (`TestBroker::send_tx`), within `PATIENCE`.
pub async fn answered<T>(sent: JoinHandle<Result<T, ClientError>>) -> Result<T, ClientError> {
    within("the request is answered", sent)
        .await
        .expect("the request's task")
}

/// Awaits `future`, failing the test if it takes longer than `PATIENCE`.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
