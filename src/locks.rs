//! The lock table: which owner holds which row-lock key in which mode, who is
//! queued for it, whose handed-over commit is still settling on it, and which
//! requests run in another owner's group.
//!
//! It does no I/O and reads no clock, so the coordinator actor that wraps it
//! owns every timing decision and the tests (and the model check in
//! `tests/model_check.rs`) can drive it step by step.
//!
//! Why declared transactions never deadlock: a request takes its keys one at a
//! time in ascending byte order, and each key has a FIFO queue. An owner
//! therefore only ever waits for a key greater than every key it holds, and a
//! cycle of waits would need some owner to wait for a key smaller than one it
//! holds.
//!
//! A transaction that already holds keys and asks for more (extension) keeps
//! that property with the try-only rule: it may wait only for keys greater than
//! everything it holds. A lower key, or an upgrade from shared to exclusive, is
//! granted at once or refused with [`AcquireOutcome::Conflict`]; the caller then
//! releases everything and retries the whole transaction.
//!
//! **Hand-over** (protocol 1.1): an owner that has sent `COMMIT` after all its
//! statements succeeded passes its keys on with [`LockTable::hand_over`]. Each
//! key keeps the owner's [`CommitTicket`] until [`LockTable::settle`]; whoever
//! is granted a key in a conflicting mode meanwhile gets the ticket in its
//! [`Grant::read_after`], and must not read without locking before that commit
//! has answered. Its locking statements go ahead: InnoDB orders them after the
//! committing transaction, which waits for nothing, so no cycle can form.
//!
//! **Groups** (protocol 1.1): an owner granted its keys after waiting, whose
//! request may be grouped, leads a group (`Grant::leading`). A request of the
//! same [`GroupClass`] that holds nothing joins it ([`AcquireOutcome::Joined`]
//! or [`Completed::Joined`]) when every key it asks for is held by the leader in
//! a mode that covers it, or is free and granted to the leader at once; the
//! leader then runs it in its own database transaction. The leader never waits
//! for a key on a member's behalf, so groups add no wait to the graph. A joiner
//! overtakes requests queued on the leader's keys that cannot join, at most
//! `max_group_size - 1` of them per leader: the overtaking is bounded.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// One owner is one session's current transaction.
pub type OwnerId = u64;

/// How an owner holds a key.
///
/// The declaration order matters: the derived `Ord` makes `Exclusive` greater,
/// so "held mode >= wanted mode" means the owner needs nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    Shared,
    Exclusive,
}

impl LockMode {
    fn conflicts_with(self, other: LockMode) -> bool {
        self == LockMode::Exclusive || other == LockMode::Exclusive
    }
}

/// Names one handed-over commit: its owner and the owner's own count of
/// hand-overs, so that an owner whose earlier commit is still settling (its
/// outcome unknown) can start and hand over another transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitTicket {
    pub owner: OwnerId,
    pub sequence: u64,
}

/// Requests of one class may share a database transaction; the engine makes
/// one class per isolation level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupClass(pub u8);

/// Whether a request may run in a group, its own or another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    Alone,
    Groupable(GroupClass),
}

/// The keys of one request: sorted ascending by bytes, duplicates merged (a
/// key asked both shared and exclusive is exclusive), never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRequest {
    keys: Vec<(String, LockMode)>,
}

impl LockRequest {
    /// Returns `None` when both lists are empty. Key length is not checked
    /// here because the protocol layer already limits it.
    pub fn new(
        exclusive: impl IntoIterator<Item = String>,
        shared: impl IntoIterator<Item = String>,
    ) -> Option<LockRequest> {
        let mut keys: Vec<(String, LockMode)> = exclusive
            .into_iter()
            .map(|key| (key, LockMode::Exclusive))
            .chain(shared.into_iter().map(|key| (key, LockMode::Shared)))
            .collect();
        if keys.is_empty() {
            return None;
        }
        // Exclusive sorts first within one key so that `dedup_by`, which keeps
        // the first of a run, keeps the stronger mode.
        keys.sort_unstable_by(|(left_key, left_mode), (right_key, right_mode)| {
            left_key.cmp(right_key).then(right_mode.cmp(left_mode))
        });
        keys.dedup_by(|later, kept| later.0 == kept.0);
        Some(LockRequest { keys })
    }

    pub fn keys(&self) -> &[(String, LockMode)] {
        &self.keys
    }

    // A request is never empty, so an `is_empty` would always say false.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    fn into_first_key(self) -> String {
        // The default is never used: `new` refuses to build an empty request.
        self.keys
            .into_iter()
            .next()
            .map(|(key, _)| key)
            .unwrap_or_default()
    }
}

/// What a request that got its keys must know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Handed-over commits on the keys just granted, in a conflicting mode,
    /// that had not settled at the grant: statements that read without locking
    /// must wait until each has answered.
    pub read_after: Vec<CommitTicket>,
    /// The owner leads a group: requests may join it until it closes.
    pub leading: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// Every key of the request is now held by the owner.
    Granted(Grant),
    /// The owner is queued; its completion is reported later by
    /// `release_all`, `hand_over` or `cancel_wait`.
    Waiting,
    /// The try-only rule refused this key: it is not greater than every key
    /// the owner holds (or it is an upgrade) and could not be granted at once.
    Conflict { key: String },
    /// The request joined the group of `leader`, which holds its keys now; the
    /// owner holds nothing and is not in the table.
    Joined { leader: OwnerId },
}

/// How a waiting request ended well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completed {
    Granted(Grant),
    Joined { leader: OwnerId },
}

/// A waiting request that completed, as a consequence of another call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub owner: OwnerId,
    pub completed: Completed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Grants held now: a key shared by three owners counts three.
    pub locks_held: u64,
    /// Owners with a waiting request now.
    pub lock_waiters: u64,
    /// Cumulative count of requests that had to wait, once per request.
    pub lock_waits: u64,
    /// Cumulative count of requests that joined a group.
    pub group_joins: u64,
}

/// A key is stored once and shared by the table, its holders' lists and its
/// waiters, so that granting a key copies a pointer rather than the bytes.
/// `Arc` rather than `Rc` keeps the table `Send` for whatever runs the
/// coordinator.
type KeyName = Arc<str>;

#[derive(Debug)]
enum Holders {
    Nobody,
    Shared(Vec<OwnerId>),
    Exclusive(OwnerId),
}

impl Holders {
    /// Adds `owner` if `mode` is compatible with the current holders; checking
    /// and adding in one step leaves no "add an incompatible holder" case.
    fn try_add(&mut self, owner: OwnerId, mode: LockMode) -> bool {
        match (&mut *self, mode) {
            (Holders::Nobody, LockMode::Shared) => *self = Holders::Shared(vec![owner]),
            (Holders::Nobody, LockMode::Exclusive) => *self = Holders::Exclusive(owner),
            (Holders::Shared(owners), LockMode::Shared) => owners.push(owner),
            _ => return false,
        }
        true
    }

    fn remove(&mut self, owner: OwnerId) {
        match self {
            Holders::Exclusive(holder) if *holder == owner => *self = Holders::Nobody,
            Holders::Shared(owners) => {
                if let Some(position) = owners.iter().position(|holder| *holder == owner) {
                    owners.swap_remove(position);
                }
                if owners.is_empty() {
                    *self = Holders::Nobody;
                }
            }
            _ => {}
        }
    }

