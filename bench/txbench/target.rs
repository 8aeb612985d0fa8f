//! The three ways a client can run the same operation: through the broker, or straight to
//! MariaDB with statements in the order given or sorted by id.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use txbroker::client::{new_idempotency_key, Client, ClientError, TxBuilder};
use txbroker::error::ErrorCode;

use crate::db::BenchDb;
use crate::workload::Op;

const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Through txbroker over TCP with the project's Rust client, keys declared.
    Broker,
    /// Like `broker`, each transaction carrying a fresh idempotency key (its outcome recorded).
    BrokerKeyed,
    /// mysql_async straight to MariaDB, statements in the order given, retry on 1213/1205.
    Direct,
    /// Like `direct`, statements in ascending id order.
    DirectSorted,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Broker => "broker",
            Target::BrokerKeyed => "broker-keyed",
            Target::Direct => "direct",
            Target::DirectSorted => "direct-sorted",
        }
    }
}

/// The SQL every target runs, with the table's qualified name filled in once.
#[derive(Clone, Debug)]
pub struct Sql {
    debit: String,
    credit: String,
    update: String,
    read: String,
}

impl Sql {
    pub fn new(table: &str) -> Sql {
        Sql {
            debit: format!("UPDATE {table} SET balance = balance - ? WHERE id = ?"),
            credit: format!("UPDATE {table} SET balance = balance + ? WHERE id = ?"),
            update: format!("UPDATE {table} SET updates = updates + 1 WHERE id = ?"),
            read: format!("SELECT balance FROM {table} WHERE id = ?"),
        }
    }
}

/// How one operation ended, after every attempt.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub committed: bool,
    pub attempts: u32,
    /// 1213 seen by this client (direct: every one; broker: only those left after its retries).
    pub deadlocks: u32,
    /// 1205 seen by this client, likewise.
    pub db_lock_timeouts: u32,
    /// The broker's own `lock_timeout` (a key not granted in time).
    pub lock_timeouts: u32,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The connection is unusable: the client stops.
    pub fatal: bool,
}

/// One client's connection.
pub enum Session {
    Broker(BrokerSession),
    Direct(DirectSession),
}

pub struct BrokerSession {
    client: Client,
    sql: Sql,
    key_width: usize,
    retries: u32,
    idempotency: Idempotency,
}

/// Whether a broker target's transactions carry idempotency keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    None,
    /// A fresh key per transaction, as a client that retries with keys sends them.
    FreshKeys,
}

pub struct DirectSession {
    conn: Option<Conn>,
    db: BenchDb,
    sql: Sql,
    sorted: bool,
    retries: u32,
}

impl Session {
    pub async fn broker(
        address: &str,
        db: &BenchDb,
        retries: u32,
        idempotency: Idempotency,
    ) -> Result<Session, ClientError> {
        let client = Client::connect(address).await?;
        Ok(Session::Broker(BrokerSession {
            client,
            sql: Sql::new(&db.table),
            key_width: key_width(db.accounts),
            retries,
            idempotency,
        }))
    }

    pub async fn direct(
        db: &BenchDb,
        sorted: bool,
        retries: u32,
    ) -> Result<Session, mysql_async::Error> {
        let conn = db.connect().await?;
        Ok(Session::Direct(DirectSession {
            conn: Some(conn),
            db: db.clone(),
            sql: Sql::new(&db.table),
            sorted,
            retries,
        }))
    }

    pub async fn run(&mut self, op: Op) -> Outcome {
        match self {
            Session::Broker(session) => session.run(op).await,
            Session::Direct(session) => session.run(op).await,
        }
    }

    pub async fn close(self) {
        match self {
            // Dropping the client closes the socket; the broker ends the session.
            Session::Broker(session) => drop(session.client),
            Session::Direct(session) => {
                if let Some(conn) = session.conn {
                    let _ = conn.disconnect().await;
                }
            }
        }
    }
}

/// Digits of the zero-padded id in a key, so that byte order is numeric order.
pub fn key_width(accounts: u32) -> usize {
    accounts.to_string().len().max(6)
}

pub fn account_key(id: u32, width: usize) -> String {
    format!("accounts:{id:0width$}")
}

