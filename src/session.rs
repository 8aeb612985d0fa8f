//! A session is an actor, one per TCP client. It owns the client's socket (a framed reader
//! feeding it requests and a writer task for its answers) and a `SessionEngine`, which owns
//! the session's one database connection, its transaction and its keys. It talks to the
//! acceptor (which started it and tells it to drain or close); it reaches the lock
//! coordinator only through its engine, whose `LockClient` cancels a wait for keys when the
//! client vanishes and releases every key when the engine is dropped.
//!
//! Requests are handled strictly one at a time and answered in the order they arrived: the
//! engine is moved into the future of the request in flight and put back when it is done,
//! so a second request cannot even reach it meanwhile. Reading goes on during a request,
//! which is how the session notices a client that hung up while its request waits for keys.
//!
//! **Invariant:** at most `max_pipelined_requests` requests are read and not yet answered;
//! the reader waits for a permit before reading the next frame, so a client that floods the
//! socket is slowed by TCP instead of filling memory.
//!
//! **Invariant:** when the actor stops, for whatever reason, its engine is closed or dropped,
//! and with it the `LockClient` that releases every key, so no key outlives its session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use futures_util::SinkExt;
use slog::{debug, info, Logger};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::acceptor::{Acceptor, SessionEnded};
use crate::config::Config;
use crate::engine::SessionEngine;
use crate::error::BrokerError;
use crate::frame::{self, FrameCodec, FrameError};
use crate::metrics::Metrics;
use crate::protocol::{RejectedRequest, Request, RequestFrame, Response};
use crate::txn::ServerPhase;

/// How long a closing session waits for its last answers to reach a client that is not
/// reading, before it drops the connection anyway.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// An answer on its way to the socket, with the permit of the request it answers: the permit
/// is released only once the bytes are flushed, so a client that does not read stops the
/// session from reading more.
type Outgoing = (Response, Option<OwnedSemaphorePermit>);

/// The client's socket halves, plain TCP or TLS.
type ClientReader = Box<dyn AsyncRead + Unpin + Send>;
type ClientWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// One frame read from the client, with the permit that bounds the pipeline.
type Incoming = (Result<BytesMut, FrameError>, OwnedSemaphorePermit);

/// What is waiting to be answered, in arrival order.
enum Pending {
    Request(RequestFrame, OwnedSemaphorePermit),
    /// Holds its permit like a request, so that undecodable frames are bounded too.
    Rejected(RejectedRequest, OwnedSemaphorePermit),
    /// A framing error: answered in turn, then the connection is closed.
    Fatal(BrokerError),
}

/// Where the session's engine is.
enum EngineSlot {
    /// Home: the next request may start.
    Ready(Box<SessionEngine>),
    /// Out serving a request (or aborting a stale transaction); it comes back when done.
    Busy,
    /// Taken by the closing session, which rolls back and stops; it never comes back.
    Closing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    NotRequired,
    AwaitingHello,
    Authenticated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionPhase {
    Serving,
    Draining,
    /// The session answers nothing more; it ends its transaction and stops.
    Closing,
}

pub struct Session {
    id: u64,
    log: Logger,
    config: Arc<Config>,
    engine: EngineSlot,
    pending: VecDeque<Pending>,
    /// To the writer task, set once the connection is ready (after the TLS handshake, when
    /// TLS is on); nothing is read, so nothing is answered, before. Dropping it lets the task
    /// flush what is queued and close the socket.
    writer: Option<mpsc::UnboundedSender<Outgoing>>,
    writer_task: Option<actix_rt::task::JoinHandle<()>>,
    /// The accepted socket and the TLS acceptor, until `started()` sets the connection up.
    connection: Option<(TcpStream, Option<TlsAcceptor>)>,
    permits: Arc<Semaphore>,
    auth: Auth,
    phase: SessionPhase,
    idle_timer: Option<SpawnHandle>,
    drain_waiters: Vec<oneshot::Sender<()>>,
    acceptor: Addr<Acceptor>,
    client_gone: CancellationToken,
    metrics: Arc<Metrics>,
}

/// What a session needs from the broker besides its socket.
pub struct SessionParts {
    pub engine: SessionEngine,
    pub config: Arc<Config>,
    pub acceptor: Addr<Acceptor>,
    pub tls: Option<TlsAcceptor>,
}

impl Session {
    pub fn new(parts: SessionParts, stream: TcpStream) -> Session {
        let auth = if parts.config.auth_tokens.is_empty() {
            Auth::NotRequired
        } else {
            Auth::AwaitingHello
        };
        let client_gone = parts.engine.cancellation();
        Session {
            client_gone,
            metrics: parts.engine.metrics().clone(),
            id: parts.engine.session_id(),
            log: parts.engine.log().clone(),
            permits: Arc::new(Semaphore::new(parts.config.max_pipelined_requests)),
            config: parts.config,
            engine: EngineSlot::Ready(Box::new(parts.engine)),
            pending: VecDeque::new(),
            writer: None,
            writer_task: None,
            connection: Some((stream, parts.tls)),
            auth,
            phase: SessionPhase::Serving,
            idle_timer: None,
            drain_waiters: Vec::new(),
            acceptor: parts.acceptor,
        }
    }

