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

mod snapshot;
pub use snapshot::{KeySnapshot, OwnerSnapshot, TableSnapshot, WaitSnapshot};

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

/// Which keys a request may bring into the group it joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupReach {
    /// Keys the leader holds, free keys and the joiner's own: the leader takes the latter
    /// two over at once.
    HeldOrFree,
    /// Only keys the leader already holds. Brokers that also take their keys as named locks
    /// in the database (`coordination = "database"`) need this: a key the leader took over
    /// would have no named lock on its connection, and taking one then would wait out of
    /// order.
    HeldByLeader,
}

/// Whether a request may run in a group, its own or another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

/// A key is stored once and shared by the table, its holders' lists and its
/// waiters, so that granting a key copies a pointer rather than the bytes.
/// `Arc` rather than `Rc` keeps the table `Send` for whatever runs the
/// coordinator.
pub type KeyName = Arc<str>;

#[derive(Clone, Debug)]
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

#[derive(Clone, Debug)]
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

#[derive(Clone, Debug)]
struct WaitingRequest {
    /// The key this owner is queued on.
    key: KeyName,
    /// Its mode in this request.
    mode: LockMode,
    /// The keys after `key`, all greater than it, still to be taken.
    remaining_keys: std::vec::IntoIter<(String, LockMode)>,
}

#[derive(Clone, Debug)]
enum RequestState {
    Idle,
    Waiting(WaitingRequest),
}

/// Whether an owner takes members into its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leadership {
    /// Runs alone.
    None,
    /// Requests of `class` may join, up to the table's group size.
    Open { class: GroupClass, members: usize },
    /// Closed by its owner before committing; no one joins any more.
    Closed { members: usize },
}

#[derive(Clone, Debug)]
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

