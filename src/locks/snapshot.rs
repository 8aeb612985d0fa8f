//! A canonical copy of what a [`LockTable`] holds, for the model check in
//! `tests/model_check.rs` (and for anyone debugging the table): every key with
//! its holders, queue and unsettled commits, every owner with its held keys,
//! waiting request and group, and the keys each unsettled ticket is on.
//!
//! The table keeps its content in `HashMap`s, whose iteration order varies
//! from one map to the next; a snapshot lists everything sorted (queues in
//! queue order, which carries meaning), so two tables with the same content
//! give equal snapshots with equal hashes, whatever happened before. Counters
//! that only record history (`LockStats::lock_waits`) are left out: they do
//! not change what the table does next.

use super::{
    CommitTicket, Grouping, Holders, KeyEntry, Leadership, LockMode, LockTable, OwnerId,
    OwnerState, RequestState,
};

/// The table's content, sorted; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableSnapshot {
    pub max_group_size: usize,
    /// Sorted by name.
    pub keys: Vec<KeySnapshot>,
    /// Sorted by owner.
    pub owners: Vec<OwnerSnapshot>,
    /// Each unsettled ticket with the keys that carry it, sorted.
    pub commits: Vec<(CommitTicket, Vec<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeySnapshot {
    pub name: String,
    /// Sorted by owner.
    pub holders: Vec<(OwnerId, LockMode)>,
    /// In queue order, the first to be served first.
    pub queue: Vec<(OwnerId, LockMode)>,
    /// Handed-over commits on this key that have not settled, with the mode
    /// their owner held it in; sorted.
    pub committing: Vec<(CommitTicket, LockMode)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerSnapshot {
    pub owner: OwnerId,
    /// Ascending by key.
    pub held: Vec<(String, LockMode)>,
    pub waiting: Option<WaitSnapshot>,
    pub grouping: Grouping,
    pub leadership: Leadership,
    /// Tickets met on keys granted since the last grant was reported; sorted.
    pub read_after: Vec<CommitTicket>,
}

/// The request an owner is queued with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WaitSnapshot {
    pub key: String,
    pub mode: LockMode,
    /// The keys after `key`, ascending, still to be taken.
    pub remaining: Vec<(String, LockMode)>,
}

impl LockTable {
    /// The table's content in canonical order; see [`TableSnapshot`].
    pub fn snapshot(&self) -> TableSnapshot {
        let mut keys: Vec<KeySnapshot> = self.keys.values().map(KeySnapshot::of).collect();
        keys.sort_unstable_by(|left, right| left.name.cmp(&right.name));
        let mut owners: Vec<OwnerSnapshot> = self
            .owners
            .iter()
            .map(|(owner, state)| OwnerSnapshot::of(*owner, state))
            .collect();
        owners.sort_unstable_by_key(|owner| owner.owner);
        let mut commits: Vec<(CommitTicket, Vec<String>)> = self
            .commits
            .iter()
            .map(|(ticket, keys)| {
                let mut keys: Vec<String> = keys.iter().map(|key| key.to_string()).collect();
                keys.sort_unstable();
                (*ticket, keys)
            })
            .collect();
        commits.sort_unstable();
        TableSnapshot {
            max_group_size: self.max_group_size,
            keys,
            owners,
            commits,
        }
    }
}

impl KeySnapshot {
    fn of(entry: &KeyEntry) -> KeySnapshot {
        let mut holders = match &entry.holders {
            Holders::Nobody => Vec::new(),
            Holders::Shared(owners) => owners
                .iter()
                .map(|owner| (*owner, LockMode::Shared))
                .collect(),
            Holders::Exclusive(owner) => vec![(*owner, LockMode::Exclusive)],
        };
        holders.sort_unstable();
        let mut committing = entry.committing.clone();
        committing.sort_unstable();
        KeySnapshot {
            name: entry.name.to_string(),
            holders,
            queue: entry
                .queue
                .iter()
                .map(|waiter| (waiter.owner, waiter.mode))
                .collect(),
            committing,
        }
    }
}

impl OwnerSnapshot {
    fn of(owner: OwnerId, state: &OwnerState) -> OwnerSnapshot {
        let mut read_after = state.read_after.clone();
        read_after.sort_unstable();
        OwnerSnapshot {
            owner,
            held: state
                .held
                .iter()
                .map(|(key, mode)| (key.to_string(), *mode))
                .collect(),
            waiting: match &state.request {
                RequestState::Idle => None,
                RequestState::Waiting(waiting) => Some(WaitSnapshot {
                    key: waiting.key.to_string(),
                    mode: waiting.mode,
                    remaining: waiting.remaining_keys.as_slice().to_vec(),
                }),
            },
            grouping: state.grouping,
            leadership: state.leadership,
            read_after,
        }
    }
}
