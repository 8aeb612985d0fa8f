//! The Rust client of protocol v1 (async, tokio).
//!
//! A `Client` is a handle on one connection. Two background tasks own the socket: a writer
//! that sends requests in the order they were submitted, and a reader that hands each
//! response to the request it answers (the server answers in order). Submitting does not
//! wait for earlier answers, so several requests can be in flight on one connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), txbroker::client::ClientError> {
//! use txbroker::client::Client;
//! let client = Client::connect("127.0.0.1:7306").await?;
//! let outcome = client
//!     .tx()
//!     .lock("accounts:1")
//!     .lock("accounts:2")
//!     .exec("UPDATE accounts SET balance = balance - ? WHERE id = ?", vec![10.into(), 1.into()])
//!     .exec("UPDATE accounts SET balance = balance + ? WHERE id = ?", vec![10.into(), 2.into()])
//!     .run()
//!     .await?;
//! assert_eq!(outcome.results.len(), 2);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::ErrorCode;
use crate::frame::{FrameCodec, FrameError};
use crate::locks::LockRequest;
use crate::protocol::{
    ErrorReply, Isolation, QueryResult, Reply, Request, RequestFrame, Response, Statement, Stats,
    TxOptions, TxRequest, Value,
};

/// Largest response the client accepts; results can be far larger than requests.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{0}")]
    Server(ErrorReply),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before the answer came.
    #[error("connection closed")]
    Disconnected,
    /// The server sent something this client cannot read, or not what it asked for.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The protocol's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server(error) => error.retryable,
            _ => false,
        }
    }
}

type Answer = Result<Response, ClientError>;

struct Submission {
    frame: RequestFrame,
    answer: oneshot::Sender<Answer>,
}

/// A connection to a broker. Dropping it closes the connection; the server then ends the
/// session and rolls back anything left open.
pub struct Client {
    submissions: mpsc::UnboundedSender<Submission>,
    next_id: AtomicU64,
}

/// What a successful `hello` says about the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub server: String,
    pub protocol: u64,
    pub session: u64,
}

/// What a committed `tx` returns.
#[derive(Clone, Debug, PartialEq)]
pub struct TxOutcome {
    pub results: Vec<QueryResult>,
    pub attempts: u32,
    /// The answer was recorded for an earlier request with the same idempotency key, which
    /// committed; this one ran nothing.
    pub replayed: bool,
    /// A replay of an answer recorded without its rows (it was too large): the results keep
    /// their columns and counts, not their rows.
    pub results_omitted: bool,
}

impl TxOutcome {
    /// The outcome a `tx` reply holds, or the reply back when it is not one.
    pub fn from_reply(reply: Reply) -> Result<TxOutcome, Box<Reply>> {
        match reply {
            Reply::Tx { results, attempts } => Ok(TxOutcome {
                results,
                attempts,
                replayed: false,
                results_omitted: false,
            }),
            Reply::Replayed {
                reply,
                results_omitted,
            } => match *reply {
                Reply::Tx { results, attempts } => Ok(TxOutcome {
                    results,
                    attempts,
                    replayed: true,
                    results_omitted,
                }),
                other => Err(Box::new(other)),
            },
            other => Err(Box::new(other)),
        }
    }
}

/// How a keyed `begin` was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begun {
    /// The transaction is open.
    Opened,
    /// The key's transaction committed already; nothing was opened, and the session answers
    /// `tx_aborted` until `rollback`.
    AlreadyCommitted,
}

impl Client {
    pub async fn connect(address: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        Ok(Client::from_halves(reader, writer))
    }

    /// Connects over TLS, checking the server's certificate against `connector`'s roots
    /// for `server_name` (see `txbroker::tls::connector`).
    pub async fn connect_tls(
        address: impl ToSocketAddrs,
        server_name: &str,
        connector: &tokio_rustls::TlsConnector,
    ) -> Result<Client, ClientError> {
        let name = crate::tls::server_name(server_name)
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let stream = connector.connect(name, stream).await?;
        let (reader, writer) = tokio::io::split(stream);
        Ok(Client::from_halves(reader, writer))
    }

    /// Connects and authenticates with `token`.
    pub async fn connect_with_token(
        address: impl ToSocketAddrs,
        token: &str,
    ) -> Result<(Client, ServerInfo), ClientError> {
        let client = Client::connect(address).await?;
        let info = client.hello(Some(token)).await?;
        Ok((client, info))
    }

