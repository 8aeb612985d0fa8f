//! The database side of a session: one owned MySQL connection and the few things the broker
//! does with it (start, run, commit, roll back). This is the only module that imports
//! `mysql_async`; it maps the driver's values and errors onto the protocol's.
//!
//! The connection is a plain `Conn`, never a `mysql_async::Transaction`, because a session
//! keeps its transaction open across requests; the session tracks the transaction state
//! itself and this module never reconnects on its own in the middle of one.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::consts::{ColumnType, StatusFlags};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, Opts, OptsBuilder, Params, Row};

pub use crate::error::DbError;
use crate::error::{mysql_codes as codes, Conflict, DbFailure};
use crate::metrics::Metrics;
use crate::protocol::{Isolation, QueryResult, Statement, Value};
use crate::txn::TxMode;

/// The `binary` character set: columns in it hold bytes, not text.
const BINARY_CHARSET: u16 = 63;

/// A connection unused for longer than this is pinged before its next transaction: the server
/// may have restarted or dropped it meanwhile (`wait_timeout`, `KILL`), and finding out with a
/// ping is cheaper than answering `commit_unknown` for an autocommit statement.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// How to reach the database; shared by every session, cheap to clone.
#[derive(Clone, Debug)]
pub struct Database {
    opts: Opts,
    default_isolation: Isolation,
    /// Counts every deadlock the database reports, once, where its answer is read.
    metrics: Arc<Metrics>,
}

