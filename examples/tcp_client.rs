//! A client of a running broker over TCP: creates a small `accounts` table, moves money
//! between accounts from several tasks at once with declared keys, and prints the broker's
//! stats. Run the broker first (`scripts/run-broker.sh`), then
//! `cargo run --example tcp_client [ADDR]` (default 127.0.0.1:7306).

use txbroker::client::{retry, Client, ClientError};

const ACCOUNTS: u64 = 5;
const TRANSFERS_PER_TASK: u64 = 50;
const TASKS: u64 = 8;

fn account_key(id: u64) -> String {
    format!("accounts:{id:012}")
}

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7306".into());
    let setup = Client::connect(&address).await?;
    let info = setup.hello(None).await?;
    println!("connected to {} (session {})", info.server, info.session);
    setup
        .exec(
            "CREATE TABLE IF NOT EXISTS accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
            vec![],
        )
        .await?;
    for id in 1..=ACCOUNTS {
        setup
            .exec("REPLACE INTO accounts VALUES (?, 1000)", vec![id.into()])
            .await?;
    }

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let address = address.clone();
            tokio::spawn(async move {
                let client = Client::connect(&address).await?;
                for n in 0..TRANSFERS_PER_TASK {
                    let from = (task + n) % ACCOUNTS + 1;
                    let to = (task + 2 * n + 1) % ACCOUNTS + 1;
                    if from == to {
                        continue;
                    }
                    retry(5, || {
                        client
                            .tx()
                            .lock(account_key(from))
                            .lock(account_key(to))
                            .exec(
                                "UPDATE accounts SET balance = balance - 1 WHERE id = ?",
                                vec![from.into()],
                            )
                            .exec(
                                "UPDATE accounts SET balance = balance + 1 WHERE id = ?",
                                vec![to.into()],
                            )
                            .run()
                    })
                    .await?;
                }
                Ok::<(), ClientError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|error| ClientError::Protocol(error.to_string()))??;
    }

    let total = setup
        .exec("SELECT SUM(balance) FROM accounts", vec![])
        .await?;
    println!(
        "total balance: {:?} (expected {})",
        total.rows[0][0],
        ACCOUNTS * 1000
    );
    for (name, value) in setup.stats().await?.entries() {
        println!("{name:>26} {value}");
    }
    Ok(())
}
