//! Exhaustive model check of the lock coordinator's rules (issue 10): the real
//! `txbroker::locks::LockTable`, driven through its public API exactly as the
//! coordinator drives it, by a few abstract transactions that each run a small
//! script, in every interleaving, with `stateright`'s breadth-first checker.
//!
//! The model owns the transactions' side of the story: what each is doing
//! (idle, waiting, holding, leading a group, a member of one, aborting after a
//! `Conflict`, cancelled, done), what the table told it (the keys granted, the
//! tickets to read after, its leader) and which handed-over commits have not
//! settled. Every step is one call the coordinator makes (`acquire_as`,
//! `acquire` for a `lock` extension, `close_group`, `hand_over`, `release_all`,
//! `cancel_wait`, `settle`) followed by the completions it returns, in order.
//!
//! Properties, checked in every reachable state of every configuration:
//! - **mutual exclusion**: no key is held by two owners in conflicting modes;
//!   what the table granted is held; a member holds nothing and its leader
//!   holds every key of the member's request in a covering mode;
//! - **the model agrees with the table** (waiting, holding, leaving the table);
//! - **no deadlock**: no cycle of waits, and no front waiter that could be
//!   granted (a lost wake-up);
//! - **progress**: a state where not everything is finished always has a step
//!   that is not a timeout or a cancellation; since every step moves some
//!   transaction forward (checked too), the state graph is finite and acyclic,
//!   so every path from any reachable state that uses no timeout ends with
//!   every transaction finished: nobody starves, nobody is stuck;
//! - **bounded overtaking**: a waiting request is overtaken on the key it waits
//!   for (a request that neither held it nor was queued ahead is granted that
//!   key, or joins a group that holds it) at most `max_group_size - 1` times
//!   per owner that held or queued ahead for the key when it queued, the bound
//!   `locks.rs` promises per leader; with groups off, never;
//! - **read gate**: a grant in a mode that conflicts with an unsettled
//!   handed-over commit on one of its keys names that commit in `read_after`;
//! - **groups**: members join only an open leader of their class whose group
//!   is not full; `Grant::leading` exactly for groupable requests granted after
//!   waiting; the table's group state matches the model's;
//! - **no leak**: when every transaction has finished and every commit has
//!   settled, the table is empty;
//! - `eventually` everything finishes, and `sometimes` properties that show
//!   each configuration reaches the situations it is meant to explore.
//!
//! Checks made on a step (a grant's `read_after`, a join's leader) are written
//! into the state as faults, so that the checker reports the path that led there.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use stateright::{Checker, Expectation, Model, Property};
use txbroker::locks::{
    AcquireOutcome, CommitTicket, Completed, Completion, Grant, GroupClass, Grouping, Leadership,
    LockMode, LockRequest, LockTable, OwnerId, TableSnapshot,
};

use LockMode::{Exclusive, Shared};

/// Every key any script names, ascending.
const KEYS: [&str; 4] = ["a", "b", "c", "d"];

/// A model key: one of `KEYS`, so that states copy pointers, not strings.
type Key = &'static str;

fn key_of(name: &str) -> Key {
    KEYS.iter()
        .copied()
        .find(|key| *key == name)
        .expect("scripts name only keys of KEYS")
}

fn conflicts(left: LockMode, right: LockMode) -> bool {
    left == Exclusive || right == Exclusive
}

/// The keys of one `tx`, `begin` or `lock` request.
#[derive(Clone, Copy, Debug)]
struct Request {
    exclusive: &'static [Key],
    shared: &'static [Key],
}

const fn request(exclusive: &'static [Key], shared: &'static [Key]) -> Request {
    Request { exclusive, shared }
}

impl Request {
    fn lock_request(&self) -> LockRequest {
        LockRequest::new(
            self.exclusive.iter().map(|key| key.to_string()),
            self.shared.iter().map(|key| key.to_string()),
        )
        .expect("every script request names a key")
    }

    /// Ascending, merged as `LockRequest` merges them.
    fn keys(&self) -> Vec<(Key, LockMode)> {
        self.lock_request()
            .keys()
            .iter()
            .map(|(key, mode)| (key_of(key), *mode))
            .collect()
    }
}

/// What one transaction (one session) runs each time: a `tx` (one request), or
/// an interactive transaction (`begin` with keys, then `lock` extensions).
#[derive(Clone, Debug)]
struct Script {
    requests: Vec<Request>,
    grouping: Grouping,
}

fn tx(exclusive: &'static [Key], shared: &'static [Key]) -> Script {
    Script {
        requests: vec![request(exclusive, shared)],
        grouping: Grouping::Alone,
    }
}

fn groupable(class: u8, exclusive: &'static [Key], shared: &'static [Key]) -> Script {
    Script {
        requests: vec![request(exclusive, shared)],
        grouping: Grouping::Groupable(GroupClass(class)),
    }
}

fn interactive(requests: &[Request]) -> Script {
    Script {
        requests: requests.to_vec(),
        grouping: Grouping::Alone,
    }
}

/// Situations a configuration is meant to reach; each becomes a `sometimes`
/// property of that configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Situation {
    /// A waiting owner holds keys of its request (hold-and-wait).
    HoldAndWait,
    /// Readers share a key.
    SharedHolders,
    /// A key is held in a mode that conflicts with an unsettled commit on it.
    HandedOverUnsettled,
    /// A `lock` extension waits.
    ExtensionWaits,
    /// A `lock` extension was refused (`Conflict`) and the transaction aborts.
    ExtensionConflict,
    /// A waiting request has been overtaken.
    Overtaken,
    /// A group has a member.
    GroupMember,
    /// A group is full.
    GroupFull,
    /// A leader closed its group, which has members.
    ClosedWithMembers,
    /// A cancelled wait left keys held.
    CancelledHolding,
}