impl Database {
    /// `innodb_lock_wait_timeout_s` of 0 keeps the server's setting.
    pub fn new(
        url: &str,
        default_isolation: Isolation,
        innodb_lock_wait_timeout_s: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Database, DbError> {
        let opts = Opts::from_url(url)
            .map_err(|error| DbError::Unavailable(format!("bad database_url: {error}")))?;
        let mut init = vec![format!(
            "SET SESSION TRANSACTION ISOLATION LEVEL {}",
            default_isolation.as_sql()
        )];
        if innodb_lock_wait_timeout_s > 0 {
            init.push(format!(
                "SET SESSION innodb_lock_wait_timeout = {innodb_lock_wait_timeout_s}"
            ));
        }
        let opts = OptsBuilder::from_opts(opts)
            .init(init)
            .tcp_nodelay(true)
            .into();
        Ok(Database {
            opts,
            default_isolation,
            metrics,
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port())
    }

    /// Whether the server accepts a new connection and answers a ping within `patience`; the
    /// error says why not, for an operator.
    pub async fn answers(&self, patience: Duration) -> Result<(), String> {
        let attempt = async {
            let mut conn = Conn::new(self.opts.clone()).await?;
            let pinged = conn.ping().await;
            let _ = conn.disconnect().await;
            pinged
        };
        match tokio::time::timeout(patience, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} ms", patience.as_millis())),
        }
    }

    /// Completes once the connection `identity` is gone from the server: the server
    /// restarted since, or no longer lists it. One still listed is killed (nothing will ever
    /// be sent on it again: its session dropped it), so that whatever it ran is settled: a
    /// transaction it still had open rolls back and lets its row locks go. Until the database
    /// answers it keeps asking.
    pub async fn until_gone(&self, identity: ConnectionIdentity) {
        let mut pause = Duration::from_millis(10);
        loop {
            if let Ok(true) = self.is_gone(&identity).await {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(GONE_POLL_MAX);
        }
    }

    async fn is_gone(&self, identity: &ConnectionIdentity) -> Result<bool, mysql_async::Error> {
        let mut admin = Conn::new(self.opts.clone()).await?;
        let outcome = async {
            let uptime: Option<u64> = admin.query_first(UPTIME_SQL).await?;
            let since_connected = identity.connected.elapsed().as_secs();
            // Ids only grow while a server runs: a new connection with an id not above the
            // lost one's, or an uptime shorter than the lost one's age, means a restart since.
            let restarted = uptime.is_none_or(|uptime| uptime + 1 < since_connected)
                || admin.id() <= identity.id;
            if restarted {
                return Ok(true);
            }
            let listed: Option<String> = admin.exec_first(LISTED_SQL, (identity.id,)).await?;
            let Some(host) = listed else {
                return Ok(true);
            };
            if identity.client_port.is_some() && client_port(&host) != identity.client_port {
                // Another connection with its id: the server restarted since.
                return Ok(true);
            }
            // "Unknown thread id" if it went meanwhile: fine, the next look says so.
            let _ = admin
                .query_drop(format!("KILL CONNECTION {}", identity.id))
                .await;
            Ok(false)
        }
        .await;
        let _ = admin.disconnect().await;
        outcome
    }

    /// A session's connection slot, not yet connected.
    pub fn connection(&self) -> DbConnection {
        DbConnection {
            database: self.clone(),
            link: Link::Closed,
            deadline: None,
            time_in_database: Duration::ZERO,
            connections_opened: 0,
        }
    }
}

/// Which server connection a session had, so that it can be told gone after the session lost
/// it: the server's id for it, when it was made, and the client port the server saw it come
/// from. Ids start again after a restart, so an id names this connection only if the server
/// has been up since it was made; and a connection given the same id after a restart came
/// from another port (the server's uptime, in whole seconds, cannot tell a restart of a second
/// ago).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionIdentity {
    id: u32,
    connected: Instant,
    /// `None` over a Unix socket, or when the server did not say.
    client_port: Option<u16>,
}

/// How often `until_gone` looks again, at most.
const GONE_POLL_MAX: Duration = Duration::from_secs(1);

/// The server's uptime; its seconds and ours may differ by one.
const UPTIME_SQL: &str =
    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'";

/// Where the server lists a connection id as coming from (`ip:port` over TCP), if it lists it.
const LISTED_SQL: &str =
    "SELECT COALESCE(HOST, '') FROM information_schema.PROCESSLIST WHERE ID = ?";

/// Where the server lists this very connection as coming from.
const OWN_HOST_SQL: &str =
    "SELECT COALESCE(HOST, '') FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()";

/// The port of a `HOST` the server lists for a TCP client (`127.0.0.1:51234`, `[::1]:51234`).
fn client_port(host: &str) -> Option<u16> {
    host.rsplit_once(':')?.1.parse().ok()
}

/// The connection and what the session knows of its settings.
enum Link {
    Closed,
    Open {
        conn: Box<Conn>,
        identity: ConnectionIdentity,
        /// The session-level isolation of the connection, which the next transaction uses.
        isolation: Isolation,
        last_used: Instant,
        transaction: ServerTransaction,
    },
}

/// Whether a transaction may be open on the server: set by `START TRANSACTION` (or by a
/// statement found to have opened one), cleared by `COMMIT` or `ROLLBACK`. `rollback` sends
/// nothing when none may be open, so that ending a transaction that never started (an
/// autocommit statement, a wait for keys that failed) costs no round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerTransaction {
    None,
    MaybeOpen,
}

/// One session's exclusive database connection, connected on demand.
pub struct DbConnection {
    database: Database,
    link: Link,
    /// When the open transaction must be over (`max_tx_duration_ms`); bounds every operation.
    deadline: Option<Instant>,
    /// Time spent waiting for the server since last taken, for the transaction metrics.
    time_in_database: Duration,
    /// Connections this session has opened, so that a new one is known as a replacement.
    connections_opened: u64,
}

