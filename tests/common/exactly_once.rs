//! Exactly once under faults: clients that run logical transfers through the broker, each
//! with one idempotency key sent again on every outcome that is not `ok` (`commit_unknown`, a
//! connection lost with no answer, `db_unavailable`...) through
//! `txbroker::client::retry_idempotent`, reconnecting when their connection is gone, to
//! whatever address the broker has now (`KeyedLoad::point_at`, after a restart); and the
//! check that the database holds every logical transfer exactly once (`assert_exactly_once`).
//! The transfers' ledger has no unique transfer id, so a transfer run twice shows as two rows
//! (and in the balances) instead of being stopped by a duplicate key. Every other transfer is
//! counted instead of ledgered: its third statement adds 1 to its own row of `transfer_runs`
//! (made beforehand), so that the transfer is all `UPDATE`s and runs the one-trip way (its
//! statements, record and `COMMIT` in one query); run twice, its count shows 2.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use txbroker::client::{retry_idempotent, Client, ClientError, TxBuilder, TxOutcome};
use txbroker::protocol::TxRequest;

use super::{eventually, TestDb};

/// The ledger of logical transfers (one row per run, so that a second run shows) and the
/// run counts of the counted ones.
pub const CREATE_TRANSFERS: &str = "CREATE TABLE transfers (\
     seq BIGINT AUTO_INCREMENT PRIMARY KEY, transfer_id VARCHAR(64) NOT NULL, \
     from_id INT NOT NULL, to_id INT NOT NULL, amount BIGINT NOT NULL, \
     KEY transfer_id (transfer_id)) ENGINE=InnoDB; \
     CREATE TABLE transfer_runs (transfer_id VARCHAR(64) PRIMARY KEY, \
     runs INT NOT NULL DEFAULT 0) ENGINE=InnoDB";

/// Attempts of one logical transfer before the test gives up on it: enough for outages of
/// several seconds at the client's back-off (at most about 128 ms between attempts).
const ATTEMPTS: u32 = 400;

/// How a logical transfer leaves its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trace {
    /// A row in `transfers` per run.
    Ledgered,
    /// `runs + 1` on its own row of `transfer_runs`: the transfer is `UPDATE`s only.
    Counted,
}

/// One logical transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub id: String,
    pub from: u64,
    pub to: u64,
    pub amount: i64,
    pub trace: Trace,
}

impl Transfer {
    fn request(&self, key: &str) -> TxRequest {
        let moves = TxBuilder::new()
            .idempotency_key(key)
            .lock(format!("accounts:{}", self.from))
            .lock(format!("accounts:{}", self.to))
            .exec(
                "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                vec![self.amount.into(), self.from.into()],
            )
            .exec(
                "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                vec![self.amount.into(), self.to.into()],
            );
        match self.trace {
            Trace::Counted => moves.exec(
                "UPDATE transfer_runs SET runs = runs + 1 WHERE transfer_id = ?",
                vec![self.id.as_str().into()],
            ),
            Trace::Ledgered => moves.exec(
                "INSERT INTO transfers (transfer_id, from_id, to_id, amount) VALUES (?, ?, ?, ?)",
                vec![
                    self.id.as_str().into(),
                    self.from.into(),
                    self.to.into(),
                    self.amount.into(),
                ],
            ),
        }
        .into_request()
    }
}

/// What the clients did: every logical transfer that ended in `ok`, and how every attempt was
/// answered (`ok`, `replayed`, an error code, `no answer`).
#[derive(Default, Debug)]
pub struct Journal {
    pub committed: Vec<Transfer>,
    pub answers: BTreeMap<String, usize>,
    /// Logical transfers given up on (out of attempts, or not retryable): must stay empty.
    pub failed: Vec<(Transfer, String)>,
}

impl Journal {
    fn answered(&mut self, answer: &Result<TxOutcome, ClientError>) {
        let name = match answer {
            Ok(outcome) if outcome.replayed => "replayed".to_string(),
            Ok(_) => "ok".to_string(),
            Err(ClientError::Server(error)) => error.code.to_string(),
            Err(_) => "no answer".to_string(),
        };
        *self.answers.entry(name).or_default() += 1;
    }

