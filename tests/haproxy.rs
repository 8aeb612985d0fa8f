//! Three database-mode brokers behind HAProxy (`deploy/haproxy.cfg`, its addresses replaced)
//! on a private MariaDB (issue 15): a load of logical transfers through the proxy, each with
//! one idempotency key sent again after any outcome that is not `ok` (`tests/common/
//! exactly_once.rs`); one broker SIGKILLed mid-load and restarted on its address. The clients
//! carry on through the other two, the restarted one serves again, every logical transfer is
//! in the ledger exactly once (none missing, none twice, the sum intact), and the database
//! meets no deadlock.
//!
//! HAProxy is installed by `scripts/ensure-haproxy.sh` when missing (as root, apt-get).

mod common;
mod private_mariadb;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::exactly_once::{assert_exactly_once, KeyedLoad, CREATE_TRANSFERS};
use common::process::{collect_lines, joined, BrokerProcess, LogLines};
use common::{insert_accounts, CREATE_ACCOUNTS, PATIENCE};
use private_mariadb::PrivateMariaDb;
use txbroker::client::Client;

const ACCOUNTS: u64 = 4;
const BALANCE: i64 = 1_000;
const CLIENTS: u64 = 12;
/// Logical transfers committed through the proxy before the kill.
const BEFORE_KILL: usize = 200;
/// Logical transfers committed after the kill, and again after the restart.
const AFTER_KILL: usize = 100;

/// HAProxy in the foreground on `deploy/haproxy.cfg`; killed and reaped on drop.
struct Haproxy {
    child: Child,
    log: LogLines,
    address: String,
    config: std::path::PathBuf,
}

impl Haproxy {
    fn start(brokers: &[BrokerProcess]) -> Haproxy {
        let installed = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/ensure-haproxy.sh"
        ))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/ensure-haproxy.sh");
        assert!(installed.status.success(), "HAProxy could not be installed");
        let binary = String::from_utf8_lossy(&installed.stdout)
            .trim()
            .to_string();
        let address = free_address();
        let shipped = include_str!("../deploy/haproxy.cfg");
        let mut config = shipped.replace("127.0.0.1:7306", &address);
        for (index, broker) in brokers.iter().enumerate() {
            let placeholder = format!("127.0.0.1:{}", 7316 + index);
            assert!(
                config.contains(&placeholder),
                "deploy/haproxy.cfg names {placeholder}"
            );
            config = config.replace(&placeholder, &broker.addr.to_string());
        }
        let path = common::process::write_config("haproxy", &config);
        let mut child = Command::new(binary)
            .args(["-db", "-f", path.to_str().expect("utf-8 path")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn haproxy");
        let log = LogLines::default();
        collect_lines(
            child.stderr.take().expect("piped stderr"),
            log.clone(),
            None,
        );
        let proxy = Haproxy {
            child,
            log,
            address,
            config: path,
        };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(&proxy.address).is_err() {
            assert!(
                Instant::now() < deadline,
                "HAProxy did not listen; its log:\n{}",
                joined(&proxy.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").to_string()
}

/// Runs `SELECT 1` on fresh connections through the proxy until one lands on `broker`:
/// HAProxy (`leastconn`, health checks) sends new connections to a restarted broker once it
/// has marked it up again.
async fn until_served_through(proxy: &str, broker: &BrokerProcess) {
    let observer = broker.client().await;
    common::eventually(
        "the restarted broker serves through HAProxy",
        PATIENCE,
        || async {
            if let Ok(client) = Client::connect(proxy).await {
                let _ = client.tx().exec("SELECT 1", vec![]).run().await;
            }
            let stats = observer
                .stats()
                .await
                .expect("stats of the restarted broker");
            stats.transactions_committed > 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_database_brokers_behind_haproxy_survive_one_killed_mid_load() {
    let server = PrivateMariaDb::launch("haproxy", "bank", &[]).await;
    server
        .run(&[
            CREATE_ACCOUNTS,
            CREATE_TRANSFERS,
            &insert_accounts(ACCOUNTS as u32, BALANCE),
        ])
        .await;
    let db = server.test_db();
    let config = db.config_file_text("coordination = \"database\"");
    let mut brokers: Vec<BrokerProcess> = (1..=3)
        .map(|index| BrokerProcess::start(&format!("haproxy_{index}"), &config))
        .collect();
    let proxy = Haproxy::start(&brokers);
    let proxy_address: SocketAddr = proxy.address.parse().expect("a socket address");
    let load = KeyedLoad::start(proxy_address, CLIENTS, ACCOUNTS);
    load.until_more_committed(BEFORE_KILL, "transfers commit before the kill")
        .await;
    let victim = &mut brokers[0];
    let had_sessions = victim.client().await.stats().await.expect("stats").sessions;
    assert!(
        had_sessions > 1,
        "HAProxy sent clients to the first broker too"
    );
    victim.signal("KILL");
    tokio::task::block_in_place(|| victim.wait_exit(PATIENCE));
    load.until_more_committed(AFTER_KILL, "the clients carry on after the kill")
        .await;
    // Restarted where HAProxy expects it.
    brokers[0] = BrokerProcess::start_on("haproxy_1_restarted", &config, brokers[0].addr);
    until_served_through(&proxy.address, &brokers[0]).await;
    load.until_more_committed(AFTER_KILL, "transfers commit after the restart")
        .await;
    let journal = load.stop().await;
    assert_exactly_once(&db, &journal, ACCOUNTS, BALANCE).await;
    assert_eq!(
        server
            .scalar("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_DEADLOCKS'")
            .await,
        0,
        "no database deadlock"
    );
    eprintln!(
        "through haproxy, one of three brokers SIGKILLed and restarted: {} logical transfers exactly once, attempts answered {:?}",
        journal.committed.len(),
        journal.answers
    );
    for broker in &brokers {
        let stats = broker.client().await.stats().await.expect("stats");
        assert!(stats.transactions_committed > 0, "{stats:?}");
        assert_eq!(stats.deadlocks, 0);
    }
    drop(proxy);
}