impl DbConnection {
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Open { .. })
    }

    /// Bounds every following operation until cleared: one that would end past `deadline`
    /// is abandoned with `DeadlineExceeded`.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The time spent waiting for the server since the last call.
    pub fn take_time_in_database(&mut self) -> Duration {
        std::mem::take(&mut self.time_in_database)
    }

    /// Which server connection this is, while there is one.
    pub fn identity(&self) -> Option<ConnectionIdentity> {
        match &self.link {
            Link::Open { identity, .. } => Some(*identity),
            Link::Closed => None,
        }
    }

    /// `statement` as text with its parameters written in at `placeholders` (the byte offsets
    /// of its `?`), so that several statements can go in one round trip; `None` when a value
    /// has no literal or the placeholders do not match the parameters.
    pub fn render(&self, statement: &Statement, placeholders: &[usize]) -> Option<String> {
        let Link::Open { conn, .. } = &self.link else {
            return None;
        };
        let status = conn.last_ok_packet()?.status_flags();
        let literals = if status.contains(StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES) {
            LiteralStyle::NoBackslashEscapes
        } else {
            LiteralStyle::BackslashEscapes
        };
        if placeholders.len() != statement.params.len() {
            return None;
        }
        let mut text = String::with_capacity(statement.sql.len() + 8 * placeholders.len());
        let mut from = 0;
        for (at, value) in placeholders.iter().zip(&statement.params) {
            text.push_str(statement.sql.get(from..*at)?);
            text.push_str(&literal(value, literals)?);
            from = at + 1;
        }
        text.push_str(statement.sql.get(from..)?);
        Some(text)
    }

    /// Runs `statements` (each complete, as `render` writes them) as one multi-statement text
    /// query inside the open transaction: one round trip. The server runs them in order and
    /// stops at the first that fails, so the answer is the results of those that ran and the
    /// error of the one after them, if any.
    pub async fn execute_script(
        &mut self,
        statements: &[String],
    ) -> (Vec<QueryResult>, Option<DbError>) {
        match self.execute_script_anywhere(statements).await {
            (results, None) if !self.server_in_transaction() => {
                (results, Some(DbError::TransactionEnded))
            }
            outcome => outcome,
        }
    }

    /// `execute_script` for statements that neither need nor touch a transaction (named
    /// locks), which may run with or without one open.
    pub async fn execute_script_anywhere(
        &mut self,
        statements: &[String],
    ) -> (Vec<QueryResult>, Option<DbError>) {
        self.run_script_bounded(statements, &mut |_| {}).await
    }

    /// Runs `statements`, a whole transaction from its `START TRANSACTION` to its `COMMIT`, as
    /// one multi-statement query. The server answers each statement as soon as it has run it,
    /// so `reached` is called once the first `reached_after` answers are in, while the rest
    /// (`COMMIT` among them) still runs. A script that stops early may leave the transaction
    /// open, to be rolled back.
    pub async fn execute_transaction_script(
        &mut self,
        statements: &[String],
        reached_after: usize,
        reached: impl FnOnce() + Send,
    ) -> (Vec<QueryResult>, Option<DbError>) {
        self.set_server_transaction(ServerTransaction::MaybeOpen);
        let mut reached = Some(reached);
        let mut on_read = |read: usize| {
            if read == reached_after {
                if let Some(reached) = reached.take() {
                    reached();
                }
            }
        };
        let outcome = self.run_script_bounded(statements, &mut on_read).await;
        if outcome.1.is_none() && !self.server_in_transaction() {
            self.set_server_transaction(ServerTransaction::None);
        }
        outcome
    }

    /// `statements` in one round trip, within the deadline; `on_read` is told how many
    /// answers are in after each.
    async fn run_script_bounded(
        &mut self,
        statements: &[String],
        on_read: &mut (dyn FnMut(usize) + Send),
    ) -> (Vec<QueryResult>, Option<DbError>) {
        // A line break first ends a `--` or `#` comment a statement may end with.
        let script = statements.join("\n;\n");
        let deadline = self.deadline;
        match within(
            deadline,
            self.run_script(&script, statements.len(), on_read),
        )
        .await
        {
            Some((results, Some(error))) => (results, Some(self.failed(error))),
            Some((results, None)) => (results, None),
            None => {
                self.abandon();
                (Vec::new(), Some(DbError::DeadlineExceeded))
            }
        }
    }

    async fn run_script(
        &mut self,
        script: &str,
        statements: usize,
        on_read: &mut (dyn FnMut(usize) + Send),
    ) -> (Vec<QueryResult>, Option<mysql_async::Error>) {
        let started = Instant::now();
        let outcome = self.read_script(script, statements, on_read).await;
        self.time_in_database += started.elapsed();
        outcome
    }

    async fn read_script(
        &mut self,
        script: &str,
        statements: usize,
        on_read: &mut (dyn FnMut(usize) + Send),
    ) -> (Vec<QueryResult>, Option<mysql_async::Error>) {
        let mut results = Vec::new();
        let conn = match self.conn() {
            Ok(conn) => conn,
            Err(_) => {
                return (
                    results,
                    Some(mysql_async::Error::Driver(
                        mysql_async::DriverError::ConnectionClosed,
                    )),
                )
            }
        };
        let mut result = match conn.query_iter(script).await {
            Ok(result) => result,
            Err(error) => return (results, Some(error)),
        };
        // Each statement's answer is there once the one before is read. The driver keeps a
        // statement's error until its answer is asked for, so a statement failed when
        // collecting its rows does.
        for _ in 0..statements {
            let columns = result.columns();
            // Read before the rows: collecting them moves on to the next statement's answer.
            let affected = result.affected_rows();
            let last_insert_id = result.last_insert_id().filter(|id| *id != 0);
            let rows: Vec<Row> = match result.collect().await {
                Ok(rows) => rows,
                Err(error) => return (results, Some(error)),
            };
            let has_rows = columns.as_ref().is_some_and(|columns| !columns.is_empty());
            results.push(query_result(
                columns,
                rows,
                if has_rows { 0 } else { affected },
                last_insert_id,
            ));
            on_read(results.len());
        }
        (results, None)
    }

    /// `SAVEPOINT name`, inside the open transaction.
    pub async fn savepoint(&mut self, name: &str) -> Result<(), DbError> {
        self.run_bounded(&format!("SAVEPOINT {name}")).await
    }

    /// `ROLLBACK TO SAVEPOINT name`: undoes what ran since, the transaction stays open.
    pub async fn rollback_to_savepoint(&mut self, name: &str) -> Result<(), DbError> {
        self.run_bounded(&format!("ROLLBACK TO SAVEPOINT {name}"))
            .await
    }

    /// Drops the connection after an abandoned operation and kills what it was running.
    /// The kill checks first that the server has not restarted since the connection was made:
    /// ids start again after a restart, and a `KILL` by id would then end a stranger's.
    fn abandon(&mut self) {
        if let Link::Open { conn, identity, .. } = std::mem::replace(&mut self.link, Link::Closed) {
            drop(conn);
            let database = self.database.clone();
            tokio::spawn(async move {
                let _ = database.is_gone(&identity).await;
            });
        }
    }

    /// Connects if there is no connection, or if the one there has been idle a while and no
    /// longer answers a ping. Only ever called between transactions.
    pub async fn ensure_connected(&mut self) -> Result<(), DbError> {
        self.ensure_live(STALE_AFTER).await
    }

    /// Like `ensure_connected`, pinging a connection idle for longer than `idle_limit`.
    pub async fn ensure_live(&mut self, idle_limit: Duration) -> Result<(), DbError> {
        let started = Instant::now();
        let outcome = self.connect_unless_live(idle_limit).await;
        self.time_in_database += started.elapsed();
        outcome
    }

    async fn connect_unless_live(&mut self, idle_limit: Duration) -> Result<(), DbError> {
        if let Link::Open {
            conn, last_used, ..
        } = &mut self.link
        {
            if last_used.elapsed() < idle_limit || conn.ping().await.is_ok() {
                *last_used = Instant::now();
                return Ok(());
            }
            self.link = Link::Closed;
        }
        let metrics = &self.database.metrics;
        let mut conn = match Conn::new(self.database.opts.clone()).await {
            Ok(conn) => conn,
            Err(error) => {
                metrics.database_connect_failed();
                return Err(unavailable(&self.database, error));
            }
        };
        // Only for telling this connection from a stranger later (`is_gone`): not fatal.
        let own_host: Option<String> = conn.query_first(OWN_HOST_SQL).await.unwrap_or(None);
        metrics.database_connected(self.connections_opened > 0);
        self.connections_opened += 1;
        self.link = Link::Open {
            identity: ConnectionIdentity {
                id: conn.id(),
                connected: Instant::now(),
                client_port: own_host.as_deref().and_then(client_port),
            },
            conn: Box::new(conn),
            isolation: self.database.default_isolation,
            last_used: Instant::now(),
            transaction: ServerTransaction::None,
        };
        Ok(())
    }

    /// `START TRANSACTION`, after setting the isolation level when it differs.
    pub async fn begin(
        &mut self,
        isolation: Option<Isolation>,
        read_only: bool,
    ) -> Result<(), DbError> {
        self.set_isolation(isolation).await?;
        self.set_server_transaction(ServerTransaction::MaybeOpen);
        self.run_bounded(if read_only {
            "START TRANSACTION READ ONLY"
        } else {
            "START TRANSACTION"
        })
        .await
    }

    fn set_server_transaction(&mut self, state: ServerTransaction) {
        if let Link::Open { transaction, .. } = &mut self.link {
            *transaction = state;
        }
    }

    fn server_transaction(&self) -> ServerTransaction {
        match &self.link {
            Link::Open { transaction, .. } => *transaction,
            Link::Closed => ServerTransaction::None,
        }
    }

    /// Sets the session's isolation level for the next transaction, when it differs from
    /// the level the connection has (`None`: the configured default).
    pub async fn set_isolation(&mut self, isolation: Option<Isolation>) -> Result<(), DbError> {
        let wanted = isolation.unwrap_or(self.database.default_isolation);
        let current = match &self.link {
            Link::Open { isolation, .. } => *isolation,
            Link::Closed => return Err(not_connected()),
        };
        if current != wanted {
            self.run(&format!(
                "SET SESSION TRANSACTION ISOLATION LEVEL {}",
                wanted.as_sql()
            ))
            .await?;
            if let Link::Open { isolation, .. } = &mut self.link {
                *isolation = wanted;
            }
        }
        Ok(())
    }

    pub async fn commit(&mut self) -> Result<(), DbError> {
        self.run_bounded("COMMIT").await?;
        self.set_server_transaction(ServerTransaction::None);
        Ok(())
    }

    /// `COMMIT`, sent in one round trip after `statement`, a complete statement of the
    /// broker's own (the idempotency records of the transaction). When `statement` fails, the
    /// server runs no `COMMIT` and the transaction stays open, to be rolled back.
    pub async fn commit_after(&mut self, statement: &str) -> Result<(), DbError> {
        self.run_bounded(&format!("{statement};\nCOMMIT")).await?;
        self.set_server_transaction(ServerTransaction::None);
        Ok(())
    }

    /// `ROLLBACK`, when a transaction may be open; a connection already gone counts as rolled
    /// back, since the server rolls back what a lost connection had open.
    pub async fn rollback(&mut self) -> Result<(), DbError> {
        if self.server_transaction() == ServerTransaction::None {
            return Ok(());
        }
        match self.run("ROLLBACK").await {
            Err(DbError::ConnectionLost(_)) => Ok(()),
            Err(error) => Err(error),
            Ok(()) => {
                self.set_server_transaction(ServerTransaction::None);
                Ok(())
            }
        }
    }

    /// Whether the server says a transaction is open on this connection, per its last reply.
    pub fn server_in_transaction(&self) -> bool {
        match &self.link {
            Link::Open { conn, .. } => conn.last_ok_packet().is_some_and(|ok| {
                ok.status_flags()
                    .contains(StatusFlags::SERVER_STATUS_IN_TRANS)
            }),
            Link::Closed => false,
        }
    }

    /// Runs one statement as a prepared statement (cached per connection), reads its whole
    /// result, and checks that the server's transaction state is still the one `mode` says.
    pub async fn execute(
        &mut self,
        statement: &Statement,
        mode: TxMode,
    ) -> Result<QueryResult, DbError> {
        let deadline = self.deadline;
        let result = match within(deadline, self.execute_statement(statement)).await {
            Some(outcome) => outcome?,
            None => {
                self.abandon();
                return Err(DbError::DeadlineExceeded);
            }
        };
        match (mode, self.server_in_transaction()) {
            (TxMode::InTransaction, true) | (TxMode::Autocommit, false) => Ok(result),
            (TxMode::InTransaction, false) => Err(DbError::TransactionEnded),
            (TxMode::Autocommit, true) => {
                self.set_server_transaction(ServerTransaction::MaybeOpen);
                self.rollback().await?;
                Err(DbError::Rejected(
                    "the statement opened a transaction; it was rolled back: use the begin op"
                        .to_string(),
                ))
            }
        }
    }

    async fn execute_statement(&mut self, statement: &Statement) -> Result<QueryResult, DbError> {
        let started = Instant::now();
        let outcome = self.prepare_and_execute(statement).await;
        self.time_in_database += started.elapsed();
        outcome
    }

    async fn prepare_and_execute(&mut self, statement: &Statement) -> Result<QueryResult, DbError> {
        let prepared = match self.conn()?.prep(statement.sql.as_str()).await {
            Ok(prepared) => prepared,
            Err(mysql_async::Error::Server(error))
                if error.code == codes::UNSUPPORTED_IN_PREPARED && statement.params.is_empty() =>
            {
                let outcome = match self.conn()?.query_iter(statement.sql.as_str()).await {
                    Ok(result) => read_result(result).await,
                    Err(error) => Err(error),
                };
                return outcome.map_err(|error| self.failed(error));
            }
            // A statement that could not even be prepared never ran: say "unavailable", not
            // "lost", so that nobody has to wonder whether it took effect.
            Err(error) => {
                return Err(match self.failed(error) {
                    DbError::ConnectionLost(message) => DbError::Unavailable(message),
                    other => other,
                })
            }
        };
        // The driver closes the connection on a parameter count it refuses, so the count is
        // checked here, before anything is sent.
        if usize::from(prepared.num_params()) != statement.params.len() {
            return Err(DbError::Rejected(format!(
                "the statement takes {} parameter(s) but {} were given",
                prepared.num_params(),
                statement.params.len()
            )));
        }
        let params = if statement.params.is_empty() {
            Params::Empty
        } else {
            Params::Positional(statement.params.iter().map(to_mysql).collect())
        };
        let outcome = match self.conn()?.exec_iter(prepared, params).await {
            Ok(result) => read_result(result).await,
            Err(error) => Err(error),
        };
        outcome.map_err(|error| self.failed(error))
    }

    /// Closes the connection politely; the server rolls back anything still open.
    pub async fn disconnect(&mut self) {
        if let Link::Open { conn, .. } = std::mem::replace(&mut self.link, Link::Closed) {
            let _ = conn.disconnect().await;
        }
    }

    async fn run_bounded(&mut self, sql: &str) -> Result<(), DbError> {
        let deadline = self.deadline;
        match within(deadline, self.run(sql)).await {
            Some(outcome) => outcome,
            None => {
                self.abandon();
                Err(DbError::DeadlineExceeded)
            }
        }
    }

    async fn run(&mut self, sql: &str) -> Result<(), DbError> {
        let started = Instant::now();
        let outcome = self.conn()?.query_drop(sql).await;
        self.time_in_database += started.elapsed();
        outcome.map_err(|error| self.failed(error))
    }

    fn conn(&mut self) -> Result<&mut Conn, DbError> {
        match &mut self.link {
            Link::Open {
                conn, last_used, ..
            } => {
                *last_used = Instant::now();
                Ok(conn)
            }
            Link::Closed => Err(not_connected()),
        }
    }

    /// Maps a driver error, counts a deadlock, and forgets the connection when the error
    /// broke it.
    fn failed(&mut self, error: mysql_async::Error) -> DbError {
        let mapped = map_error(error);
        match &mapped {
            DbError::ConnectionLost(_) => {
                self.database.metrics.database_connection_lost();
                self.link = Link::Closed;
            }
            error if error.conflict() == Some(Conflict::Deadlock) => {
                self.database.metrics.deadlock_reported()
            }
            _ => {}
        }
        mapped
    }
}