/// `Clone` lets the model check (`tests/model_check.rs`) keep one table per
/// explored state; the table holds no handle to anything outside itself.
#[derive(Clone, Debug)]
pub struct LockTable {
    keys: HashMap<KeyName, KeyEntry>,
    owners: HashMap<OwnerId, OwnerState>,
    /// Which keys carry each unsettled ticket, for `settle`.
    commits: HashMap<CommitTicket, Vec<KeyName>>,
    /// A leader and its members; 1 turns groups off.
    max_group_size: usize,
    group_reach: GroupReach,
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
        LockTable::with_groups(max_group_size, GroupReach::HeldOrFree)
    }

    /// `with_max_group_size`, with joiners bringing only the keys `reach` allows.
    pub fn with_groups(max_group_size: usize, group_reach: GroupReach) -> Self {
        LockTable {
            group_reach,
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
        if let Some(leader) = self.join_on_arrival(owner_id, &request, grouping) {
            return AcquireOutcome::Joined { leader };
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
            let position = match owner.find_held(&key) {
                // From here on every key is greater than all held ones, so the rest of the
                // request may wait.
                Err(position) if position == owner.held.len() => {
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
                held_or_lower => held_or_lower,
            };
            if let Err(key) =
                take_without_waiting(keys, stats, owner_id, owner, (key, mode), position)
            {
                return AcquireOutcome::Conflict { key };
            }
        }
        AcquireOutcome::Granted(owner.take_grant())
    }

    /// Makes a groupable request of an owner that holds nothing and waits for nothing a
    /// member of the open group it may join, if there is one.
    fn join_on_arrival(
        &mut self,
        owner_id: OwnerId,
        request: &LockRequest,
        grouping: Grouping,
    ) -> Option<OwnerId> {
        let Grouping::Groupable(class) = grouping else {
            return None;
        };
        if let Some(owner) = self.owners.get(&owner_id) {
            if !owner.held.is_empty() || matches!(owner.request, RequestState::Waiting(_)) {
                return None;
            }
        }
        let leader = self.leader_to_join(owner_id, request.keys(), class)?;
        self.join(leader, owner_id, request.keys());
        Some(leader)
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

    /// A group's leader is out of members: takes into its group the waiters
    /// that may join it now (keys freed since may have made some eligible) and
    /// returns them; when there are none, closes the group, and no one joins
    /// any more.
    pub fn close_group(&mut self, owner_id: OwnerId) -> Vec<Completion> {
        let joined = self.gather(owner_id);
        if joined.is_empty() {
            if let Some(owner) = self.owners.get_mut(&owner_id) {
                if let Leadership::Open { members, .. } = owner.leadership {
                    owner.leadership = Leadership::Closed { members };
                }
            }
        }
        joined
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

    /// The key `owner` is queued on now, shared with the table, for whoever keeps figures
    /// about it (`crate::hot_keys`).
    pub fn waiting_key_name(&self, owner_id: OwnerId) -> Option<KeyName> {
        match &self.owners.get(&owner_id)?.request {
            RequestState::Waiting(waiting) => Some(waiting.key.clone()),
            RequestState::Idle => None,
        }
    }

    /// How many requests are queued for `key` now.
    pub fn queue_len(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, |entry| entry.queue.len())
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

    /// The open leader of `class` that a request for `keys` by `joiner` may
    /// join: every key is held by that one leader in a mode that covers the
    /// request's, or by the joiner itself (keys it took while it waited), or
    /// is free; at least one is the leader's.
    fn leader_to_join(
        &self,
        joiner: OwnerId,
        keys: &[(String, LockMode)],
        class: GroupClass,
    ) -> Option<OwnerId> {
        let mut leader = None;
        let only_held = self.group_reach == GroupReach::HeldByLeader;
        for (key, mode) in keys {
            let Some(entry) = self.keys.get(key.as_str()) else {
                if only_held {
                    return None;
                }
                continue;
            };
            if entry.is_free() {
                if only_held {
                    return None;
                }
                continue;
            }
            let holder = entry.holders.sole_holder_covering(*mode)?;
            if holder == joiner && only_held {
                return None;
            }
            if holder == joiner || leader == Some(holder) {
                continue;
            }
            if leader.is_some() {
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

    /// Makes `joiner`'s request for `keys` a member of `leader`'s group, as
    /// `leader_to_join` said it may: the joiner leaves the table, and every
    /// key of the request it held, or that was free, becomes the leader's.
    /// Whoever waited behind the joiner for a key now waits for the leader,
    /// which waits for no one.
    ///
    /// A free key may still carry an unsettled commit ticket; the leader is not
    /// told to read after it, since a member's statements all lock rows, and
    /// InnoDB orders them after that commit. Grouping a request that reads
    /// without locking would need the ticket here.
    fn join(&mut self, leader: OwnerId, joiner: OwnerId, keys: &[(String, LockMode)]) {
        if let Some(state) = self.owners.remove(&joiner) {
            if let RequestState::Waiting(waiting) = &state.request {
                if let Some(entry) = self.keys.get_mut(&waiting.key) {
                    entry.queue.retain(|queued| queued.owner != joiner);
                }
                self.stats.lock_waiters -= 1;
            }
            for (key, _) in &state.held {
                if let Some(entry) = self.keys.get_mut(key) {
                    entry.holders.remove(joiner);
                }
                self.stats.locks_held -= 1;
            }
        }
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
            // Free, or the joiner's until a moment ago: `leader_to_join` checked.
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
    }

    /// Opens the group of an owner that just completed a wait, if its request
    /// may be grouped, and takes into it the waiters that may join.
    fn open_group(&mut self, leader: OwnerId) -> Vec<Completion> {
        let Some(owner) = self.owners.get_mut(&leader) else {
            return Vec::new();
        };
        let Grouping::Groupable(class) = owner.grouping else {
            return Vec::new();
        };
        if self.max_group_size <= 1 {
            return Vec::new();
        }
        owner.leadership = Leadership::Open { class, members: 0 };
        self.gather(leader)
    }

    /// Takes into `leader`'s open group, in queue order, the waiters queued on
    /// its keys that may join it now.
    fn gather(&mut self, leader: OwnerId) -> Vec<Completion> {
        let mut completed = Vec::new();
        let Some(owner) = self.owners.get(&leader) else {
            return completed;
        };
        let Leadership::Open { class, .. } = owner.leadership else {
            return completed;
        };
        let held: Vec<KeyName> = owner.held.iter().map(|(key, _)| key.clone()).collect();
        for key in held {
            let queued: Vec<OwnerId> = self
                .keys
                .get(&key)
                .map(|entry| entry.queue.iter().map(|waiter| waiter.owner).collect())
                .unwrap_or_default();
            for waiter in queued {
                if let Some(keys) = self.joinable_waiter(waiter, class, leader) {
                    self.join(leader, waiter, &keys);
                    completed.push(Completion {
                        owner: waiter,
                        completed: Completed::Joined { leader },
                    });
                }
            }
        }
        completed
    }

    /// The keys of `waiter`'s request when it may join `leader`'s group: it may
    /// be grouped in `class`, and `leader_to_join` agrees.
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
        if state.grouping != Grouping::Groupable(class) {
            return None;
        }
        // A groupable owner runs one `tx`: all it holds is of this request.
        let keys: Vec<(String, LockMode)> = state
            .held
            .iter()
            .map(|(key, mode)| (key.to_string(), *mode))
            .chain(std::iter::once((waiting.key.to_string(), waiting.mode)))
            .chain(waiting.remaining_keys.as_slice().iter().cloned())
            .collect();
        (self.leader_to_join(waiter, &keys, class) == Some(leader)).then_some(keys)
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

/// A key `owner` already holds (an upgrade, at `Ok(position)`) or one below a key it holds
/// (to insert at `Err(position)`): granted at once or refused, never waited for, because
/// waiting for a key below one already held is the one shape of wait that can close a cycle.
/// Waiting for an upgrade could deadlock with another reader of the same key doing the same.
/// The refused key comes back for `Conflict`.
fn take_without_waiting(
    keys: &mut HashMap<KeyName, KeyEntry>,
    stats: &mut LockStats,
    owner_id: OwnerId,
    owner: &mut OwnerState,
    (key, mode): (String, LockMode),
    position: Result<usize, usize>,
) -> Result<(), String> {
    match position {
        Ok(position) => {
            if owner.held[position].1 < mode {
                if !try_upgrade(keys, owner_id, owner, &key) {
                    return Err(key);
                }
                owner.held[position].1 = LockMode::Exclusive;
            }
        }
        Err(position) => {
            let name = try_grant_new_key_at_once(keys, owner_id, owner, key, mode)?;
            owner.held.insert(position, (name, mode));
            stats.locks_held += 1;
        }
    }
    Ok(())
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
mod tests;
