//! Micro-benchmark of the pure lock table (issue 3, item 2): acquire+release pairs per
//! second, uncontended and with 1 000 waiters queued on one hot key; and what the
//! coordinator's hot-key tracking (`txbroker::hot_keys`, issue 12) adds to them: per wait,
//! per grant at once while keys are hot, and per `stats`.
//!
//! `cargo bench --bench locks`; each case measures for about two seconds. Criterion reports
//! the throughput in elements per second, one element being one acquire plus one release.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use std::time::Instant;

use txbroker::hot_keys::HotKeys;
use txbroker::locks::{AcquireOutcome, KeyName, LockRequest, LockTable};

/// Distinct keys cycled through by the uncontended cases.
const KEYS: usize = 1024;
/// Waiters kept queued behind the holder of the hot key.
const WAITERS: u64 = 1_000;

fn key(id: usize) -> String {
    format!("accounts:{id:06}")
}

fn exclusive(keys: &[String]) -> LockRequest {
    LockRequest::new(keys.iter().cloned(), std::iter::empty()).expect("at least one key")
}

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("uncontended");
    group.throughput(Throughput::Elements(1));
    // Requests are built outside the timed part: the broker gets them already decoded.
    // One key per request, as a one-row update declares; two, as a transfer declares.
    let one_key = (0..KEYS).map(|i| exclusive(&[key(i)])).collect();
    acquire_and_release(&mut group, "1_key", one_key);
    let two_keys = (0..KEYS)
        .map(|i| exclusive(&[key(i), key((i + KEYS / 2) % KEYS + KEYS)]))
        .collect();
    acquire_and_release(&mut group, "2_keys", two_keys);
    group.finish();
}

/// Each iteration: a new owner acquires the next of `requests` on a table where nothing else
/// is held, then releases it.
fn acquire_and_release(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    requests: Vec<LockRequest>,
) {
    let mut table = LockTable::new();
    let mut owner = 0u64;
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                owner += 1;
                (owner, requests[owner as usize % requests.len()].clone())
            },
            |(owner, request)| {
                let outcome = table.acquire(owner, request);
                debug_assert!(matches!(outcome, AcquireOutcome::Granted(_)));
                table.release_all(owner)
            },
            BatchSize::SmallInput,
        )
    });
}

/// One hot key, one holder, 1 000 owners queued behind it. Each iteration queues one more
/// owner (acquire answers Waiting) and releases the holder, which grants the key to the
/// front of the queue: the queue stays 1 000 long and every iteration is one acquire and
/// one release that hands the key on.
fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_key_1000_waiters");
    group.throughput(Throughput::Elements(1));
    let hot = exclusive(&[key(42)]);
    let mut table = LockTable::new();
    assert!(matches!(
        table.acquire(0, hot.clone()),
        AcquireOutcome::Granted(_)
    ));
    for owner in 1..=WAITERS {
        assert_eq!(table.acquire(owner, hot.clone()), AcquireOutcome::Waiting);
    }
    let mut holder = 0u64;
    let mut next_owner = WAITERS + 1;
    group.bench_function("acquire_waiting+release_granting", |b| {
        b.iter_batched(
            || hot.clone(),
            |request| {
                let outcome = table.acquire(next_owner, request);
                debug_assert_eq!(outcome, AcquireOutcome::Waiting);
                next_owner += 1;
                let granted = table.release_all(holder);
                debug_assert_eq!(granted.len(), 1);
                holder += 1;
                granted
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(table.stats().lock_waiters, WAITERS);
    group.finish();
}

/// The summary's costs, with 10 keys reported and a full map (80 keys kept) of 10 hot keys
/// waited for and 70 colder ones, as under the hot-account workloads.
fn hot_key_tracking(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_keys");
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let mut hot_keys = HotKeys::new(10, now);
    let names: Vec<KeyName> = (0..80).map(|i| KeyName::from(key(i))).collect();
    for (i, name) in names.iter().enumerate() {
        let waited = Duration::from_micros(if i < 10 { 10_000 } else { 10 });
        hot_keys.waited(name, waited, true, now);
    }
    let mut next = 0;
    // One wait on a kept key: the clock read when it queues (as the coordinator does), and
    // its end (another clock read, one map update).
    group.bench_function("wait_on_a_hot_key", |b| {
        b.iter(|| {
            let name = &names[next % 10];
            next += 1;
            let since = Instant::now();
            let now = Instant::now();
            hot_keys.waited(name, now - since, true, now);
        })
    });
    // A grant at once of a key that is not hot, while others are: one lookup that misses.
    let cold = key(KEYS + 1);
    group.bench_function("grant_at_once_of_a_cold_key", |b| {
        b.iter(|| hot_keys.keeps(&cold).is_some())
    });
    group.bench_function("hottest_for_stats", |b| {
        b.iter(|| hot_keys.hottest(Instant::now(), std::iter::empty()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = uncontended, hot_key, hot_key_tracking
}
criterion_main!(benches);
