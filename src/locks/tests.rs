//! Tests of the lock table (`src/locks.rs`): key ordering and merging in a request, grants
//! and FIFO queues step by step, extension and upgrade rules, stats, canonical snapshots, and
//! a randomized simulation (seeded and proptest-driven) that checks for deadlocks, starvation
//! and leaks.

use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use AcquireOutcome::{Granted, Waiting};

const GRANTED: AcquireOutcome = AcquireOutcome::Granted(Grant {
    read_after: Vec::new(),
    leading: false,
});

/// The owners a call completed, in order.
fn owners(completed: Vec<Completion>) -> Vec<OwnerId> {
    completed
        .into_iter()
        .map(|completion| completion.owner)
        .collect()
}
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
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["k"], &[])), Waiting);
    assert!(table.is_waiting(2));
    assert_eq!(table.held_mode(2, "k"), None);

    assert_eq!(owners(table.release_all(1)), vec![2]);
    assert!(!table.is_waiting(2));
    assert_eq!(table.held_mode(1, "k"), None);
    assert_eq!(table.held_mode(2, "k"), Some(Exclusive));

    assert_eq!(owners(table.release_all(2)), Vec::<OwnerId>::new());
    assert_empty(&table);
}

#[test]
fn readers_share_a_writer_waits_and_a_later_reader_queues_behind_it() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&[], &["k"])), GRANTED);
    assert_eq!(table.acquire(2, request(&[], &["k"])), GRANTED);
    assert_eq!(table.held_mode(1, "k"), Some(Shared));
    assert_eq!(table.held_mode(2, "k"), Some(Shared));

    assert_eq!(table.acquire(3, request(&["k"], &[])), Waiting);
    // Compatible with the holders, but FIFO puts it behind the writer.
    assert_eq!(table.acquire(4, request(&[], &["k"])), Waiting);

    assert_eq!(owners(table.release_all(1)), Vec::<OwnerId>::new());
    assert_eq!(owners(table.release_all(2)), vec![3]);
    assert_eq!(table.held_mode(3, "k"), Some(Exclusive));
    assert!(table.is_waiting(4));

    assert_eq!(owners(table.release_all(3)), vec![4]);
    assert_eq!(table.held_mode(4, "k"), Some(Shared));
    table.release_all(4);
    assert_empty(&table);
}

#[test]
fn a_run_of_queued_readers_is_granted_together_up_to_the_next_writer() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&[], &["k"])), Waiting);
    assert_eq!(table.acquire(3, request(&[], &["k"])), Waiting);
    assert_eq!(table.acquire(4, request(&["k"], &[])), Waiting);
    assert_eq!(table.acquire(5, request(&[], &["k"])), Waiting);

    assert_eq!(owners(table.release_all(1)), vec![2, 3]);
    assert!(table.is_waiting(4));
    assert!(table.is_waiting(5));
    assert_eq!(owners(table.release_all(2)), Vec::<OwnerId>::new());
    assert_eq!(owners(table.release_all(3)), vec![4]);
    assert_eq!(owners(table.release_all(4)), vec![5]);
    table.release_all(5);
    assert_empty(&table);
}

#[test]
fn waiting_on_a_later_key_keeps_the_earlier_ones() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["b"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["a", "b"], &[])), Waiting);
    assert_eq!(table.held_mode(2, "a"), Some(Exclusive));
    assert_eq!(table.held_mode(2, "b"), None);
    // "a" stays held while 2 waits, so a newcomer queues for it.
    assert_eq!(table.acquire(3, request(&[], &["a"])), Waiting);

    assert_eq!(owners(table.release_all(1)), vec![2]);
    assert_eq!(table.held_mode(2, "b"), Some(Exclusive));
    assert_eq!(owners(table.release_all(2)), vec![3]);
    table.release_all(3);
    assert_empty(&table);
}

