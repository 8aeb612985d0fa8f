//! The lock table: which owner holds which row-lock key in which mode, and who
//! is queued for it.
//!
//! It does no I/O and reads no clock, so the coordinator actor that wraps it
//! owns every timing decision and the tests can drive it step by step.
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

#[derive(Debug, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// Every key of the request is now held by the owner.
    Granted,
    /// The owner is queued; its completion is reported later by the return
    /// value of `release_all` or `cancel_wait`.
    Waiting,
    /// The try-only rule refused this key: it is not greater than every key
    /// the owner holds (or it is an upgrade) and could not be granted at once.
    Conflict { key: String },
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
}

impl KeyEntry {
    fn new(name: KeyName) -> KeyEntry {
        KeyEntry {
            name,
            holders: Holders::Nobody,
            queue: VecDeque::new(),
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

    fn is_unused(&self) -> bool {
        matches!(self.holders, Holders::Nobody) && self.queue.is_empty()
    }
}

#[derive(Debug)]
struct WaitingRequest {
    /// The key this owner is queued on.
    key: KeyName,
    /// The keys after `key`, all greater than it, still to be taken.
    remaining_keys: std::vec::IntoIter<(String, LockMode)>,
}

#[derive(Debug)]
enum RequestState {
    Idle,
    Waiting(WaitingRequest),
}

#[derive(Debug)]
struct OwnerState {
    /// Sorted ascending by key, so the greatest held key is the last one and
    /// the extension rule is one binary search.
    held: Vec<(KeyName, LockMode)>,
    request: RequestState,
}

impl OwnerState {
    fn new() -> OwnerState {
        OwnerState {
            held: Vec::new(),
            request: RequestState::Idle,
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
}

enum KeyChange {
    HolderLeft(OwnerId),
    WaiterLeft(OwnerId),
}

enum AscendingOutcome {
    Complete,
    Queued,
}

#[derive(Debug, Default)]
pub struct LockTable {
    keys: HashMap<KeyName, KeyEntry>,
    owners: HashMap<OwnerId, OwnerState>,
    stats: LockStats,
}

impl LockTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the request's keys for `owner` in ascending order, applying the
    /// extension rule to keys the owner already holds or that lie below its
    /// greatest held key.
    ///
    /// The caller never sends a request for an owner that is already waiting;
    /// if it does, the answer is `Conflict` on the request's first key and the
    /// table is unchanged, because a second queued request would break the
    /// one-wait-per-owner assumption that makes waits acyclic.
    ///
    /// After a `Conflict`, keys granted earlier in the same request stay held:
    /// the caller is expected to `release_all` and retry.
    pub fn acquire(&mut self, owner_id: OwnerId, request: LockRequest) -> AcquireOutcome {
        let LockTable {
            keys,
            owners,
            stats,
        } = self;
        let owner = owners.entry(owner_id).or_insert_with(OwnerState::new);
        if let RequestState::Waiting(_) = owner.request {
            return AcquireOutcome::Conflict {
                key: request.into_first_key(),
            };
        }
        let mut remaining = request.keys.into_iter();
        while let Some((key, mode)) = remaining.next() {
            match owner.find_held(&key) {
                Ok(position) => {
                    if owner.held[position].1 >= mode {
                        continue;
                    }
                    // Waiting for an upgrade could deadlock with another
                    // reader of the same key doing the same, so it is try-only.
                    if !try_upgrade(keys, owner_id, &key) {
                        return AcquireOutcome::Conflict { key };
                    }
                    owner.held[position].1 = LockMode::Exclusive;
                }
                Err(position) if position < owner.held.len() => {
                    // Waiting here would mean waiting for a key below one
                    // already held: the one shape of wait that can close a cycle.
                    match try_grant_new_key_at_once(keys, owner_id, key, mode) {
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
                        AscendingOutcome::Complete => AcquireOutcome::Granted,
                        AscendingOutcome::Queued => {
                            stats.lock_waits += 1;
                            AcquireOutcome::Waiting
                        }
                    };
                }
            }
        }
        AcquireOutcome::Granted
    }

    /// Releases every key `owner` holds and drops its waiting request, if any.
    /// Returns the owners whose waiting requests became fully granted as a
    /// consequence, in the order they completed.
    pub fn release_all(&mut self, owner_id: OwnerId) -> Vec<OwnerId> {
        let mut completed = Vec::new();
        let Some(owner) = self.owners.remove(&owner_id) else {
            return completed;
        };
        if let RequestState::Waiting(waiting) = owner.request {
            self.stats.lock_waiters -= 1;
            self.settle_key(waiting.key, KeyChange::WaiterLeft(owner_id), &mut completed);
        }
        for (key, _) in owner.held {
            self.stats.locks_held -= 1;
            self.settle_key(key, KeyChange::HolderLeft(owner_id), &mut completed);
        }
        completed
    }

    /// Drops `owner`'s waiting request from its queue, keeping every key it
    /// already holds, including keys granted earlier in that same request.
    /// Returns the owners that became fully granted as a consequence (such as
    /// readers that were queued behind the cancelled writer).
    pub fn cancel_wait(&mut self, owner_id: OwnerId) -> Vec<OwnerId> {
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

    /// Applies `change` to `key`, lets in whoever the change unblocked, and
    /// continues their requests.
    fn settle_key(&mut self, key: KeyName, change: KeyChange, completed: &mut Vec<OwnerId>) {
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
    /// Resuming only adds holders and waiters, never removes any, so it
    /// cannot unblock anyone else: there is no cascade to follow.
    fn resume(
        &mut self,
        owner_id: OwnerId,
        key: KeyName,
        mode: LockMode,
        completed: &mut Vec<OwnerId>,
    ) {
        let LockTable {
            keys,
            owners,
            stats,
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
        owner.insert_held(key, mode);
        let mut remaining = waiting.remaining_keys;
        let outcome = match remaining.next() {
            None => AscendingOutcome::Complete,
            Some(next) => take_ascending(keys, stats, owner_id, owner, next, remaining),
        };
        if let AscendingOutcome::Complete = outcome {
            completed.push(owner_id);
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
                        remaining_keys: rest,
                    });
                    stats.lock_waiters += 1;
                    return AscendingOutcome::Queued;
                }
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
    key: String,
    mode: LockMode,
) -> Result<KeyName, String> {
    match keys.get_mut(key.as_str()) {
        Some(entry) => {
            if entry.try_grant_at_once(owner_id, mode) {
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
fn try_upgrade(keys: &mut HashMap<KeyName, KeyEntry>, owner_id: OwnerId, key: &str) -> bool {
    let Some(entry) = keys.get_mut(key) else {
        return false;
    };
    match &entry.holders {
        Holders::Shared(owners) if owners.as_slice() == [owner_id] && entry.queue.is_empty() => {
            entry.holders = Holders::Exclusive(owner_id);
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
