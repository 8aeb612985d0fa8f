//! Three database-mode brokers behind HAProxy (`deploy/haproxy.cfg`, its addresses replaced)
//! on a private MariaDB (issue 15): a transfer load through the proxy meets no database
//! deadlock and keeps the money; one broker SIGKILLed mid-load, the clients carry on
//! through the other two. Without idempotency keys a transfer in flight on the killed broker
//! has an unknown outcome: the ledger holds every committed transfer and at most those.
//!
//! HAProxy is installed by `scripts/ensure-haproxy.sh` when missing (as root, apt-get).

mod common;
mod private_mariadb;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{collect_lines, joined, BrokerProcess, LogLines};
use common::requests::transfer_tx;
use common::{insert_accounts, within, CREATE_ACCOUNTS, CREATE_LEDGER, PATIENCE};
use private_mariadb::PrivateMariaDb;
use txbroker::client::ClientError;
use txbroker::failover::FailoverClient;

const ACCOUNTS: u32 = 4;
const BALANCE: i64 = 1_000;
const CLIENTS: u64 = 12;
const TRANSFERS_PER_CLIENT: u64 = 60;
/// The broker is killed once this many transfers have committed through the proxy.
const KILL_AFTER: u64 = CLIENTS * TRANSFERS_PER_CLIENT / 3;

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

/// What one client's transfers came to.
#[derive(Default)]
struct ClientTally {
    committed: u64,
    committed_after_kill: u64,
    /// In flight on a connection that was lost: committed or not, nobody knows.
    unknown: u64,
}

async fn transfers(
    proxy: String,
    number: u64,
    committed: Arc<AtomicU64>,
    killed: Arc<AtomicU64>,
) -> ClientTally {
    let client = FailoverClient::new([proxy]);
    let mut tally = ClientTally::default();
    for transfer in 0..TRANSFERS_PER_CLIENT {
        let from = 1 + (number + transfer) % u64::from(ACCOUNTS);
        let to = 1 + (from % u64::from(ACCOUNTS));
        let id = format!("{number}-{transfer}");
        let was_killed = killed.load(Ordering::SeqCst) == 1;
        match client.run_tx(transfer_tx(&id, from, to, 1)).await {
            Ok(_) => {
                tally.committed += 1;
                tally.committed_after_kill += u64::from(was_killed);
                committed.fetch_add(1, Ordering::SeqCst);
            }
            Err(ClientError::Disconnected | ClientError::Io(_)) => tally.unknown += 1,
            Err(other) => panic!("transfer {id} failed: {other}"),
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_database_brokers_behind_haproxy_survive_one_killed_mid_load() {
    let server = PrivateMariaDb::launch("haproxy", "bank", &[]).await;
    server
        .run(&[
            CREATE_ACCOUNTS,
            CREATE_LEDGER,
            &insert_accounts(ACCOUNTS, BALANCE),
        ])
        .await;
    let db = server.test_db();
    let config = db.config_file_text("coordination = \"database\"");
    let mut brokers: Vec<BrokerProcess> = (1..=3)
        .map(|index| BrokerProcess::start(&format!("haproxy_{index}"), &config))
        .collect();
    let proxy = Haproxy::start(&brokers);
    let committed = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..CLIENTS)
        .map(|number| {
            tokio::spawn(transfers(
                proxy.address.clone(),
                number,
                committed.clone(),
                killed.clone(),
            ))
        })
        .collect();
    common::eventually("a third of the load committed", PATIENCE, || async {
        committed.load(Ordering::SeqCst) >= KILL_AFTER
    })
    .await;
    let victim = brokers.remove(0);
    let had_sessions = victim.client().await.stats().await.expect("stats").sessions;
    assert!(
        had_sessions > 1,
        "HAProxy sent clients to the first broker too"
    );
    victim.signal("KILL");
    killed.store(1, Ordering::SeqCst);
    let mut total = ClientTally::default();
    for client in load {
        let tally = within("a client's transfers", client)
            .await
            .expect("a client");
        total.committed += tally.committed;
        total.committed_after_kill += tally.committed_after_kill;
        total.unknown += tally.unknown;
    }
    assert!(
        total.committed_after_kill > 0,
        "the clients carried on after the kill"
    );
    assert_eq!(
        total.committed + total.unknown,
        CLIENTS * TRANSFERS_PER_CLIENT,
        "every transfer answered"
    );
    assert_eq!(
        server
            .scalar("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_DEADLOCKS'")
            .await,
        0,
        "no database deadlock"
    );
    assert_eq!(
        db.scalar("SELECT SUM(balance) FROM accounts").await,
        i64::from(ACCOUNTS) * BALANCE
    );
    let ledger = db.count("ledger").await as u64;
    eprintln!(
        "through haproxy: {} committed ({} after the kill), {} unknown, {ledger} in the ledger",
        total.committed, total.committed_after_kill, total.unknown
    );
    assert!(
        (total.committed..=total.committed + total.unknown).contains(&ledger),
        "ledger {ledger}: committed {} + at most {} unknown",
        total.committed,
        total.unknown
    );
    let off_ledger = format!(
        "SELECT COUNT(*) FROM accounts a WHERE a.balance <> {BALANCE} \
         - (SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE from_id = a.id) \
         + (SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE to_id = a.id)"
    );
    assert_eq!(
        db.scalar(&off_ledger).await,
        0,
        "every balance is its ledger's"
    );
    for survivor in &brokers {
        let stats = survivor.client().await.stats().await.expect("stats");
        assert!(stats.transactions_committed > 0, "{stats:?}");
        assert_eq!(stats.deadlocks, 0);
    }
    drop(proxy);
}