#[test]
fn a_granted_waiter_continues_with_its_next_keys() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["a"], &[])), GRANTED);
    assert_eq!(table.acquire(3, request(&["c"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["a", "b", "c"], &[])), Waiting);

    // 2 gets "a" and "b", then queues on "c": not complete yet.
    assert_eq!(owners(table.release_all(1)), Vec::<OwnerId>::new());
    assert!(table.is_waiting(2));
    assert_eq!(table.held_mode(2, "b"), Some(Exclusive));
    assert_eq!(table.held_mode(2, "c"), None);

    assert_eq!(owners(table.release_all(3)), vec![2]);
    assert_eq!(table.held_mode(2, "c"), Some(Exclusive));
    table.release_all(2);
    assert_empty(&table);
}

#[test]
fn cancelling_a_queued_writer_lets_the_readers_behind_it_through() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&[], &["k"])), GRANTED);
    assert_eq!(table.acquire(2, request(&["a", "k"], &[])), Waiting);
    assert_eq!(table.acquire(3, request(&[], &["k"])), Waiting);

    assert_eq!(owners(table.cancel_wait(2)), vec![3]);
    assert!(!table.is_waiting(2));
    // The key granted earlier in the cancelled request stays held.
    assert_eq!(table.held_mode(2, "a"), Some(Exclusive));
    assert_eq!(table.held_mode(2, "k"), None);
    assert_eq!(table.held_mode(3, "k"), Some(Shared));

    // Nothing to cancel: no change, nothing completes.
    assert_eq!(owners(table.cancel_wait(2)), Vec::<OwnerId>::new());
    assert_eq!(table.held_mode(2, "a"), Some(Exclusive));
    assert_eq!(owners(table.cancel_wait(99)), Vec::<OwnerId>::new());

    for owner in 1..=3 {
        assert_eq!(owners(table.release_all(owner)), Vec::<OwnerId>::new());
    }
    assert_empty(&table);
}

#[test]
fn waiting_key_names_the_key_an_owner_is_queued_on() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["c"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["a", "c", "e"], &[])), Waiting);
    assert_eq!(table.waiting_key(2), Some("c"));
    assert_eq!(table.waiting_key(1), None);
    assert_eq!(table.waiting_key(99), None);
    assert_eq!(owners(table.release_all(1)), vec![2]);
    assert_eq!(table.waiting_key(2), None);
}

#[test]
fn releasing_a_waiting_owner_takes_it_out_of_the_queue() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["k"], &[])), Waiting);
    assert_eq!(table.acquire(3, request(&[], &["k"])), Waiting);
    assert_eq!(owners(table.release_all(2)), Vec::<OwnerId>::new());
    assert!(!table.is_waiting(2));
    assert_eq!(owners(table.release_all(1)), vec![3]);
    table.release_all(3);
    assert_empty(&table);
}

#[test]
fn extension_skips_keys_held_in_the_same_or_a_stronger_mode() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["a"], &["b"])), GRANTED);
    // Someone queued on "a" does not matter: 1 already has it.
    assert_eq!(table.acquire(2, request(&["a"], &[])), Waiting);
    assert_eq!(table.acquire(1, request(&[], &["a", "b"])), GRANTED);
    assert_eq!(table.held_mode(1, "a"), Some(Exclusive));
    assert_eq!(table.held_mode(1, "b"), Some(Shared));
    assert_eq!(table.stats().locks_held, 2);
}

#[test]
fn extension_may_wait_for_a_key_greater_than_every_held_one() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["a"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["b"], &[])), GRANTED);
    assert_eq!(table.acquire(1, request(&["b"], &[])), Waiting);
    assert_eq!(owners(table.release_all(2)), vec![1]);
    assert_eq!(table.held_mode(1, "b"), Some(Exclusive));
}

#[test]
fn extension_takes_a_free_lower_key_at_once() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["m"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&[], &["a"])), GRANTED);
    assert_eq!(table.acquire(1, request(&["b"], &["a"])), GRANTED);
    assert_eq!(table.held_mode(1, "a"), Some(Shared));
    assert_eq!(table.held_mode(1, "b"), Some(Exclusive));
    table.release_all(1);
    table.release_all(2);
    assert_empty(&table);
}