/// `operation`'s outcome, or `None` when `deadline` passed first (the operation is dropped).
async fn within<T>(
    deadline: Option<Instant>,
    operation: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), operation)
            .await
            .ok(),
        None => Some(operation.await),
    }
}

/// How a string literal escapes, per the connection's `sql_mode`, which the server reports
/// in the status flags of every answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LiteralStyle {
    BackslashEscapes,
    NoBackslashEscapes,
}

/// `value` as an SQL literal that the server reads as it reads the same value sent as a
/// prepared statement's parameter; `None` when there is none (a float that is not finite,
/// bytes that are not UTF-8, which a text query cannot carry).
fn literal(value: &Value, style: LiteralStyle) -> Option<String> {
    match value {
        // An exponent makes it a DOUBLE, as the parameter is, not a DECIMAL.
        Value::Float(f) if f.is_finite() => Some(format!("{:e}", f64::from(*f))),
        Value::Double(f) if f.is_finite() => Some(format!("{f:e}")),
        Value::Float(_) | Value::Double(_) => None,
        Value::Bytes(bytes) if std::str::from_utf8(bytes).is_err() => None,
        other => Some(to_mysql(other).as_sql(style == LiteralStyle::NoBackslashEscapes)),
    }
}

fn not_connected() -> DbError {
    DbError::ConnectionLost("no database connection".to_string())
}

