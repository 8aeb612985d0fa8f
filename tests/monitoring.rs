//! Monitoring, tested with the real things: `/metrics` scraped from a real broker and checked
//! by `promtool check metrics`; a real Prometheus server scraping a broker under load, asked
//! through its HTTP API for the rate of committed transactions; `/readyz` during a drain and
//! while a private MariaDB is down; the hot keys in `stats`; `txbroker top` as a process.
//! `scripts/ensure-prometheus.sh` installs Prometheus (and promtool) when missing.

mod common;
mod private_mariadb;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{get, get_with};
use common::process::broker_command;
use common::{answered, bank, eventually, requests, stats_until, TestBroker, TestDb, PATIENCE};
use private_mariadb::PrivateMariaDb;
use txbroker::client::Client;
use txbroker::protocol::{StatKind, Stats};
use txbroker::Config;

fn monitored(config: Config) -> TestBroker {
    TestBroker::start(Config {
        metrics_listen: Some("127.0.0.1:0".into()),
        ..config
    })
}

fn metrics_addr(broker: &TestBroker) -> SocketAddr {
    broker.metrics_addr.expect("metrics_listen is set")
}

/// Client `holder` keeps `accounts:1` in an open transaction while a transfer from account 1
/// queues behind it; returns once the transfer is queued, with its answer to come.
async fn queue_a_transfer_behind(
    broker: &TestBroker,
    holder: &Client,
) -> tokio::task::JoinHandle<Result<txbroker::client::TxOutcome, txbroker::client::ClientError>> {
    common::begin_and_update_account(holder, 1, "balance = balance").await;
    let transfer = broker
        .send_tx(requests::transfer_tx("queued", 1, 2, 5))
        .await;
    stats_until(holder, "the transfer queues for accounts:1", |stats| {
        stats.lock_waiters == 1
    })
    .await;
    transfer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_in_stats_show_the_queue_then_the_wait() {
    let db = bank("mon_hot_keys", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let holder = broker.client().await;
    let transfer = queue_a_transfer_behind(&broker, &holder).await;
    let queued = holder.stats().await.expect("stats");
    let hot = &queued.hot_keys[0];
    assert_eq!(
        (hot.key.as_str(), hot.waits, hot.waiting, hot.grants),
        ("accounts:1", 1, 1, 0),
        "{queued:?}"
    );
    holder.commit().await.expect("commit");
    answered(transfer).await.expect("the transfer commits");
    let after = holder.stats().await.expect("stats");
    let hot = &after.hot_keys[0];
    assert_eq!((hot.waits, hot.waiting), (1, 0), "{after:?}");
    assert!(hot.grants >= 1 && hot.wait_seconds > 0.0, "{after:?}");
    let latency = after.latency.expect("two transactions ended");
    assert!(latency.count >= 2 && latency.max_ms > 0.0, "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hot_keys_and_latency_metrics_stats_leave_them_out() {
    let db = bank("mon_off", 2, 100).await;
    let broker = TestBroker::start(Config {
        hot_keys: 0,
        latency_metrics: false,
        ..db.config()
    });
    let holder = broker.client().await;
    let transfer = queue_a_transfer_behind(&broker, &holder).await;
    holder.commit().await.expect("commit");
    answered(transfer).await.expect("the transfer commits");
    let stats = holder.stats().await.expect("stats");
    assert_eq!(
        (stats.hot_keys.len(), stats.latency),
        (0, None),
        "{stats:?}"
    );
    assert_eq!(stats.transactions_committed, 2);
}

/// The series a scrape holds for each name `Stats` lists, in the classic text format.
fn assert_every_stats_counter_is_exposed(text: &str) {
    for (name, _, kind) in Stats::default().counters() {
        let series = match kind {
            StatKind::Gauge => format!("\ntxbroker_{name}"),
            StatKind::Total => format!("\ntxbroker_{name}_total"),
        };
        // Unlabelled, or by label (retries are by MySQL code).
        let exposed = [" ", "{"]
            .iter()
            .any(|next| text.contains(&format!("{series}{next}")));
        assert!(exposed, "no {series:?} in\n{text}");
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .expect("a number")
}

/// `promtool check metrics` on `text`: it exits non-zero, naming the problem, on anything
/// Prometheus would not parse or that breaks its naming conventions.
fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/ensure-prometheus.sh installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_exposes_every_counter_and_timing_and_promtool_accepts_it() {
    let db = bank("mon_scrape", 2, 100).await;
    let broker = monitored(db.config());
    let holder = broker.client().await;
    let transfer = queue_a_transfer_behind(&broker, &holder).await;
    holder.commit().await.expect("commit");
    answered(transfer).await.expect("the transfer commits");
    let (status, text) = get(metrics_addr(&broker), "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_every_stats_counter_is_exposed(&text);
    assert_eq!(sample(&text, "txbroker_transactions_committed_total"), 2.0);
    let committed_tx = r#"{op="tx",outcome="committed"}"#;
    assert_eq!(
        sample(
            &text,
            &format!("txbroker_transaction_seconds_count{committed_tx}")
        ),
        1.0
    );
    let waited = sample(
        &text,
        &format!("txbroker_transaction_key_wait_seconds_sum{committed_tx}"),
    );
    let total = sample(
        &text,
        &format!("txbroker_transaction_seconds_sum{committed_tx}"),
    );
    assert!(waited > 0.0 && waited < total, "{waited} {total}");
    assert!(
        sample(
            &text,
            &format!("txbroker_transaction_database_seconds_sum{committed_tx}")
        ) > 0.0
    );
    assert_eq!(sample(&text, "txbroker_lock_wait_seconds_count"), 2.0);
    assert_eq!(
        sample(&text, r#"txbroker_hot_key_waits{key="accounts:1"}"#),
        1.0
    );
    assert!(sample(&text, "txbroker_client_received_bytes_total") > 0.0);
    assert!(sample(&text, "txbroker_client_sent_bytes_total") > 0.0);
    assert!(sample(&text, "txbroker_database_connects_total") >= 2.0);
    assert_eq!(
        sample(&text, r#"txbroker_retries_total{mysql_code="1213"}"#),
        0.0
    );
    for declared in [
        "# TYPE txbroker_database_reconnects_total counter",
        "# TYPE txbroker_database_connect_errors_total counter",
        "# TYPE txbroker_database_connections_lost_total counter",
    ] {
        assert!(text.contains(declared), "no {declared:?} in\n{text}");
    }
    promtool_check(&text);
    every_metric_is_documented(&text);
    let accept = Some("application/openmetrics-text; version=1.0.0");
    let (status, openmetrics) = get_with(metrics_addr(&broker), "/metrics", accept).await;
    assert_eq!(status, 200);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE txbroker_transactions_committed counter"));
}

/// docs/operations.md names every metric family a scrape holds.
fn every_metric_is_documented(text: &str) {
    let operations = std::fs::read_to_string("docs/operations.md").expect("docs/operations.md");
    for family in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().expect("a name");
        assert!(
            operations.contains(&format!("`{name}`")) || operations.contains(&format!("`{name}{{")),
            "docs/operations.md does not list {name}"
        );
    }
}

/// The PromQL of docs/operations.md's alerts and of the Grafana dashboard, as
/// `promtool check rules` reads it: each expression must parse.
#[test]
fn the_documented_alerts_and_the_dashboard_are_valid_promql() {
    let operations = std::fs::read_to_string("docs/operations.md").expect("docs/operations.md");
    let mut expressions: Vec<String> = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in operations.lines() {
        match (in_block, line) {
            (false, "```promql") => in_block = true,
            (true, "```") => in_block = false,
            (true, line) if line.starts_with('#') => {}
            // A line starting with a space continues the expression above it.
            (true, line) if line.starts_with(' ') => current.push_str(line),
            (true, line) => {
                if !current.is_empty() {
                    expressions.push(std::mem::take(&mut current));
                }
                current.push_str(line);
            }
            _ => {}
        }
    }
    expressions.push(current);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana-txbroker.json").expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            expressions.push(expr.replace("$__rate_interval", "1m"));
        }
    }
    assert!(expressions.len() > 30, "{expressions:?}");
    let rules: Vec<serde_json::Value> = expressions
        .iter()
        .enumerate()
        .map(|(index, expr)| serde_json::json!({"record": format!("check:rule{index}"), "expr": expr}))
        .collect();
    // YAML is a superset of JSON.
    let file = serde_json::json!({"groups": [{"name": "documented", "rules": rules}]});
    let path = std::env::temp_dir().join(format!("txbroker-rules-{}.json", std::process::id()));
    std::fs::write(&path, file.to_string()).expect("write the rules");
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (scripts/ensure-prometheus.sh installs it)");
    let _ = std::fs::remove_file(&path);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

async fn readyz(broker: &TestBroker) -> (u16, String) {
    get(metrics_addr(broker), "/readyz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_during_a_drain_while_healthz_stays_200() {
    let db = TestDb::create("mon_drain").await;
    let mut broker = monitored(Config {
        shutdown_grace_ms: 20_000,
        ..db.config()
    });
    assert_eq!(readyz(&broker).await, (200, "ready\n".to_string()));
    // An open transaction holds the drain in its grace period.
    let client = broker.client().await;
    client.begin(Default::default()).await.expect("begin");
    let monitoring = metrics_addr(&broker);
    broker.begin_shutdown();
    eventually("readyz says draining", PATIENCE, || async {
        get(monitoring, "/readyz").await == (503, "draining\n".to_string())
    })
    .await;
    assert_eq!(get(monitoring, "/healthz").await, (200, "ok\n".to_string()));
    client
        .commit()
        .await
        .expect("the open transaction finishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_the_database_is_down_and_200_once_it_is_back() {
    let mut server = PrivateMariaDb::launch("mon_readyz", "mon_readyz", &[]).await;
    let broker = monitored(Config {
        listen: "127.0.0.1:0".into(),
        database_url: server.url(),
        ..Config::default()
    });
    assert_eq!(readyz(&broker).await.0, 200);
    tokio::task::block_in_place(|| server.stop());
    eventually(
        "readyz says the database is unavailable",
        PATIENCE,
        || async {
            let (status, body) = readyz(&broker).await;
            status == 503 && body.starts_with("database unavailable")
        },
    )
    .await;
    assert_eq!(get(metrics_addr(&broker), "/healthz").await.0, 200);
    tokio::task::block_in_place(|| server.start());
    eventually("readyz is ready again", PATIENCE, || async {
        readyz(&broker).await.0 == 200
    })
    .await;
}

/// A free port on the loopback interface, for Prometheus's own listener.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A Prometheus server scraping `target` every second, with its data in a temporary
/// directory; killed and removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    address: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("txbroker-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("prometheus directory");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: txbroker\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("prometheus config");
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/ensure-prometheus.sh installs it)");
        Prometheus {
            child,
            dir,
            address,
        }
    }

    /// The value of the first series of an instant query, if it has one yet.
    async fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        // Until it listens, there is nothing to ask.
        tokio::net::TcpStream::connect(self.address).await.ok()?;
        let (status, body) = get(self.address, &path).await;
        if status != 200 {
            return None;
        }
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_broker_under_load_and_sees_commits() {
    let db = bank("mon_prometheus", 4, 1_000_000).await;
    let broker = monitored(db.config());
    let prometheus = Prometheus::start(metrics_addr(&broker));
    let running = Arc::new(AtomicBool::new(true));
    let mut load = Vec::new();
    for client_index in 0..4u64 {
        let client = broker.client().await;
        let running = running.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                let id = format!("load-{client_index}-{n}");
                let (from, to) = (1 + client_index % 4, 1 + (client_index + 1) % 4);
                client
                    .run_tx(requests::transfer_tx(&id, from, to, 1))
                    .await
                    .expect("a transfer commits");
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    let rate = "sum(rate(txbroker_transactions_committed_total[5s]))";
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(25) {
        if let Some(value) = prometheus.query(rate).await.filter(|value| *value > 0.0) {
            seen = Some(value);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.expect("a load client");
    }
    let rate = seen.expect("Prometheus saw committed transactions within 25 s");
    assert!(rate > 0.0);
    let p99 = "histogram_quantile(0.99, sum by (le) (rate(txbroker_transaction_seconds_bucket{op=\"tx\"}[5s])))";
    let p99 = prometheus
        .query(p99)
        .await
        .expect("a p99 over the same window");
    assert!(p99 > 0.0 && p99 < 20.0, "{p99}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txbroker_top_shows_a_queued_hot_key_from_a_real_broker() {
    let db = bank("mon_top", 2, 100).await;
    let broker = TestBroker::start(db.config());
    let holder = broker.client().await;
    let transfer = queue_a_transfer_behind(&broker, &holder).await;
    let address = broker.addr.to_string();
    let output = tokio::task::block_in_place(|| {
        broker_command()
            .args(["top", "--addr", &address, "--every", "0.2", "--count", "2"])
            .output()
            .expect("run txbroker top")
    });
    holder.commit().await.expect("commit");
    answered(transfer).await.expect("the transfer commits");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let screens = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(screens.matches("txbroker top - ").count(), 2, "{screens}");
    assert!(
        screens.contains("sessions 3   keys held 1   waiting for keys 1"),
        "{screens}"
    );
    let hot: Vec<&str> = screens
        .lines()
        .find(|line| line.starts_with("accounts:1 "))
        .unwrap_or_else(|| panic!("no hot key row in\n{screens}"))
        .split_whitespace()
        .collect();
    assert_eq!((hot[2], hot[4]), ("1", "1"), "waits and queued: {hot:?}");
}