impl BrokerSession {
    /// A `tx` builder, with a fresh idempotency key when the target sends them.
    fn tx(&self) -> TxBuilder<'_> {
        match self.idempotency {
            Idempotency::None => self.client.tx(),
            Idempotency::FreshKeys => self.client.tx().idempotency_key(new_idempotency_key()),
        }
    }

    async fn run(&mut self, op: Op) -> Outcome {
        let sql = &self.sql;
        let answer = match op {
            Op::Transfer { from, to, amount } => self
                .tx()
                .lock(account_key(from, self.key_width))
                .lock(account_key(to, self.key_width))
                .exec(sql.debit.as_str(), vec![amount.into(), from.into()])
                .exec(sql.credit.as_str(), vec![amount.into(), to.into()])
                .retries(self.retries)
                .run()
                .await
                .map(|outcome| outcome.attempts),
            Op::Update { id } => self
                .tx()
                .lock(account_key(id, self.key_width))
                .exec(sql.update.as_str(), vec![id.into()])
                .retries(self.retries)
                .run()
                .await
                .map(|outcome| outcome.attempts),
            // A point select needs no key: InnoDB reads it from a consistent snapshot.
            Op::Read { id } => self
                .client
                .exec(sql.read.as_str(), vec![id.into()])
                .await
                .map(|_| 1),
        };
        match answer {
            Ok(attempts) => Outcome {
                committed: true,
                attempts,
                ..Outcome::default()
            },
            Err(error) => {
                let mut outcome = Outcome {
                    attempts: 1,
                    error: Some(error.to_string()),
                    ..Outcome::default()
                };
                match error.code() {
                    Some(ErrorCode::Deadlock) => {
                        outcome.deadlocks = 1;
                        outcome.attempts = self.retries + 1;
                    }
                    Some(ErrorCode::DbLockTimeout) => {
                        outcome.db_lock_timeouts = 1;
                        outcome.attempts = self.retries + 1;
                    }
                    Some(ErrorCode::LockTimeout) => outcome.lock_timeouts = 1,
                    Some(_) => {}
                    None => outcome.fatal = true,
                }
                outcome
            }
        }
    }
}

impl DirectSession {
    async fn run(&mut self, op: Op) -> Outcome {
        if self.conn.is_none() {
            match self.db.connect().await {
                Ok(conn) => self.conn = Some(conn),
                Err(error) => {
                    return Outcome {
                        attempts: 1,
                        error: Some(format!("reconnect: {error}")),
                        fatal: true,
                        ..Outcome::default()
                    }
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            unreachable!("connected above");
        };
        let sql = &self.sql;
        let mut outcome = Outcome::default();
        let result = match op {
            Op::Read { id } => {
                outcome.attempts = 1;
                conn.exec_first::<i64, _, _>(sql.read.as_str(), (id,))
                    .await
                    .map(drop)
            }
            Op::Update { id } => {
                let statements = [(sql.update.as_str(), None, id)];
                run_with_retries(conn, &statements, self.retries, &mut outcome).await
            }
            Op::Transfer { from, to, amount } => {
                let mut statements = [
                    (sql.debit.as_str(), Some(amount), from),
                    (sql.credit.as_str(), Some(amount), to),
                ];
                if self.sorted && to < from {
                    statements.swap(0, 1);
                }
                run_with_retries(conn, &statements, self.retries, &mut outcome).await
            }
        };
        match result {
            Ok(()) => outcome.committed = true,
            Err(error) => {
                if server_code(&error).is_none() {
                    // Whatever broke the connection, the next operation connects anew.
                    self.conn = None;
                }
                outcome.error = Some(error.to_string());
            }
        }
        outcome
    }
}

fn server_code(error: &mysql_async::Error) -> Option<u16> {
    match error {
        mysql_async::Error::Server(error) => Some(error.code),
        _ => None,
    }
}

/// START TRANSACTION, the statements in order, COMMIT; on 1213 or 1205, ROLLBACK and run the
/// whole transaction again, up to `retries` more times, at once, as applications do.
async fn run_with_retries(
    conn: &mut Conn,
    statements: &[(&str, Option<i64>, u32)],
    retries: u32,
    outcome: &mut Outcome,
) -> Result<(), mysql_async::Error> {
    loop {
        outcome.attempts += 1;
        let error = match run_once(conn, statements).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let code = server_code(&error);
        match code {
            Some(ER_LOCK_DEADLOCK) => outcome.deadlocks += 1,
            Some(ER_LOCK_WAIT_TIMEOUT) => outcome.db_lock_timeouts += 1,
            _ => {}
        }
        if code.is_some() {
            // 1205 leaves the transaction open; every other error is rolled back too.
            conn.query_drop("ROLLBACK").await?;
        }
        let retryable = matches!(code, Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT));
        if !retryable || outcome.attempts > retries {
            return Err(error);
        }
    }
}

async fn run_once(
    conn: &mut Conn,
    statements: &[(&str, Option<i64>, u32)],
) -> Result<(), mysql_async::Error> {
    conn.query_drop("START TRANSACTION").await?;
    for (sql, amount, id) in statements {
        match amount {
            Some(amount) => conn.exec_drop(*sql, (*amount, *id)).await?,
            None => conn.exec_drop(*sql, (*id,)).await?,
        }
    }
    conn.query_drop("COMMIT").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_ids() {
        let width = key_width(100_000);
        let mut ids = [42u32, 7, 100_000, 999, 1];
        let mut keys: Vec<String> = ids.iter().map(|id| account_key(*id, width)).collect();
        keys.sort();
        ids.sort();
        let expected: Vec<String> = ids.iter().map(|id| account_key(*id, width)).collect();
        assert_eq!(keys, expected);
        assert_eq!(account_key(42, width), "accounts:000042");
    }
}
