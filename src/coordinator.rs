//! The lock coordinator is an actor; it owns the broker's one `LockTable` and the reply
//! channels of the requests waiting in it, and it alone enforces `lock_wait_timeout_ms`.
//!
//! Sessions talk to it through a `LockClient`: `Acquire` carries a oneshot sender that the
//! coordinator completes when every key is granted, when the wait times out, or when the
//! wait is cancelled. Replies go straight to the waiting session's future, so a grant costs
//! one message in and one wake-up out, and the coordinator never blocks on anyone.
//!
//! **Invariant:** every reply channel in `waiters` belongs to an owner that is waiting in
//! the table, and every waiting owner has exactly one reply channel and one timer.

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, SpawnHandle};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::locks::{AcquireOutcome, LockRequest, LockStats, LockTable, OwnerId};

/// Why keys were not granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockFailure {
    /// Not granted within `lock_wait_timeout_ms`; every key of the owner was released.
    Timeout { key: String, waited_ms: u64 },
    /// An out-of-order key was busy (try-only rule); keys granted so far are still held.
    Conflict { key: String },
    /// The wait was cancelled (the session is going away), or the coordinator is gone.
    Cancelled,
}

type Reply = oneshot::Sender<Result<(), LockFailure>>;

struct Waiter {
    reply: Reply,
    timer: SpawnHandle,
}

pub struct Coordinator {
    table: LockTable,
    waiters: HashMap<OwnerId, Waiter>,
    lock_wait_timeout: Duration,
    lock_timeouts: u64,
}

impl Coordinator {
    pub fn new(lock_wait_timeout: Duration) -> Coordinator {
        Coordinator {
            table: LockTable::new(),
            waiters: HashMap::new(),
            lock_wait_timeout,
            lock_timeouts: 0,
        }
    }

    fn complete(&mut self, granted: Vec<OwnerId>, ctx: &mut Context<Self>) {
        for owner in granted {
            if let Some(waiter) = self.waiters.remove(&owner) {
                ctx.cancel_future(waiter.timer);
                // A session that stopped listening releases its keys itself when it stops.
                let _ = waiter.reply.send(Ok(()));
            }
        }
    }

    fn fail_waiter(&mut self, owner: OwnerId, failure: LockFailure, ctx: &mut Context<Self>) {
        if let Some(waiter) = self.waiters.remove(&owner) {
            ctx.cancel_future(waiter.timer);
            let _ = waiter.reply.send(Err(failure));
        }
    }

    fn expire(&mut self, owner: OwnerId, ctx: &mut Context<Self>) {
        let Some(waiter) = self.waiters.remove(&owner) else {
            return;
        };
        let key = self
            .table
            .waiting_key(owner)
            .unwrap_or_default()
            .to_string();
        self.lock_timeouts += 1;
        let granted = self.table.release_all(owner);
        let _ = waiter.reply.send(Err(LockFailure::Timeout {
            key,
            waited_ms: self.lock_wait_timeout.as_millis() as u64,
        }));
        self.complete(granted, ctx);
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;
}

/// Sender: a session's `LockClient`. Asks for `request`'s keys for `owner`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acquire {
    pub owner: OwnerId,
    pub request: LockRequest,
    pub reply: Reply,
}

impl Handler<Acquire> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: Acquire, ctx: &mut Context<Self>) {
        let Acquire {
            owner,
            request,
            reply,
        } = message;
        match self.table.acquire(owner, request) {
            AcquireOutcome::Granted => {
                let _ = reply.send(Ok(()));
            }
            AcquireOutcome::Conflict { key } => {
                let _ = reply.send(Err(LockFailure::Conflict { key }));
            }
            AcquireOutcome::Waiting => {
                let timer = ctx.run_later(self.lock_wait_timeout, move |coordinator, ctx| {
                    coordinator.expire(owner, ctx)
                });
                self.waiters.insert(owner, Waiter { reply, timer });
            }
        }
    }
}