/// Events seen on steps, counted across the whole check, to show that each
/// configuration exercised what it claims (they are not part of the state, so
/// they do not multiply it).
#[derive(Debug, Default)]
struct Coverage {
    waits: AtomicU64,
    grants_after_waiting: AtomicU64,
    read_after_reported: AtomicU64,
    joins_at_arrival: AtomicU64,
    joins_at_completion: AtomicU64,
    joins_by_close_group: AtomicU64,
    joins_of_holding_waiters: AtomicU64,
    joined_keys_with_unsettled_commit: AtomicU64,
    extension_waits: AtomicU64,
    extension_conflicts: AtomicU64,
    upgrades: AtomicU64,
    overtakes: AtomicU64,
    /// The most times one waiter was overtaken on one key.
    most_overtaken: AtomicU64,
    settles: AtomicU64,
    escapes: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

struct LockModel {
    name: &'static str,
    max_group_size: usize,
    scripts: Vec<Script>,
    /// How many times each transaction runs its script.
    runs: u8,
    /// Whether waits may time out and be cancelled, and leaders vanish.
    escapes: bool,
    situations: Vec<Situation>,
    coverage: Arc<Coverage>,
}

fn owner_of(tx: usize) -> OwnerId {
    tx as OwnerId + 1
}

fn tx_of(owner: OwnerId) -> usize {
    owner as usize - 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// Before its run's first request.
    Idle,
    /// Request `step` of its script is queued in the table.
    Waiting { step: usize },
    /// Requests up to `step` are granted; it runs alone.
    Holding { step: usize },
    /// Granted after waiting, it leads a group; `open` until `close_group`
    /// found no one left to join.
    Leading { open: bool },
    /// Joined the group of transaction `leader`, which runs it.
    Member { leader: usize },
    /// A `lock` extension got `Conflict`: it rolls back, then releases.
    Aborting,
    /// Its wait was cancelled (the client left): it releases next.
    Cancelled,
    /// Ran its script `runs` times.
    Done,
}

/// What a waiting request has seen on the key it is queued on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Watch {
    key: Key,
    /// How many owners held the key or were queued ahead when it queued.
    ahead: u8,
    /// Those owners, a bit per transaction; a transaction loses its bit when
    /// it makes a new request, which is not ahead of anyone.
    ahead_of_it: u8,
    /// Requests not ahead of it granted the key, or joined a group holding
    /// it, since it queued.
    overtaken: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Tx {
    runs_done: u8,
    hand_overs: u64,
    phase: Phase,
    /// Keys the table reported granted in this transaction, strongest mode.
    granted: BTreeMap<Key, LockMode>,
    /// The `read_after` tickets of this transaction's grants.
    told: BTreeSet<CommitTicket>,
    watch: Option<Watch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Fault {
    property: &'static str,
    detail: String,
}

#[derive(Clone)]
struct State {
    table: LockTable,
    /// `table.snapshot()`, kept with it: states are hashed and compared by it.
    snapshot: TableSnapshot,
    txs: Vec<Tx>,
    /// Handed-over commits that have not settled, with the keys and modes
    /// their owner held at the hand-over.
    unsettled: BTreeMap<CommitTicket, Vec<(Key, LockMode)>>,
    faults: Vec<Fault>,
}

impl Hash for State {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        self.snapshot.hash(hasher);
        self.txs.hash(hasher);
        self.unsettled.hash(hasher);
        self.faults.hash(hasher);
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.snapshot == other.snapshot
            && self.txs == other.txs
            && self.unsettled == other.unsettled
            && self.faults == other.faults
    }
}

impl fmt::Debug for State {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "State {{")?;
        for (index, tx) in self.txs.iter().enumerate() {
            writeln!(
                formatter,
                "  T{index} (owner {}): run {} {:?} granted {:?} told {:?} watch {:?}",
                owner_of(index),
                tx.runs_done,
                tx.phase,
                tx.granted,
                tx.told,
                tx.watch
            )?;
        }
        for key in &self.snapshot.keys {
            writeln!(
                formatter,
                "  key {}: holders {:?} queue {:?} committing {:?}",
                key.name, key.holders, key.queue, key.committing
            )?;
        }
        for owner in &self.snapshot.owners {
            writeln!(
                formatter,
                "  owner {}: held {:?} waiting {:?} {:?} {:?} read_after {:?}",
                owner.owner,
                owner.held,
                owner.waiting,
                owner.grouping,
                owner.leadership,
                owner.read_after
            )?;
        }
        writeln!(formatter, "  unsettled {:?}", self.unsettled)?;
        writeln!(formatter, "  faults {:?}", self.faults)?;
        write!(formatter, "}}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// The transaction's first request: `acquire_as` with its grouping.
    Start(usize),
    /// Its next `lock` extension: `acquire`.
    Extend(usize),
    /// A leader out of members: `close_group`.
    CloseGroup(usize),
    /// `COMMIT` sent after every statement succeeded: `hand_over`.
    HandOver(usize),
    /// Commit without hand-over, rollback, or the end of an aborted or
    /// cancelled transaction: `release_all`.
    Release(usize),
    /// The handed-over commit answered: `settle`.
    Settle(CommitTicket),
    /// Escape: `lock_wait_timeout_ms` passed (`release_all` of a waiter).
    Timeout(usize),
    /// Escape: the client left while waiting (`cancel_wait`; `Release` next).
    CancelWait(usize),
    /// Escape: a leader's session went away with its group open.
    LeaderGone(usize),
}

impl Action {
    fn is_escape(&self) -> bool {
        matches!(
            self,
            Action::Timeout(_) | Action::CancelWait(_) | Action::LeaderGone(_)
        )
    }
}

/// A join seen during a step, for the overtaking count.
struct Join {
    joiner: usize,
    leader: usize,
    keys: Vec<(Key, LockMode)>,
}

fn held_by(snapshot: &TableSnapshot, owner: OwnerId) -> BTreeMap<Key, LockMode> {
    snapshot
        .owners
        .iter()
        .find(|state| state.owner == owner)
        .map(|state| {
            state
                .held
                .iter()
                .map(|(key, mode)| (key_of(key), *mode))
                .collect()
        })
        .unwrap_or_default()
}

fn waiting_key(snapshot: &TableSnapshot, owner: OwnerId) -> Option<Key> {
    snapshot
        .owners
        .iter()
        .find(|state| state.owner == owner)
        .and_then(|state| state.waiting.as_ref())
        .map(|waiting| key_of(&waiting.key))
}

impl LockModel {
    fn new(name: &'static str, max_group_size: usize, scripts: Vec<Script>) -> LockModel {
        LockModel {
            name,
            max_group_size,
            scripts,
            runs: 1,
            escapes: true,
            situations: Vec::new(),
            coverage: Arc::new(Coverage::default()),
        }
    }

    fn runs(mut self, runs: u8) -> LockModel {
        self.runs = runs;
        self
    }

    fn without_escapes(mut self) -> LockModel {
        self.escapes = false;
        self
    }

    fn reaching(mut self, situations: &[Situation]) -> LockModel {
        self.situations = situations.to_vec();
        self
    }

    fn class_of(&self, tx: usize) -> Option<GroupClass> {
        match self.scripts[tx].grouping {
            Grouping::Alone => None,
            Grouping::Groupable(class) => Some(class),
        }
    }

    /// The steps that are neither a timeout nor a cancellation.
    fn normal_actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (index, tx) in state.txs.iter().enumerate() {
            match tx.phase {
                Phase::Idle => actions.push(Action::Start(index)),
                Phase::Waiting { .. } | Phase::Member { .. } | Phase::Done => {}
                Phase::Holding { step } => {
                    if step + 1 < self.scripts[index].requests.len() {
                        actions.push(Action::Extend(index));
                    }
                    actions.push(Action::HandOver(index));
                    actions.push(Action::Release(index));
                }
                Phase::Leading { open: true } => actions.push(Action::CloseGroup(index)),
                Phase::Leading { open: false } => {
                    actions.push(Action::HandOver(index));
                    actions.push(Action::Release(index));
                }
                Phase::Aborting | Phase::Cancelled => actions.push(Action::Release(index)),
            }
        }
        actions.extend(state.unsettled.keys().map(|ticket| Action::Settle(*ticket)));
    }

    fn escape_actions(&self, state: &State, actions: &mut Vec<Action>) {
        if !self.escapes {
            return;
        }
        for (index, tx) in state.txs.iter().enumerate() {
            match tx.phase {
                Phase::Waiting { .. } => {
                    actions.push(Action::Timeout(index));
                    actions.push(Action::CancelWait(index));
                }
                Phase::Leading { open: true } => actions.push(Action::LeaderGone(index)),
                _ => {}
            }
        }
    }

