//! The `txbroker` binary as an operator runs it: configuration errors, start-up without a
//! database, a drain on SIGTERM that exits 0, the operator commands (`exec`, `stats`), and
//! tokens from the environment that are never logged.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::process::{broker_command, write_config, BrokerProcess};
use common::TestDb;
use txbroker::client::Client;
use txbroker::error::ErrorCode;

/// The broker's exit code once it has exited, waited for at most 20 s.
fn exit_code(broker: &mut BrokerProcess) -> Option<i32> {
    tokio::task::block_in_place(|| broker.wait_exit(Duration::from_secs(20))).code()
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
    let mut broker = BrokerProcess::start(
        "cli_no_db",
        "database_url = \"mysql://root@127.0.0.1:1/test?prefer_socket=false\"\n",
    );
    let client = Client::connect(broker.addr).await.expect("connect");
    client.ping().await.expect("serving");
    let error = client
        .exec("SELECT 1", vec![])
        .await
        .expect_err("no database");
    assert_eq!(error.code(), Some(ErrorCode::DbUnavailable));
    broker.signal("INT");
    assert_eq!(exit_code(&mut broker), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_transactions_and_exits_zero() {
    let db = TestDb::create("cli_sigterm").await;
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let mut broker = BrokerProcess::start(
        "cli_sigterm",
        &db.config_file_text("shutdown_grace_ms = 20000"),
    );
    let client = Client::connect(broker.addr).await.expect("connect");
    let idle = Client::connect(broker.addr).await.expect("connect");
    client.begin(Default::default()).await.expect("begin");
    client
        .exec("INSERT INTO t VALUES (1)", vec![])
        .await
        .expect("insert");
    broker.signal("TERM");
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
    assert_eq!(exit_code(&mut broker), Some(0));
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
    let mut broker = BrokerProcess::start("cli_admin", &db.config_file_text(""));
    let address = broker.addr.to_string();
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
    // With an idempotency key the statement runs once, however often the command is run.
    let keyed = [
        "exec",
        "--addr",
        &address,
        "--idempotency-key",
        "cli-1",
        "INSERT INTO t VALUES (8, 'bob')",
    ];
    assert_eq!(run(&keyed).trim(), "1 row(s) affected");
    assert_eq!(
        run(&keyed).trim(),
        "1 row(s) affected\n(replayed: the key's transaction committed earlier; nothing ran now)"
    );
    assert_eq!(db.count("t").await, 2);
    db.run(&["DELETE FROM t WHERE id = 8"]).await;
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
    broker.signal("TERM");
    assert_eq!(exit_code(&mut broker), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_can_come_from_the_environment() {
    let mut broker = BrokerProcess::start_with_env(
        "cli_env_tokens",
        "",
        &[("TXBROKER_AUTH_TOKENS", "first-token, second-token")],
    );
    let address = broker.addr;
    let anonymous = Client::connect(address).await.expect("connect");
    assert_eq!(
        anonymous.ping().await.expect_err("auth required").code(),
        Some(ErrorCode::Unauthenticated)
    );
    let (client, _) = Client::connect_with_token(address, "second-token")
        .await
        .expect("token from the environment");
    client.ping().await.expect("authenticated");
    broker.signal("TERM");
    assert_eq!(exit_code(&mut broker), Some(0));
    let log = &broker.log;
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
