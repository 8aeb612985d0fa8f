//! A session's handle on its keys: the `LockClient` asks the coordinator for them, hands
//! them over when `COMMIT` is sent, and releases them; whatever the session does, dropping
//! the client lets go of every key. A hand-over leaves a `CommitGate` behind: the committing
//! session holds it until its commit's outcome is known and then settles it, which opens the
//! reads of the sessions that took its keys.
//!
//! **Invariant:** a `LockClient` holds keys (`Holding::Keys`) only between a grant and the
//! hand-over or release that ends its transaction; a `CommitGate` is settled exactly once,
//! when dropped at the latest.

use std::future::Future;

use actix::Addr;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::coordinator::{
    Acquire, Admission, CancelWait, Coordinator, CoordinatorStats, GetStats, GroupRequest,
    HandOver, LockFailure, ReleaseAll, Settled, Settlement,
};
use crate::locks::{CommitTicket, Grouping, LockRequest, OwnerId};

/// Whether the session may hold keys right now; saves a message per keyless transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holding {
    Nothing,
    Keys,
}

/// One session's handle on the coordinator: the owner id is the session's.
pub struct LockClient {
    coordinator: Addr<Coordinator>,
    owner: OwnerId,
    holding: Holding,
    hand_overs: u64,
    /// Cancelled by the session when its client has gone: no wait for keys may start or go on.
    client_gone: CancellationToken,
}

impl LockClient {
    pub fn new(coordinator: Addr<Coordinator>, owner: OwnerId) -> LockClient {
        LockClient {
            coordinator,
            owner,
            holding: Holding::Nothing,
            hand_overs: 0,
            client_gone: CancellationToken::new(),
        }
    }

    /// A token that, once cancelled, ends any wait for keys and refuses new ones.
    pub fn cancellation(&self) -> CancellationToken {
        self.client_gone.clone()
    }

    /// Waits until every key of `request` is granted, or fails. Alone: never joins a group.
    pub async fn acquire(&mut self, request: LockRequest) -> Result<Admission, LockFailure> {
        self.acquire_as(request, Grouping::Alone, None).await
    }

    /// Waits until every key of `request` is granted or the request `tx` has joined a group
    /// (when `grouping` allows), or fails.
    pub async fn acquire_as(
        &mut self,
        request: LockRequest,
        grouping: Grouping,
        tx: Option<GroupRequest>,
    ) -> Result<Admission, LockFailure> {
        let again = matches!(grouping, Grouping::Groupable(_)).then(|| request.clone());
        match self.ask(request, grouping, tx).await {
            // A member holds nothing: its leader holds the keys for it.
            Ok(Admission::Joined(outcome)) => {
                self.holding = Holding::Nothing;
                Ok(Admission::Joined(outcome))
            }
            // The group's leader vanished as the request joined it: nothing ran, ask again.
            Err(LockFailure::GroupGone) => match again {
                Some(request) => self.ask(request, Grouping::Alone, None).await,
                None => Err(LockFailure::GroupGone),
            },
            other => other,
        }
    }

    async fn ask(
        &mut self,
        request: LockRequest,
        grouping: Grouping,
        tx: Option<GroupRequest>,
    ) -> Result<Admission, LockFailure> {
        if self.client_gone.is_cancelled() {
            return Err(LockFailure::Cancelled);
        }
        let (reply, admitted) = oneshot::channel();
        self.holding = Holding::Keys;
        self.coordinator.do_send(Acquire {
            owner: self.owner,
            request,
            grouping,
            member: tx,
            reply,
        });
        tokio::select! {
            outcome = admitted => outcome.unwrap_or(Err(LockFailure::Cancelled)),
            () = self.client_gone.cancelled() => {
                // A grant racing with this is fine: whatever was granted is released with
                // the rest when the session ends.
                self.coordinator.do_send(CancelWait { owner: self.owner });
                Err(LockFailure::Cancelled)
            }
        }
    }

    /// Whether keys may be held: between an acquire and the release or hand-over that ends the
    /// transaction.
    pub fn holds_keys(&self) -> bool {
        self.holding == Holding::Keys
    }

    /// Releases every key this session holds; does not wait.
    pub fn release_all(&mut self) {
        if self.holding == Holding::Keys {
            self.coordinator.do_send(ReleaseAll { owner: self.owner });
            self.holding = Holding::Nothing;
        }
    }

    /// Passes every key on to the next waiters, for a transaction whose statements all
    /// succeeded and whose `COMMIT` is about to be sent. The gate must be settled once the
    /// commit's outcome is known.
    pub fn hand_over(&mut self) -> CommitGate {
        self.hand_overs += 1;
        let ticket = CommitTicket {
            owner: self.owner,
            sequence: self.hand_overs,
        };
        let (settlement, settled) = watch::channel(None);
        self.coordinator.do_send(HandOver {
            owner: self.owner,
            ticket,
            settled,
        });
        self.holding = Holding::Nothing;
        CommitGate {
            ticket,
            settlement: Some(settlement),
            coordinator: self.coordinator.clone(),
        }
    }

    /// Tells the coordinator that this session's group takes no more members.
    pub fn close_group(&self) {
        self.coordinator
            .do_send(crate::coordinator::CloseGroup { owner: self.owner });
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

/// The promise a hand-over leaves behind: until it is settled, the sessions that took the
/// keys do not read without locking.
pub struct CommitGate {
    ticket: CommitTicket,
    settlement: Option<watch::Sender<Option<Settlement>>>,
    coordinator: Addr<Coordinator>,
}

impl CommitGate {
    /// The commit answered (`Committed`) or the transaction is known not to have committed.
    pub fn settle(mut self, settlement: Settlement) {
        self.publish(settlement);
    }

    /// The outcome is unknown: settles once `gone` completes, which it must do only when the
    /// committing connection is gone from the server. Runs on the current tokio runtime; with
    /// none (a broker torn down from outside one) it settles at once.
    pub fn settle_after(mut self, gone: impl Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.publish(Settlement::ConnectionGone);
        };
        let Some(settlement) = self.settlement.take() else {
            return;
        };
        let gate = CommitGate {
            ticket: self.ticket,
            settlement: Some(settlement),
            coordinator: self.coordinator.clone(),
        };
        runtime.spawn(async move {
            gone.await;
            gate.settle(Settlement::ConnectionGone);
        });
    }

    fn publish(&mut self, settlement: Settlement) {
        if let Some(sender) = self.settlement.take() {
            sender.send_replace(Some(settlement));
            self.coordinator.do_send(Settled {
                ticket: self.ticket,
            });
        }
    }
}

/// The last resort: a gate dropped unsettled (its session's future abandoned while the
/// broker stops) settles as gone, since the session's connection is dropped with it.
impl Drop for CommitGate {
    fn drop(&mut self) {
        self.publish(Settlement::ConnectionGone);
    }
}