    /// Grows on every step: each step moves a transaction on in its script
    /// (or ends its run), or settles a commit. So no path visits a state twice
    /// and every path is finite, which `progress` and `eventually` rely on.
    fn measure(state: &State) -> i64 {
        let transactions: i64 = state
            .txs
            .iter()
            .map(|tx| {
                let rank = match tx.phase {
                    Phase::Idle => 0,
                    Phase::Waiting { step } => 1 + 3 * step,
                    Phase::Holding { step } => 2 + 3 * step,
                    Phase::Leading { open: true } => 2,
                    Phase::Leading { open: false } => 3,
                    Phase::Member { .. } => 50,
                    Phase::Aborting | Phase::Cancelled => 60,
                    Phase::Done => 99,
                };
                1000 * i64::from(tx.runs_done) + rank as i64
            })
            .sum();
        transactions - state.unsettled.len() as i64
    }

    fn finished(state: &State) -> bool {
        state.unsettled.is_empty() && state.txs.iter().all(|tx| tx.phase == Phase::Done)
    }

    fn finish_run(&self, tx: &mut Tx) {
        tx.runs_done += 1;
        tx.phase = if tx.runs_done == self.runs {
            Phase::Done
        } else {
            Phase::Idle
        };
        tx.granted.clear();
        tx.told.clear();
    }

    /// Ends a leader's transaction and, with it, its members'.
    fn end_transaction(&self, state: &mut State, index: usize) {
        for member in 0..state.txs.len() {
            if state.txs[member].phase == (Phase::Member { leader: index }) {
                self.finish_run(&mut state.txs[member]);
            }
        }
        self.finish_run(&mut state.txs[index]);
    }

    fn fault(state: &mut State, property: &'static str, detail: String) {
        state.faults.push(Fault { property, detail });
    }

    /// The answer to request `step` of transaction `index`.
    fn on_acquire(
        &self,
        state: &mut State,
        index: usize,
        step: usize,
        held_before: &BTreeMap<Key, LockMode>,
        outcome: AcquireOutcome,
        joins: &mut Vec<Join>,
    ) {
        let asked = self.scripts[index].requests[step].keys();
        match outcome {
            AcquireOutcome::Granted(grant) => {
                if grant.leading {
                    Self::fault(
                        state,
                        "groups",
                        format!("T{index} leads a group though it did not wait"),
                    );
                }
                let upgrade = asked
                    .iter()
                    .any(|(key, mode)| held_before.get(key) == Some(&Shared) && *mode == Exclusive);
                if upgrade {
                    count(&self.coverage.upgrades);
                }
                self.granted(state, index, step, grant);
            }
            AcquireOutcome::Waiting => {
                count(&self.coverage.waits);
                if step > 0 {
                    count(&self.coverage.extension_waits);
                    // The extension rule: wait only above every held key.
                    let waited = state.table.waiting_key(owner_of(index)).map(key_of);
                    if let (Some(waited), Some((greatest, _))) =
                        (waited, held_before.last_key_value())
                    {
                        if waited <= *greatest {
                            Self::fault(
                                state,
                                "no deadlock",
                                format!("T{index} waits for {waited} while holding {greatest}"),
                            );
                        }
                    }
                }
                state.txs[index].phase = Phase::Waiting { step };
            }
            AcquireOutcome::Conflict { key } => {
                count(&self.coverage.extension_conflicts);
                let key = key_of(&key);
                let mode = asked
                    .iter()
                    .find(|(asked_key, _)| *asked_key == key)
                    .map(|(_, mode)| *mode);
                let is_upgrade = held_before.get(key) == Some(&Shared) && mode == Some(Exclusive);
                let below_held = held_before
                    .last_key_value()
                    .is_some_and(|(greatest, _)| key < *greatest);
                if step == 0 || !(is_upgrade || below_held) {
                    Self::fault(
                        state,
                        "model agrees with table",
                        format!("T{index} got Conflict on {key} outside the try-only rule"),
                    );
                }
                state.txs[index].phase = Phase::Aborting;
            }
            AcquireOutcome::Joined { leader } => {
                count(&self.coverage.joins_at_arrival);
                self.joined(state, index, tx_of(leader), joins);
            }
        }
    }

    /// Transaction `index` was granted request `step`, at once or after waiting.
    fn granted(&self, state: &mut State, index: usize, step: usize, grant: Grant) {
        let asked = self.scripts[index].requests[step].keys();
        let tx = &state.txs[index];
        let newly: Vec<(Key, LockMode)> = asked
            .iter()
            .filter(|(key, mode)| tx.granted.get(key) < Some(mode))
            .copied()
            .collect();
        if !grant.read_after.is_empty() {
            count(&self.coverage.read_after_reported);
        }
        let mut faults = Vec::new();
        for (ticket, ticket_keys) in &state.unsettled {
            let on_granted_key = newly.iter().any(|(key, mode)| {
                ticket_keys
                    .iter()
                    .any(|(ticket_key, held)| ticket_key == key && conflicts(*mode, *held))
            });
            let reported = grant.read_after.contains(ticket);
            if on_granted_key && !reported {
                faults.push(format!(
                    "T{index} granted {newly:?} without read_after {ticket:?} (on {ticket_keys:?})"
                ));
            }
            if reported && !on_granted_key {
                faults.push(format!(
                    "T{index} granted {newly:?} told to read after {ticket:?}, on {ticket_keys:?} only"
                ));
            }
        }
        for ticket in &grant.read_after {
            let handed_over = state
                .txs
                .get(tx_of(ticket.owner))
                .is_some_and(|owner| owner.hand_overs >= ticket.sequence);
            if !handed_over {
                faults.push(format!(
                    "T{index} told to read after {ticket:?}, never handed over"
                ));
            }
        }
        for detail in faults {
            Self::fault(state, "read gate", detail);
        }
        let tx = &mut state.txs[index];
        for (key, mode) in asked {
            let held = tx.granted.entry(key).or_insert(mode);
            *held = (*held).max(mode);
        }
        tx.told.extend(grant.read_after.iter().copied());
        tx.phase = if grant.leading {
            Phase::Leading { open: true }
        } else {
            Phase::Holding { step }
        };
    }

    /// Transaction `index` joined `leader`'s group; checks it was allowed to.
    fn joined(&self, state: &mut State, index: usize, leader: usize, joins: &mut Vec<Join>) {
        let members = state
            .txs
            .iter()
            .filter(|tx| tx.phase == (Phase::Member { leader }))
            .count();
        let class = self.class_of(index);
        let leader_phase = state.txs.get(leader).map(|tx| tx.phase);
        let mut faults = Vec::new();
        if leader_phase != Some(Phase::Leading { open: true }) {
            faults.push(format!(
                "T{index} joined T{leader}, which is {leader_phase:?}, not an open leader"
            ));
        }
        if class.is_none() || class != self.class_of(leader) {
            faults.push(format!(
                "T{index} of class {class:?} joined T{leader} of class {:?}",
                self.class_of(leader)
            ));
        }
        if members + 2 > self.max_group_size {
            faults.push(format!(
                "T{index} joined T{leader}, whose group already has {members} members (max {})",
                self.max_group_size
            ));
        }
        if !state.txs[index].granted.is_empty() {
            faults.push(format!("T{index} joined while holding granted keys"));
        }
        for detail in faults {
            Self::fault(state, "groups", detail);
        }
        let keys = self.scripts[index].requests[0].keys();
        // A key neither the leader nor the joiner held is granted to the
        // leader by the join, with no `read_after`: harmless, since a member's
        // statements all lock, but worth seeing that it happens.
        let leader_held = held_by(&state.snapshot, owner_of(leader));
        let joiner_held = held_by(&state.snapshot, owner_of(index));
        let unsettled_on_joined_key = keys.iter().any(|(key, mode)| {
            !leader_held.contains_key(key)
                && !joiner_held.contains_key(key)
                && state.unsettled.values().any(|ticket_keys| {
                    ticket_keys
                        .iter()
                        .any(|(ticket_key, held)| ticket_key == key && conflicts(*mode, *held))
                })
        });
        if unsettled_on_joined_key {
            count(&self.coverage.joined_keys_with_unsettled_commit);
        }
        state.txs[index].phase = Phase::Member { leader };
        joins.push(Join {
            joiner: index,
            leader,
            keys,
        });
    }

