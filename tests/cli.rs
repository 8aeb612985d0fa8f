//! The `txbroker` binary as an operator runs it: configuration errors, start-up without a
//! database, and a drain on SIGTERM that exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;
use txbroker::client::Client;
use txbroker::error::ErrorCode;

fn broker_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_txbroker"))
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("txbroker-cli-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

type LogLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts the binary on a free port and reads the bound address from its log.
fn spawn_broker(config: &std::path::Path) -> (Child, std::net::SocketAddr) {
    let (child, address, _) = spawn_broker_with_env(config, &[]);
    (child, address)
}

/// Like `spawn_broker`, with environment variables; also returns the log lines seen so far.
fn spawn_broker_with_env(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (Child, std::net::SocketAddr, LogLines) {
    let mut child = broker_command()
        .envs(env.iter().copied())
        .args([
            "--config",
            config.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn txbroker");
    let stderr = child.stderr.take().expect("piped stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    let lines = LogLines::default();
    let seen = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("address: ").nth(1) {
                let address = rest
                    .split([',', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = sender.send(address);
            }
            if let Ok(mut seen) = seen.lock() {
                seen.push(line);
            }
        }
    });
    let address = receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("the broker logs its address");
    (child, address.parse().expect("a socket address"), lines)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// The broker's exit code, waited for at most 20 s.
async fn exit_code(mut child: Child) -> Option<i32> {
    tokio::task::spawn_blocking(move || wait_with_deadline(&mut child, Duration::from_secs(20)))
        .await
        .expect("wait")
        .code()
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("txbroker did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bad_config_file_is_one_line_on_stderr_and_a_nonzero_exit() {
    for (name, text) in [
        ("unknown_key", "max_session = 3\n"),
        ("bad_type", "max_sessions = \"many\"\n"),
        ("bad_toml", "max_sessions = \n"),
        ("bad_isolation", "default_isolation = \"chaos\"\n"),
    ] {
        let path = write_config(name, text);
        let output = broker_command()
            .args(["--config", path.to_str().expect("utf-8")])
            .output()
            .expect("run txbroker");
        assert!(!output.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains("config"), "{name}: {stderr}");
    }
    let output = broker_command()
        .args(["--config", "/nonexistent/txbroker.toml"])
        .output()
        .expect("run txbroker");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_the_broker_warns_serves_and_answers_db_unavailable() {
    let path = write_config(
        "no_db",
        "database_url = \"mysql://root@127.0.0.1:1/test?prefer_socket=false\"\n",
    );
    let (child, address) = spawn_broker(&path);
    let client = Client::connect(address).await.expect("connect");
    client.ping().await.expect("serving");
    let error = client
        .exec("SELECT 1", vec![])
        .await
        .expect_err("no database");
    assert_eq!(error.code(), Some(ErrorCode::DbUnavailable));
    signal(&child, "INT");
    assert_eq!(exit_code(child).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_transactions_and_exits_zero() {
    let db = TestDb::create("cli_sigterm").await;
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let path = write_config(
        "sigterm",
        &format!("database_url = \"{}\"\nshutdown_grace_ms = 20000\n", db.url),
    );
    let (child, address) = spawn_broker(&path);
    let client = Client::connect(address).await.expect("connect");
    let idle = Client::connect(address).await.expect("connect");
    client.begin(Default::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("insert");
    signal(&child, "TERM");
    common::eventually(
        "the broker refuses new transactions",
        Duration::from_secs(20),
        || async {
            match idle.tx().exec("SELECT 1", vec![]).run().await {
                Err(error) => error.code() == Some(ErrorCode::ShuttingDown),
                Ok(_) => false,
            }
        },
    )
    .await;
    client
        .exec("INSERT INTO t VALUES (2)", vec![])
        .await
        .expect("the open transaction goes on");
    client.commit().await.expect("commit during the drain");
    assert_eq!(exit_code(child).await, Some(0));
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM t").await,
        2,
        "the acknowledged commit is durable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_commands_print_stats_and_rows() {
    let db = TestDb::create("cli_admin").await;
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))"])
        .await;
    let path = write_config("admin", &format!("database_url = \"{}\"\n", db.url));
    let (child, address) = spawn_broker(&path);
    let address = address.to_string();
    let run = |args: &[&str]| {
        let output = broker_command().args(args).output().expect("run txbroker");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let inserted = run(&[
        "exec",
        "--addr",
        &address,
        "INSERT INTO t VALUES (?, ?)",
        "7",
        "alice",
    ]);
    assert_eq!(inserted.trim(), "1 row(s) affected");
    let rows = run(&["exec", "--addr", &address, "SELECT id, name FROM t"]);
    assert_eq!(rows.trim(), "id | name\n---+------\n7  | alice\n1 row(s)");
    let stats: serde_json::Value =
        serde_json::from_str(&run(&["stats", "--addr", &address, "--json"])).expect("json");
    assert_eq!(stats["sessions"], 1);
    assert!(run(&["stats", "--addr", &address]).contains("transactions_committed"));
    // Watching: three JSON lines 0.3 s apart while transactions commit the whole time.
    let mut watcher = broker_command()
        .args([
            "stats", "--addr", &address, "--every", "0.3", "--count", "3", "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run txbroker stats --every");
    let client = Client::connect(address.as_str()).await.expect("connect");
    let started = Instant::now();
    let mut id = 100;
    while watcher.try_wait().expect("try_wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the watch ends"
        );
        client
            .tx()
            .exec("INSERT INTO t VALUES (?, 'watched')", vec![id.into()])
            .run()
            .await
            .expect("commit while watched");
        id += 1;
    }
    let output = watcher.wait_with_output().expect("watch output");
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert!(line["sessions"].as_u64() >= Some(2), "{line}");
        assert_eq!(line["locks_held"], 0, "{line}");
    }
    // Each interval lasts at least 0.3 s, so rate x 0.3 s cannot exceed what was committed.
    let seen: f64 = lines
        .iter()
        .map(|line| {
            line["transactions_committed_per_s"]
                .as_f64()
                .expect("a rate")
                * 0.3
        })
        .sum();
    assert!(
        seen > 0.0 && seen <= f64::from(id - 100) + 1.0,
        "{seen} {lines:?}"
    );
    let table = run(&[
        "stats", "--addr", &address, "--every", "0.1", "--count", "2",
    ]);
    let table: Vec<&str> = table.lines().collect();
    assert_eq!(table.len(), 3, "{table:?}");
    assert!(table[0].contains("transactions_committed/s"), "{table:?}");
    let bad = broker_command()
        .args(["stats", "--addr", &address, "--every", "0"])
        .output()
        .expect("run txbroker");
    assert!(!bad.status.success());

    let failed = broker_command()
        .args(["exec", "--addr", &address, "SELEC 1"])
        .output()
        .expect("run txbroker");
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("sql:"));
    signal(&child, "TERM");
    assert_eq!(exit_code(child).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_can_come_from_the_environment() {
    let path = write_config("env_tokens", "");
    let (child, address, log) = spawn_broker_with_env(
        &path,
        &[("TXBROKER_AUTH_TOKENS", "first-token, second-token")],
    );
    let anonymous = Client::connect(address).await.expect("connect");
    assert_eq!(
        anonymous.ping().await.expect_err("auth required").code(),
        Some(ErrorCode::Unauthenticated)
    );
    let (client, _) = Client::connect_with_token(address, "second-token")
        .await
        .expect("token from the environment");
    client.ping().await.expect("authenticated");
    signal(&child, "TERM");
    assert_eq!(exit_code(child).await, Some(0));
    let read_all = || {
        log.lock()
            .expect("log lines")
            .iter()
            .any(|line| line.contains("stopped"))
    };
    common::eventually("the whole log is read", Duration::from_secs(20), || async {
        read_all()
    })
    .await;
    let log = log.lock().expect("log lines").join("\n");
    assert!(log.contains("session start"), "the log was read: {log}");
    assert!(
        !log.contains("first-token") && !log.contains("second-token"),
        "a token was logged: {log}"
    );
}