#[test]
fn extension_refuses_a_busy_lower_key() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["m"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["a"], &[])), GRANTED);
    assert_eq!(table.acquire(1, request(&[], &["a"])), conflict("a"));
    assert!(!table.is_waiting(1));
    assert_eq!(table.held_mode(1, "a"), None);

    // Compatible with the holders, but someone is queued: still refused.
    assert_eq!(table.acquire(3, request(&[], &["c"])), GRANTED);
    assert_eq!(table.acquire(4, request(&["c"], &[])), Waiting);
    assert_eq!(table.acquire(1, request(&[], &["c"])), conflict("c"));
    assert!(!table.is_waiting(1));
}

#[test]
fn a_conflict_keeps_keys_granted_earlier_in_the_same_request() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["m"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["c"], &[])), GRANTED);
    assert_eq!(
        table.acquire(1, request(&["b", "c", "z"], &[])),
        conflict("c")
    );
    assert_eq!(table.held_mode(1, "b"), Some(Exclusive));
    assert_eq!(table.held_mode(1, "z"), None);
    assert_eq!(owners(table.release_all(1)), Vec::<OwnerId>::new());
    table.release_all(2);
    assert_empty(&table);
}

#[test]
fn the_sole_reader_can_upgrade() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&[], &["k"])), GRANTED);
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(table.held_mode(1, "k"), Some(Exclusive));
    assert_eq!(table.stats().locks_held, 1);
    assert_eq!(table.acquire(2, request(&[], &["k"])), Waiting);
    assert_eq!(owners(table.release_all(1)), vec![2]);
}

#[test]
fn an_upgrade_with_another_reader_or_a_waiter_is_refused() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&[], &["k"])), GRANTED);
    assert_eq!(table.acquire(2, request(&[], &["k"])), GRANTED);
    assert_eq!(table.acquire(1, request(&["k"], &[])), conflict("k"));
    assert_eq!(table.held_mode(1, "k"), Some(Shared));

    assert_eq!(table.acquire(3, request(&[], &["q"])), GRANTED);
    assert_eq!(table.acquire(4, request(&["q"], &[])), Waiting);
    assert_eq!(table.acquire(3, request(&["q"], &[])), conflict("q"));
    assert_eq!(table.held_mode(3, "q"), Some(Shared));
}

#[test]
fn acquire_while_waiting_is_refused_on_the_first_key_and_changes_nothing() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["k"], &[])), Waiting);
    assert_eq!(table.acquire(2, request(&["z", "a"], &[])), conflict("a"));
    assert_eq!(table.held_mode(2, "a"), None);
    assert!(table.is_waiting(2));
    assert_eq!(table.stats().lock_waits, 1);
    assert_eq!(owners(table.release_all(1)), vec![2]);
}