    /// The completions a call returned, in order.
    fn complete(&self, state: &mut State, completions: Vec<Completion>, joins: &mut Vec<Join>) {
        let mut seen = BTreeSet::new();
        for Completion { owner, completed } in completions {
            let index = tx_of(owner);
            if !seen.insert(owner) {
                Self::fault(
                    state,
                    "model agrees with table",
                    format!("T{index} completed twice in one call"),
                );
            }
            let Some(Phase::Waiting { step }) = state.txs.get(index).map(|tx| tx.phase) else {
                Self::fault(
                    state,
                    "model agrees with table",
                    format!("owner {owner} completed but was not waiting"),
                );
                continue;
            };
            match completed {
                Completed::Granted(grant) => {
                    count(&self.coverage.grants_after_waiting);
                    let should_lead =
                        step == 0 && self.class_of(index).is_some() && self.max_group_size > 1;
                    if grant.leading != should_lead {
                        Self::fault(
                            state,
                            "groups",
                            format!(
                                "T{index} granted after waiting with leading {}",
                                grant.leading
                            ),
                        );
                    }
                    self.granted(state, index, step, grant);
                }
                Completed::Joined { leader } => {
                    count(&self.coverage.joins_at_completion);
                    if !state.txs[index].granted.is_empty() || step != 0 {
                        Self::fault(
                            state,
                            "groups",
                            format!("T{index} joined from request {step}"),
                        );
                    }
                    if !held_by(&state.snapshot, owner).is_empty() {
                        count(&self.coverage.joins_of_holding_waiters);
                    }
                    self.joined(state, index, tx_of(leader), joins);
                }
            }
        }
    }

    /// Counts overtaking on this step and renews the watch of every waiter.
    fn watch_waiters(&self, before: &State, after: &mut State, joins: &[Join]) {
        let still_waiting_on = |after: &State, waiter: usize, key: Key| {
            before.txs[waiter]
                .watch
                .as_ref()
                .is_some_and(|watch| watch.key == key)
                && waiting_key(&after.snapshot, owner_of(waiter)) == Some(key)
        };
        let mut takes: Vec<(usize, Key)> = Vec::new();
        for (index, _) in after.txs.iter().enumerate() {
            let held_before = held_by(&before.snapshot, owner_of(index));
            let held_after = held_by(&after.snapshot, owner_of(index));
            for (key, mode) in &held_after {
                if held_before.get(key) >= Some(mode) {
                    continue;
                }
                // Keys a leader took for a joiner are the joiner's grant.
                let for_joiner = joins.iter().any(|join| {
                    join.leader == index && join.keys.iter().any(|(joined, _)| joined == key)
                });
                if !for_joiner {
                    takes.push((index, key));
                }
            }
        }
        for join in joins {
            let held_before = held_by(&before.snapshot, owner_of(join.joiner));
            for (key, _) in &join.keys {
                if !held_before.contains_key(key) {
                    takes.push((join.joiner, key));
                }
            }
        }
        for (taker, key) in takes {
            for waiter in 0..after.txs.len() {
                if waiter == taker || !still_waiting_on(after, waiter, key) {
                    continue;
                }
                let watch = after.txs[waiter]
                    .watch
                    .as_mut()
                    .expect("a waiter seen waiting before has a watch");
                if watch.ahead_of_it & (1 << taker) == 0 {
                    watch.overtaken += 1;
                    count(&self.coverage.overtakes);
                    self.coverage
                        .most_overtaken
                        .fetch_max(u64::from(watch.overtaken), Ordering::Relaxed);
                }
            }
        }
        for index in 0..after.txs.len() {
            let owner = owner_of(index);
            let Some(key) = waiting_key(&after.snapshot, owner) else {
                after.txs[index].watch = None;
                continue;
            };
            if after.txs[index]
                .watch
                .as_ref()
                .is_some_and(|watch| watch.key == key)
            {
                continue;
            }
            let entry = after
                .snapshot
                .keys
                .iter()
                .find(|entry| entry.name == key)
                .expect("a waiter's key has an entry");
            let position = entry
                .queue
                .iter()
                .position(|(queued, _)| *queued == owner)
                .unwrap_or(entry.queue.len());
            let ahead: BTreeSet<OwnerId> = entry
                .holders
                .iter()
                .map(|(holder, _)| *holder)
                .chain(entry.queue[..position].iter().map(|(queued, _)| *queued))
                .collect();
            after.txs[index].watch = Some(Watch {
                key,
                ahead: ahead.len() as u8,
                ahead_of_it: ahead
                    .iter()
                    .fold(0, |bits, owner| bits | 1 << tx_of(*owner)),
                overtaken: 0,
            });
        }
    }

    // ---- Properties: each returns what is wrong, if anything -------------

    fn faults_of(state: &State, property: &'static str) -> Option<String> {
        state
            .faults
            .iter()
            .find(|fault| fault.property == property)
            .map(|fault| fault.detail.clone())
    }

    fn mutual_exclusion(&self, state: &State) -> Option<String> {
        let snapshot = &state.snapshot;
        // Owner-side view: what each owner believes it holds.
        let mut by_key: BTreeMap<&str, Vec<(OwnerId, LockMode)>> = BTreeMap::new();
        for owner in &snapshot.owners {
            for (key, mode) in &owner.held {
                by_key.entry(key).or_default().push((owner.owner, *mode));
            }
        }
        for (key, holders) in &by_key {
            for (position, (left, left_mode)) in holders.iter().enumerate() {
                for (right, right_mode) in &holders[position + 1..] {
                    if left != right && conflicts(*left_mode, *right_mode) {
                        return Some(format!(
                            "{key} held by {left} ({left_mode:?}) and {right} ({right_mode:?})"
                        ));
                    }
                }
            }
        }
        for entry in &snapshot.keys {
            let mut from_owners = by_key.remove(entry.name.as_str()).unwrap_or_default();
            from_owners.sort_unstable();
            if from_owners != entry.holders {
                return Some(format!(
                    "holders of {} are {:?} but owners hold {from_owners:?}",
                    entry.name, entry.holders
                ));
            }
        }
        if let Some((key, holders)) = by_key.into_iter().next() {
            return Some(format!("{key} held by {holders:?} without an entry"));
        }
        for (index, tx) in state.txs.iter().enumerate() {
            let held = held_by(snapshot, owner_of(index));
            match tx.phase {
                Phase::Waiting { .. }
                | Phase::Holding { .. }
                | Phase::Leading { .. }
                | Phase::Aborting
                | Phase::Cancelled => {
                    for (key, mode) in &tx.granted {
                        if held.get(key) < Some(mode) {
                            return Some(format!(
                                "T{index} was granted {key} {mode:?} but holds {:?}",
                                held.get(key)
                            ));
                        }
                    }
                }
                Phase::Member { leader } => {
                    if !held.is_empty() {
                        return Some(format!("member T{index} holds {held:?}"));
                    }
                    let leader_held = held_by(snapshot, owner_of(leader));
                    for (key, mode) in self.scripts[index].requests[0].keys() {
                        if leader_held.get(key) < Some(&mode) {
                            return Some(format!(
                                "member T{index} needs {key} {mode:?}, leader T{leader} holds {:?}",
                                leader_held.get(key)
                            ));
                        }
                    }
                }
                Phase::Idle | Phase::Done => {
                    if !held.is_empty() {
                        return Some(format!("T{index} between transactions holds {held:?}"));
                    }
                }
            }
        }
        None
    }

