//! The benchmark's own database: its table, the reset before each run and the correctness
//! check after it. Every statement names the table with its database (`txbench.accounts`),
//! so a broker configured with any default database runs the same SQL.

use std::collections::HashMap;

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
    /// The database holding the table.
    pub database: String,
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
/// `tx` without one. With the binary log on, `Binlog_commits` counts the transactions written
/// to it and `Binlog_group_commits` the groups written (and, with `sync_binlog = 1`, synced)
/// at once: commits per group is the binary log's group commit.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerCounters {
    pub fsyncs: u64,
    pub binlog_commits: u64,
    pub binlog_group_commits: u64,
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

    /// The binary log's commits and group commits between `self` and `later`.
    pub fn binlog_since(&self, earlier: &ServerCounters) -> (u64, u64) {
        (
            self.binlog_commits.saturating_sub(earlier.binlog_commits),
            self.binlog_group_commits
                .saturating_sub(earlier.binlog_group_commits),
        )
    }
}

/// What the server is and how it is set up, read once at the start and printed with every run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServerInfo {
    /// `shared`, `private` or `binlog` (`--server`).
    pub kind: String,
    /// `host:port` of the URL.
    pub address: String,
    /// The private server's data directory.
    pub data_dir: Option<String>,
    pub version: String,
    pub log_bin: bool,
    pub sync_binlog: u64,
    pub innodb_flush_log_at_trx_commit: u64,
    pub innodb_buffer_pool_mib: u64,
    /// How the URL's connections should reach the server (mysql_async's rules).
    pub intended_transport: String,
}

impl ServerInfo {
    pub fn describe(&self) -> String {
        let log_bin = if self.log_bin {
            format!("log_bin ON, sync_binlog {}", self.sync_binlog)
        } else {
            "log_bin OFF".to_string()
        };
        format!(
            "{} MariaDB {} at {}: {log_bin}, innodb_flush_log_at_trx_commit {}, buffer pool {} MiB",
            self.kind,
            self.version,
            self.address,
            self.innodb_flush_log_at_trx_commit,
            self.innodb_buffer_pool_mib
        )
    }
}

/// How the connections to the benchmark's database reached the server, as the server saw
/// them (`information_schema.PROCESSLIST`: a Unix-socket client's host is `localhost`, a TCP
/// client's is `address:port`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Transport {
    pub tcp: u64,
    pub socket: u64,
}

impl Transport {
    /// Counts one connection by the `Host` the server shows for it.
    pub fn count(&mut self, host: &str) {
        if host.contains(':') {
            self.tcp += 1;
        } else {
            self.socket += 1;
        }
    }

    /// `TCP`, `Unix socket`, `MIXED` or `not seen`.
    pub fn kind(&self) -> &'static str {
        match (self.tcp, self.socket) {
            (0, 0) => "not seen",
            (_, 0) => "TCP",
            (0, _) => "Unix socket",
            _ => "MIXED",
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({} connections over TCP, {} over the Unix socket, as the server saw them)",
            self.kind(),
            self.tcp,
            self.socket
        )
    }
}

/// The database named in a URL's path (`txbench` when none), checked to be a plain name.
pub fn database_name(url: &str) -> Result<String, String> {
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
    Ok(database)
}