fn unavailable(database: &Database, error: mysql_async::Error) -> DbError {
    let address = database.address();
    DbError::Unavailable(match error {
        mysql_async::Error::Server(error) if error.code == codes::TOO_MANY_CONNECTIONS => format!(
            "{address} refused the connection: too many connections (mysql 1040, max_connections reached)"
        ),
        mysql_async::Error::Server(error) => {
            format!("{address} refused the connection: {} (mysql {})", error.message, error.code)
        }
        other => format!("cannot connect to {address}: {other}"),
    })
}

fn map_error(error: mysql_async::Error) -> DbError {
    match error {
        mysql_async::Error::Server(error)
            if matches!(
                error.code,
                codes::SERVER_SHUTDOWN | codes::CONNECTION_KILLED
            ) =>
        {
            DbError::ConnectionLost(format!("{} (mysql {})", error.message, error.code))
        }
        mysql_async::Error::Server(error) => DbError::Server(DbFailure {
            mysql_code: error.code,
            sqlstate: error.state,
            message: error.message,
            statement: None,
        }),
        // The driver drops the connection on every error that is not the server's.
        other => DbError::ConnectionLost(format!("database connection lost: {other}")),
    }
}

async fn read_result<P: mysql_async::prelude::Protocol>(
    mut result: mysql_async::QueryResult<'_, 'static, P>,
) -> Result<QueryResult, mysql_async::Error> {
    let columns = result.columns();
    let rows: Vec<Row> = result.collect().await?;
    let converted = query_result(
        columns,
        rows,
        result.affected_rows(),
        result.last_insert_id().filter(|id| *id != 0),
    );
    // A procedure call may leave more result sets; the protocol reports the first.
    result.drop_result().await?;
    Ok(converted)
}