    /// The one owner whose hold covers `mode` for anyone in its group: the
    /// exclusive holder, or the only shared holder when `mode` is shared.
    fn sole_holder_covering(&self, mode: LockMode) -> Option<OwnerId> {
        match (self, mode) {
            (Holders::Exclusive(owner), _) => Some(*owner),
            (Holders::Shared(owners), LockMode::Shared) if owners.len() == 1 => Some(owners[0]),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct QueuedRequest {
    owner: OwnerId,
    mode: LockMode,
}

#[derive(Debug)]
struct KeyEntry {
    name: KeyName,
    holders: Holders,
    queue: VecDeque<QueuedRequest>,
    /// Former holders that handed the key over and whose commit has not
    /// settled yet, with the mode they held it in.
    committing: Vec<(CommitTicket, LockMode)>,
}

impl KeyEntry {
    fn new(name: KeyName) -> KeyEntry {
        KeyEntry {
            name,
            holders: Holders::Nobody,
            queue: VecDeque::new(),
            committing: Vec::new(),
        }
    }

    /// FIFO: a newcomer may not overtake anyone already queued, even a request
    /// it would be compatible with, or a stream of readers could starve a
    /// writer.
    fn try_grant_at_once(&mut self, owner: OwnerId, mode: LockMode) -> bool {
        self.queue.is_empty() && self.holders.try_add(owner, mode)
    }

    /// Grants from the front while the front is compatible with the holders,
    /// so a run of readers is let in together and the first incompatible
    /// waiter stops everyone behind it.
    fn grant_from_queue(&mut self) -> Vec<QueuedRequest> {
        let mut granted = Vec::new();
        while let Some(front) = self.queue.pop_front() {
            if self.holders.try_add(front.owner, front.mode) {
                granted.push(front);
            } else {
                self.queue.push_front(front);
                break;
            }
        }
        granted
    }

    /// Nobody holds it and nobody waits for it: a grant here overtakes no one.
    fn is_free(&self) -> bool {
        matches!(self.holders, Holders::Nobody) && self.queue.is_empty()
    }

    fn is_unused(&self) -> bool {
        self.is_free() && self.committing.is_empty()
    }

    /// The tickets a grant in `mode` must read after.
    fn tickets_conflicting_with(&self, mode: LockMode) -> impl Iterator<Item = CommitTicket> + '_ {
        self.committing
            .iter()
            .filter(move |(_, held)| held.conflicts_with(mode))
            .map(|(ticket, _)| *ticket)
    }
}

#[derive(Debug)]
struct WaitingRequest {
    /// The key this owner is queued on.
    key: KeyName,
    /// Its mode in this request.
    mode: LockMode,
    /// The keys after `key`, all greater than it, still to be taken.
    remaining_keys: std::vec::IntoIter<(String, LockMode)>,
}

#[derive(Debug)]
enum RequestState {
    Idle,
    Waiting(WaitingRequest),
}

/// Whether an owner takes members into its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leadership {
    /// Runs alone.
    None,
    /// Requests of `class` may join, up to the table's group size.
    Open { class: GroupClass, members: usize },
    /// Closed by its owner before committing; no one joins any more.
    Closed { members: usize },
}

#[derive(Debug)]
struct OwnerState {
    /// Sorted ascending by key, so the greatest held key is the last one and
    /// the extension rule is one binary search.
    held: Vec<(KeyName, LockMode)>,
    request: RequestState,
    grouping: Grouping,
    leadership: Leadership,
    /// Tickets met on keys granted since the last grant was reported.
    read_after: Vec<CommitTicket>,
}

impl OwnerState {
    fn new() -> OwnerState {
        OwnerState {
            held: Vec::new(),
            request: RequestState::Idle,
            grouping: Grouping::Alone,
            leadership: Leadership::None,
            read_after: Vec::new(),
        }
    }

    fn find_held(&self, key: &str) -> Result<usize, usize> {
        self.held
            .binary_search_by(|(held_key, _)| (**held_key).cmp(key))
    }

    fn insert_held(&mut self, key: KeyName, mode: LockMode) {
        match self.find_held(&key) {
            Ok(position) => self.held[position].1 = mode,
            Err(position) => self.held.insert(position, (key, mode)),
        }
    }

    /// Remembers the unsettled commits `entry` carries against a grant in `mode`.
    fn note_tickets(&mut self, entry: &KeyEntry, mode: LockMode) {
        for ticket in entry.tickets_conflicting_with(mode) {
            if !self.read_after.contains(&ticket) {
                self.read_after.push(ticket);
            }
        }
    }

    fn take_grant(&mut self) -> Grant {
        Grant {
            read_after: std::mem::take(&mut self.read_after),
            leading: matches!(self.leadership, Leadership::Open { .. }),
        }
    }
}

enum KeyChange {
    HolderLeft(OwnerId),
    WaiterLeft(OwnerId),
}

enum AscendingOutcome {
    Complete,
    Queued,
}

#[derive(Debug)]
pub struct LockTable {
    keys: HashMap<KeyName, KeyEntry>,
    owners: HashMap<OwnerId, OwnerState>,
    /// Which keys carry each unsettled ticket, for `settle`.
    commits: HashMap<CommitTicket, Vec<KeyName>>,
    /// A leader and its members; 1 turns groups off.
    max_group_size: usize,
    stats: LockStats,
}

impl Default for LockTable {
    fn default() -> Self {
        LockTable::new()
    }
}

impl LockTable {
    /// A table without groups.
    pub fn new() -> Self {
        LockTable::with_max_group_size(1)
    }

    /// A table whose groups hold at most `max_group_size` requests, the
    /// leader's included (0 and 1: no groups).
    pub fn with_max_group_size(max_group_size: usize) -> Self {
        LockTable {
            keys: HashMap::new(),
            owners: HashMap::new(),
            commits: HashMap::new(),
            max_group_size: max_group_size.max(1),
            stats: LockStats::default(),
        }
    }

    /// `acquire_as` for a request that runs alone.
    pub fn acquire(&mut self, owner_id: OwnerId, request: LockRequest) -> AcquireOutcome {
        self.acquire_as(owner_id, request, Grouping::Alone)
    }

    /// Takes the request's keys for `owner` in ascending order, applying the
    /// extension rule to keys the owner already holds or that lie below its
    /// greatest held key. A groupable request of an owner that holds nothing
    /// joins an open group instead when it can.
    ///
    /// The caller never sends a request for an owner that is already waiting;
    /// if it does, the answer is `Conflict` on the request's first key and the
    /// table is unchanged, because a second queued request would break the
    /// one-wait-per-owner assumption that makes waits acyclic.
    ///
    /// After a `Conflict`, keys granted earlier in the same request stay held:
    /// the caller is expected to `release_all` and retry.
    pub fn acquire_as(
        &mut self,
        owner_id: OwnerId,
        request: LockRequest,
        grouping: Grouping,
    ) -> AcquireOutcome {
        let holds_nothing = self
            .owners
            .get(&owner_id)
            .is_none_or(|owner| owner.held.is_empty());
        if let (true, Grouping::Groupable(class)) = (holds_nothing, grouping) {
            if !self.is_waiting(owner_id) {
                if let Some(leader) = self.leader_to_join(request.keys(), class) {
                    self.owners.remove(&owner_id);
                    self.join(leader, request.keys());
                    return AcquireOutcome::Joined { leader };
                }
            }
        }
        let LockTable {
            keys,
            owners,
            stats,
            ..
        } = self;
        let owner = owners.entry(owner_id).or_insert_with(OwnerState::new);
        if let RequestState::Waiting(_) = owner.request {
            return AcquireOutcome::Conflict {
                key: request.into_first_key(),
            };
        }
        owner.grouping = grouping;
        let mut remaining = request.keys.into_iter();
        while let Some((key, mode)) = remaining.next() {
            match owner.find_held(&key) {
                Ok(position) => {
                    if owner.held[position].1 >= mode {
                        continue;
                    }
                    // Waiting for an upgrade could deadlock with another
                    // reader of the same key doing the same, so it is try-only.
                    if !try_upgrade(keys, owner_id, owner, &key) {
                        return AcquireOutcome::Conflict { key };
                    }
                    owner.held[position].1 = LockMode::Exclusive;
                }
                Err(position) if position < owner.held.len() => {
                    // Waiting here would mean waiting for a key below one
                    // already held: the one shape of wait that can close a cycle.
                    match try_grant_new_key_at_once(keys, owner_id, owner, key, mode) {
                        Ok(name) => {
                            owner.held.insert(position, (name, mode));
                            stats.locks_held += 1;
                        }
                        Err(key) => return AcquireOutcome::Conflict { key },
                    }
                }
                Err(_) => {
                    // From here on every key is greater than all held ones,
                    // so the rest of the request may wait.
                    return match take_ascending(
                        keys,
                        stats,
                        owner_id,
                        owner,
                        (key, mode),
                        remaining,
                    ) {
                        AscendingOutcome::Complete => AcquireOutcome::Granted(owner.take_grant()),
                        AscendingOutcome::Queued => {
                            stats.lock_waits += 1;
                            AcquireOutcome::Waiting
                        }
                    };
                }
            }
        }
        AcquireOutcome::Granted(owner.take_grant())
    }