impl BenchDb {
    /// Creates the database and the table when they are missing or the wrong size.
    pub async fn prepare(url: &str, accounts: u32) -> Result<BenchDb, String> {
        let database = database_name(url)?;
        let given = Opts::from_url(url).map_err(|error| format!("bad --database-url: {error}"))?;
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
            database,
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

    /// Server-wide `Innodb_data_fsyncs`, `Binlog_commits` and `Binlog_group_commits`: every
    /// client of the server counts.
    pub async fn server_counters(&self) -> Result<ServerCounters, String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        let rows: Result<Vec<(String, u64)>, _> = conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Innodb_data_fsyncs', 'Binlog_commits', 'Binlog_group_commits')",
            )
            .await;
        let _ = conn.disconnect().await;
        let rows = rows.map_err(|error| format!("cannot read the status: {error}"))?;
        let value = |name: &str| {
            rows.iter()
                .find(|(variable, _)| variable.eq_ignore_ascii_case(name))
                .map(|(_, value)| *value)
        };
        Ok(ServerCounters {
            fsyncs: value("Innodb_data_fsyncs")
                .ok_or("the server has no Innodb_data_fsyncs status")?,
            binlog_commits: value("Binlog_commits").unwrap_or(0),
            binlog_group_commits: value("Binlog_group_commits").unwrap_or(0),
        })
    }

    /// The server's version and the settings that decide what a commit costs.
    pub async fn server_info(&self) -> Result<ServerInfo, String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        type Settings = (String, u64, u64, u64, u64);
        let row: Result<Option<Settings>, _> = conn
            .query_first(
                "SELECT @@version, @@log_bin, @@sync_binlog, \
                 @@innodb_flush_log_at_trx_commit, @@innodb_buffer_pool_size",
            )
            .await;
        let _ = conn.disconnect().await;
        let (version, log_bin, sync_binlog, flush, pool) = row
            .map_err(|error| format!("cannot read the server's settings: {error}"))?
            .ok_or("the server's settings: no row")?;
        Ok(ServerInfo {
            address: format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port()),
            version,
            log_bin: log_bin != 0,
            sync_binlog,
            innodb_flush_log_at_trx_commit: flush,
            innodb_buffer_pool_mib: pool / (1024 * 1024),
            ..ServerInfo::default()
        })
    }

    /// How the other connections to the benchmark's database reach the server right now.
    pub async fn transport(&self) -> Result<Transport, String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        let hosts: Result<Vec<String>, _> = conn
            .exec(
                "SELECT HOST FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND ID <> CONNECTION_ID()",
                (self.database.as_str(),),
            )
            .await;
        let _ = conn.disconnect().await;
        let mut transport = Transport::default();
        for host in hosts.map_err(|error| format!("cannot read the process list: {error}"))? {
            transport.count(&host);
        }
        Ok(transport)
    }

    /// Accounts whose balance is not the initial one, by id.
    pub async fn changed_balances(&self) -> Result<Vec<(u32, i64)>, String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        let rows: Result<Vec<(u32, i64)>, _> = conn
            .query(format!(
                "SELECT id, balance FROM {} WHERE balance <> {INITIAL_BALANCE} ORDER BY id",
                self.table
            ))
            .await;
        let _ = conn.disconnect().await;
        rows.map_err(|error| format!("cannot read {}: {error}", self.table))
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

/// Compares the balances that differ from the initial one with the net amount that the
/// committed transfers moved into (+) or out of (-) each account over the whole run. The sum
/// of balances cannot see a transfer lost or applied twice (either keeps the sum); this can.
pub fn balance_problems(moved: &HashMap<u32, i64>, changed: &[(u32, i64)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, balance) in changed {
        let expected = INITIAL_BALANCE + moved.get(id).copied().unwrap_or(0);
        if *balance != expected {
            problems.push(format!(
                "account {id} holds {balance}, its committed transfers give {expected}"
            ));
        }
    }
    let mut unchanged: Vec<(u32, i64)> = moved
        .iter()
        .filter(|(id, net)| **net != 0 && !changed.iter().any(|(changed, _)| changed == *id))
        .map(|(id, net)| (*id, *net))
        .collect();
    unchanged.sort_unstable();
    for (id, net) in unchanged {
        problems.push(format!(
            "account {id} holds {INITIAL_BALANCE}, its committed transfers give {}",
            INITIAL_BALANCE + net
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_must_match_the_committed_transfers() {
        let moved = HashMap::from([(1, -30), (50_001, 30)]);
        let good = [(1, INITIAL_BALANCE - 30), (50_001, INITIAL_BALANCE + 30)];
        assert!(balance_problems(&moved, &good).is_empty());
        // A transfer applied twice keeps the sum of balances, and is seen here.
        let doubled = [(1, INITIAL_BALANCE - 60), (50_001, INITIAL_BALANCE + 60)];
        assert_eq!(balance_problems(&moved, &doubled).len(), 2);
        // A committed transfer missing from the table, and a row no transfer touched.
        assert_eq!(balance_problems(&moved, &[]).len(), 2);
        assert_eq!(
            balance_problems(&HashMap::new(), &[(7, INITIAL_BALANCE + 1)]),
            vec![format!(
                "account 7 holds {}, its committed transfers give {INITIAL_BALANCE}",
                INITIAL_BALANCE + 1
            )]
        );
        // Transfers that cancel out leave the row at its initial balance, which is right.
        assert!(balance_problems(&HashMap::from([(3, 0)]), &[]).is_empty());
    }

    #[test]
    fn the_server_shows_tcp_clients_with_their_port() {
        let mut transport = Transport::default();
        for host in [
            "127.0.0.1:51234",
            "localhost:40000",
            "localhost",
            "[::1]:3306",
        ] {
            transport.count(host);
        }
        assert_eq!(transport, Transport { tcp: 3, socket: 1 });
        assert!(transport.describe().starts_with("MIXED"));
        assert!(Transport { tcp: 8, socket: 0 }
            .describe()
            .starts_with("TCP ("));
    }
}