    fn model_agrees_with_table(&self, state: &State) -> Option<String> {
        if let Some(fault) = Self::faults_of(state, "model agrees with table") {
            return Some(fault);
        }
        let snapshot = &state.snapshot;
        for owner in &snapshot.owners {
            let index = tx_of(owner.owner);
            let phase = state.txs.get(index).map(|tx| tx.phase);
            let allowed = match phase {
                Some(Phase::Waiting { .. }) => owner.waiting.is_some(),
                Some(
                    Phase::Holding { .. }
                    | Phase::Leading { .. }
                    | Phase::Aborting
                    | Phase::Cancelled,
                ) => owner.waiting.is_none() && !owner.held.is_empty(),
                _ => false,
            };
            if !allowed {
                return Some(format!(
                    "owner {} in the table while {phase:?}",
                    owner.owner
                ));
            }
        }
        for (index, tx) in state.txs.iter().enumerate() {
            let in_table = snapshot
                .owners
                .iter()
                .any(|owner| owner.owner == owner_of(index));
            let must_be = matches!(
                tx.phase,
                Phase::Waiting { .. } | Phase::Holding { .. } | Phase::Leading { .. }
            );
            if must_be && !in_table {
                return Some(format!("T{index} {:?} is not in the table", tx.phase));
            }
            let waiting = state.table.is_waiting(owner_of(index));
            if waiting != matches!(tx.phase, Phase::Waiting { .. }) {
                return Some(format!("T{index} {:?} but is_waiting {waiting}", tx.phase));
            }
        }
        let held: u64 = snapshot
            .owners
            .iter()
            .map(|owner| owner.held.len() as u64)
            .sum();
        let waiters = snapshot
            .owners
            .iter()
            .filter(|owner| owner.waiting.is_some())
            .count() as u64;
        let stats = state.table.stats();
        if stats.locks_held != held || stats.lock_waiters != waiters {
            return Some(format!(
                "stats {stats:?}, but {held} held and {waiters} waiting"
            ));
        }
        None
    }

    /// A waiter waits for the one queued just ahead of it, or, at the front,
    /// for the holders; everyone who is not waiting eventually lets go. Owners
    /// that can then never be granted are deadlocked.
    fn no_deadlock(&self, state: &State) -> Option<String> {
        if let Some(fault) = Self::faults_of(state, "no deadlock") {
            return Some(fault);
        }
        let snapshot = &state.snapshot;
        let mut blockers: BTreeMap<OwnerId, Vec<OwnerId>> = BTreeMap::new();
        let mut can_finish: BTreeSet<OwnerId> = BTreeSet::new();
        for owner in &snapshot.owners {
            let Some(waiting) = &owner.waiting else {
                can_finish.insert(owner.owner);
                continue;
            };
            let Some(entry) = snapshot.keys.iter().find(|entry| entry.name == waiting.key) else {
                return Some(format!(
                    "{} waits for {} with no entry",
                    owner.owner, waiting.key
                ));
            };
            let Some(position) = entry
                .queue
                .iter()
                .position(|(queued, _)| *queued == owner.owner)
            else {
                return Some(format!(
                    "{} waits for {} unqueued",
                    owner.owner, waiting.key
                ));
            };
            if let Some((greatest, _)) = owner.held.last() {
                if *greatest >= waiting.key {
                    return Some(format!(
                        "{} waits for {} holding {greatest}",
                        owner.owner, waiting.key
                    ));
                }
            }
            let waits_for = if position > 0 {
                vec![entry.queue[position - 1].0]
            } else {
                let fits = entry
                    .holders
                    .iter()
                    .all(|(_, held)| !conflicts(*held, waiting.mode));
                if fits {
                    return Some(format!(
                        "{} at the front of {} could be granted (lost wake-up)",
                        owner.owner, entry.name
                    ));
                }
                entry.holders.iter().map(|(holder, _)| *holder).collect()
            };
            blockers.insert(owner.owner, waits_for);
        }
        loop {
            let newly: Vec<OwnerId> = blockers
                .iter()
                .filter(|(owner, waits_for)| {
                    !can_finish.contains(*owner)
                        && waits_for.iter().all(|blocker| can_finish.contains(blocker))
                })
                .map(|(owner, _)| *owner)
                .collect();
            if newly.is_empty() {
                break;
            }
            can_finish.extend(newly);
        }
        let stuck: Vec<OwnerId> = blockers
            .keys()
            .filter(|owner| !can_finish.contains(*owner))
            .copied()
            .collect();
        (!stuck.is_empty()).then(|| format!("deadlocked owners {stuck:?}"))
    }

    fn progress(&self, state: &State) -> Option<String> {
        if let Some(fault) = Self::faults_of(state, "progress") {
            return Some(fault);
        }
        if Self::finished(state) {
            return None;
        }
        let mut actions = Vec::new();
        self.normal_actions(state, &mut actions);
        actions
            .is_empty()
            .then(|| "unfinished, and only a timeout or a cancellation can move".to_string())
    }

    fn overtaking_bounded(&self, state: &State) -> Option<String> {
        let per_owner_ahead = self.max_group_size.saturating_sub(1);
        for (index, tx) in state.txs.iter().enumerate() {
            if let Some(watch) = &tx.watch {
                if watch.overtaken as usize > per_owner_ahead * watch.ahead as usize {
                    return Some(format!(
                        "T{index} waiting on {} overtaken {} times with {} ahead",
                        watch.key, watch.overtaken, watch.ahead
                    ));
                }
            }
        }
        None
    }

    fn read_gate(&self, state: &State) -> Option<String> {
        if let Some(fault) = Self::faults_of(state, "read gate") {
            return Some(fault);
        }
        for (index, tx) in state.txs.iter().enumerate() {
            if !matches!(tx.phase, Phase::Holding { .. } | Phase::Leading { .. }) {
                continue;
            }
            let held = held_by(&state.snapshot, owner_of(index));
            for key in tx.granted.keys() {
                let Some(mode) = held.get(key) else { continue };
                for (ticket, ticket_keys) in &state.unsettled {
                    let conflicting = ticket_keys
                        .iter()
                        .any(|(ticket_key, held)| ticket_key == key && conflicts(*mode, *held));
                    if conflicting && !tx.told.contains(ticket) {
                        return Some(format!(
                            "T{index} holds {key} {mode:?} under unsettled {ticket:?}, untold"
                        ));
                    }
                }
            }
        }
        None
    }