    fn from_halves<R, W>(read_half: R, write_half: W) -> Client
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (submissions, submitted) = mpsc::unbounded_channel::<Submission>();
        let (awaiting_sender, awaiting) = mpsc::unbounded_channel::<oneshot::Sender<Answer>>();
        tokio::spawn(write_requests(write_half, submitted, awaiting_sender));
        tokio::spawn(read_answers(read_half, awaiting));
        Client {
            submissions,
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends `request` now and returns a future of its answer. Requests go out in the order
    /// `send` is called, so several can be in flight at once.
    pub fn send(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Reply, ClientError>> + Send + 'static {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let submitted = self
            .submissions
            .send(Submission {
                frame: RequestFrame { id, request },
                answer,
            })
            .is_ok();
        async move {
            if !submitted {
                return Err(ClientError::Disconnected);
            }
            let response = answered.await.map_err(|_| ClientError::Disconnected)??;
            if response.id.is_some() && response.id != Some(id) {
                return Err(ClientError::Protocol(format!(
                    "answer for request {:?} arrived in place of {id}",
                    response.id
                )));
            }
            response.outcome.map_err(ClientError::Server)
        }
    }

    /// Whether the connection is known to be gone (the server closed it, or it failed):
    /// nothing sent on it now would arrive.
    pub fn is_closed(&self) -> bool {
        self.submissions.is_closed()
    }

    pub async fn request(&self, request: Request) -> Result<Reply, ClientError> {
        self.send(request).await
    }

    pub async fn hello(&self, token: Option<&str>) -> Result<ServerInfo, ClientError> {
        let reply = self
            .request(Request::Hello {
                token: token.map(str::to_string),
                client: Some(concat!("txbroker-rust/", env!("CARGO_PKG_VERSION")).to_string()),
            })
            .await?;
        match reply {
            Reply::Hello {
                server,
                protocol,
                session,
            } => Ok(ServerInfo {
                server,
                protocol,
                session,
            }),
            other => Err(unexpected("hello", other)),
        }
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.expect_done(Request::Ping, "ping").await
    }

    /// Starts building a one-request transaction, run with `.run()`.
    pub fn tx(&self) -> TxBuilder<'_> {
        TxBuilder {
            client: Some(self),
            ..TxBuilder::new()
        }
    }

    /// Runs a whole transaction given as a request.
    pub async fn run_tx(&self, tx: TxRequest) -> Result<TxOutcome, ClientError> {
        TxOutcome::from_reply(self.request(Request::Tx(tx)).await?)
            .map_err(|other| unexpected("tx", *other))
    }

    pub async fn begin(&self, options: TxOptions) -> Result<(), ClientError> {
        self.expect_done(Request::Begin(options), "begin").await
    }

    /// Begins with an idempotency key in `options`: the transaction opens, or the key's
    /// transaction is known to have committed already (then send `rollback` to go on).
    pub async fn begin_idempotent(&self, options: TxOptions) -> Result<Begun, ClientError> {
        match self.request(Request::Begin(options)).await? {
            Reply::Done => Ok(Begun::Opened),
            Reply::Replayed { reply, .. } if *reply == Reply::Done => Ok(Begun::AlreadyCommitted),
            other => Err(unexpected("begin", other)),
        }
    }

    /// Commits; `Ok(true)` when the answer was a replay of the key's recorded commit.
    pub async fn commit_idempotent(&self) -> Result<bool, ClientError> {
        match self.request(Request::Commit).await? {
            Reply::Done => Ok(false),
            Reply::Replayed { reply, .. } if *reply == Reply::Done => Ok(true),
            other => Err(unexpected("commit", other)),
        }
    }

    /// Begins an interactive transaction; it is rolled back if dropped before `commit`.
    ///
    /// ```no_run
    /// # async fn demo(client: &txbroker::client::Client) -> Result<(), txbroker::client::ClientError> {
    /// use txbroker::protocol::TxOptions;
    /// let tx = client.transaction(TxOptions::default()).await?;
    /// let row = tx.exec("SELECT balance FROM accounts WHERE id = ?", vec![1.into()]).await?;
    /// tx.exec("UPDATE accounts SET balance = ? WHERE id = ?", vec![row.rows[0][0].clone(), 2.into()]).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn transaction(&self, options: TxOptions) -> Result<Transaction<'_>, ClientError> {
        self.begin(options).await?;
        Ok(Transaction {
            client: self,
            state: TransactionState::Open,
        })
    }

    pub async fn exec(&self, sql: &str, params: Vec<Value>) -> Result<QueryResult, ClientError> {
        match self
            .request(Request::Exec(Statement::new(sql, params)))
            .await?
        {
            Reply::Exec { result } => Ok(result),
            other => Err(unexpected("exec", other)),
        }
    }

    pub async fn lock(&self, keys: LockRequest) -> Result<(), ClientError> {
        self.expect_done(Request::Lock(keys), "lock").await
    }

    pub async fn commit(&self) -> Result<(), ClientError> {
        self.expect_done(Request::Commit, "commit").await
    }

    pub async fn rollback(&self) -> Result<(), ClientError> {
        self.expect_done(Request::Rollback, "rollback").await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        match self.request(Request::Stats).await? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(unexpected("stats", other)),
        }
    }

    async fn expect_done(&self, request: Request, op: &str) -> Result<(), ClientError> {
        match self.request(request).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(op, other)),
        }
    }
}

