//! The acceptor is an actor; it owns the TCP listener and the registry of live TCP sessions.
//! It enforces `max_sessions` (refusing the extra client with `busy`), starts one session
//! actor per client on the session arbiters, round robin, and runs the drain at shutdown.
//! Session ids come from the `SessionFactory`, which embedded sessions share.
//!
//! **Invariant:** `sessions` holds exactly the sessions that were started and have not yet
//! reported `SessionEnded`; its size is what `max_sessions` is checked against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures_util::future::join_all;
use slog::{info, warn};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Encoder;

use crate::engine::SessionFactory;
use crate::error::BrokerError;
use crate::frame::FrameCodec;
use crate::protocol::Response;
use crate::session::{Close, Drain, Session, SessionParts};

/// How long a refused client gets to take its `busy` answer.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long sessions get to roll back and close once the grace is over.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptorPhase {
    Accepting,
    Draining,
}

pub struct Acceptor {
    shared: SessionFactory,
    tls: Option<TlsAcceptor>,
    listener: Option<TcpListener>,
    listener_handle: Option<SpawnHandle>,
    session_arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    sessions: HashMap<u64, Addr<Session>>,
    phase: AcceptorPhase,
    all_ended: Vec<oneshot::Sender<()>>,
}

impl Acceptor {
    pub fn new(
        shared: SessionFactory,
        tls: Option<TlsAcceptor>,
        listener: TcpListener,
        session_arbiters: Vec<ArbiterHandle>,
    ) -> Acceptor {
        Acceptor {
            shared,
            tls,
            listener: Some(listener),
            listener_handle: None,
            session_arbiters,
            next_arbiter: 0,
            sessions: HashMap::new(),
            phase: AcceptorPhase::Accepting,
            all_ended: Vec::new(),
        }
    }

    fn refuse_busy(&self, mut stream: TcpStream, peer: SocketAddr) {
        let max_sessions = self.shared.config.max_sessions;
        warn!(self.shared.log, "session refused"; "peer" => %peer, "reason" => "busy", "max_sessions" => max_sessions);
        let mut bytes = bytes::BytesMut::new();
        let busy = Response::failure(None, &BrokerError::Busy { max_sessions });
        if FrameCodec::new(usize::MAX)
            .encode(busy, &mut bytes)
            .is_err()
        {
            return;
        }
        actix_rt::spawn(async move {
            let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
                stream.write_all(&bytes).await?;
                stream.shutdown().await
            })
            .await;
        });
    }

    fn start_session(&mut self, stream: TcpStream, peer: SocketAddr, ctx: &mut Context<Self>) {
        let std_stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                warn!(self.shared.log, "cannot hand over connection"; "peer" => %peer, "error" => %error);
                return;
            }
        };
        let engine = self.shared.new_engine(&peer.to_string());
        let id = engine.session_id();
        let arbiter = &self.session_arbiters[self.next_arbiter % self.session_arbiters.len()];
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        let shared = &self.shared;
        let parts = SessionParts {
            engine,
            config: shared.config.clone(),
            acceptor: ctx.address(),
            tls: self.tls.clone(),
        };
        let session = Session::start_in_arbiter(arbiter, move |_| {
            let stream = TcpStream::from_std(std_stream)
                .expect("session arbiters run a tokio runtime with I/O enabled");
            Session::new(parts, stream)
        });
        self.sessions.insert(id, session);
    }
}

impl Actor for Acceptor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let connections = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await;
            Some((accepted, listener))
        });
        self.listener_handle = Some(ctx.add_stream(connections));
    }
}

impl StreamHandler<std::io::Result<(TcpStream, SocketAddr)>> for Acceptor {
    fn handle(
        &mut self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
        ctx: &mut Context<Self>,
    ) {
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                if self.phase == AcceptorPhase::Draining {
                    return;
                }
                if self.sessions.len() >= self.shared.config.max_sessions {
                    self.refuse_busy(stream, peer);
                } else {
                    self.start_session(stream, peer, ctx);
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning on accept.
                warn!(self.shared.log, "accept failed"; "error" => %error);
                ctx.wait(actix::clock::sleep(Duration::from_millis(50)).into_actor(self));
            }
        }
    }
}

/// Sender: a session, from its `stopped()`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    pub id: u64,
}

impl Handler<SessionEnded> for Acceptor {
    type Result = ();

    fn handle(&mut self, message: SessionEnded, _: &mut Context<Self>) {
        if self.sessions.remove(&message.id).is_some() {
            self.shared.metrics.session_ended();
        }
        if self.sessions.is_empty() {
            for waiter in self.all_ended.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

/// Sender: the broker handle. Stops accepting, lets open transactions reach their boundary
/// for up to `shutdown_grace_ms`, then closes every session; answered when all have ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Acceptor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        info!(self.shared.log, "draining"; "sessions" => self.sessions.len(), "grace_ms" => self.shared.config.shutdown_grace_ms);
        self.phase = AcceptorPhase::Draining;
        if let Some(handle) = self.listener_handle.take() {
            ctx.cancel_future(handle);
        }
        let at_boundary: Vec<_> = self
            .sessions
            .values()
            .map(|session| {
                let (sender, receiver) = oneshot::channel();
                session.do_send(Drain {
                    at_boundary: sender,
                });
                receiver
            })
            .collect();
        let grace = self.shared.config.shutdown_grace();
        let drained = async move {
            let _ = tokio::time::timeout(grace, join_all(at_boundary)).await;
        };
        Box::pin(drained.into_actor(self).then(|(), acceptor, _| {
            let (sender, all_ended) = oneshot::channel();
            if acceptor.sessions.is_empty() {
                let _ = sender.send(());
            } else {
                acceptor.all_ended.push(sender);
            }
            for session in acceptor.sessions.values() {
                session.do_send(Close);
            }
            let log = acceptor.shared.log.clone();
            async move {
                if tokio::time::timeout(CLOSE_TIMEOUT, all_ended)
                    .await
                    .is_err()
                {
                    warn!(log, "sessions did not close in time");
                }
                info!(log, "drained");
            }
            .into_actor(acceptor)
        }))
    }
}
