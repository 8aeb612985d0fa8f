//! The lock coordinator is an actor; it owns the broker's one `LockTable`, the reply channels
//! of the requests waiting in it, the inboxes of open groups and the watches of handed-over
//! commits that have not settled, and it alone enforces `lock_wait_timeout_ms`.
//!
//! Sessions talk to it through their `keys::LockClient`: `Acquire` carries a oneshot sender
//! that the coordinator completes with an `Admission` when every key is granted (or the
//! request joined a group), or with a `LockFailure` when the wait times out or is cancelled.
//! Replies go straight to the waiting session's future, so a grant costs one message in and
//! one wake-up out, and the coordinator never blocks on anyone.
//!
//! **Invariant:** every reply channel in `waiters` belongs to an owner that is waiting in
//! the table, and every waiting owner has exactly one reply channel and one timer.
//!
//! It also keeps the hot keys (`crate::hot_keys`): each wait is charged, when it ends, to
//! the key the request first queued for; a grant at once is counted only for a key already
//! kept. With `hot_keys = 0` none of that runs.
//!
//! **Invariant:** `inboxes` holds a sender exactly for the owners whose group is open in the
//! table; closing, handing over or releasing drops it, so a leader reading its inbox sees the
//! end of its members once no more can join.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, SpawnHandle};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::BrokerError;
pub use crate::error::LockFailure;
use crate::hot_keys::HotKeys;
use crate::idempotency::Claim;
use crate::locks::{
    AcquireOutcome, CommitTicket, Completed, Completion, Grant, GroupReach, Grouping, KeyName,
    LockRequest, LockStats, LockTable, OwnerId,
};
use crate::protocol::{HotKey, Reply, TxRequest};

/// How a handed-over commit ended, as far as a successor's reads care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// `COMMIT` answered: its effects are visible to any read that starts now.
    Committed,
    /// It did not commit: it rolled back, and nothing of it will ever be visible.
    RolledBack,
    /// The outcome is unknown, but the connection is gone from the server: whatever it did
    /// is settled there, one way or the other.
    ConnectionGone,
}

/// The watch a handed-over commit publishes its settlement on; `None` until then.
pub type CommitWatch = watch::Receiver<Option<Settlement>>;

/// What statements that read without locking must wait for: the handed-over commits that had
/// not settled when this session's keys were granted.
#[derive(Debug, Default)]
pub struct ReadGate {
    pending: Vec<CommitWatch>,
}

impl ReadGate {
    /// Whether a read may go ahead at once.
    pub fn is_open(&self) -> bool {
        self.pending
            .iter()
            .all(|watch| watch.borrow().is_some() || watch.has_changed().is_err())
    }

    /// Adds the commits of a later grant (a `lock` extension).
    pub fn extend(&mut self, other: ReadGate) {
        self.pending.extend(other.pending);
    }

    /// Waits until every commit has settled. A watch whose sender is gone without a
    /// settlement counts as settled: its session settles it before letting go (see
    /// `keys::CommitGate`), so that only happens when the whole broker is stopping.
    pub async fn wait(&mut self) {
        for watch in &mut self.pending {
            let _ = watch.wait_for(Option::is_some).await;
        }
        self.pending.clear();
    }
}

/// A request that may run in another session's group, as its session hands it to the
/// coordinator: the request, and its idempotency claim (key and hash), made once by that
/// session so that the leader does not hash the request again.
#[derive(Clone, Debug)]
pub struct GroupRequest {
    pub tx: Arc<TxRequest>,
    pub claim: Option<Claim>,
}

/// A request that joined a group, as its leader receives it.
pub struct Member {
    pub request: GroupRequest,
    /// Where the leader sends the request's answer once the group's commit has answered.
    pub outcome: oneshot::Sender<Result<Reply, BrokerError>>,
}

/// How a request was admitted.
pub enum Admission {
    /// Every key is held; the session runs its transaction. `group` is the inbox of members
    /// when it leads a group.
    Granted {
        read_gate: ReadGate,
        group: Option<mpsc::UnboundedReceiver<Member>>,
    },
    /// The request joined a group; its leader runs it and answers here.
    Joined(oneshot::Receiver<Result<Reply, BrokerError>>),
}

type AdmissionReply = oneshot::Sender<Result<Admission, LockFailure>>;

struct Waiter {
    reply: AdmissionReply,
    timer: SpawnHandle,
    /// The request itself, for a leader to run, when it may be grouped.
    member: Option<GroupRequest>,
    /// The key it first queued for, and when, while hot keys are kept.
    queued: Option<(KeyName, Instant)>,
}

pub struct Coordinator {
    table: LockTable,
    waiters: HashMap<OwnerId, Waiter>,
    inboxes: HashMap<OwnerId, mpsc::UnboundedSender<Member>>,
    commits: HashMap<CommitTicket, CommitWatch>,
    lock_wait_timeout: Duration,
    lock_timeouts: u64,
    /// `None` with `hot_keys = 0`.
    hot_keys: Option<HotKeys>,
}

