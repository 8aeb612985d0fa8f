//! Counters for the `stats` op that every session bumps. They are atomics rather than actor
//! state because each session runs on its own thread and a count must not cost a message;
//! the lock counters live in the coordinator, which owns the lock table.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    sessions: AtomicU64,
    transactions_committed: AtomicU64,
    transactions_rolled_back: AtomicU64,
    retries: AtomicU64,
    deadlocks: AtomicU64,
    handovers: AtomicU64,
    groups_committed: AtomicU64,
    transactions_grouped: AtomicU64,
    reads_waiting: AtomicU64,
}

/// The counters as read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub sessions: u64,
    pub transactions_committed: u64,
    pub transactions_rolled_back: u64,
    pub retries: u64,
    pub deadlocks: u64,
    pub handovers: u64,
    pub groups_committed: u64,
    pub transactions_grouped: u64,
    pub reads_waiting: u64,
}

impl Metrics {
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_ended(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn committed(&self) {
        self.transactions_committed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rolled_back(&self) {
        self.transactions_rolled_back
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn deadlock_reported(&self) {
        self.deadlocks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handed_over(&self) {
        self.handovers.fetch_add(1, Ordering::Relaxed);
    }

    /// A group's transaction committed `requests` requests (two or more).
    pub fn group_committed(&self, requests: u64) {
        self.groups_committed.fetch_add(1, Ordering::Relaxed);
        self.transactions_grouped
            .fetch_add(requests, Ordering::Relaxed);
    }

    /// A statement starts waiting for a handed-over commit; the guard counts its end.
    pub fn read_waiting(&self) -> ReadWaiting<'_> {
        self.reads_waiting.fetch_add(1, Ordering::Relaxed);
        ReadWaiting(self)
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            sessions: self.sessions.load(Ordering::Relaxed),
            transactions_committed: self.transactions_committed.load(Ordering::Relaxed),
            transactions_rolled_back: self.transactions_rolled_back.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            deadlocks: self.deadlocks.load(Ordering::Relaxed),
            handovers: self.handovers.load(Ordering::Relaxed),
            groups_committed: self.groups_committed.load(Ordering::Relaxed),
            transactions_grouped: self.transactions_grouped.load(Ordering::Relaxed),
            reads_waiting: self.reads_waiting.load(Ordering::Relaxed),
        }
    }
}

/// A statement waiting for a handed-over commit, counted in `reads_waiting` until dropped
/// (the wait may end by timeout or by the request being abandoned, as well as by the commit).
pub struct ReadWaiting<'a>(&'a Metrics);

impl Drop for ReadWaiting<'_> {
    fn drop(&mut self) {
        self.0.reads_waiting.fetch_sub(1, Ordering::Relaxed);
    }
}