/// Whether a `Transaction` still needs its ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransactionState {
    Open,
    Ended,
}

/// An interactive transaction on one connection. Ends with `commit` or `rollback`; dropped
/// while open, it sends `rollback` without waiting for the answer.
pub struct Transaction<'a> {
    client: &'a Client,
    state: TransactionState,
}

impl Transaction<'_> {
    pub async fn exec(&self, sql: &str, params: Vec<Value>) -> Result<QueryResult, ClientError> {
        self.client.exec(sql, params).await
    }

    /// Adds keys; see the protocol's rule for keys below ones already held.
    pub async fn lock(&self, keys: LockRequest) -> Result<(), ClientError> {
        self.client.lock(keys).await
    }

    pub async fn commit(mut self) -> Result<(), ClientError> {
        self.state = TransactionState::Ended;
        self.client.commit().await
    }

    pub async fn rollback(mut self) -> Result<(), ClientError> {
        self.state = TransactionState::Ended;
        self.client.rollback().await
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.state == TransactionState::Open {
            // Queued now, ahead of anything the caller sends next; the answer is not needed.
            drop(self.client.send(Request::Rollback));
        }
    }
}

/// Runs `transaction` until it succeeds, fails with an error that is not retryable, or has
/// run `attempts` times, pausing a little longer (with jitter) after each retryable failure.
///
/// ```no_run
/// # async fn demo(client: &txbroker::client::Client) -> Result<(), txbroker::client::ClientError> {
/// use txbroker::client::retry;
/// let outcome = retry(5, || {
///     client
///         .tx()
///         .lock("accounts:1")
///         .exec("UPDATE accounts SET balance = balance - 1 WHERE id = 1", vec![])
///         .run()
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn retry<T, F, Fut>(attempts: u32, mut transaction: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(error) if error.is_retryable() && attempt < attempts => {
                back_off(attempt).await;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// A fresh idempotency key: 128 random bits, in hex.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Runs one logical transaction with one idempotency key (`key`, or a fresh one) for every
/// attempt, until it is answered, fails with an error that sending it again cannot change, or
/// has run `attempts` times. Unlike `retry`, it also sends it again after `commit_unknown` and
/// after a connection lost with no answer: the key makes the broker answer a retry of a
/// transaction that did commit with its recorded outcome (`replayed`) instead of committing it
/// twice. `transaction` gets the key to put in its request (`TxBuilder::idempotency_key`), and
/// may connect anew each time.
///
/// ```no_run
/// # async fn demo(address: std::net::SocketAddr) -> Result<(), txbroker::client::ClientError> {
/// use txbroker::client::{retry_idempotent, Client};
/// let outcome = retry_idempotent(10, None, |key| async move {
///     let client = Client::connect(address).await?;
///     client
///         .tx()
///         .idempotency_key(key)
///         .lock("accounts:1")
///         .exec("UPDATE accounts SET balance = balance - 1 WHERE id = 1", vec![])
///         .run()
///         .await
/// })
/// .await?;
/// println!("committed once; this answer replayed: {}", outcome.replayed);
/// # Ok(())
/// # }
/// ```
pub async fn retry_idempotent<T, F, Fut>(
    attempts: u32,
    key: Option<String>,
    mut transaction: F,
) -> Result<T, ClientError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let key = key.unwrap_or_else(new_idempotency_key);
    let mut attempt = 1;
    loop {
        match transaction(key.clone()).await {
            Err(error) if error.may_be_sent_again_with_its_key() && attempt < attempts => {
                back_off(attempt).await;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

impl ClientError {
    /// Whether a request carrying an idempotency key may be sent again after this error: a
    /// retryable one, an unknown outcome, or no answer at all.
    pub fn may_be_sent_again_with_its_key(&self) -> bool {
        self.is_retryable()
            || self.code() == Some(ErrorCode::CommitUnknown)
            || matches!(self, ClientError::Disconnected | ClientError::Io(_))
    }
}

/// A jittered pause that doubles with each attempt, up to about 128 ms.
async fn back_off(attempt: u32) {
    let cap_ms = 1u64 << attempt.min(7);
    let pause = rand::Rng::gen_range(&mut rand::thread_rng(), cap_ms / 2..=cap_ms);
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
}

fn unexpected(op: &str, reply: Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected answer to {op}: {reply:?}"))
}

/// Builds a `tx` request: keys, statements and options, then `run` (from `Client::tx`), or
/// `into_request` for an embedded session.
#[derive(Default)]
pub struct TxBuilder<'a> {
    client: Option<&'a Client>,
    statements: Vec<Statement>,
    locks: Vec<String>,
    read_locks: Vec<String>,
    isolation: Option<Isolation>,
    read_only: bool,
    retries: Option<u32>,
    idempotency_key: Option<String>,
}

impl TxBuilder<'_> {
    /// A builder not tied to a connection; finish it with `into_request`.
    pub fn new() -> TxBuilder<'static> {
        TxBuilder::default()
    }

    /// Declares a key to hold exclusively.
    pub fn lock(mut self, key: impl Into<String>) -> Self {
        self.locks.push(key.into());
        self
    }

    /// Declares a key to hold shared.
    pub fn read_lock(mut self, key: impl Into<String>) -> Self {
        self.read_locks.push(key.into());
        self
    }

    pub fn exec(mut self, sql: impl Into<String>, params: Vec<Value>) -> Self {
        self.statements.push(Statement::new(sql, params));
        self
    }

    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = Some(isolation);
        self
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Makes the transaction answer once however often it is sent (`docs/protocol.md` §19):
    /// use one key per logical transaction, the same for every retry of it.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn into_request(self) -> TxRequest {
        TxRequest {
            statements: self.statements,
            options: TxOptions {
                locks: LockRequest::new(self.locks, self.read_locks),
                isolation: self.isolation,
                read_only: self.read_only,
                idempotency_key: self.idempotency_key,
            },
            retries: self.retries,
        }
    }

    /// Sends the transaction on the client that made this builder.
    pub async fn run(self) -> Result<TxOutcome, ClientError> {
        let Some(client) = self.client else {
            return Err(ClientError::Protocol(
                "this builder has no client: use Client::tx, or into_request".into(),
            ));
        };
        client.run_tx(self.into_request()).await
    }
}

/// The writer task of a `Client`: frames the requests in the order they were submitted and
/// passes each answer's sender on to the reader, in the same order.
async fn write_requests<W>(
    write_half: W,
    mut submitted: mpsc::UnboundedReceiver<Submission>,
    awaiting: mpsc::UnboundedSender<oneshot::Sender<Answer>>,
) where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut writer = FramedWrite::new(write_half, FrameCodec::new(MAX_RESPONSE_BYTES));
    loop {
        // Ends with the reader, so that `Client::is_closed` tells of a connection the server
        // closed before anything more is sent on it.
        let first = tokio::select! {
            next = submitted.recv() => match next {
                Some(first) => first,
                None => return,
            },
            () = awaiting.closed() => return,
        };
        // Write everything already submitted before flushing: one syscall for a burst.
        let mut batch = vec![first];
        while let Ok(next) = submitted.try_recv() {
            batch.push(next);
        }
        for Submission { frame, answer } in batch {
            if let Err(error) = writer.feed(&frame).await {
                let _ = answer.send(Err(ClientError::Protocol(error.to_string())));
                return;
            }
            if awaiting.send(answer).is_err() {
                return;
            }
        }
        if SinkExt::<&RequestFrame>::flush(&mut writer).await.is_err() {
            return;
        }
    }
}

/// The reader task of a `Client`: hands each answer to the oldest request still waiting.
async fn read_answers<R>(
    read_half: R,
    mut awaiting: mpsc::UnboundedReceiver<oneshot::Sender<Answer>>,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut reader = FramedRead::new(read_half, FrameCodec::new(MAX_RESPONSE_BYTES));
    while let Some(frame) = reader.next().await {
        let answer = match frame {
            Ok(body) => {
                Response::decode(&body).map_err(|error| ClientError::Protocol(error.to_string()))
            }
            // The connection broke: its requests got no answer.
            Err(FrameError::Io(error)) => Err(ClientError::Io(error)),
            Err(error) => Err(ClientError::Protocol(error.to_string())),
        };
        // Answers come in request order; one that arrives before any request (a `busy`
        // refusal) belongs to the first request sent.
        let Some(waiting) = awaiting.recv().await else {
            return;
        };
        let failed = answer.is_err();
        let _ = waiting.send(answer);
        if failed {
            return;
        }
    }
}