fn query_result(
    columns: Option<Arc<[Column]>>,
    rows: Vec<Row>,
    affected: u64,
    last_insert_id: Option<u64>,
) -> QueryResult {
    let mut query_result = QueryResult {
        affected,
        last_insert_id,
        columns: Vec::new(),
        rows: Vec::with_capacity(rows.len()),
    };
    if let Some(columns) = columns {
        query_result.columns = columns.iter().map(|c| c.name_str().into_owned()).collect();
        for row in rows {
            let cells = row.unwrap_raw();
            query_result.rows.push(
                cells
                    .into_iter()
                    .zip(columns.iter())
                    .map(|(cell, column)| {
                        from_mysql(cell.unwrap_or(mysql_async::Value::NULL), column)
                    })
                    .collect(),
            );
        }
    }
    query_result
}

fn to_mysql(value: &Value) -> mysql_async::Value {
    match value {
        Value::Null => mysql_async::Value::NULL,
        Value::Bool(b) => mysql_async::Value::Int(i64::from(*b)),
        Value::Int(n) => mysql_async::Value::Int(*n),
        Value::UInt(n) => mysql_async::Value::UInt(*n),
        Value::Float(f) => mysql_async::Value::Float(*f),
        Value::Double(f) => mysql_async::Value::Double(*f),
        Value::Text(text) => mysql_async::Value::Bytes(text.as_bytes().to_vec()),
        Value::Bytes(bytes) => mysql_async::Value::Bytes(bytes.clone()),
    }
}