#[test]
fn stats_count_each_shared_holder_and_each_waiting_request_once() {
    let mut table = LockTable::new();
    for owner in 1..=3 {
        assert_eq!(table.acquire(owner, request(&[], &["k"])), GRANTED);
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
    assert_eq!(owners(table.release_all(4)), vec![5]);
    assert_eq!(
        table.stats(),
        LockStats {
            locks_held: 1,
            lock_waiters: 0,
            lock_waits: 2
        }
    );

    // One request that waits twice is one wait.
    assert_eq!(table.acquire(6, request(&["x"], &[])), GRANTED);
    assert_eq!(table.acquire(7, request(&["z"], &[])), GRANTED);
    assert_eq!(table.acquire(8, request(&["x", "z"], &[])), Waiting);
    assert_eq!(owners(table.release_all(6)), Vec::<OwnerId>::new());
    assert!(table.is_waiting(8));
    assert_eq!(owners(table.release_all(7)), vec![8]);
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
        assert_eq!(table.acquire(owner, request(&[key.as_str()], &[])), GRANTED);
        assert_eq!(table.key_entry_count(), 1);
        table.release_all(owner);
    }
    assert_empty(&table);

    assert_eq!(table.acquire(1, request(&["a"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["a"], &[])), Waiting);
    assert_eq!(owners(table.cancel_wait(2)), Vec::<OwnerId>::new());
    assert_eq!(table.key_entry_count(), 1);
    table.release_all(1);
    assert_empty(&table);
}

#[test]
fn snapshots_of_equal_content_are_equal_whatever_the_order_of_events() {
    // Readers joined and left in a different order, so their `Vec`s differ in
    // order; owners and keys were inserted into the maps in a different order.
    let mut first = LockTable::new();
    first.acquire(1, request(&[], &["k"]));
    first.acquire(2, request(&[], &["k"]));
    first.acquire(3, request(&[], &["k"]));
    first.acquire(4, request(&["a"], &[]));
    first.release_all(1);
    let mut second = LockTable::new();
    second.acquire(4, request(&["a"], &[]));
    second.acquire(3, request(&[], &["k"]));
    second.acquire(2, request(&[], &["k"]));
    assert_eq!(first.snapshot(), second.snapshot());

    let snapshot = first.snapshot();
    let names: Vec<&str> = snapshot.keys.iter().map(|key| key.name.as_str()).collect();
    assert_eq!(names, ["a", "k"]);
    assert_eq!(snapshot.keys[1].holders, [(2, Shared), (3, Shared)]);
    let owners: Vec<OwnerId> = snapshot.owners.iter().map(|owner| owner.owner).collect();
    assert_eq!(owners, [2, 3, 4]);

    // A queue keeps its order: it says who is served first.
    first.acquire(5, request(&["k"], &[]));
    first.acquire(6, request(&["k"], &[]));
    second.acquire(6, request(&["k"], &[]));
    second.acquire(5, request(&["k"], &[]));
    assert_ne!(first.snapshot(), second.snapshot());
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
            Granted(_) => Phase::Granted,
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
            Granted(_) => {
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
            AcquireOutcome::Joined { .. } => panic!("a table without groups made a member"),
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

    fn record_completions(&mut self, completed: Vec<Completion>) {
        let mut seen = BTreeSet::new();
        for completion in completed {
            assert!(
                matches!(completion.completed, Completed::Granted(_)),
                "a table without groups made a member"
            );
            let owner = completion.owner;
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
        let mut holders_seen_by_owners: BTreeMap<&str, Vec<(OwnerId, LockMode)>> = BTreeMap::new();
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
                Holders::Shared(owners) => owners.iter().map(|owner| (*owner, Shared)).collect(),
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

// Hand-over and groups (protocol 1.1).

const GROUP: GroupClass = GroupClass(2);

fn ticket(owner: OwnerId) -> CommitTicket {
    CommitTicket { owner, sequence: 1 }
}

fn granted_with(read_after: &[CommitTicket], leading: bool) -> Completed {
    Completed::Granted(Grant {
        read_after: read_after.to_vec(),
        leading,
    })
}

fn joined(leader: OwnerId) -> Completed {
    Completed::Joined { leader }
}

fn completions(completed: Vec<Completion>) -> Vec<(OwnerId, Completed)> {
    completed
        .into_iter()
        .map(|completion| (completion.owner, completion.completed))
        .collect()
}

#[test]
fn a_hand_over_grants_the_next_waiter_with_the_commit_to_read_after() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["k"], &[])), Waiting);
    assert_eq!(
        completions(table.hand_over(1, ticket(1))),
        [(2, granted_with(&[ticket(1)], false))]
    );
    // A later grant, while the commit is unsettled, is told too; after it, nobody is.
    assert_eq!(table.acquire(3, request(&["k"], &[])), Waiting);
    assert_eq!(
        completions(table.hand_over(2, ticket(2))),
        [(3, granted_with(&[ticket(1), ticket(2)], false))]
    );
    table.settle(ticket(1));
    table.settle(ticket(2));
    assert_eq!(owners(table.release_all(3)), Vec::<OwnerId>::new());
    assert_eq!(table.acquire(4, request(&["k"], &[])), GRANTED);
    table.release_all(4);
    assert_empty(&table);
}

#[test]
fn only_a_conflicting_mode_reads_after_a_handed_over_commit() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&[], &["k"])), GRANTED);
    table.hand_over(1, ticket(1));
    // Two readers do not conflict: the second need not wait for the first's commit.
    assert_eq!(table.acquire(2, request(&[], &["k"])), GRANTED);
    // A writer does.
    table.release_all(2);
    assert_eq!(
        table.acquire(3, request(&["k"], &[])),
        AcquireOutcome::Granted(Grant {
            read_after: vec![ticket(1)],
            leading: false
        })
    );
    table.release_all(3);
    table.settle(ticket(1));
    assert_empty(&table);
}

