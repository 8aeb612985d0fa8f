//! An actix-web service that moves money through the embedded broker.
//!
//! `POST /transfer` with `{"from": 1, "to": 2, "amount": 10}` debits and credits two rows of
//! `accounts(id, balance)` in one transaction that declares both accounts' keys, so concurrent
//! transfers never deadlock each other. Answers: 200 with the attempts it took, 422 when the
//! balance is short, 409 when a retryable conflict outlived its retries, 500 otherwise.
//! `GET /metrics`, `/healthz` and `/readyz` are the broker's monitoring routes, mounted in
//! the same `App` (`txbroker::monitor::Monitor::configure`): Prometheus scrapes the
//! application's own port.
//!
//! Run: `cargo run --example actix_web_transfer` (uses `DATABASE_URL`, listens on
//! 127.0.0.1:8080 or `LISTEN`), then
//! `curl -X POST localhost:8080/transfer -H 'content-type: application/json' -d '{"from":1,"to":2,"amount":10}'`.

use std::sync::Mutex;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Deserialize;
use txbroker::error::BrokerError;
use txbroker::locks::LockRequest;
use txbroker::monitor::Monitor;
use txbroker::protocol::TxOptions;
use txbroker::{Broker, Config, LocalSession};

#[derive(Debug, Deserialize)]
pub struct Transfer {
    pub from: u64,
    pub to: u64,
    pub amount: i64,
}

/// Embedded sessions kept between requests, so each request reuses a database connection.
pub struct Sessions {
    broker: Broker,
    idle: Mutex<Vec<LocalSession>>,
}

impl Sessions {
    pub fn new(broker: Broker) -> Sessions {
        Sessions {
            broker,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The broker's monitoring routes, to mount in the application's `App`.
    pub fn monitor(&self) -> Monitor {
        self.broker.monitor()
    }

    fn checkout(&self) -> LocalSession {
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        reused.unwrap_or_else(|| self.broker.session())
    }

    fn checkin(&self, session: LocalSession) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
    }

    pub async fn shutdown(self) {
        let sessions = self.idle.into_inner().unwrap_or_default();
        for session in sessions {
            session.close().await;
        }
        self.broker.shutdown().await;
    }
}

/// Keys are zero-padded so that their byte order is the accounts' numeric order.
fn account_key(id: u64) -> String {
    format!("accounts:{id:012}")
}

enum TransferOutcome {
    Done,
    InsufficientFunds,
}

async fn move_money(
    session: &mut LocalSession,
    transfer: &Transfer,
) -> Result<TransferOutcome, BrokerError> {
    session
        .begin(TxOptions {
            locks: LockRequest::new([account_key(transfer.from), account_key(transfer.to)], []),
            ..TxOptions::default()
        })
        .await?;
    let debit = session
        .exec(
            "UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?",
            vec![
                transfer.amount.into(),
                transfer.from.into(),
                transfer.amount.into(),
            ],
        )
        .await;
    let credit = match debit {
        Ok(result) if result.affected == 1 => {
            session
                .exec(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                    vec![transfer.amount.into(), transfer.to.into()],
                )
                .await
        }
        Ok(_) => {
            session.rollback().await?;
            return Ok(TransferOutcome::InsufficientFunds);
        }
        Err(error) => Err(error),
    };
    match credit {
        Ok(_) => {
            session.commit().await?;
            Ok(TransferOutcome::Done)
        }
        Err(error) => {
            // Clears the aborted state too, if the database ended the transaction.
            session.rollback().await?;
            Err(error)
        }
    }
}

/// How many times a transfer is tried when it meets a retryable conflict.
const TRANSFER_ATTEMPTS: u32 = 3;

pub async fn transfer(sessions: web::Data<Sessions>, body: web::Json<Transfer>) -> HttpResponse {
    if body.amount <= 0 || body.from == body.to {
        return HttpResponse::BadRequest().json(serde_json::json!({"error": "bad transfer"}));
    }
    let mut session = sessions.checkout();
    let mut attempt = 1;
    let outcome = loop {
        match move_money(&mut session, &body).await {
            Err(error) if error.is_retryable() && attempt < TRANSFER_ATTEMPTS => attempt += 1,
            outcome => break outcome,
        }
    };
    sessions.checkin(session);
    match outcome {
        Ok(TransferOutcome::Done) => {
            HttpResponse::Ok().json(serde_json::json!({"attempts": attempt}))
        }
        Ok(TransferOutcome::InsufficientFunds) => HttpResponse::UnprocessableEntity()
            .json(serde_json::json!({"error": "insufficient funds"})),
        Err(error) if error.is_retryable() => HttpResponse::Conflict()
            .json(serde_json::json!({"error": error.to_string(), "code": error.code().as_str()})),
        Err(error) => HttpResponse::InternalServerError()
            .json(serde_json::json!({"error": error.to_string(), "code": error.code().as_str()})),
    }
}

pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/transfer", web::post().to(transfer));
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_string());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".to_string());
    let broker = Broker::builder(Config {
        database_url,
        ..Config::default()
    })
    .logger(txbroker::logging::terminal(slog::Level::Info))
    .without_listener()
    .start()
    .await
    .map_err(std::io::Error::other)?;
    let sessions = web::Data::new(Sessions::new(broker));
    let app_sessions = sessions.clone();
    let monitor = sessions.monitor();
    HttpServer::new(move || {
        App::new()
            .app_data(app_sessions.clone())
            .configure(routes)
            .configure(|routes| monitor.configure(routes))
    })
    .bind(listen)?
    .run()
    .await?;
    if let Ok(sessions) = std::sync::Arc::try_unwrap(sessions.into_inner()) {
        sessions.shutdown().await;
    }
    Ok(())
}