/// Maps a column value to the protocol's value, by the column's type and character set.
fn from_mysql(value: mysql_async::Value, column: &Column) -> Value {
    use mysql_async::Value as My;
    match value {
        My::NULL => Value::Null,
        My::Int(n) => Value::Int(n),
        My::UInt(n) => Value::UInt(n),
        My::Float(f) => Value::Float(f),
        My::Double(f) => Value::Double(f),
        My::Date(year, month, day, hour, minute, second, micros) => {
            let mut text = format!("{year:04}-{month:02}-{day:02}");
            if column.column_type() != ColumnType::MYSQL_TYPE_DATE {
                let _ = write!(text, " {hour:02}:{minute:02}:{second:02}");
                push_micros(&mut text, micros);
            }
            Value::Text(text)
        }
        My::Time(negative, days, hours, minutes, seconds, micros) => {
            let hours = u64::from(days) * 24 + u64::from(hours);
            let sign = if negative { "-" } else { "" };
            let mut text = format!("{sign}{hours:02}:{minutes:02}:{seconds:02}");
            push_micros(&mut text, micros);
            Value::Text(text)
        }
        My::Bytes(bytes) => bytes_value(bytes, column),
    }
}

fn push_micros(text: &mut String, micros: u32) {
    if micros != 0 {
        let _ = write!(text, ".{micros:06}");
    }
}