    /// Releases every key `owner` holds and drops its waiting request, if any.
    /// Returns the waiting requests that completed as a consequence, in the
    /// order they completed.
    pub fn release_all(&mut self, owner_id: OwnerId) -> Vec<Completion> {
        self.give_up_keys(owner_id, None)
    }

    /// Like `release_all`, for an owner that has sent `COMMIT`: each key it
    /// held carries `ticket` until `settle(ticket)`, and whoever is granted it
    /// in a conflicting mode meanwhile is told to read after that commit.
    pub fn hand_over(&mut self, owner_id: OwnerId, ticket: CommitTicket) -> Vec<Completion> {
        self.give_up_keys(owner_id, Some(ticket))
    }

    /// The handed-over commit `ticket` has answered (or its connection is gone
    /// from the server): its keys no longer carry it.
    pub fn settle(&mut self, ticket: CommitTicket) {
        for key in self.commits.remove(&ticket).unwrap_or_default() {
            if let Entry::Occupied(mut occupied) = self.keys.entry(key) {
                let entry = occupied.get_mut();
                entry.committing.retain(|(held, _)| *held != ticket);
                if entry.is_unused() {
                    occupied.remove();
                }
            }
        }
    }

    /// Stops `owner`'s group from taking members, and says how many joined it.
    pub fn close_group(&mut self, owner_id: OwnerId) -> usize {
        let Some(owner) = self.owners.get_mut(&owner_id) else {
            return 0;
        };
        let members = match owner.leadership {
            Leadership::None => 0,
            Leadership::Open { members, .. } | Leadership::Closed { members } => members,
        };
        if owner.leadership != Leadership::None {
            owner.leadership = Leadership::Closed { members };
        }
        members
    }

    /// Drops `owner`'s waiting request from its queue, keeping every key it
    /// already holds, including keys granted earlier in that same request.
    /// Returns the waiting requests that completed as a consequence (such as
    /// readers that were queued behind the cancelled writer).
    pub fn cancel_wait(&mut self, owner_id: OwnerId) -> Vec<Completion> {
        let mut completed = Vec::new();
        let Some(owner) = self.owners.get_mut(&owner_id) else {
            return completed;
        };
        let RequestState::Waiting(waiting) =
            std::mem::replace(&mut owner.request, RequestState::Idle)
        else {
            return completed;
        };
        if owner.held.is_empty() {
            // An idle owner holding nothing is just memory.
            self.owners.remove(&owner_id);
        }
        self.stats.lock_waiters -= 1;
        self.settle_key(waiting.key, KeyChange::WaiterLeft(owner_id), &mut completed);
        completed
    }

    pub fn is_waiting(&self, owner_id: OwnerId) -> bool {
        self.owners
            .get(&owner_id)
            .is_some_and(|owner| matches!(owner.request, RequestState::Waiting(_)))
    }

    /// The key `owner` is queued on now, if it is waiting; lets the caller
    /// name the key in a lock wait timeout.
    pub fn waiting_key(&self, owner_id: OwnerId) -> Option<&str> {
        match &self.owners.get(&owner_id)?.request {
            RequestState::Waiting(waiting) => Some(&waiting.key),
            RequestState::Idle => None,
        }
    }

    /// The mode in which `owner` holds `key` now, if any.
    pub fn held_mode(&self, owner_id: OwnerId, key: &str) -> Option<LockMode> {
        let owner = self.owners.get(&owner_id)?;
        let position = owner.find_held(key).ok()?;
        Some(owner.held[position].1)
    }

    pub fn stats(&self) -> LockStats {
        self.stats
    }

    fn give_up_keys(&mut self, owner_id: OwnerId, ticket: Option<CommitTicket>) -> Vec<Completion> {
        let mut completed = Vec::new();
        let Some(owner) = self.owners.remove(&owner_id) else {
            return completed;
        };
        if let RequestState::Waiting(waiting) = owner.request {
            self.stats.lock_waiters -= 1;
            self.settle_key(waiting.key, KeyChange::WaiterLeft(owner_id), &mut completed);
        }
        for (key, mode) in owner.held {
            self.stats.locks_held -= 1;
            if let Some(ticket) = ticket {
                // Before the key moves on, so that the next holder sees it.
                if let Some(entry) = self.keys.get_mut(&key) {
                    entry.committing.push((ticket, mode));
                    self.commits.entry(ticket).or_default().push(key.clone());
                }
            }
            self.settle_key(key, KeyChange::HolderLeft(owner_id), &mut completed);
        }
        completed
    }

    /// The open leader of `class` that a request for `keys`, holding nothing,
    /// may join: every key is either held by that one leader in a mode that
    /// covers the request's, or free; at least one is the leader's.
    fn leader_to_join(&self, keys: &[(String, LockMode)], class: GroupClass) -> Option<OwnerId> {
        let mut leader = None;
        for (key, mode) in keys {
            let Some(entry) = self.keys.get(key.as_str()) else {
                continue;
            };
            if entry.is_free() {
                continue;
            }
            let holder = entry.holders.sole_holder_covering(*mode)?;
            if leader.is_some_and(|leader| leader != holder) {
                return None;
            }
            leader = Some(holder);
        }
        let leader = leader?;
        match self.owners.get(&leader)?.leadership {
            Leadership::Open {
                class: open_class,
                members,
            } if open_class == class && members + 1 < self.max_group_size => Some(leader),
            _ => None,
        }
    }

    /// Makes a request for `keys` a member of `leader`'s group: the free keys
    /// become the leader's; `leader_to_join` said it may.
    fn join(&mut self, leader: OwnerId, keys: &[(String, LockMode)]) {
        let LockTable {
            keys: entries,
            owners,
            stats,
            ..
        } = self;
        let Some(owner) = owners.get_mut(&leader) else {
            return;
        };
        for (key, mode) in keys {
            if owner.find_held(key).is_ok() {
                continue;
            }
            // The key is free: `leader_to_join` checked every key not held.
            let name = match entries.get_mut(key.as_str()) {
                Some(entry) => {
                    entry.holders.try_add(leader, *mode);
                    entry.name.clone()
                }
                None => insert_new_key(entries, leader, key.clone(), *mode),
            };
            owner.insert_held(name, *mode);
            stats.locks_held += 1;
        }
        if let Leadership::Open { members, .. } = &mut owner.leadership {
            *members += 1;
        }
        stats.group_joins += 1;
    }

    /// Opens the group of an owner that just completed a wait, if its request
    /// may be grouped, and takes into it the waiters on its keys that may join.
    fn open_group(&mut self, leader: OwnerId) -> Vec<Completion> {
        let mut completed = Vec::new();
        let Some(owner) = self.owners.get_mut(&leader) else {
            return completed;
        };
        let Grouping::Groupable(class) = owner.grouping else {
            return completed;
        };
        if self.max_group_size <= 1 {
            return completed;
        }
        owner.leadership = Leadership::Open { class, members: 0 };
        let held: Vec<KeyName> = owner.held.iter().map(|(key, _)| key.clone()).collect();
        for key in held {
            let queued: Vec<OwnerId> = self
                .keys
                .get(&key)
                .map(|entry| entry.queue.iter().map(|waiter| waiter.owner).collect())
                .unwrap_or_default();
            for waiter in queued {
                if let Some(keys) = self.joinable_waiter(waiter, class, leader) {
                    self.remove_waiter(waiter, &key);
                    self.join(leader, &keys);
                    completed.push(Completion {
                        owner: waiter,
                        completed: Completed::Joined { leader },
                    });
                }
            }
        }
        completed
    }

