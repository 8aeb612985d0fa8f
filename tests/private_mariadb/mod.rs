//! A private MariaDB server for one test: its own data directory (a fresh temporary
//! directory initialised with `mariadb-install-db`), its own free port on 127.0.0.1 and its
//! own socket, so that a test can stop, kill and restart the database without touching the
//! shared server at 127.0.0.1:3306 or any other test. Signals go through the `kill` command;
//! readiness is observed (the server's handshake on its port) with a deadline, never slept for.
//! Dropping the guard kills the server (SIGKILL, reaped) and removes the directory, including
//! when the test fails (set `TXB_KEEP_MARIADB_DIR` to keep it, with its `error.log`).
//!
//! It uses `tests/common` (statements, signals, waiting for a process), so whoever declares
//! `mod private_mariadb;` declares `mod common;` beside it.
//!
//! We run as root: `mariadbd` gets `--user=root`. The root account has no password
//! (`--auth-root-authentication-method=normal`), and URLs carry `?prefer_socket=false` so that
//! mysql_async keeps to TCP on the private port.

#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::common::process::{send_signal, wait_for_exit};

/// How long the server may take to accept connections after it is started (crash recovery
/// after SIGKILL included), and to exit after SIGTERM, on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(40);
const INSTALL_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(40);

/// Options for a small, fast server. Durability settings stay at their defaults
/// (`innodb_flush_log_at_trx_commit = 1`): the tests check that acknowledged commits survive.
const SERVER_OPTIONS: &[&str] = &[
    "--bind-address=127.0.0.1",
    "--skip-networking=0",
    "--skip-name-resolve",
    "--skip-log-bin",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-dump-at-shutdown=0",
    "--innodb-buffer-pool-load-at-startup=0",
    "--max-connect-errors=1000000",
    "--performance-schema=0",
];

pub struct PrivateMariaDb {
    /// The temporary directory holding everything: `data/`, the socket, the pid file, logs.
    dir: PathBuf,
    port: u16,
    extra_args: Vec<String>,
    child: Option<Child>,
    /// The database created for the test.
    pub database: String,
}

impl PrivateMariaDb {
    /// Initialises a data directory, starts the server on a free port, waits until it
    /// answers, and creates `database`. `extra_args` go to every start of `mariadbd`
    /// (`--max-connections=10`, say).
    pub async fn launch(label: &str, database: &str, extra_args: &[&str]) -> PrivateMariaDb {
        let label = label.to_string();
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let mut server = tokio::task::spawn_blocking(move || {
            PrivateMariaDb::launch_blocking(&label, extra_args)
        })
        .await
        .unwrap_or_else(|failure| std::panic::resume_unwind(failure.into_panic()));
        let mut admin = server.admin().await;
        admin
            .query_drop(format!("CREATE DATABASE `{database}`"))
            .await
            .expect("create the test database");
        admin.disconnect().await.ok();
        server.database = database.to_string();
        server
    }