    /// Starts reading frames and writing answers on a ready connection.
    fn attach(&mut self, reader: ClientReader, writer: ClientWriter, ctx: &mut Context<Self>) {
        let (outgoing, queued) = mpsc::unbounded_channel();
        self.writer = Some(outgoing);
        self.writer_task = Some(actix_rt::spawn(write_answers(
            FramedWrite::new(
                writer,
                FrameCodec::new(usize::MAX).counting(self.metrics.bytes_sent()),
            ),
            queued,
            self.config.client_read_timeout(),
            ctx.address(),
        )));
        let codec =
            FrameCodec::new(self.config.max_frame_bytes).counting(self.metrics.bytes_received());
        let framed = FramedRead::new(reader, codec);
        let patience = self.config.client_read_timeout();
        let frames = futures_util::stream::unfold(
            (framed, self.permits.clone()),
            move |(mut framed, permits)| async move {
                let permit = permits.clone().acquire_owned().await.ok()?;
                let item = frame::next_frame(&mut framed, patience).await?;
                Some(((item, permit), (framed, permits)))
            },
        );
        ctx.add_stream(frames);
    }

    fn write(&mut self, response: Response) {
        self.send(response, None);
    }

    /// Queues an answer; `permit` goes with it until it is on the wire.
    fn send(&mut self, response: Response, permit: Option<OwnedSemaphorePermit>) {
        if let Some(writer) = &self.writer {
            // A closed channel means the writer task failed; it has told the session so.
            let _ = writer.send((response, permit));
        }
    }

    fn server_phase(&self) -> ServerPhase {
        match self.phase {
            SessionPhase::Serving => ServerPhase::Serving,
            SessionPhase::Draining | SessionPhase::Closing => ServerPhase::Draining,
        }
    }