impl Coordinator {
    /// `max_group_size` 0 or 1 turns group execution off; `hot_keys` is how many hot keys
    /// `GetStats` reports, 0 for none (and no tracking).
    pub fn new(
        lock_wait_timeout: Duration,
        max_group_size: usize,
        group_reach: GroupReach,
        hot_keys: usize,
    ) -> Coordinator {
        Coordinator {
            table: LockTable::with_groups(max_group_size, group_reach),
            waiters: HashMap::new(),
            inboxes: HashMap::new(),
            commits: HashMap::new(),
            lock_wait_timeout,
            lock_timeouts: 0,
            hot_keys: (hot_keys > 0).then(|| HotKeys::new(hot_keys, Instant::now())),
        }
    }

    /// Charges a wait that ended to the key it first queued for.
    fn wait_ended(&mut self, waiter: &Waiter, granted: bool) {
        if let (Some(hot_keys), Some((key, since))) = (&mut self.hot_keys, &waiter.queued) {
            let now = Instant::now();
            hot_keys.waited(key, now.saturating_duration_since(*since), granted, now);
        }
    }

    /// The keys of `request` that are hot now, whose grant at once is worth counting; empty
    /// (and no allocation) when nothing is hot.
    fn hot_keys_of(&self, request: &LockRequest) -> Vec<KeyName> {
        let Some(hot_keys) = &self.hot_keys else {
            return Vec::new();
        };
        request
            .keys()
            .iter()
            .filter_map(|(key, _)| hot_keys.keeps(key).cloned())
            .collect()
    }

    fn granted_at_once(&mut self, keys: Vec<KeyName>) {
        if keys.is_empty() {
            return;
        }
        if let Some(hot_keys) = &mut self.hot_keys {
            let now = Instant::now();
            for key in &keys {
                hot_keys.granted(key, now);
            }
        }
    }

    /// The key `owner` just queued for, and when, while hot keys are kept; the wait is
    /// counted when it ends (`wait_ended`), or read in progress by `hottest`.
    fn queued(&self, owner: OwnerId) -> Option<(KeyName, Instant)> {
        self.hot_keys.as_ref()?;
        Some((self.table.waiting_key_name(owner)?, Instant::now()))
    }

    /// The hot keys for `GetStats`, with their queues now.
    fn hottest(&mut self) -> Vec<HotKey> {
        let Some(hot_keys) = &mut self.hot_keys else {
            return Vec::new();
        };
        let now = Instant::now();
        let ongoing = self.waiters.values().filter_map(|waiter| {
            let (key, since) = waiter.queued.as_ref()?;
            Some((key, now.saturating_duration_since(*since)))
        });
        hot_keys
            .hottest(now, ongoing)
            .into_iter()
            .map(|heat| HotKey {
                waiting: self.table.queue_len(&heat.key) as u64,
                key: heat.key.to_string(),
                wait_seconds: heat.wait.as_secs_f64(),
                waits: heat.waits,
                grants: heat.grants,
            })
            .collect()
    }

    fn complete(&mut self, completions: Vec<Completion>, ctx: &mut Context<Self>) {
        for Completion { owner, completed } in completions {
            let Some(waiter) = self.waiters.remove(&owner) else {
                continue;
            };
            ctx.cancel_future(waiter.timer);
            self.wait_ended(&waiter, true);
            match completed {
                Completed::Granted(grant) => {
                    let admission = self.admit(owner, grant);
                    // A session that stopped listening releases its keys itself when it stops.
                    let _ = waiter.reply.send(Ok(admission));
                }
                Completed::Joined { leader } => {
                    self.send_to_group(leader, waiter.member, waiter.reply)
                }
            }
        }
    }

    /// What a granted owner is told: the commits its reads wait for, and its inbox if it
    /// leads a group.
    fn admit(&mut self, owner: OwnerId, grant: Grant) -> Admission {
        let read_gate = ReadGate {
            pending: grant
                .read_after
                .iter()
                .filter_map(|ticket| self.commits.get(ticket).cloned())
                .collect(),
        };
        let group = grant.leading.then(|| {
            let (sender, inbox) = mpsc::unbounded_channel();
            self.inboxes.insert(owner, sender);
            inbox
        });
        Admission::Granted { read_gate, group }
    }

    fn send_to_group(
        &mut self,
        leader: OwnerId,
        member: Option<GroupRequest>,
        reply: AdmissionReply,
    ) {
        let (outcome, joined) = oneshot::channel();
        let delivered = match (self.inboxes.get(&leader), member) {
            (Some(inbox), Some(request)) => inbox.send(Member { request, outcome }).is_ok(),
            _ => false,
        };
        let _ = reply.send(if delivered {
            Ok(Admission::Joined(joined))
        } else {
            // The leader's session is gone and its release is on its way: the keys granted to
            // it for this request go with it.
            Err(LockFailure::GroupGone)
        });
    }