    fn groups(&self, state: &State) -> Option<String> {
        if let Some(fault) = Self::faults_of(state, "groups") {
            return Some(fault);
        }
        for (index, tx) in state.txs.iter().enumerate() {
            let members = state
                .txs
                .iter()
                .filter(|member| member.phase == (Phase::Member { leader: index }))
                .count();
            let leadership = state
                .snapshot
                .owners
                .iter()
                .find(|owner| owner.owner == owner_of(index))
                .map(|owner| owner.leadership);
            let expected = match tx.phase {
                Phase::Leading { open: true } => Some(Leadership::Open {
                    class: self.class_of(index).expect("a leader is groupable"),
                    members,
                }),
                Phase::Leading { open: false } => Some(Leadership::Closed { members }),
                _ => {
                    if members > 0 {
                        return Some(format!("T{index} {:?} has {members} members", tx.phase));
                    }
                    leadership.map(|_| Leadership::None)
                }
            };
            if leadership != expected {
                return Some(format!(
                    "T{index} {:?} with {members} members, table says {leadership:?}",
                    tx.phase
                ));
            }
            if members + 1 > self.max_group_size {
                return Some(format!("T{index} leads {members} members"));
            }
        }
        None
    }

    fn no_leak(&self, state: &State) -> Option<String> {
        let snapshot = &state.snapshot;
        let tickets_in_table: BTreeSet<CommitTicket> =
            snapshot.commits.iter().map(|(ticket, _)| *ticket).collect();
        let tickets_in_model: BTreeSet<CommitTicket> = state.unsettled.keys().copied().collect();
        if tickets_in_table != tickets_in_model {
            return Some(format!(
                "unsettled tickets: table {tickets_in_table:?}, model {tickets_in_model:?}"
            ));
        }
        for entry in &snapshot.keys {
            if entry.holders.is_empty() && entry.queue.is_empty() && entry.committing.is_empty() {
                return Some(format!("unused entry {} kept", entry.name));
            }
        }
        let idle = state
            .txs
            .iter()
            .all(|tx| matches!(tx.phase, Phase::Done | Phase::Idle));
        if idle && !snapshot.owners.is_empty() {
            return Some(format!(
                "no transaction is open, yet owners {:?}",
                snapshot.owners
            ));
        }
        if Self::finished(state) {
            let stats = state.table.stats();
            if !snapshot.keys.is_empty() || stats.locks_held != 0 || stats.lock_waiters != 0 {
                return Some(format!(
                    "finished, yet keys {:?} stats {stats:?}",
                    snapshot.keys
                ));
            }
        }
        None
    }

    fn reaches(&self, state: &State, situation: Situation) -> bool {
        let snapshot = &state.snapshot;
        match situation {
            Situation::HoldAndWait => snapshot
                .owners
                .iter()
                .any(|owner| owner.waiting.is_some() && !owner.held.is_empty()),
            Situation::SharedHolders => snapshot.keys.iter().any(|key| key.holders.len() > 1),
            Situation::HandedOverUnsettled => snapshot.keys.iter().any(|key| {
                key.holders.iter().any(|(_, held)| {
                    key.committing
                        .iter()
                        .any(|(_, committed)| conflicts(*held, *committed))
                })
            }),
            Situation::ExtensionWaits => state
                .txs
                .iter()
                .any(|tx| matches!(tx.phase, Phase::Waiting { step } if step > 0)),
            Situation::ExtensionConflict => state.txs.iter().any(|tx| tx.phase == Phase::Aborting),
            Situation::Overtaken => state
                .txs
                .iter()
                .any(|tx| tx.watch.as_ref().is_some_and(|watch| watch.overtaken > 0)),
            Situation::GroupMember => state
                .txs
                .iter()
                .any(|tx| matches!(tx.phase, Phase::Member { .. })),
            Situation::GroupFull => (0..state.txs.len()).any(|leader| {
                state
                    .txs
                    .iter()
                    .filter(|tx| tx.phase == (Phase::Member { leader }))
                    .count()
                    + 1
                    == self.max_group_size
            }),
            Situation::ClosedWithMembers => (0..state.txs.len()).any(|leader| {
                state.txs[leader].phase == (Phase::Leading { open: false })
                    && state
                        .txs
                        .iter()
                        .any(|tx| tx.phase == (Phase::Member { leader }))
            }),
            Situation::CancelledHolding => state.txs.iter().enumerate().any(|(index, tx)| {
                tx.phase == Phase::Cancelled && !held_by(snapshot, owner_of(index)).is_empty()
            }),
        }
    }
}

/// The checks of `always` properties by name; `Property` takes plain `fn`s, so
/// each property calls its check through this table.
type Check = fn(&LockModel, &State) -> Option<String>;

const ALWAYS: [(&str, Check); 8] = [
    ("mutual exclusion", LockModel::mutual_exclusion),
    (
        "model agrees with table",
        LockModel::model_agrees_with_table,
    ),
    ("no deadlock", LockModel::no_deadlock),
    ("progress", LockModel::progress),
    ("bounded overtaking", LockModel::overtaking_bounded),
    ("read gate", LockModel::read_gate),
    ("groups", LockModel::groups),
    ("no leak", LockModel::no_leak),
];

const SITUATIONS: [(&str, Situation); 10] = [
    ("hold and wait", Situation::HoldAndWait),
    ("shared holders", Situation::SharedHolders),
    ("handed over, unsettled", Situation::HandedOverUnsettled),
    ("extension waits", Situation::ExtensionWaits),
    ("extension conflict", Situation::ExtensionConflict),
    ("overtaken", Situation::Overtaken),
    ("group member", Situation::GroupMember),
    ("group full", Situation::GroupFull),
    ("closed with members", Situation::ClosedWithMembers),
    ("cancelled holding", Situation::CancelledHolding),
];

fn check_named(model: &LockModel, state: &State, name: &str) -> Option<String> {
    ALWAYS
        .iter()
        .find(|(always, _)| *always == name)
        .and_then(|(_, check)| check(model, state))
}

fn reaches_named(model: &LockModel, state: &State, name: &str) -> bool {
    SITUATIONS
        .iter()
        .find(|(situation, _)| *situation == name)
        .is_some_and(|(_, situation)| model.reaches(state, *situation))
}

/// `Property` wants a `fn` per property; these macros write one per name.
macro_rules! always {
    ($name:literal) => {
        Property::always($name, |model: &LockModel, state: &State| {
            check_named(model, state, $name).is_none()
        })
    };
}

macro_rules! sometimes {
    ($name:literal) => {
        Property::sometimes($name, |model: &LockModel, state: &State| {
            reaches_named(model, state, $name)
        })
    };
}