    /// The keys of `waiter`'s request when it may join `leader`'s group: it
    /// holds nothing, may be grouped in `class`, and `leader_to_join` agrees.
    fn joinable_waiter(
        &self,
        waiter: OwnerId,
        class: GroupClass,
        leader: OwnerId,
    ) -> Option<Vec<(String, LockMode)>> {
        let state = self.owners.get(&waiter)?;
        let RequestState::Waiting(waiting) = &state.request else {
            return None;
        };
        if !state.held.is_empty() || state.grouping != Grouping::Groupable(class) {
            return None;
        }
        let keys: Vec<(String, LockMode)> = std::iter::once((waiting.key.to_string(), waiting.mode))
            .chain(waiting.remaining_keys.as_slice().iter().cloned())
            .collect();
        (self.leader_to_join(&keys, class) == Some(leader)).then_some(keys)
    }

    /// Takes `waiter`, which holds nothing, out of `key`'s queue and the table.
    fn remove_waiter(&mut self, waiter: OwnerId, key: &str) {
        if let Some(entry) = self.keys.get_mut(key) {
            entry.queue.retain(|queued| queued.owner != waiter);
        }
        self.owners.remove(&waiter);
        self.stats.lock_waiters -= 1;
    }

    /// Applies `change` to `key`, lets in whoever the change unblocked, and
    /// continues their requests.
    fn settle_key(&mut self, key: KeyName, change: KeyChange, completed: &mut Vec<Completion>) {
        let (name, granted) = match self.keys.entry(key) {
            // Every held or queued key has an entry; nothing to settle otherwise.
            Entry::Vacant(_) => return,
            Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                match change {
                    KeyChange::HolderLeft(owner) => entry.holders.remove(owner),
                    KeyChange::WaiterLeft(owner) => {
                        if let Some(position) =
                            entry.queue.iter().position(|waiter| waiter.owner == owner)
                        {
                            entry.queue.remove(position);
                        }
                    }
                }
                let granted = entry.grant_from_queue();
                if entry.is_unused() {
                    occupied.remove();
                    return;
                }
                (entry.name.clone(), granted)
            }
        };
        for waiter in granted {
            self.resume(waiter.owner, name.clone(), waiter.mode, completed);
        }
    }

    /// Continues a request that was just granted the key it was queued on.
    /// Resuming only adds holders and waiters, and a group it opens only takes
    /// waiters out of queues of keys it holds, so it unblocks no one else:
    /// there is no cascade to follow.
    fn resume(
        &mut self,
        owner_id: OwnerId,
        key: KeyName,
        mode: LockMode,
        completed: &mut Vec<Completion>,
    ) {
        let LockTable {
            keys,
            owners,
            stats,
            ..
        } = self;
        let Some(owner) = owners.get_mut(&owner_id) else {
            return;
        };
        let RequestState::Waiting(waiting) =
            std::mem::replace(&mut owner.request, RequestState::Idle)
        else {
            return;
        };
        stats.lock_waiters -= 1;
        stats.locks_held += 1;
        if let Some(entry) = keys.get(&key) {
            owner.note_tickets(entry, mode);
        }
        owner.insert_held(key, mode);
        let mut remaining = waiting.remaining_keys;
        let outcome = match remaining.next() {
            None => AscendingOutcome::Complete,
            Some(next) => take_ascending(keys, stats, owner_id, owner, next, remaining),
        };
        if let AscendingOutcome::Complete = outcome {
            let members = self.open_group(owner_id);
            if let Some(owner) = self.owners.get_mut(&owner_id) {
                // The leader before its members: they run only once it does.
                completed.push(Completion {
                    owner: owner_id,
                    completed: Completed::Granted(owner.take_grant()),
                });
            }
            completed.extend(members);
        }
    }
}

/// Takes `first` and then `rest`, all greater than every key `owner` holds,
/// stopping at the first key that must wait.
fn take_ascending(
    keys: &mut HashMap<KeyName, KeyEntry>,
    stats: &mut LockStats,
    owner_id: OwnerId,
    owner: &mut OwnerState,
    first: (String, LockMode),
    mut rest: std::vec::IntoIter<(String, LockMode)>,
) -> AscendingOutcome {
    let mut current = first;
    loop {
        let (key, mode) = current;
        let name = match keys.get_mut(key.as_str()) {
            Some(entry) => {
                if !entry.try_grant_at_once(owner_id, mode) {
                    entry.queue.push_back(QueuedRequest {
                        owner: owner_id,
                        mode,
                    });
                    owner.request = RequestState::Waiting(WaitingRequest {
                        key: entry.name.clone(),
                        mode,
                        remaining_keys: rest,
                    });
                    stats.lock_waiters += 1;
                    return AscendingOutcome::Queued;
                }
                owner.note_tickets(entry, mode);
                entry.name.clone()
            }
            None => insert_new_key(keys, owner_id, key, mode),
        };
        // The key is greater than every held one, so it belongs at the end.
        owner.held.push((name, mode));
        stats.locks_held += 1;
        match rest.next() {
            Some(next) => current = next,
            None => return AscendingOutcome::Complete,
        }
    }
}

/// Grants a key the owner does not hold if that is possible without waiting;
/// hands the key back otherwise so the caller can name it in `Conflict`.
fn try_grant_new_key_at_once(
    keys: &mut HashMap<KeyName, KeyEntry>,
    owner_id: OwnerId,
    owner: &mut OwnerState,
    key: String,
    mode: LockMode,
) -> Result<KeyName, String> {
    match keys.get_mut(key.as_str()) {
        Some(entry) => {
            if entry.try_grant_at_once(owner_id, mode) {
                owner.note_tickets(entry, mode);
                Ok(entry.name.clone())
            } else {
                Err(key)
            }
        }
        None => Ok(insert_new_key(keys, owner_id, key, mode)),
    }
}

/// An upgrade is possible only for the sole holder with nobody queued: with a
/// queue, upgrading would overtake the waiters FIFO promised to serve first.
fn try_upgrade(
    keys: &mut HashMap<KeyName, KeyEntry>,
    owner_id: OwnerId,
    owner: &mut OwnerState,
    key: &str,
) -> bool {
    let Some(entry) = keys.get_mut(key) else {
        return false;
    };
    match &entry.holders {
        Holders::Shared(owners) if owners.as_slice() == [owner_id] && entry.queue.is_empty() => {
            entry.holders = Holders::Exclusive(owner_id);
            owner.note_tickets(entry, LockMode::Exclusive);
            true
        }
        _ => false,
    }
}

fn insert_new_key(
    keys: &mut HashMap<KeyName, KeyEntry>,
    owner_id: OwnerId,
    key: String,
    mode: LockMode,
) -> KeyName {
    let name = KeyName::from(key);
    let mut entry = KeyEntry::new(name.clone());
    // Always true: a fresh entry has no holders to conflict with.
    entry.holders.try_add(owner_id, mode);
    keys.insert(name.clone(), entry);
    name
}

#[cfg(test)]
impl LockTable {
    fn key_entry_count(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, BTreeSet};
    use AcquireOutcome::{Granted, Waiting};
    use LockMode::{Exclusive, Shared};

    fn request(exclusive: &[&str], shared: &[&str]) -> LockRequest {
        LockRequest::new(
            exclusive.iter().map(|key| key.to_string()),
            shared.iter().map(|key| key.to_string()),
        )
        .expect("every test request names at least one key")
    }

    fn conflict(key: &str) -> AcquireOutcome {
        AcquireOutcome::Conflict {
            key: key.to_string(),
        }
    }

    fn assert_empty(table: &LockTable) {
        assert_eq!(table.key_entry_count(), 0, "leaked key entries");
        assert!(table.owners.is_empty(), "leaked owners");
        assert_eq!(table.stats().locks_held, 0);
        assert_eq!(table.stats().lock_waiters, 0);
    }

    #[test]
    fn request_keys_are_sorted_ascending_by_bytes() {
        let request = request(&["b", "aa", "B"], &["a", "é", "ab"]);
        let names: Vec<&str> = request.keys().iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(names, ["B", "a", "aa", "ab", "b", "é"]);
        assert_eq!(request.len(), 6);
    }

    #[test]
    fn request_merges_duplicates_and_exclusive_wins() {
        let request = request(&["k", "x", "k"], &["k", "s", "s", "x"]);
        assert_eq!(
            request.keys(),
            &[
                ("k".to_string(), Exclusive),
                ("s".to_string(), Shared),
                ("x".to_string(), Exclusive),
            ]
        );
        assert_eq!(request.len(), 3);
    }

