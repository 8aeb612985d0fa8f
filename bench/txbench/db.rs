//! The benchmark's own database: its table, the reset before each run and the correctness
//! check after it. Every statement names the table with its database (`txbench.accounts`),
//! so a broker configured with any default database runs the same SQL.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::workload::INITIAL_BALANCE;

/// `innodb_lock_wait_timeout` of the direct targets' connections, in seconds: the same as
/// the broker's default `innodb_lock_wait_timeout_s`, so both wait equally long.
pub const DIRECT_LOCK_WAIT_TIMEOUT_S: u64 = 10;

/// Rows inserted per statement while filling the table.
const INSERT_BATCH: u32 = 5_000;

#[derive(Clone, Debug)]
pub struct BenchDb {
    /// The URL as given: the broker's sessions connect with it.
    pub url: String,
    /// Options of the direct targets' connections.
    pub opts: Opts,
    /// `database.accounts`, quoted, ready to paste into SQL.
    pub table: String,
    pub accounts: u32,
}

/// What the table holds after a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub rows: u64,
    pub balance_sum: i64,
    pub negative: u64,
    pub updates_sum: u64,
}

impl Totals {
    pub fn expected_balance_sum(accounts: u32) -> i64 {
        i64::from(accounts) * INITIAL_BALANCE
    }
}

/// The server's count of fsyncs, for commits per flush: InnoDB fits the commits that arrive
/// while one redo-log flush runs into the next one (group commit). Counted per transaction the
/// clients committed rather than per `COMMIT` statement, since the broker commits a one-write
/// `tx` without one.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerCounters {
    pub fsyncs: u64,
}

impl ServerCounters {
    /// Flushes between `self` and `later` per transaction committed meanwhile; NaN when none.
    pub fn fsyncs_per_tx(&self, later: &ServerCounters, committed: u64) -> f64 {
        let fsyncs = later.fsyncs.saturating_sub(self.fsyncs);
        if committed == 0 {
            f64::NAN
        } else {
            fsyncs as f64 / committed as f64
        }
    }
}

impl BenchDb {
    /// Creates the database and the table when they are missing or the wrong size.
    pub async fn prepare(url: &str, accounts: u32) -> Result<BenchDb, String> {
        let given = Opts::from_url(url).map_err(|error| format!("bad --database-url: {error}"))?;
        let database = given.db_name().unwrap_or("txbench").to_string();
        if database.is_empty()
            || !database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "database name {database:?} must be letters, digits and _"
            ));
        }
        let admin_opts: Opts = OptsBuilder::from_opts(given.clone())
            .db_name(None::<String>)
            .into();
        let mut admin = Conn::new(admin_opts)
            .await
            .map_err(|error| format!("cannot connect to {url}: {error}"))?;
        let table = format!("`{database}`.`accounts`");
        let prepared = async {
            admin
                .query_drop(format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
                .await?;
            let columns: Option<u64> = admin
                .query_first(format!(
                    "SELECT COUNT(*) FROM information_schema.columns \
                     WHERE table_schema = '{database}' AND table_name = 'accounts' \
                     AND column_name IN ('id', 'balance', 'updates')"
                ))
                .await?;
            let mut ready = false;
            if columns == Some(3) {
                let shape: Option<(u64, Option<i64>, Option<i64>)> = admin
                    .query_first(format!("SELECT COUNT(*), MIN(id), MAX(id) FROM {table}"))
                    .await?;
                ready = matches!(shape, Some((count, Some(1), Some(max)))
                    if count == u64::from(accounts) && max == i64::from(accounts));
            }
            if !ready {
                eprintln!("txbench: creating {table} with {accounts} accounts");
                admin
                    .query_drop(format!("DROP TABLE IF EXISTS {table}"))
                    .await?;
                admin
                    .query_drop(format!(
                        "CREATE TABLE {table} (\
                         id INT NOT NULL PRIMARY KEY, \
                         balance BIGINT NOT NULL, \
                         updates BIGINT NOT NULL DEFAULT 0, \
                         CONSTRAINT balance_not_negative CHECK (balance >= 0)\
                         ) ENGINE=InnoDB"
                    ))
                    .await?;
                let mut start = 1;
                while start <= accounts {
                    let end = (start + INSERT_BATCH - 1).min(accounts);
                    let values: Vec<String> = (start..=end)
                        .map(|id| format!("({id},{INITIAL_BALANCE})"))
                        .collect();
                    admin
                        .query_drop(format!(
                            "INSERT INTO {table} (id, balance) VALUES {}",
                            values.join(",")
                        ))
                        .await?;
                    start = end + 1;
                }
            }
            Ok::<_, mysql_async::Error>(())
        }
        .await;
        let _ = admin.disconnect().await;
        prepared.map_err(|error| format!("cannot prepare {table}: {error}"))?;
        let opts = OptsBuilder::from_opts(given)
            .init(vec![format!(
                "SET SESSION innodb_lock_wait_timeout = {DIRECT_LOCK_WAIT_TIMEOUT_S}"
            )])
            .tcp_nodelay(true)
            .into();
        Ok(BenchDb {
            url: url.to_string(),
            opts,
            table,
            accounts,
        })
    }

    pub async fn connect(&self) -> Result<Conn, mysql_async::Error> {
        Conn::new(self.opts.clone()).await
    }

    /// Puts every account back to its initial balance and zero updates.
    pub async fn reset(&self) -> Result<(), String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        let outcome = conn
            .query_drop(format!(
                "UPDATE {} SET balance = {INITIAL_BALANCE}, updates = 0 \
                 WHERE balance <> {INITIAL_BALANCE} OR updates <> 0",
                self.table
            ))
            .await;
        let _ = conn.disconnect().await;
        outcome.map_err(|error| format!("cannot reset {}: {error}", self.table))
    }

    /// Server-wide `Innodb_data_fsyncs`: every client of the server counts.
    pub async fn server_counters(&self) -> Result<ServerCounters, String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        let row: Result<Option<(String, u64)>, _> = conn
            .query_first("SHOW GLOBAL STATUS WHERE Variable_name = 'Innodb_data_fsyncs'")
            .await;
        let _ = conn.disconnect().await;
        match row.map_err(|error| format!("cannot read the status: {error}"))? {
            Some((_, fsyncs)) => Ok(ServerCounters { fsyncs }),
            None => Err("the server has no Innodb_data_fsyncs status".to_string()),
        }
    }

    pub async fn totals(&self) -> Result<Totals, String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        let row: Result<Option<(u64, i64, u64, u64)>, _> = conn
            .query_first(format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(balance), 0) AS SIGNED), \
                 CAST(COALESCE(SUM(balance < 0), 0) AS UNSIGNED), \
                 CAST(COALESCE(SUM(updates), 0) AS UNSIGNED) FROM {}",
                self.table
            ))
            .await;
        let _ = conn.disconnect().await;
        let (rows, balance_sum, negative, updates_sum) = row
            .map_err(|error| format!("cannot read {}: {error}", self.table))?
            .unwrap_or_default();
        Ok(Totals {
            rows,
            balance_sum,
            negative,
            updates_sum,
        })
    }
}