impl Model for LockModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let table = LockTable::with_max_group_size(self.max_group_size);
        let snapshot = table.snapshot();
        let tx = Tx {
            runs_done: 0,
            hand_overs: 0,
            phase: Phase::Idle,
            granted: BTreeMap::new(),
            told: BTreeSet::new(),
            watch: None,
        };
        vec![State {
            table,
            snapshot,
            txs: vec![tx; self.scripts.len()],
            unsettled: BTreeMap::new(),
            faults: Vec::new(),
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        // A faulty state has been reported; going on would only repeat it.
        if !state.faults.is_empty() {
            return;
        }
        self.normal_actions(state, actions);
        self.escape_actions(state, actions);
    }

    fn next_state(&self, before: &State, action: Action) -> Option<State> {
        let mut state = before.clone();
        let mut joins = Vec::new();
        if action.is_escape() {
            count(&self.coverage.escapes);
        }
        match action {
            Action::Start(index) | Action::Extend(index) => {
                let step = match state.txs[index].phase {
                    Phase::Idle => 0,
                    Phase::Holding { step } => step + 1,
                    _ => return None,
                };
                // A new request is ahead of no one.
                for tx in &mut state.txs {
                    if let Some(watch) = &mut tx.watch {
                        watch.ahead_of_it &= !(1 << index);
                    }
                }
                let script = &self.scripts[index];
                let grouping = if step == 0 {
                    script.grouping
                } else {
                    Grouping::Alone
                };
                let held_before = held_by(&before.snapshot, owner_of(index));
                let outcome = state.table.acquire_as(
                    owner_of(index),
                    script.requests[step].lock_request(),
                    grouping,
                );
                self.on_acquire(&mut state, index, step, &held_before, outcome, &mut joins);
            }
            Action::CloseGroup(index) => {
                let completions = state.table.close_group(owner_of(index));
                if completions.is_empty() {
                    state.txs[index].phase = Phase::Leading { open: false };
                } else {
                    for completion in &completions {
                        if completion.completed
                            != (Completed::Joined {
                                leader: owner_of(index),
                            })
                        {
                            Self::fault(
                                &mut state,
                                "groups",
                                format!("close_group of T{index} completed {completion:?}"),
                            );
                        }
                        count(&self.coverage.joins_by_close_group);
                    }
                    self.complete(&mut state, completions, &mut joins);
                }
            }
            Action::HandOver(index) => {
                let owner = owner_of(index);
                state.txs[index].hand_overs += 1;
                let ticket = CommitTicket {
                    owner,
                    sequence: state.txs[index].hand_overs,
                };
                let keys: Vec<(Key, LockMode)> =
                    held_by(&before.snapshot, owner).into_iter().collect();
                if !keys.is_empty() {
                    state.unsettled.insert(ticket, keys);
                }
                let completions = state.table.hand_over(owner, ticket);
                self.end_transaction(&mut state, index);
                self.complete(&mut state, completions, &mut joins);
            }
            Action::Release(index) | Action::Timeout(index) | Action::LeaderGone(index) => {
                let completions = state.table.release_all(owner_of(index));
                self.end_transaction(&mut state, index);
                self.complete(&mut state, completions, &mut joins);
            }
            Action::CancelWait(index) => {
                let completions = state.table.cancel_wait(owner_of(index));
                state.txs[index].phase = Phase::Cancelled;
                self.complete(&mut state, completions, &mut joins);
            }
            Action::Settle(ticket) => {
                count(&self.coverage.settles);
                state.table.settle(ticket);
                state.unsettled.remove(&ticket);
            }
        }
        state.snapshot = state.table.snapshot();
        self.watch_waiters(before, &mut state, &joins);
        if Self::measure(&state) <= Self::measure(before) {
            Self::fault(
                &mut state,
                "progress",
                format!("{action:?} did not move anything forward"),
            );
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            always!("mutual exclusion"),
            always!("model agrees with table"),
            always!("no deadlock"),
            always!("progress"),
            always!("bounded overtaking"),
            always!("read gate"),
            always!("groups"),
            always!("no leak"),
            // A faulty state ends its path; its own property reports it.
            Property::eventually("everything finishes", |_, state: &State| {
                LockModel::finished(state) || !state.faults.is_empty()
            }),
        ];
        let sometimes: [Property<Self>; 10] = [
            sometimes!("hold and wait"),
            sometimes!("shared holders"),
            sometimes!("handed over, unsettled"),
            sometimes!("extension waits"),
            sometimes!("extension conflict"),
            sometimes!("overtaken"),
            sometimes!("group member"),
            sometimes!("group full"),
            sometimes!("closed with members"),
            sometimes!("cancelled holding"),
        ];
        for property in sometimes {
            let wanted = SITUATIONS.iter().any(|(name, situation)| {
                *name == property.name && self.situations.contains(situation)
            });
            if wanted {
                properties.push(property);
            }
        }
        properties
    }
}

/// Far above every configuration below: reaching it means the check was not
/// exhaustive, which fails the test.
const STATE_LIMIT: usize = 3_000_000;