/// Text protocol results and string-like columns arrive as bytes: integers and floats are
/// parsed back (text protocol only), binary columns stay bytes, the rest is text.
fn bytes_value(bytes: Vec<u8>, column: &Column) -> Value {
    use ColumnType::*;
    let parsed = || std::str::from_utf8(&bytes).ok().map(str::trim);
    match column.column_type() {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_INT24
        | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_YEAR => {
            if let Some(value) = parsed().and_then(|text| {
                text.parse::<i64>()
                    .map(Value::Int)
                    .or_else(|_| text.parse::<u64>().map(Value::UInt))
                    .ok()
            }) {
                return value;
            }
        }
        MYSQL_TYPE_FLOAT => {
            if let Some(f) = parsed().and_then(|text| text.parse::<f32>().ok()) {
                return Value::Float(f);
            }
        }
        MYSQL_TYPE_DOUBLE => {
            if let Some(f) = parsed().and_then(|text| text.parse::<f64>().ok()) {
                return Value::Double(f);
            }
        }
        MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_JSON => {}
        _ if column.character_set() == BINARY_CHARSET => return Value::Bytes(bytes),
        _ => {}
    }
    match String::from_utf8(bytes) {
        Ok(text) => Value::Text(text),
        Err(error) => Value::Bytes(error.into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::client_port;

    #[test]
    fn the_client_port_is_read_from_the_host_the_server_lists() {
        assert_eq!(client_port("127.0.0.1:51234"), Some(51234));
        assert_eq!(client_port("[::1]:40000"), Some(40000));
        assert_eq!(client_port("localhost"), None, "a Unix socket has no port");
        assert_eq!(client_port(""), None);
    }
}