    /// Starts the next request if the engine is home, answering what needs no engine.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        loop {
            if self.phase == SessionPhase::Closing {
                self.finish(ctx);
                return;
            }
            let EngineSlot::Ready(_) = self.engine else {
                return;
            };
            let Some(next) = self.pending.pop_front() else {
                self.on_idle(ctx);
                return;
            };
            match next {
                Pending::Rejected(rejected, _permit) if self.auth == Auth::AwaitingHello => {
                    let error = BrokerError::Unauthenticated(
                        "authentication is required: send hello with a token first".into(),
                    );
                    info!(self.log, "request failed"; "code" => %error.code());
                    self.write(Response::failure(rejected.id, &error));
                    self.phase = SessionPhase::Closing;
                }
                Pending::Rejected(rejected, _permit) => {
                    info!(self.log, "request failed"; "code" => %rejected.error.code());
                    debug!(self.log, "bad request"; "message" => %rejected.error);
                    self.write(Response::failure(rejected.id, &rejected.error));
                }
                Pending::Fatal(error) => {
                    info!(self.log, "request failed"; "code" => %error.code());
                    self.write(Response::failure(None, &error));
                    self.phase = SessionPhase::Closing;
                }
                Pending::Request(frame, permit) => {
                    if let Err(error) = self.authenticate(&frame.request) {
                        info!(self.log, "request failed"; "op" => frame.request.op(), "code" => %error.code());
                        self.write(Response::failure(Some(frame.id), &error));
                        self.phase = SessionPhase::Closing;
                        continue;
                    }
                    self.start_request(frame, permit, ctx);
                    return;
                }
            }
        }
    }

    fn authenticate(&mut self, request: &Request) -> Result<(), BrokerError> {
        if self.auth != Auth::AwaitingHello {
            return Ok(());
        }
        let Request::Hello {
            token: Some(token), ..
        } = request
        else {
            return Err(BrokerError::Unauthenticated(
                "authentication is required: send hello with a token first".into(),
            ));
        };
        let token = token.as_bytes();
        // Compare against every token so the time taken tells nothing about which matched.
        let matched = self.config.auth_tokens.iter().fold(0u8, |found, valid| {
            found | valid.as_bytes().ct_eq(token).unwrap_u8()
        });
        if matched == 1 {
            self.auth = Auth::Authenticated;
            Ok(())
        } else {
            Err(BrokerError::Unauthenticated("invalid token".into()))
        }
    }

    fn start_request(
        &mut self,
        frame: RequestFrame,
        permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) {
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        let EngineSlot::Ready(mut engine) = std::mem::replace(&mut self.engine, EngineSlot::Busy)
        else {
            return;
        };
        let phase = self.server_phase();
        let RequestFrame { id, request } = frame;
        let op = request.op();
        debug!(self.log, "request"; "id" => id, "op" => op);
        let work = async move {
            let outcome = engine.handle(request, phase).await;
            (engine, outcome)
        };
        ctx.spawn(work.into_actor(self).map(move |(engine, outcome), session, ctx| {
            session.engine = EngineSlot::Ready(engine);
            let response = match outcome {
                Ok(reply) => Response::success(id, reply),
                Err(error) => {
                    info!(session.log, "request failed"; "op" => op, "code" => %error.code(),
                        "mysql_code" => error.db_failure().map(|f| f.mysql_code));
                    debug!(session.log, "request error"; "id" => id, "message" => %error);
                    Response::failure(Some(id), &error)
                }
            };
            session.send(response, Some(permit));
            session.pump(ctx);
        }));
    }

    /// Nothing to do: arm the idle-transaction timer and tell a draining broker we are at a
    /// transaction boundary.
    fn on_idle(&mut self, ctx: &mut Context<Self>) {
        let EngineSlot::Ready(engine) = &self.engine else {
            return;
        };
        if engine.state().is_open() {
            if self.idle_timer.is_none() {
                // Whichever comes first: the idle timeout or the transaction's deadline.
                let mut timeout = self.config.idle_tx_timeout();
                if let Some(deadline) = engine.deadline() {
                    timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
                }
                self.idle_timer = Some(ctx.run_later(timeout, |session, ctx| {
                    session.idle_timer = None;
                    session.abort_stale(ctx);
                }));
            }
        } else {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn abort_stale(&mut self, ctx: &mut Context<Self>) {
        let EngineSlot::Ready(mut engine) = std::mem::replace(&mut self.engine, EngineSlot::Busy)
        else {
            return;
        };
        info!(self.log, "stale transaction aborted");
        let work = async move {
            engine.abort_stale().await;
            engine
        };
        ctx.spawn(work.into_actor(self).map(|engine, session, ctx| {
            session.engine = EngineSlot::Ready(engine);
            session.pump(ctx);
        }));
    }

    /// The client is gone or must be dropped: end the transaction, then stop.
    fn close(&mut self, ctx: &mut Context<Self>) {
        self.phase = SessionPhase::Closing;
        // Ends a wait for keys at once; the request then rolls back and comes home.
        self.client_gone.cancel();
        if let EngineSlot::Ready(_) = self.engine {
            self.finish(ctx);
        }
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        let EngineSlot::Ready(mut engine) =
            std::mem::replace(&mut self.engine, EngineSlot::Closing)
        else {
            return;
        };
        self.pending.clear();
        // The writer task flushes what is queued, then closes the socket; a client that does
        // not read gets `CLOSE_FLUSH_TIMEOUT` for it.
        self.writer = None;
        let flushed = self.writer_task.take();
        let work = async move {
            engine.close().await;
            if let Some(flushed) = flushed {
                let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flushed).await;
            }
        };
        ctx.spawn(work.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(self.log, "session start");
        let Some((stream, tls)) = self.connection.take() else {
            return;
        };
        let Some(acceptor) = tls else {
            let (reader, writer) = stream.into_split();
            self.attach(Box::new(reader), Box::new(writer), ctx);
            return;
        };
        // Nothing else happens in this session until the handshake is over, and a client that
        // stalls in it is dropped like one that stalls mid-frame.
        let patience = self.config.client_read_timeout();
        let handshake =
            async move { tokio::time::timeout(patience, acceptor.accept(stream)).await };
        ctx.wait(
            handshake
                .into_actor(self)
                .map(|outcome, session, ctx| match outcome {
                    Ok(Ok(stream)) => {
                        let (reader, writer) = tokio::io::split(stream);
                        session.attach(Box::new(reader), Box::new(writer), ctx);
                    }
                    Ok(Err(error)) => {
                        info!(session.log, "tls handshake failed"; "error" => %error);
                        ctx.stop();
                    }
                    Err(_) => {
                        info!(session.log, "tls handshake timed out");
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.acceptor.do_send(SessionEnded { id: self.id });
        info!(self.log, "session end");
    }
}

impl StreamHandler<Incoming> for Session {
    fn handle(&mut self, (item, permit): Incoming, ctx: &mut Context<Self>) {
        if self.phase == SessionPhase::Closing {
            return;
        }
        match item {
            Ok(body) => match RequestFrame::decode(&body) {
                Ok(frame) => self.pending.push_back(Pending::Request(frame, permit)),
                Err(rejected) => self.pending.push_back(Pending::Rejected(rejected, permit)),
            },
            Err(FrameError::Empty) => {
                self.pending
                    .push_back(Pending::Fatal(BrokerError::bad_request(
                        "frame length 0: a frame holds one MessagePack value",
                    )))
            }
            Err(FrameError::TooLarge { length, limit }) => self
                .pending
                .push_back(Pending::Fatal(BrokerError::FrameTooLarge { length, limit })),
            Err(error @ FrameError::Stalled { .. }) => {
                info!(self.log, "client stalled mid-frame, closing"; "error" => %error);
                self.close(ctx);
                return;
            }
            Err(error) => {
                debug!(self.log, "client read failed"; "error" => %error);
                self.close(ctx);
                return;
            }
        }
        self.pump(ctx);
    }

    /// The client closed its side. Requests read but not started are dropped unanswered; a
    /// request in flight finishes (a wait for keys is cancelled), then the session rolls back
    /// whatever is open and stops.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.pending.back(), Some(Pending::Fatal(_))) {
            // The reader stopped at a framing error: the requests before it and the error
            // itself are answered in order, then the connection is closed.
            return;
        }
        debug!(self.log, "client closed the connection");
        self.close(ctx);
    }
}

/// Sender: the session's writer task, when the client cannot be written to (an error, or
/// answers not taken for `client_read_timeout_ms`).
#[derive(Message)]
#[rtype(result = "()")]
struct WriteFailed {
    reason: String,
}

impl Handler<WriteFailed> for Session {
    type Result = ();

    fn handle(&mut self, message: WriteFailed, ctx: &mut Context<Self>) {
        debug!(self.log, "client write failed"; "reason" => message.reason);
        self.writer = None;
        self.close(ctx);
    }
}

/// The session's writer: writes answers in order, coalescing what is queued into one flush,
/// and releases each answer's pipeline permit only once it is flushed. Ends, closing the
/// socket, when the session drops its sender; tells the session when writing fails.
async fn write_answers(
    mut sink: FramedWrite<ClientWriter, FrameCodec>,
    mut queued: mpsc::UnboundedReceiver<Outgoing>,
    patience: Duration,
    session: Addr<Session>,
) {
    let mut flushed_permits = Vec::new();
    while let Some(first) = queued.recv().await {
        let mut next = Some(first);
        while let Some((response, permit)) = next.take().or_else(|| queued.try_recv().ok()) {
            if let Err(error) = sink.feed(response).await {
                session.do_send(WriteFailed {
                    reason: error.to_string(),
                });
                return;
            }
            flushed_permits.push(permit);
        }
        match tokio::time::timeout(patience, SinkExt::<Response>::flush(&mut sink)).await {
            Ok(Ok(())) => flushed_permits.clear(),
            Ok(Err(error)) => {
                session.do_send(WriteFailed {
                    reason: error.to_string(),
                });
                return;
            }
            Err(_) => {
                session.do_send(WriteFailed {
                    reason: format!("answers not read for {} ms", patience.as_millis()),
                });
                return;
            }
        }
    }
    let _ = tokio::time::timeout(patience, SinkExt::<Response>::close(&mut sink)).await;
}

/// Sender: the acceptor, when the broker starts draining. Answered once the session has no
/// transaction open (at once if it has none).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub at_boundary: oneshot::Sender<()>,
}

impl Handler<Drain> for Session {
    type Result = ();

    fn handle(&mut self, message: Drain, ctx: &mut Context<Self>) {
        if self.phase == SessionPhase::Serving {
            self.phase = SessionPhase::Draining;
        }
        self.drain_waiters.push(message.at_boundary);
        if self.pending.is_empty() {
            self.on_idle(ctx);
        }
    }
}

/// Sender: the acceptor, when the shutdown grace is over. Rolls back whatever is open and
/// stops; a request still in flight is abandoned (its connection is dropped, which makes the
/// server roll back).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for Session {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        match self.engine {
            EngineSlot::Busy => ctx.stop(),
            EngineSlot::Ready(_) => self.close(ctx),
            EngineSlot::Closing => {}
        }
    }
}