#[test]
fn a_key_carrying_an_unsettled_commit_stays_known_until_it_settles() {
    let mut table = LockTable::new();
    assert_eq!(table.acquire(1, request(&["a", "b"], &[])), GRANTED);
    assert!(table.hand_over(1, ticket(1)).is_empty());
    assert_eq!(
        table.key_entry_count(),
        2,
        "the tickets keep the keys' entries"
    );
    assert_eq!(table.stats().locks_held, 0);
    table.settle(ticket(1));
    assert_empty(&table);
}

#[test]
fn a_groupable_request_granted_after_a_wait_leads_and_gathers_the_waiters_that_may_join() {
    let mut table = LockTable::with_max_group_size(4);
    let groupable = Grouping::Groupable(GROUP);
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(
        table.acquire_as(2, request(&["k"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        table.acquire_as(3, request(&["k"], &[]), groupable),
        Waiting
    );
    // Another class, and a request that runs alone, cannot join.
    let other = Grouping::Groupable(GroupClass(3));
    assert_eq!(table.acquire_as(4, request(&["k"], &[]), other), Waiting);
    assert_eq!(table.acquire(5, request(&["k"], &[])), Waiting);
    // Its other key is free: it joins, and the leader takes that key.
    assert_eq!(
        table.acquire_as(6, request(&["k", "z"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        completions(table.release_all(1)),
        [(2, granted_with(&[], true)), (3, joined(2)), (6, joined(2)),]
    );
    assert_eq!(table.held_mode(2, "z"), Some(Exclusive));
    assert!(!table.is_waiting(3) && table.held_mode(3, "k").is_none());
    // The group holds three of its four: one more joins at once, the next queues.
    assert_eq!(
        table.acquire_as(7, request(&["k"], &[]), groupable),
        AcquireOutcome::Joined { leader: 2 }
    );
    assert_eq!(
        table.acquire_as(8, request(&["k"], &[]), groupable),
        Waiting,
        "the group is full"
    );
    assert_eq!(
        completions(table.release_all(2)),
        [(4, granted_with(&[], true))],
        "the next waiter in queue order leads next"
    );
    assert_eq!(
        completions(table.release_all(4)),
        [(5, granted_with(&[], false))]
    );
    assert_eq!(
        completions(table.release_all(5)),
        [(8, granted_with(&[], true))]
    );
    table.release_all(8);
    assert_empty(&table);
}

#[test]
fn a_waiter_holding_a_lower_key_joins_and_its_key_passes_to_the_leader() {
    let mut table = LockTable::with_max_group_size(8);
    let groupable = Grouping::Groupable(GROUP);
    assert_eq!(table.acquire(1, request(&["b"], &[])), GRANTED);
    assert_eq!(
        table.acquire_as(2, request(&["b"], &[]), groupable),
        Waiting
    );
    // It takes "a" (free) and waits for "b".
    assert_eq!(
        table.acquire_as(3, request(&["a", "b"], &[]), groupable),
        Waiting
    );
    assert_eq!(table.held_mode(3, "a"), Some(Exclusive));
    // Someone waits behind it for "a".
    assert_eq!(table.acquire(4, request(&["a"], &[])), Waiting);
    assert_eq!(
        completions(table.release_all(1)),
        [(2, granted_with(&[], true)), (3, joined(2))]
    );
    assert_eq!(table.held_mode(2, "a"), Some(Exclusive));
    assert_eq!(table.stats().locks_held, 2);
    // The one behind now waits for the leader, which waits for nobody.
    assert!(table.is_waiting(4));
    assert_eq!(
        completions(table.release_all(2)),
        [(4, granted_with(&[], false))]
    );
    table.release_all(4);
    assert_empty(&table);
}

#[test]
fn close_group_gathers_waiters_that_became_joinable_and_closes_when_none_is_left() {
    let mut table = LockTable::with_max_group_size(8);
    let groupable = Grouping::Groupable(GROUP);
    assert_eq!(table.acquire(1, request(&["a"], &[])), GRANTED);
    assert_eq!(table.acquire(2, request(&["b"], &[])), GRANTED);
    assert_eq!(
        table.acquire_as(3, request(&["a"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        table.acquire_as(4, request(&["a", "b"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        completions(table.release_all(1)),
        [(3, granted_with(&[], true))],
        "4 waits for b, held by someone else"
    );
    // b is free now: 4 may join, and does when the leader runs out of members.
    assert!(table.release_all(2).is_empty());
    assert_eq!(completions(table.close_group(3)), [(4, joined(3))]);
    assert!(table.close_group(3).is_empty());
    // Closed: a newcomer queues.
    assert_eq!(
        table.acquire_as(5, request(&["a"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        completions(table.hand_over(3, ticket(3))),
        [(5, granted_with(&[ticket(3)], true))]
    );
    table.release_all(5);
    table.settle(ticket(3));
    assert_empty(&table);
}

#[test]
fn a_table_without_groups_never_makes_a_leader() {
    let mut table = LockTable::new();
    let groupable = Grouping::Groupable(GROUP);
    assert_eq!(table.acquire(1, request(&["k"], &[])), GRANTED);
    assert_eq!(
        table.acquire_as(2, request(&["k"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        table.acquire_as(3, request(&["k"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        completions(table.release_all(1)),
        [(2, granted_with(&[], false))]
    );
    assert_eq!(
        completions(table.release_all(2)),
        [(3, granted_with(&[], false))]
    );
    table.release_all(3);
    assert_empty(&table);
}

#[test]
fn a_table_whose_groups_reach_only_held_keys_gathers_only_requests_for_the_leaders_keys() {
    let mut table = LockTable::with_groups(8, GroupReach::HeldByLeader);
    let groupable = Grouping::Groupable(GROUP);
    assert_eq!(table.acquire(1, request(&["b"], &[])), GRANTED);
    assert_eq!(
        table.acquire_as(2, request(&["b"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        table.acquire_as(3, request(&["b"], &[]), groupable),
        Waiting
    );
    // One more key, free: it does not join, unlike with `HeldOrFree`.
    assert_eq!(
        table.acquire_as(4, request(&["b", "z"], &[]), groupable),
        Waiting
    );
    // It holds "a" while it waits for "b": it does not bring it to the leader either.
    assert_eq!(
        table.acquire_as(5, request(&["a", "b"], &[]), groupable),
        Waiting
    );
    assert_eq!(
        completions(table.release_all(1)),
        [(2, granted_with(&[], true)), (3, joined(2))]
    );
    assert!(table.held_mode(2, "z").is_none() && table.held_mode(2, "a").is_none());
    // A newcomer for the leader's key joins at once; one for a free key more does not.
    assert_eq!(
        table.acquire_as(6, request(&["b"], &[]), groupable),
        AcquireOutcome::Joined { leader: 2 }
    );
    assert_eq!(
        table.acquire_as(7, request(&["b", "y"], &[]), groupable),
        Waiting
    );
    assert!(table.close_group(2).is_empty());
    for owner in [2, 4, 5, 7] {
        table.release_all(owner);
    }
    assert_empty(&table);
}