    fn launch_blocking(label: &str, extra_args: Vec<String>) -> PrivateMariaDb {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "txb-mdb-{label}-{}-{}",
            std::process::id(),
            stamp % 1_000_000_000
        ));
        // Its own temporary directory too: a starting server deletes the `#sql*` files it
        // finds in its tmpdir, which in a shared /tmp are other servers' temporary tables.
        std::fs::create_dir_all(dir.join("tmp")).expect("create the instance directory");
        // The guard owns the directory from here on, so a failure below still removes it.
        let mut server = PrivateMariaDb {
            dir,
            port: 0,
            extra_args,
            child: None,
            database: String::new(),
        };
        server.install();
        // A free port is found by binding port 0 and releasing it; another process may take
        // it in between, in which case the server fails to bind and another port is tried.
        let mut last_failure = String::new();
        for _ in 0..3 {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("the private MariaDB did not start: {last_failure}");
    }

    /// Initialises the data directory, bounded by `INSTALL_LIMIT`.
    fn install(&self) {
        let log = self.dir.join("install.log");
        let output = std::fs::File::create(&log).expect("create the install log");
        let mut child = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--user=root")
            .arg("--skip-test-db")
            .arg("--innodb-log-file-size=8M")
            .arg("--innodb-buffer-pool-size=32M")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log handle"))
            .stderr(output)
            .spawn()
            .expect("run mariadb-install-db (is mariadb-server installed?)");
        let Some(status) = wait_for_exit(&mut child, INSTALL_LIMIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mariadb-install-db did not finish within {INSTALL_LIMIT:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        assert!(
            status.success(),
            "mariadb-install-db failed ({status}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// A URL for `user` (no password) to the test's database, over TCP to the private port.
    pub fn url_as(&self, user: &str) -> String {
        format!(
            "mysql://{user}@127.0.0.1:{}/{}?prefer_socket=false",
            self.port, self.database
        )
    }

    /// The root URL to the test's database.
    pub fn url(&self) -> String {
        self.url_as("root")
    }

    /// The test's database on this server, for the helpers of `common::TestDb`.
    pub fn test_db(&self) -> crate::common::TestDb {
        crate::common::TestDb {
            name: self.database.clone(),
            url: self.url(),
        }
    }

    /// A root connection (to the test's database once it exists).
    pub async fn admin(&self) -> mysql_async::Conn {
        let url = if self.database.is_empty() {
            format!("mysql://root@127.0.0.1:{}/?prefer_socket=false", self.port)
        } else {
            self.url()
        };
        mysql_async::Conn::from_url(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to the private MariaDB: {e}\n{}", self.log_tail()))
    }

    /// Runs statements on a fresh root connection.
    pub async fn run(&self, statements: &[&str]) {
        crate::common::run_and_disconnect(self.admin().await, statements).await;
    }

    /// One integer from a query, on a fresh root connection.
    pub async fn scalar(&self, sql: &str) -> i64 {
        crate::common::scalar_and_disconnect(self.admin().await, sql).await
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server again on the same data directory and port, and waits until it
    /// accepts connections (after a SIGKILL this includes InnoDB's crash recovery).
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "the private MariaDB is already running"
        );
        if let Err(failure) = self.try_start() {
            panic!("the private MariaDB did not start again: {failure}");
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits until it has exited.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.reap("SIGTERM")
    }

    /// Kills the server with SIGKILL (a crash) and waits until it has exited.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal("KILL");
        self.reap("SIGKILL")
    }

    fn signal(&self, name: &str) {
        send_signal(self.pid().expect("the private MariaDB is running"), name);
    }

    /// Waits for the child to exit (polling, with a deadline); kills it if it overstays.
    fn reap(&mut self, what: &str) -> ExitStatus {
        let mut child = self.child.take().expect("the private MariaDB is running");
        let Some(status) = wait_for_exit(&mut child, STOP_LIMIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mariadbd did not exit within {STOP_LIMIT:?} of {what}\n{}",
                self.log_tail()
            );
        };
        status
    }

    /// Spawns `mariadbd` and waits until its port answers with a server handshake.
    fn try_start(&mut self) -> Result<(), String> {
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", self.error_log().display()))
            .args(SERVER_OPTIONS)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn mariadbd: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "mariadbd exited with {status} on port {}\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            if server_handshake(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(format!(
                    "mariadbd did not accept connections within {START_LIMIT:?}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The last lines of the server's error log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.error_log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(25);
        format!(
            "--- {} (last lines) ---\n{}",
            self.error_log().display(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("TXB_KEEP_MARIADB_DIR").is_none() {
            remove_dir(&self.dir);
        }
    }
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a free port")
}

/// True when something on `port` sends a MySQL protocol-10 handshake: the server is past its
/// start-up (InnoDB ready) and accepts logins.
fn server_handshake(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    // A packet: 3-byte length, 1-byte sequence, then the payload; a handshake starts with 10.
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).is_ok() && header[4] == 10
}
