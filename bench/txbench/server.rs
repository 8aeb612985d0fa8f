//! Which MariaDB a run measures (`--server`): the shared one at `--database-url`, or a private
//! `mariadbd` that txbench starts for the run with tests/private_mariadb (a fresh data
//! directory from `mariadb-install-db`, a free port on 127.0.0.1, readiness observed with a
//! deadline) and kills and removes when it ends, also on an error or Ctrl-C.

use mysql_async::Opts;

use crate::db;
use crate::private_mariadb::PrivateMariaDb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// The server at --database-url.
    Shared,
    /// A private mariadbd with the defaults (binary log off).
    Private,
    /// A private mariadbd with --log-bin --sync-binlog=1 --server-id=1.
    Binlog,
}

/// Options of every private server on top of tests/private_mariadb's (which are made for
/// quick tests, later options win): a buffer pool that holds the 100 000-row table, and the
/// default redo log size of MariaDB 10.11 rather than the tests' 8 MiB, so that checkpoints
/// come as seldom as on a server with the defaults. Durability stays at its defaults
/// (`innodb_flush_log_at_trx_commit = 1`).
const PRIVATE_OPTIONS: &[&str] = &[
    "--innodb-buffer-pool-size=256M",
    "--innodb-log-file-size=96M",
];

/// Production durability: every commit is written to the binary log, which is synced before
/// the engine commits. `--log-bin` without a path puts `binlog.*` in the data directory.
const BINLOG_OPTIONS: &[&str] = &["--log-bin=binlog", "--server-id=1", "--sync-binlog=1"];

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Shared => "shared",
            ServerKind::Private => "private",
            ServerKind::Binlog => "binlog",
        }
    }

    /// `mariadbd` options of a private server of this kind; none for the shared one.
    pub fn server_args(self) -> Vec<&'static str> {
        match self {
            ServerKind::Shared => Vec::new(),
            ServerKind::Private => PRIVATE_OPTIONS.to_vec(),
            ServerKind::Binlog => [PRIVATE_OPTIONS, BINLOG_OPTIONS].concat(),
        }
    }
}

/// The server of this txbench process. A private one lives as long as this value: dropping it
/// kills `mariadbd` and removes its directory (tests/private_mariadb's guard).
pub struct Server {
    pub kind: ServerKind,
    /// What every target connects with: the broker's sessions, the direct clients, the
    /// table's preparation and the counters.
    pub url: String,
    private: Option<PrivateMariaDb>,
}

impl Server {
    /// The shared server as given, or a private one started now (the database named in
    /// `given_url` is created on it; the rest of `given_url` is not used).
    pub async fn start(kind: ServerKind, given_url: &str) -> Result<Server, String> {
        if kind == ServerKind::Shared {
            return Ok(Server {
                kind,
                url: given_url.to_string(),
                private: None,
            });
        }
        let database = db::database_name(given_url)?;
        let args = kind.server_args();
        // In a task of its own, so that a failure (tests/private_mariadb panics, having removed
        // what it made) comes back as an error instead of ending the process.
        let private =
            tokio::spawn(async move { PrivateMariaDb::launch("txbench", &database, &args).await })
                .await
                .map_err(|failure| {
                    let message = if failure.is_panic() {
                        let payload = failure.into_panic();
                        payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    } else {
                        failure.to_string()
                    };
                    format!("the private MariaDB did not start: {message}")
                })?;
        Ok(Server {
            kind,
            url: private.url(),
            private: Some(private),
        })
    }

    /// The private server's data directory.
    pub fn data_dir(&self) -> Option<String> {
        self.private
            .as_ref()
            .map(|private| private.data_dir().display().to_string())
    }
}

/// How a URL's connections reach the server, as mysql_async 0.37 decides it: a `socket=`
/// parameter is used at once; otherwise it connects over TCP and, unless the URL says
/// `prefer_socket=false`, reads the server's `@@socket` and reconnects to that path, keeping
/// TCP only when the path cannot be reached from here (a server on another machine). Each
/// run also reports what the server saw (`Transport`).
pub fn intended_transport(url: &str) -> String {
    let Ok(opts) = Opts::from_url(url) else {
        return "unknown (bad URL)".to_string();
    };
    if let Some(socket) = opts.socket() {
        return format!("Unix socket {socket}");
    }
    let address = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    if opts.prefer_socket() {
        format!(
            "Unix socket when the server's @@socket is on this machine (mysql_async leaves TCP \
             to {address} for it; prefer_socket=false keeps TCP)"
        )
    } else {
        format!("TCP to {address}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_servers_sync_the_binary_log_and_keep_innodb_durable() {
        let args = ServerKind::Binlog.server_args();
        for option in ["--log-bin=binlog", "--server-id=1", "--sync-binlog=1"] {
            assert!(args.contains(&option), "{option} missing from {args:?}");
        }
        assert!(args.contains(&"--innodb-buffer-pool-size=256M"));
        let private = ServerKind::Private.server_args();
        assert!(private.iter().all(|a| !a.contains("log-bin")));
        assert!(ServerKind::Shared.server_args().is_empty());
        // Nothing loosens durability.
        for a in args.iter().chain(private.iter()) {
            assert!(!a.contains("flush-log-at-trx-commit") && !a.contains("doublewrite"));
        }
    }

    #[test]
    fn the_transport_follows_mysql_async_rules() {
        assert!(intended_transport("mysql://root@127.0.0.1:3306/txbench")
            .starts_with("Unix socket when"));
        assert_eq!(
            intended_transport("mysql://root@127.0.0.1:3306/txbench?prefer_socket=false"),
            "TCP to 127.0.0.1:3306"
        );
        assert_eq!(
            intended_transport("mysql://root@db.example:3306/txbench?prefer_socket=false"),
            "TCP to db.example:3306"
        );
        assert_eq!(
            intended_transport("mysql://root@localhost/txbench?socket=%2Frun%2Fmysqld.sock"),
            "Unix socket /run/mysqld.sock"
        );
    }
}