    /// How many attempts were answered `name`.
    pub fn count(&self, name: &str) -> usize {
        self.answers.get(name).copied().unwrap_or(0)
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(shared: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Clients running logical transfers between `accounts` accounts until stopped.
pub struct KeyedLoad {
    address: Shared<SocketAddr>,
    journal: Shared<Journal>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl KeyedLoad {
    pub fn start(address: SocketAddr, clients: u64, accounts: u64) -> KeyedLoad {
        let address = Arc::new(Mutex::new(address));
        let journal = Shared::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|index| {
                tokio::spawn(keyed_client(
                    index,
                    accounts,
                    address.clone(),
                    journal.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        KeyedLoad {
            address,
            journal,
            stop,
            tasks,
        }
    }

    /// Where the clients connect from now on (a restarted broker listens elsewhere).
    pub fn point_at(&self, address: SocketAddr) {
        *lock(&self.address) = address;
    }

    pub fn committed(&self) -> usize {
        lock(&self.journal).committed.len()
    }

    /// Waits until `more` logical transfers have committed since now.
    pub async fn until_more_committed(&self, more: usize, what: &str) {
        let target = self.committed() + more;
        eventually(what, super::PATIENCE, || async {
            self.committed() >= target
        })
        .await;
    }

    /// Lets every client finish the logical transfer it is on, and returns the journal.
    pub async fn stop(self) -> Journal {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            super::within("a client finishes its last logical transfer", task)
                .await
                .expect("a client task does not panic");
        }
        std::mem::take(&mut *lock(&self.journal))
    }
}

/// One client: logical transfers one after another, each sent with one key until `ok`.
async fn keyed_client(
    index: u64,
    accounts: u64,
    address: Shared<SocketAddr>,
    journal: Shared<Journal>,
    stop: Arc<AtomicBool>,
) {
    let connection: Arc<tokio::sync::Mutex<Option<Client>>> = Arc::default();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let from = (index + seq) % accounts + 1;
        let transfer = Transfer {
            id: format!("c{index}-{seq}"),
            from,
            to: from % accounts + 1,
            amount: 1 + (seq % 7) as i64,
            trace: if seq % 2 == 0 {
                Trace::Counted
            } else {
                Trace::Ledgered
            },
        };
        if transfer.trace == Trace::Counted {
            if let Err(error) = make_run_count(&connection, &address, &transfer.id).await {
                lock(&journal).failed.push((transfer, error.to_string()));
                continue;
            }
        }
        let outcome = retry_idempotent(ATTEMPTS, None, |key| {
            let request = transfer.request(&key);
            let (connection, address, journal) =
                (connection.clone(), *lock(&address), journal.clone());
            async move {
                let answer = attempt(&connection, address, request).await;
                lock(&journal).answered(&answer);
                answer
            }
        })
        .await;
        let mut journal = lock(&journal);
        match outcome {
            Ok(_) => journal.committed.push(transfer),
            Err(error) => journal.failed.push((transfer, error.to_string())),
        }
    }
}

/// The row a counted transfer adds its runs to, made (once, whatever the retries: `INSERT
/// IGNORE`) before the transfer is first sent, retried through the faults like a transfer.
async fn make_run_count(
    connection: &tokio::sync::Mutex<Option<Client>>,
    address: &Shared<SocketAddr>,
    transfer_id: &str,
) -> Result<(), ClientError> {
    let make = TxBuilder::new()
        .exec(
            "INSERT IGNORE INTO transfer_runs (transfer_id) VALUES (?)",
            vec![transfer_id.into()],
        )
        .into_request();
    let mut tries = 0;
    loop {
        tries += 1;
        let now_at = *lock(address);
        match attempt(connection, now_at, make.clone()).await {
            Ok(_) => return Ok(()),
            Err(error) if tries >= ATTEMPTS => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(u64::from(tries.min(8)) * 16)).await,
        }
    }
}

/// One attempt on the client's connection, made anew when there is none; a connection that
/// gave no answer is dropped, so that the next attempt connects again.
async fn attempt(
    connection: &tokio::sync::Mutex<Option<Client>>,
    address: SocketAddr,
    request: TxRequest,
) -> Result<TxOutcome, ClientError> {
    let mut slot = connection.lock().await;
    if slot.is_none() {
        *slot = Some(Client::connect(address).await?);
    }
    let client = slot.as_ref().expect("connected just above");
    let answer = tokio::time::timeout(Duration::from_secs(30), client.run_tx(request))
        .await
        .unwrap_or(Err(ClientError::Disconnected));
    if matches!(answer, Err(ClientError::Disconnected | ClientError::Io(_))) {
        *slot = None;
    }
    answer
}

/// The database holds every logical transfer of `journal` exactly once (one ledger row each,
/// none missing, none twice, none that no client sent), and the balances are exactly what
/// those transfers make of `initial` each, so their sum is intact.
pub async fn assert_exactly_once(db: &TestDb, journal: &Journal, accounts: u64, initial: i64) {
    assert!(journal.failed.is_empty(), "given up: {:?}", journal.failed);
    let mut conn = db.conn().await;
    use mysql_async::prelude::Queryable;
    let rows: Vec<(String, i64)> = conn
        .query("SELECT transfer_id, COUNT(*) FROM transfers GROUP BY transfer_id")
        .await
        .expect("read the ledger");
    let in_ledger: HashMap<String, i64> = rows.into_iter().collect();
    let runs: Vec<(String, i64)> = conn
        .query("SELECT transfer_id, runs FROM transfer_runs WHERE runs > 0")
        .await
        .expect("read the run counts");
    let counted: HashMap<String, i64> = runs.into_iter().collect();
    for transfer in &journal.committed {
        let (found, place) = match transfer.trace {
            Trace::Ledgered => (in_ledger.get(&transfer.id), "in the ledger"),
            Trace::Counted => (counted.get(&transfer.id), "counted"),
        };
        assert_eq!(
            found.copied(),
            Some(1),
            "transfer {} is {place} exactly once",
            transfer.id
        );
    }
    assert_eq!(
        in_ledger.len() + counted.len(),
        journal.committed.len(),
        "the ledger and the counts hold no transfer that no client sent"
    );
    assert!(
        counted.len() * 3 >= journal.committed.len(),
        "about half the transfers are counted ({} of {})",
        counted.len(),
        journal.committed.len()
    );
    let mut expected: BTreeMap<u64, i64> = (1..=accounts).map(|id| (id, initial)).collect();
    for transfer in &journal.committed {
        *expected.entry(transfer.from).or_default() -= transfer.amount;
        *expected.entry(transfer.to).or_default() += transfer.amount;
    }
    let balances: Vec<(u64, i64)> = conn
        .query("SELECT id, balance FROM accounts ORDER BY id")
        .await
        .expect("read the balances");
    assert_eq!(balances, expected.into_iter().collect::<Vec<_>>());
    let sum: i64 = balances.iter().map(|(_, balance)| balance).sum();
    assert_eq!(sum, initial * accounts as i64, "the sum is intact");
    conn.disconnect().await.ok();
}