    fn fail_waiter(&mut self, owner: OwnerId, failure: LockFailure, ctx: &mut Context<Self>) {
        if let Some(waiter) = self.waiters.remove(&owner) {
            ctx.cancel_future(waiter.timer);
            self.wait_ended(&waiter, false);
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
        self.wait_ended(&waiter, false);
        let completions = self.table.release_all(owner);
        let _ = waiter.reply.send(Err(LockFailure::Timeout {
            key,
            waited_ms: self.lock_wait_timeout.as_millis() as u64,
        }));
        self.complete(completions, ctx);
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;
}

/// Sender: a session's `LockClient`. Asks for `request`'s keys for `owner`; `member` is the
/// request itself when it may run in a group (`grouping` says of which class).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acquire {
    pub owner: OwnerId,
    pub request: LockRequest,
    pub grouping: Grouping,
    pub member: Option<GroupRequest>,
    pub reply: AdmissionReply,
}

impl Handler<Acquire> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: Acquire, ctx: &mut Context<Self>) {
        let Acquire {
            owner,
            request,
            grouping,
            member,
            reply,
        } = message;
        let hot = self.hot_keys_of(&request);
        match self.table.acquire_as(owner, request, grouping) {
            AcquireOutcome::Granted(grant) => {
                self.granted_at_once(hot);
                let admission = self.admit(owner, grant);
                let _ = reply.send(Ok(admission));
            }
            AcquireOutcome::Joined { leader } => {
                self.granted_at_once(hot);
                self.send_to_group(leader, member, reply)
            }
            AcquireOutcome::Conflict { key } => {
                let _ = reply.send(Err(LockFailure::Conflict { key }));
            }
            AcquireOutcome::Waiting => {
                let timer = ctx.run_later(self.lock_wait_timeout, move |coordinator, ctx| {
                    coordinator.expire(owner, ctx)
                });
                let queued = self.queued(owner);
                self.waiters.insert(
                    owner,
                    Waiter {
                        reply,
                        timer,
                        member,
                        queued,
                    },
                );
            }
        }
    }
}

/// Sender: a session's `LockClient`, when its transaction ends without a hand-over or the
/// session stops. Releases every key of `owner` and drops its waiting request.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseAll {
    pub owner: OwnerId,
}

impl Handler<ReleaseAll> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: ReleaseAll, ctx: &mut Context<Self>) {
        self.fail_waiter(message.owner, LockFailure::Cancelled, ctx);
        self.inboxes.remove(&message.owner);
        let completions = self.table.release_all(message.owner);
        self.complete(completions, ctx);
    }
}

/// Sender: a session's `LockClient`, once its transaction's statements all succeeded and it
/// is about to send `COMMIT`. Passes `owner`'s keys on; successors' reads wait on `settled`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandOver {
    pub owner: OwnerId,
    pub ticket: CommitTicket,
    pub settled: CommitWatch,
}

impl Handler<HandOver> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: HandOver, ctx: &mut Context<Self>) {
        self.inboxes.remove(&message.owner);
        self.commits.insert(message.ticket, message.settled);
        let completions = self.table.hand_over(message.owner, message.ticket);
        self.complete(completions, ctx);
    }
}

/// Sender: the `CommitGate` of a handed-over commit, once it has settled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settled {
    pub ticket: CommitTicket,
}

impl Handler<Settled> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: Settled, _: &mut Context<Self>) {
        self.commits.remove(&message.ticket);
        self.table.settle(message.ticket);
    }
}

/// Sender: a group's leader, when it has run the members it has. Waiters that may join now
/// are sent to its inbox; when there are none the group closes, and dropping the inbox's
/// sender ends the leader's reading.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseGroup {
    pub owner: OwnerId,
}

impl Handler<CloseGroup> for Coordinator {
    type Result = ();

    fn handle(&mut self, message: CloseGroup, ctx: &mut Context<Self>) {
        let joined = self.table.close_group(message.owner);
        if joined.is_empty() {
            self.inboxes.remove(&message.owner);
        } else {
            self.complete(joined, ctx);
        }
    }
}

/// Sender: a session's `LockClient` whose client went away while it waited for keys. Ends
/// the wait (answered `Cancelled`) but keeps the keys held, which the session releases after
/// its database rollback.
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
        let completions = self.table.cancel_wait(message.owner);
        self.complete(completions, ctx);
    }
}

/// The coordinator's counters and hot keys, for `stats` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoordinatorStats {
    pub table: LockStats,
    pub lock_timeouts: u64,
    /// The hottest keys of the recent window, most waited-for first.
    pub hot_keys: Vec<HotKey>,
}

/// Sender: a session answering `stats`, or the monitor (`crate::monitor`) at a scrape.
#[derive(Message)]
#[rtype(result = "CoordinatorStats")]
pub struct GetStats;

impl Handler<GetStats> for Coordinator {
    type Result = actix::MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(CoordinatorStats {
            table: self.table.stats(),
            lock_timeouts: self.lock_timeouts,
            hot_keys: self.hottest(),
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