/// Checks `model` exhaustively and fails with the path to the first violation.
fn check(model: LockModel) -> Arc<Coverage> {
    let name = model.name;
    let coverage = Arc::clone(&model.coverage);
    let started = Instant::now();
    let checker = model
        .checker()
        .threads(1)
        .target_state_count(STATE_LIMIT)
        .spawn_bfs()
        .join();
    println!(
        "{name}: {} unique states ({} generated), max depth {}, {:.1} s",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    println!("{name}: {:?}", model_coverage(&coverage));
    assert!(
        checker.state_count() < STATE_LIMIT,
        "{name}: the check stopped at the state limit, so it is not exhaustive"
    );
    let model = checker.model();
    let mut failures = Vec::new();
    for property in model.properties() {
        let found = checker.discovery(property.name);
        match (&property.expectation, found) {
            (Expectation::Sometimes, None) => {
                failures.push(format!("{name}: never reached \"{}\"", property.name))
            }
            (Expectation::Sometimes, Some(_)) | (_, None) => {}
            (_, Some(path)) => {
                let last = path.last_state().clone();
                let why = check_named(model, &last, property.name)
                    .unwrap_or_else(|| "a path ends unfinished".to_string());
                failures.push(format!(
                    "{name}: \"{}\" violated: {why}\n{path}last state: {last:?}",
                    property.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    coverage
}

fn model_coverage(coverage: &Coverage) -> Vec<(&'static str, u64)> {
    vec![
        ("waits", read(&coverage.waits)),
        ("grants after waiting", read(&coverage.grants_after_waiting)),
        ("read_after reported", read(&coverage.read_after_reported)),
        ("joins at arrival", read(&coverage.joins_at_arrival)),
        ("joins at completion", read(&coverage.joins_at_completion)),
        ("joins by close_group", read(&coverage.joins_by_close_group)),
        (
            "joins holding keys",
            read(&coverage.joins_of_holding_waiters),
        ),
        (
            "joined keys unsettled",
            read(&coverage.joined_keys_with_unsettled_commit),
        ),
        ("extension waits", read(&coverage.extension_waits)),
        ("extension conflicts", read(&coverage.extension_conflicts)),
        ("upgrades", read(&coverage.upgrades)),
        ("overtakes", read(&coverage.overtakes)),
        ("most overtaken", read(&coverage.most_overtaken)),
        ("settles", read(&coverage.settles)),
        ("escapes", read(&coverage.escapes)),
    ]
}

// ---- Configurations ---------------------------------------------------------

/// Transactions that run alone, with shared and exclusive keys, each twice:
/// hold-and-wait, readers sharing, a writer behind readers, hand-over with
/// commits settling late (also after the session started its next
/// transaction), timeouts and cancelled waits.
#[test]
fn alone_shared_and_exclusive() {
    let coverage = check(
        LockModel::new(
            "alone",
            1,
            vec![
                tx(&["a", "c"], &[]),
                tx(&[], &["a", "b"]),
                tx(&["b"], &["a", "c"]),
            ],
        )
        .runs(2)
        .reaching(&[
            Situation::HoldAndWait,
            Situation::SharedHolders,
            Situation::HandedOverUnsettled,
            Situation::CancelledHolding,
        ]),
    );
    assert!(read(&coverage.read_after_reported) > 0);
    assert!(read(&coverage.grants_after_waiting) > 0);
}

/// Four transactions on four keys, with timeouts and cancellations: two
/// readers hold `a` while a writer and another reader queue for it; with
/// groups off nobody is ever overtaken.
#[test]
fn alone_four_transactions() {
    check(
        LockModel::new(
            "alone, four",
            1,
            vec![
                tx(&["a", "c"], &[]),
                tx(&[], &["a", "b", "d"]),
                tx(&["b"], &["a", "c"]),
                tx(&["d"], &["a", "c"]),
            ],
        )
        .reaching(&[
            Situation::HoldAndWait,
            Situation::HandedOverUnsettled,
            Situation::SharedHolders,
        ]),
    );
}

/// Interactive transactions extending with `lock`: in order (may wait), out
/// of order (try-only: `Conflict`, then release), an upgrade from shared to
/// exclusive (try-only), against a `tx` on the same keys; each twice, with no
/// timeouts.
#[test]
fn interactive_extensions() {
    let coverage = check(
        LockModel::new(
            "interactive",
            1,
            vec![
                interactive(&[
                    request(&["b"], &[]),
                    request(&["c"], &[]),
                    request(&[], &["a"]),
                ]),
                interactive(&[
                    request(&[], &["a"]),
                    request(&["a"], &[]),
                    request(&["c"], &[]),
                ]),
                tx(&["a", "c"], &[]),
            ],
        )
        .runs(2)
        .without_escapes()
        .reaching(&[
            Situation::HoldAndWait,
            Situation::ExtensionWaits,
            Situation::ExtensionConflict,
            Situation::HandedOverUnsettled,
        ]),
    );
    assert!(read(&coverage.extension_waits) > 0);
    assert!(read(&coverage.extension_conflicts) > 0);
    assert!(read(&coverage.upgrades) > 0);
}

/// Interactive transactions once each, with timeouts and cancellations: a
/// `lock` extension that waits times out (releasing the keys of `begin` too)
/// or is cancelled (keeping them until the release).
#[test]
fn interactive_extensions_with_timeouts() {
    check(
        LockModel::new(
            "interactive, timeouts",
            1,
            vec![
                interactive(&[
                    request(&["b"], &[]),
                    request(&["c"], &[]),
                    request(&[], &["a"]),
                ]),
                interactive(&[
                    request(&[], &["a"]),
                    request(&["a"], &[]),
                    request(&["c"], &[]),
                ]),
                interactive(&[request(&[], &["c"]), request(&["d"], &["a"])]),
                tx(&["a", "c"], &[]),
            ],
        )
        .reaching(&[
            Situation::ExtensionWaits,
            Situation::ExtensionConflict,
            Situation::CancelledHolding,
            Situation::SharedHolders,
        ]),
    );
}

/// Groupable requests on one hot key behind a transaction that runs alone:
/// the first waiter granted leads, the others join (at arrival, on its grant,
/// or when it closes its group once a key they also need is freed), up to the
/// group size; the one that runs alone is overtaken, boundedly.
#[test]
fn groups_on_a_hot_key() {
    let coverage = check(
        LockModel::new(
            "groups, hot key",
            2,
            vec![
                tx(&["a"], &[]),
                groupable(0, &["a"], &[]),
                groupable(0, &["a"], &["b"]),
                tx(&["b"], &[]),
                groupable(0, &["a"], &[]),
            ],
        )
        .reaching(&[
            Situation::GroupMember,
            Situation::GroupFull,
            Situation::ClosedWithMembers,
            Situation::Overtaken,
            Situation::HandedOverUnsettled,
        ]),
    );
    assert!(read(&coverage.joins_at_arrival) > 0);
    assert!(read(&coverage.joins_at_completion) > 0);
    assert!(read(&coverage.joins_by_close_group) > 0);
    assert!(read(&coverage.joined_keys_with_unsettled_commit) > 0);
}

/// Groups of two classes, a waiter that holds a key of its own when it joins
/// (its key passes to the leader), a shared leader that an exclusive request
/// of its class may not join, readers, and a request that runs alone.
#[test]
fn groups_with_classes_and_held_keys() {
    let coverage = check(
        LockModel::new(
            "groups, classes",
            2,
            vec![
                tx(&["b"], &["a"]),
                groupable(0, &["b"], &[]),
                groupable(0, &["a", "b"], &[]),
                groupable(1, &[], &["a", "b"]),
                groupable(1, &["b"], &[]),
            ],
        )
        .reaching(&[
            Situation::GroupMember,
            Situation::GroupFull,
            Situation::HoldAndWait,
            Situation::SharedHolders,
        ]),
    );
    assert!(read(&coverage.joins_of_holding_waiters) > 0);
}

/// Four groupable requests on one key and groups of at most three: a group
/// fills, and the fourth request waits or leads a group of its own.
#[test]
fn groups_of_three() {
    check(
        LockModel::new(
            "groups of three",
            3,
            vec![
                tx(&["a"], &[]),
                groupable(0, &["a"], &[]),
                groupable(0, &["a"], &[]),
                groupable(0, &["a"], &[]),
                groupable(0, &["a"], &[]),
            ],
        )
        .reaching(&[
            Situation::GroupFull,
            Situation::ClosedWithMembers,
            Situation::Overtaken,
        ]),
    );
}

/// Groups again and again: each transaction runs twice, so a finished leader
/// or member comes back while the commit it handed over has not settled; no
/// timeouts.
#[test]
fn groups_repeated() {
    check(
        LockModel::new(
            "groups, repeated",
            2,
            vec![
                tx(&["a"], &["b"]),
                groupable(0, &["a"], &[]),
                groupable(0, &["a", "b"], &[]),
            ],
        )
        .runs(2)
        .without_escapes()
        .reaching(&[
            Situation::GroupMember,
            Situation::GroupFull,
            Situation::ClosedWithMembers,
            Situation::Overtaken,
        ]),
    );
}

/// Everything at once, each transaction twice: an interactive transaction
/// extending, groupable requests, hand-over, timeouts and cancellations.
#[test]
fn mixed_repeated() {
    check(
        LockModel::new(
            "mixed, repeated",
            2,
            vec![
                interactive(&[request(&[], &["a"]), request(&["c"], &[])]),
                groupable(0, &["a", "c"], &[]),
                groupable(0, &["c"], &[]),
            ],
        )
        .runs(2)
        .reaching(&[
            Situation::GroupMember,
            Situation::ExtensionWaits,
            Situation::HandedOverUnsettled,
            Situation::HoldAndWait,
        ]),
    );
}