/// Sender: a session's `LockClient`, when its transaction ends or the session stops.
/// Releases every key of `owner` and drops its waiting request.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseAll {
    pub owner: OwnerId,
}

impl Handler<ReleaseAll> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: ReleaseAll, ctx: &mut Context<Self>) {
        self.fail_waiter(message.owner, LockFailure::Cancelled, ctx);
        let granted = self.table.release_all(message.owner);
        self.complete(granted, ctx);
    }
}

/// Sender: a session whose client went away while it waited for keys. Ends the wait
/// (answered `Cancelled`) but keeps the keys held, which the session releases after its
/// database rollback.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelWait {
    pub owner: OwnerId,
}

impl Handler<CancelWait> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: CancelWait, ctx: &mut Context<Self>) {
        if !self.waiters.contains_key(&message.owner) {
            return;
        }
        self.fail_waiter(message.owner, LockFailure::Cancelled, ctx);
        let granted = self.table.cancel_wait(message.owner);
        self.complete(granted, ctx);
    }
}

/// The coordinator's counters for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    pub table: LockStats,
    pub lock_timeouts: u64,
}

/// Sender: a session answering `stats`.
#[derive(Message)]
#[rtype(result = "CoordinatorStats")]
pub struct GetStats;

impl Handler<GetStats> for Coordinator {
    type Result = actix::MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(CoordinatorStats {
            table: self.table.stats(),
            lock_timeouts: self.lock_timeouts,
        })
    }
}

/// Sender: the broker at the end of shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Coordinator {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Whether a session may hold keys right now; saves a message per keyless transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holding {
    Nothing,
    MaybeKeys,
}

/// One session's handle on the coordinator: the owner id is the session's.
pub struct LockClient {
    coordinator: Addr<Coordinator>,
    owner: OwnerId,
    holding: Holding,
    /// Cancelled by the session when its client has gone: no wait for keys may start or go on.
    client_gone: CancellationToken,
}

impl LockClient {
    pub fn new(coordinator: Addr<Coordinator>, owner: OwnerId) -> LockClient {
        LockClient {
            coordinator,
            owner,
            holding: Holding::Nothing,
            client_gone: CancellationToken::new(),
        }
    }

    pub fn owner(&self) -> OwnerId {
        self.owner
    }

    /// A token that, once cancelled, ends any wait for keys and refuses new ones.
    pub fn cancellation(&self) -> CancellationToken {
        self.client_gone.clone()
    }

    /// Waits until every key of `request` is granted, or fails.
    pub async fn acquire(&mut self, request: LockRequest) -> Result<(), LockFailure> {
        if self.client_gone.is_cancelled() {
            return Err(LockFailure::Cancelled);
        }
        let (reply, granted) = oneshot::channel();
        self.holding = Holding::MaybeKeys;
        self.coordinator.do_send(Acquire {
            owner: self.owner,
            request,
            reply,
        });
        tokio::select! {
            outcome = granted => outcome.unwrap_or(Err(LockFailure::Cancelled)),
            () = self.client_gone.cancelled() => {
                // A grant racing with this is fine: whatever was granted is released with
                // the rest when the session ends.
                self.coordinator.do_send(CancelWait { owner: self.owner });
                Err(LockFailure::Cancelled)
            }
        }
    }

    /// Releases every key this session holds; does not wait.
    pub fn release_all(&mut self) {
        if self.holding == Holding::MaybeKeys {
            self.coordinator.do_send(ReleaseAll { owner: self.owner });
            self.holding = Holding::Nothing;
        }
    }

    pub async fn stats(&self) -> Option<CoordinatorStats> {
        self.coordinator.send(GetStats).await.ok()
    }
}

/// Keys never outlive their client: a session dropped in the middle of a request (its future
/// abandoned at shutdown, an embedded session dropped by the application) still lets go.
impl Drop for LockClient {
    fn drop(&mut self) {
        self.release_all();
    }
}