    #[test]
    fn empty_request_is_none() {
        assert_eq!(LockRequest::new(Vec::new(), Vec::new()), None);
        assert!(LockRequest::new(Vec::new(), vec!["a".to_string()]).is_some());
    }

    #[test]
    fn exclusive_waits_for_exclusive_until_release() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["k"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["k"], &[])), Waiting);
        assert!(table.is_waiting(2));
        assert_eq!(table.held_mode(2, "k"), None);

        assert_eq!(table.release_all(1), vec![2]);
        assert!(!table.is_waiting(2));
        assert_eq!(table.held_mode(1, "k"), None);
        assert_eq!(table.held_mode(2, "k"), Some(Exclusive));

        assert_eq!(table.release_all(2), Vec::<OwnerId>::new());
        assert_empty(&table);
    }

    #[test]
    fn readers_share_a_writer_waits_and_a_later_reader_queues_behind_it() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&[], &["k"])), Granted);
        assert_eq!(table.acquire(2, request(&[], &["k"])), Granted);
        assert_eq!(table.held_mode(1, "k"), Some(Shared));
        assert_eq!(table.held_mode(2, "k"), Some(Shared));

        assert_eq!(table.acquire(3, request(&["k"], &[])), Waiting);
        // Compatible with the holders, but FIFO puts it behind the writer.
        assert_eq!(table.acquire(4, request(&[], &["k"])), Waiting);

        assert_eq!(table.release_all(1), Vec::<OwnerId>::new());
        assert_eq!(table.release_all(2), vec![3]);
        assert_eq!(table.held_mode(3, "k"), Some(Exclusive));
        assert!(table.is_waiting(4));

        assert_eq!(table.release_all(3), vec![4]);
        assert_eq!(table.held_mode(4, "k"), Some(Shared));
        table.release_all(4);
        assert_empty(&table);
    }

    #[test]
    fn a_run_of_queued_readers_is_granted_together_up_to_the_next_writer() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["k"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&[], &["k"])), Waiting);
        assert_eq!(table.acquire(3, request(&[], &["k"])), Waiting);
        assert_eq!(table.acquire(4, request(&["k"], &[])), Waiting);
        assert_eq!(table.acquire(5, request(&[], &["k"])), Waiting);

        assert_eq!(table.release_all(1), vec![2, 3]);
        assert!(table.is_waiting(4));
        assert!(table.is_waiting(5));
        assert_eq!(table.release_all(2), Vec::<OwnerId>::new());
        assert_eq!(table.release_all(3), vec![4]);
        assert_eq!(table.release_all(4), vec![5]);
        table.release_all(5);
        assert_empty(&table);
    }

    #[test]
    fn waiting_on_a_later_key_keeps_the_earlier_ones() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["b"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["a", "b"], &[])), Waiting);
        assert_eq!(table.held_mode(2, "a"), Some(Exclusive));
        assert_eq!(table.held_mode(2, "b"), None);
        // "a" stays held while 2 waits, so a newcomer queues for it.
        assert_eq!(table.acquire(3, request(&[], &["a"])), Waiting);

        assert_eq!(table.release_all(1), vec![2]);
        assert_eq!(table.held_mode(2, "b"), Some(Exclusive));
        assert_eq!(table.release_all(2), vec![3]);
        table.release_all(3);
        assert_empty(&table);
    }

    #[test]
    fn a_granted_waiter_continues_with_its_next_keys() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["a"], &[])), Granted);
        assert_eq!(table.acquire(3, request(&["c"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["a", "b", "c"], &[])), Waiting);

        // 2 gets "a" and "b", then queues on "c": not complete yet.
        assert_eq!(table.release_all(1), Vec::<OwnerId>::new());
        assert!(table.is_waiting(2));
        assert_eq!(table.held_mode(2, "b"), Some(Exclusive));
        assert_eq!(table.held_mode(2, "c"), None);

        assert_eq!(table.release_all(3), vec![2]);
        assert_eq!(table.held_mode(2, "c"), Some(Exclusive));
        table.release_all(2);
        assert_empty(&table);
    }

    #[test]
    fn cancelling_a_queued_writer_lets_the_readers_behind_it_through() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&[], &["k"])), Granted);
        assert_eq!(table.acquire(2, request(&["a", "k"], &[])), Waiting);
        assert_eq!(table.acquire(3, request(&[], &["k"])), Waiting);

        assert_eq!(table.cancel_wait(2), vec![3]);
        assert!(!table.is_waiting(2));
        // The key granted earlier in the cancelled request stays held.
        assert_eq!(table.held_mode(2, "a"), Some(Exclusive));
        assert_eq!(table.held_mode(2, "k"), None);
        assert_eq!(table.held_mode(3, "k"), Some(Shared));

        // Nothing to cancel: no change, nothing completes.
        assert_eq!(table.cancel_wait(2), Vec::<OwnerId>::new());
        assert_eq!(table.held_mode(2, "a"), Some(Exclusive));
        assert_eq!(table.cancel_wait(99), Vec::<OwnerId>::new());

        for owner in 1..=3 {
            assert_eq!(table.release_all(owner), Vec::<OwnerId>::new());
        }
        assert_empty(&table);
    }

    #[test]
    fn waiting_key_names_the_key_an_owner_is_queued_on() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["c"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["a", "c", "e"], &[])), Waiting);
        assert_eq!(table.waiting_key(2), Some("c"));
        assert_eq!(table.waiting_key(1), None);
        assert_eq!(table.waiting_key(99), None);
        assert_eq!(table.release_all(1), vec![2]);
        assert_eq!(table.waiting_key(2), None);
    }

    #[test]
    fn releasing_a_waiting_owner_takes_it_out_of_the_queue() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["k"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["k"], &[])), Waiting);
        assert_eq!(table.acquire(3, request(&[], &["k"])), Waiting);
        assert_eq!(table.release_all(2), Vec::<OwnerId>::new());
        assert!(!table.is_waiting(2));
        assert_eq!(table.release_all(1), vec![3]);
        table.release_all(3);
        assert_empty(&table);
    }

    #[test]
    fn extension_skips_keys_held_in_the_same_or_a_stronger_mode() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["a"], &["b"])), Granted);
        // Someone queued on "a" does not matter: 1 already has it.
        assert_eq!(table.acquire(2, request(&["a"], &[])), Waiting);
        assert_eq!(table.acquire(1, request(&[], &["a", "b"])), Granted);
        assert_eq!(table.held_mode(1, "a"), Some(Exclusive));
        assert_eq!(table.held_mode(1, "b"), Some(Shared));
        assert_eq!(table.stats().locks_held, 2);
    }

    #[test]
    fn extension_may_wait_for_a_key_greater_than_every_held_one() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["a"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["b"], &[])), Granted);
        assert_eq!(table.acquire(1, request(&["b"], &[])), Waiting);
        assert_eq!(table.release_all(2), vec![1]);
        assert_eq!(table.held_mode(1, "b"), Some(Exclusive));
    }

    #[test]
    fn extension_takes_a_free_lower_key_at_once() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["m"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&[], &["a"])), Granted);
        assert_eq!(table.acquire(1, request(&["b"], &["a"])), Granted);
        assert_eq!(table.held_mode(1, "a"), Some(Shared));
        assert_eq!(table.held_mode(1, "b"), Some(Exclusive));
        table.release_all(1);
        table.release_all(2);
        assert_empty(&table);
    }

    #[test]
    fn extension_refuses_a_busy_lower_key() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["m"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["a"], &[])), Granted);
        assert_eq!(table.acquire(1, request(&[], &["a"])), conflict("a"));
        assert!(!table.is_waiting(1));
        assert_eq!(table.held_mode(1, "a"), None);

        // Compatible with the holders, but someone is queued: still refused.
        assert_eq!(table.acquire(3, request(&[], &["c"])), Granted);
        assert_eq!(table.acquire(4, request(&["c"], &[])), Waiting);
        assert_eq!(table.acquire(1, request(&[], &["c"])), conflict("c"));
        assert!(!table.is_waiting(1));
    }

    #[test]
    fn a_conflict_keeps_keys_granted_earlier_in_the_same_request() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["m"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["c"], &[])), Granted);
        assert_eq!(
            table.acquire(1, request(&["b", "c", "z"], &[])),
            conflict("c")
        );
        assert_eq!(table.held_mode(1, "b"), Some(Exclusive));
        assert_eq!(table.held_mode(1, "z"), None);
        assert_eq!(table.release_all(1), Vec::<OwnerId>::new());
        table.release_all(2);
        assert_empty(&table);
    }

    #[test]
    fn the_sole_reader_can_upgrade() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&[], &["k"])), Granted);
        assert_eq!(table.acquire(1, request(&["k"], &[])), Granted);
        assert_eq!(table.held_mode(1, "k"), Some(Exclusive));
        assert_eq!(table.stats().locks_held, 1);
        assert_eq!(table.acquire(2, request(&[], &["k"])), Waiting);
        assert_eq!(table.release_all(1), vec![2]);
    }

    #[test]
    fn an_upgrade_with_another_reader_or_a_waiter_is_refused() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&[], &["k"])), Granted);
        assert_eq!(table.acquire(2, request(&[], &["k"])), Granted);
        assert_eq!(table.acquire(1, request(&["k"], &[])), conflict("k"));
        assert_eq!(table.held_mode(1, "k"), Some(Shared));

        assert_eq!(table.acquire(3, request(&[], &["q"])), Granted);
        assert_eq!(table.acquire(4, request(&["q"], &[])), Waiting);
        assert_eq!(table.acquire(3, request(&["q"], &[])), conflict("q"));
        assert_eq!(table.held_mode(3, "q"), Some(Shared));
    }

    #[test]
    fn acquire_while_waiting_is_refused_on_the_first_key_and_changes_nothing() {
        let mut table = LockTable::new();
        assert_eq!(table.acquire(1, request(&["k"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["k"], &[])), Waiting);
        assert_eq!(table.acquire(2, request(&["z", "a"], &[])), conflict("a"));
        assert_eq!(table.held_mode(2, "a"), None);
        assert!(table.is_waiting(2));
        assert_eq!(table.stats().lock_waits, 1);
        assert_eq!(table.release_all(1), vec![2]);
    }

    #[test]
    fn stats_count_each_shared_holder_and_each_waiting_request_once() {
        let mut table = LockTable::new();
        for owner in 1..=3 {
            assert_eq!(table.acquire(owner, request(&[], &["k"])), Granted);
        }
        assert_eq!(
            table.stats(),
            LockStats {
                locks_held: 3,
                lock_waiters: 0,
                lock_waits: 0
            }
        );
        assert_eq!(table.acquire(4, request(&["k"], &[])), Waiting);
        assert_eq!(table.acquire(5, request(&["k"], &[])), Waiting);
        assert_eq!(
            table.stats(),
            LockStats {
                locks_held: 3,
                lock_waiters: 2,
                lock_waits: 2
            }
        );
        for owner in 1..=3 {
            table.release_all(owner);
        }
        assert_eq!(
            table.stats(),
            LockStats {
                locks_held: 1,
                lock_waiters: 1,
                lock_waits: 2
            }
        );
        assert_eq!(table.release_all(4), vec![5]);
        assert_eq!(
            table.stats(),
            LockStats {
                locks_held: 1,
                lock_waiters: 0,
                lock_waits: 2
            }
        );

        // One request that waits twice is one wait.
        assert_eq!(table.acquire(6, request(&["x"], &[])), Granted);
        assert_eq!(table.acquire(7, request(&["z"], &[])), Granted);
        assert_eq!(table.acquire(8, request(&["x", "z"], &[])), Waiting);
        assert_eq!(table.release_all(6), Vec::<OwnerId>::new());
        assert!(table.is_waiting(8));
        assert_eq!(table.release_all(7), vec![8]);
        assert_eq!(
            table.stats(),
            LockStats {
                locks_held: 3,
                lock_waiters: 0,
                lock_waits: 3
            }
        );
    }

    #[test]
    fn key_entries_are_removed_when_free() {
        let mut table = LockTable::new();
        for owner in 0..100 {
            let key = format!("row:{owner}");
            assert_eq!(table.acquire(owner, request(&[key.as_str()], &[])), Granted);
            assert_eq!(table.key_entry_count(), 1);
            table.release_all(owner);
        }
        assert_empty(&table);

        assert_eq!(table.acquire(1, request(&["a"], &[])), Granted);
        assert_eq!(table.acquire(2, request(&["a"], &[])), Waiting);
        assert_eq!(table.cancel_wait(2), Vec::<OwnerId>::new());
        assert_eq!(table.key_entry_count(), 1);
        table.release_all(1);
        assert_empty(&table);
    }

    // ---- Randomized simulation -------------------------------------------

    /// (key index, exclusive?) pairs that make up one random request.
    type Picks = Vec<(usize, bool)>;

    fn key_name(index: usize) -> String {
        format!("k{index:02}")
    }

    fn request_from_picks(picks: &[(usize, bool)]) -> LockRequest {
        let exclusive = picks.iter().filter(|(_, exclusive)| *exclusive);
        let shared = picks.iter().filter(|(_, exclusive)| !*exclusive);
        LockRequest::new(
            exclusive.map(|(index, _)| key_name(*index)),
            shared.map(|(index, _)| key_name(*index)),
        )
        .expect("the simulation never picks an empty request")
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Phase {
        Waiting,
        Granted,
    }

    struct Transaction {
        phase: Phase,
        /// Every key of every request that did not end in Conflict.
        wanted: BTreeMap<String, LockMode>,
    }

    #[derive(Default, Debug)]
    struct Coverage {
        waits: u64,
        extension_waits: u64,
        extension_grants: u64,
        conflicts: u64,
        reported_completions: u64,
        cancels: u64,
    }

    struct Simulation {
        table: LockTable,
        key_count: usize,
        next_owner: OwnerId,
        live: BTreeMap<OwnerId, Transaction>,
        started: u64,
        finished: u64,
        coverage: Coverage,
    }

    #[derive(Clone, Debug)]
    enum Step {
        Start(Picks),
        Extend(usize, Picks),
        Commit(usize),
        AbortWaiting(usize),
    }

    impl Simulation {
        fn new(key_count: usize) -> Simulation {
            Simulation {
                table: LockTable::new(),
                key_count,
                next_owner: 1,
                live: BTreeMap::new(),
                started: 0,
                finished: 0,
                coverage: Coverage::default(),
            }
        }

        fn apply(&mut self, step: Step) {
            match step {
                Step::Start(picks) => self.start(&picks),
                Step::Extend(choice, picks) => self.extend(choice, &picks),
                Step::Commit(choice) => self.commit(choice),
                Step::AbortWaiting(choice) => self.abort_waiting(choice),
            }
            self.check_invariants();
        }

        fn held_by(&self, owner: OwnerId) -> BTreeMap<String, LockMode> {
            (0..self.key_count)
                .map(key_name)
                .filter_map(|key| self.table.held_mode(owner, &key).map(|mode| (key, mode)))
                .collect()
        }

        fn owner_in_phase(&self, phase: Phase, choice: usize) -> Option<OwnerId> {
            let owners: Vec<OwnerId> = self
                .live
                .iter()
                .filter(|(_, transaction)| transaction.phase == phase)
                .map(|(owner, _)| *owner)
                .collect();
            if owners.is_empty() {
                None
            } else {
                Some(owners[choice % owners.len()])
            }
        }

        /// Asked keys that somebody is queued on: FIFO forbids taking them now.
        fn keys_with_a_queue(&self, asked: &[(String, LockMode)]) -> Vec<String> {
            asked
                .iter()
                .filter(|(key, _)| {
                    self.table
                        .keys
                        .get(key.as_str())
                        .is_some_and(|entry| !entry.queue.is_empty())
                })
                .map(|(key, _)| key.clone())
                .collect()
        }

        fn assert_no_overtaking(
            &self,
            owner: OwnerId,
            queued_keys: &[String],
            before: &BTreeMap<String, LockMode>,
        ) {
            for key in queued_keys {
                assert_eq!(
                    self.table.held_mode(owner, key),
                    before.get(key).copied(),
                    "{owner} overtook the queue of {key}"
                );
            }
        }

        fn start(&mut self, picks: &[(usize, bool)]) {
            let owner = self.next_owner;
            self.next_owner += 1;
            self.started += 1;
            let request = request_from_picks(picks);
            let wanted: BTreeMap<String, LockMode> = request.keys().iter().cloned().collect();
            let queued_keys = self.keys_with_a_queue(request.keys());
            let outcome = self.table.acquire(owner, request);
            self.assert_no_overtaking(owner, &queued_keys, &BTreeMap::new());
            let phase = match outcome {
                Granted => Phase::Granted,
                Waiting => {
                    self.coverage.waits += 1;
                    Phase::Waiting
                }
                other => panic!("a new transaction holds nothing, yet got {other:?}"),
            };
            assert_eq!(self.table.is_waiting(owner), phase == Phase::Waiting);
            if phase == Phase::Granted {
                self.assert_holds_all(owner, &wanted);
            }
            self.live.insert(owner, Transaction { phase, wanted });
        }

        fn extend(&mut self, choice: usize, picks: &[(usize, bool)]) {
            let Some(owner) = self.owner_in_phase(Phase::Granted, choice) else {
                return;
            };
            let before = self.held_by(owner);
            let request = request_from_picks(picks);
            let asked = request.keys().to_vec();
            // Keys already held strongly enough are skipped, queue or not.
            let needed: Vec<(String, LockMode)> = asked
                .iter()
                .filter(|(key, mode)| before.get(key) < Some(mode))
                .cloned()
                .collect();
            let queued_keys = self.keys_with_a_queue(&needed);
            let outcome = self.table.acquire(owner, request);
            let after = self.held_by(owner);
            self.assert_no_overtaking(owner, &queued_keys, &before);
            for (key, mode) in &before {
                assert!(
                    after.get(key) >= Some(mode),
                    "extension lost or weakened {key}"
                );
            }
            match outcome {
                Granted => {
                    assert!(!self.table.is_waiting(owner));
                    for (key, mode) in &asked {
                        assert!(after.get(key) >= Some(mode), "Granted without {key}");
                    }
                    self.coverage.extension_grants += 1;
                    self.want_more(owner, &asked, Phase::Granted);
                }
                Waiting => {
                    assert!(self.table.is_waiting(owner));
                    let waited = self.waited_key(owner);
                    assert!(
                        before.keys().all(|held| *held < waited),
                        "waits for {waited} while holding a greater key: {before:?}"
                    );
                    for (key, mode) in &asked {
                        if *key < waited {
                            assert!(after.get(key) >= Some(mode), "lower key {key} not taken");
                        } else {
                            assert_eq!(after.get(key), None, "{key} taken out of order");
                        }
                    }
                    self.coverage.waits += 1;
                    self.coverage.extension_waits += 1;
                    self.want_more(owner, &asked, Phase::Waiting);
                }
                AcquireOutcome::Conflict { key } => {
                    assert!(!self.table.is_waiting(owner));
                    let position = asked
                        .iter()
                        .position(|(asked_key, _)| *asked_key == key)
                        .expect("Conflict names a key of the request");
                    let mode = asked[position].1;
                    for (earlier, earlier_mode) in &asked[..position] {
                        assert!(after.get(earlier) >= Some(earlier_mode));
                    }
                    for (later, _) in &asked[position + 1..] {
                        assert_eq!(
                            after.get(later),
                            before.get(later),
                            "{later} taken after Conflict"
                        );
                    }
                    assert_eq!(after.get(&key), before.get(&key));
                    let is_upgrade = before.get(&key) == Some(&Shared) && mode == Exclusive;
                    let below_a_held_key = after.keys().any(|held| *held > key);
                    assert!(
                        is_upgrade || below_a_held_key,
                        "Conflict on {key} outside the try-only rule"
                    );
                    assert!(
                        !self.grantable_at_once(owner, &key, mode, is_upgrade),
                        "Conflict on {key} though it was free to take"
                    );
                    self.coverage.conflicts += 1;
                    // What the coordinator does: abort and retry later.
                    self.live.remove(&owner);
                    self.finished += 1;
                    let completed = self.table.release_all(owner);
                    self.record_completions(completed);
                }
            }
        }

        fn want_more(&mut self, owner: OwnerId, asked: &[(String, LockMode)], phase: Phase) {
            let transaction = self.live.get_mut(&owner).expect("extended owner is live");
            transaction.phase = phase;
            for (key, mode) in asked {
                let wanted = transaction.wanted.entry(key.clone()).or_insert(*mode);
                *wanted = (*wanted).max(*mode);
            }
        }

        fn commit(&mut self, choice: usize) {
            let Some(owner) = self.owner_in_phase(Phase::Granted, choice) else {
                return;
            };
            self.live.remove(&owner);
            self.finished += 1;
            let completed = self.table.release_all(owner);
            assert!(self.held_by(owner).is_empty());
            assert!(!self.table.is_waiting(owner));
            self.record_completions(completed);
        }

        fn abort_waiting(&mut self, choice: usize) {
            let Some(owner) = self.owner_in_phase(Phase::Waiting, choice) else {
                return;
            };
            let before = self.held_by(owner);
            // No longer waiting; from now on it must never be reported.
            self.live
                .get_mut(&owner)
                .expect("chosen owner is live")
                .phase = Phase::Granted;
            let completed = self.table.cancel_wait(owner);
            assert!(!self.table.is_waiting(owner));
            assert_eq!(self.held_by(owner), before, "cancel_wait changed held keys");
            self.coverage.cancels += 1;
            self.record_completions(completed);

            self.live.remove(&owner);
            self.finished += 1;
            let completed = self.table.release_all(owner);
            self.record_completions(completed);
        }

        fn record_completions(&mut self, completed: Vec<OwnerId>) {
            let mut seen = BTreeSet::new();
            for owner in completed {
                assert!(seen.insert(owner), "{owner} reported twice");
                let transaction = self.live.get_mut(&owner).expect("completed owner is live");
                assert_eq!(
                    transaction.phase,
                    Phase::Waiting,
                    "{owner} reported but was not waiting"
                );
                transaction.phase = Phase::Granted;
                assert!(!self.table.is_waiting(owner));
                let wanted = transaction.wanted.clone();
                self.assert_holds_all(owner, &wanted);
                self.coverage.reported_completions += 1;
            }
            for (owner, transaction) in &self.live {
                if transaction.phase == Phase::Waiting {
                    assert!(
                        self.table.is_waiting(*owner),
                        "{owner} completed unreported"
                    );
                }
            }
        }

        fn assert_holds_all(&self, owner: OwnerId, wanted: &BTreeMap<String, LockMode>) {
            for (key, mode) in wanted {
                assert!(
                    self.table.held_mode(owner, key) >= Some(*mode),
                    "{owner} granted without {key}"
                );
            }
        }

        fn waited_key(&self, owner: OwnerId) -> String {
            self.table
                .waiting_key(owner)
                .expect("called only for a waiting owner")
                .to_string()
        }

        fn grantable_at_once(
            &self,
            owner: OwnerId,
            key: &str,
            mode: LockMode,
            is_upgrade: bool,
        ) -> bool {
            let Some(entry) = self.table.keys.get(key) else {
                return true;
            };
            if !entry.queue.is_empty() {
                return false;
            }
            match &entry.holders {
                Holders::Nobody => true,
                Holders::Shared(owners) if is_upgrade => owners.as_slice() == [owner],
                Holders::Shared(_) => mode == Shared,
                Holders::Exclusive(_) => false,
            }
        }

        fn check_invariants(&self) {
            let table = &self.table;
            let mut holders_seen_by_owners: BTreeMap<&str, Vec<(OwnerId, LockMode)>> =
                BTreeMap::new();
            let mut locks_held = 0;
            let mut waiters = 0;
            let mut some_owner_fully_granted = false;
            for (owner, state) in &table.owners {
                assert!(self.live.contains_key(owner), "{owner} left in the table");
                assert!(
                    state.held.windows(2).all(|pair| pair[0].0 < pair[1].0),
                    "held keys of {owner} not strictly ascending"
                );
                for (key, mode) in &state.held {
                    holders_seen_by_owners
                        .entry(&**key)
                        .or_default()
                        .push((*owner, *mode));
                }
                locks_held += state.held.len() as u64;
                match &state.request {
                    RequestState::Idle => {
                        assert!(!state.held.is_empty(), "idle {owner} holding nothing kept");
                        some_owner_fully_granted = true;
                    }
                    RequestState::Waiting(waiting) => {
                        waiters += 1;
                        if let Some((greatest, _)) = state.held.last() {
                            assert!(*greatest < waiting.key, "{owner} waits below a held key");
                        }
                        let rest = waiting.remaining_keys.as_slice();
                        assert!(rest.iter().all(|(key, _)| key.as_str() > &*waiting.key));
                        assert!(rest.windows(2).all(|pair| pair[0].0 < pair[1].0));
                        let queued_on: Vec<&str> = table
                            .keys
                            .values()
                            .flat_map(|entry| {
                                entry
                                    .queue
                                    .iter()
                                    .filter(|waiter| waiter.owner == *owner)
                                    .map(|_| &*entry.name)
                            })
                            .collect();
                        assert_eq!(
                            queued_on,
                            [&*waiting.key],
                            "{owner} must be queued exactly once"
                        );
                    }
                }
            }
            for (name, entry) in &table.keys {
                assert_eq!(name, &entry.name);
                assert!(!entry.is_unused(), "unused entry {name} kept");
                let mut from_owners = holders_seen_by_owners.remove(&**name).unwrap_or_default();
                from_owners.sort();
                let mut from_entry: Vec<(OwnerId, LockMode)> = match &entry.holders {
                    Holders::Nobody => Vec::new(),
                    Holders::Shared(owners) => {
                        owners.iter().map(|owner| (*owner, Shared)).collect()
                    }
                    Holders::Exclusive(owner) => vec![(*owner, Exclusive)],
                };
                from_entry.sort();
                assert_eq!(from_entry, from_owners, "holders of {name} disagree");
                if from_owners.iter().any(|(_, mode)| *mode == Exclusive) {
                    assert_eq!(
                        from_owners.len(),
                        1,
                        "{name} exclusive but shared: {from_owners:?}"
                    );
                }
                if let Some(front) = entry.queue.front() {
                    let front_fits = match (&entry.holders, front.mode) {
                        (Holders::Nobody, _) => true,
                        (Holders::Shared(_), mode) => mode == Shared,
                        (Holders::Exclusive(_), _) => false,
                    };
                    assert!(!front_fits, "front waiter of {name} could be granted");
                }
                for waiter in &entry.queue {
                    let waiting_on = match &table.owners[&waiter.owner].request {
                        RequestState::Waiting(waiting) => waiting.key.clone(),
                        RequestState::Idle => panic!("idle {} queued on {name}", waiter.owner),
                    };
                    assert_eq!(&waiting_on, name);
                }
            }
            assert!(
                holders_seen_by_owners.is_empty(),
                "held keys without an entry"
            );
            assert_eq!(table.stats().locks_held, locks_held);
            assert_eq!(table.stats().lock_waiters, waiters);
            assert_eq!(table.stats().lock_waits, self.coverage.waits);
            if waiters > 0 {
                assert!(some_owner_fully_granted, "everyone waits: deadlock");
            }
            self.assert_no_wait_cycle();
            for (owner, transaction) in &self.live {
                assert_eq!(
                    table.is_waiting(*owner),
                    transaction.phase == Phase::Waiting
                );
            }
        }

        /// Deadlock check: assuming every owner that is not waiting eventually
        /// releases, everyone must eventually be able to finish. A waiter
        /// waits for the waiter ahead of it, or for every holder when it is at
        /// the front; an owner in a cycle of waits would never finish.
        fn assert_no_wait_cycle(&self) {
            let mut blockers: BTreeMap<OwnerId, Vec<OwnerId>> = BTreeMap::new();
            let mut can_finish: BTreeSet<OwnerId> = BTreeSet::new();
            for (owner, state) in &self.table.owners {
                let RequestState::Waiting(waiting) = &state.request else {
                    can_finish.insert(*owner);
                    continue;
                };
                let entry = &self.table.keys[&waiting.key];
                let position = entry
                    .queue
                    .iter()
                    .position(|waiter| waiter.owner == *owner)
                    .expect("a waiting owner is queued");
                let waits_for = if position > 0 {
                    vec![entry.queue[position - 1].owner]
                } else {
                    match &entry.holders {
                        Holders::Nobody => panic!("front of {} waits for nobody", waiting.key),
                        Holders::Shared(owners) => owners.clone(),
                        Holders::Exclusive(holder) => vec![*holder],
                    }
                };
                blockers.insert(*owner, waits_for);
            }
            loop {
                let newly_finishing: Vec<OwnerId> = blockers
                    .iter()
                    .filter(|(owner, waits_for)| {
                        !can_finish.contains(*owner)
                            && waits_for.iter().all(|blocker| can_finish.contains(blocker))
                    })
                    .map(|(owner, _)| *owner)
                    .collect();
                if newly_finishing.is_empty() {
                    break;
                }
                can_finish.extend(newly_finishing);
            }
            let stuck: Vec<&OwnerId> = blockers
                .keys()
                .filter(|owner| !can_finish.contains(*owner))
                .collect();
            assert!(stuck.is_empty(), "deadlocked owners: {stuck:?}");
        }

        /// Commits whoever is granted until nobody is left; anyone still
        /// waiting when nobody is granted would be starved.
        fn finish(mut self) -> Coverage {
            while let Some(owner) = self.owner_in_phase(Phase::Granted, 0) {
                self.apply(Step::Commit(0));
                assert!(!self.live.contains_key(&owner));
            }
            assert!(
                self.live.is_empty(),
                "starved: {:?}",
                self.live.keys().collect::<Vec<_>>()
            );
            assert_eq!(self.finished, self.started);
            assert_empty(&self.table);
            self.coverage
        }
    }

    fn random_picks(rng: &mut StdRng, key_count: usize, most: usize) -> Picks {
        let count = rng.gen_range(1..=most);
        (0..count)
            .map(|_| (rng.gen_range(0..key_count), rng.gen_bool(0.5)))
            .collect()
    }

    fn run_seeded(seed: u64, transactions: u64) -> Coverage {
        const KEYS: usize = 20;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut simulation = Simulation::new(KEYS);
        let mut most_live = 0;
        while simulation.started < transactions {
            let step = match rng.gen_range(0..100) {
                0..=39 => Step::Start(random_picks(&mut rng, KEYS, 4)),
                40..=51 => Step::Extend(rng.gen(), random_picks(&mut rng, KEYS, 3)),
                52..=89 => Step::Commit(rng.gen()),
                _ => Step::AbortWaiting(rng.gen()),
            };
            simulation.apply(step);
            most_live = most_live.max(simulation.live.len());
        }
        assert!(most_live > 3, "too little concurrency to test anything");
        simulation.finish()
    }

    #[test]
    fn seeded_simulation_never_deadlocks_starves_or_leaks() {
        for seed in [1, 2, 3] {
            let coverage = run_seeded(seed, 3_000);
            // A simulation that never waits or conflicts would prove nothing.
            assert!(coverage.waits > 100, "{coverage:?}");
            assert!(coverage.extension_waits > 10, "{coverage:?}");
            assert!(coverage.extension_grants > 10, "{coverage:?}");
            assert!(coverage.conflicts > 10, "{coverage:?}");
            assert!(coverage.reported_completions > 100, "{coverage:?}");
            assert!(coverage.cancels > 10, "{coverage:?}");
        }
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        const KEYS: usize = 8;
        let picks = || prop::collection::vec((0..KEYS, any::<bool>()), 1..=4);
        prop_oneof![
            4 => picks().prop_map(Step::Start),
            1 => (any::<usize>(), picks()).prop_map(|(choice, picks)| Step::Extend(choice, picks)),
            4 => any::<usize>().prop_map(Step::Commit),
            1 => any::<usize>().prop_map(Step::AbortWaiting),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_interleaving_keeps_the_invariants(steps in prop::collection::vec(step_strategy(), 1..250)) {
            let mut simulation = Simulation::new(8);
            for step in steps {
                simulation.apply(step);
            }
            simulation.finish();
        }
    }
}
