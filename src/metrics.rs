//! The broker's measurements, kept once: every count and timing lives in one prometheus-client
//! `Registry`, which `/metrics` encodes (`crate::monitor`), and the `stats` op reads the same
//! counters. Sessions on every thread update them, so they are atomics rather than actor
//! state: a count must not cost a message. (prometheus-client's histograms take a short,
//! uncontended parking_lot lock per observation; the series are fetched once, at start.)
//! What the lock coordinator owns (the lock table's gauges and counts, the hot keys) stays
//! there; a scrape asks it and hands the answer to `record_lock_view` just before encoding.
//!
//! Names follow Prometheus conventions: a `txbroker_` prefix, seconds and bytes, `_total` on
//! counters (the encoder appends it). Label values come from fixed sets (`TxKind`,
//! `TxOutcome`, MySQL error codes) or from the top N hot keys, so the number of series stays
//! bounded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::latency_window::LatencyWindow;
use crate::protocol::{HotKey, LatencySummary};

/// Seconds of recent transactions `stats.latency` summarizes.
const LATENCY_WINDOW_SECONDS: u64 = 10;

/// Bucket bounds of every latency histogram: 250 µs doubling to about 16 s, so that both a
/// one-row commit on a fast disk and a lock wait near the default timeout (5 s) have
/// resolution, in 17 buckets per series.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00025, 2.0, 17)
}

/// Whether transactions are timed (`latency_metrics`): timing costs a few clock reads and
/// histogram updates per transaction, which a broker may skip to keep only its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    Measured,
    Skipped,
}

impl Timing {
    pub fn from_config(latency_metrics: bool) -> Timing {
        if latency_metrics {
            Timing::Measured
        } else {
            Timing::Skipped
        }
    }
}

/// How a transaction came to be, the `op` label: the protocol op that opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    /// A whole `tx` request.
    Tx,
    /// An interactive transaction, from `begin` to the answer of its end.
    Interactive,
    /// An `exec` outside a transaction: one statement, its own commit.
    Autocommit,
}

impl TxKind {
    const ALL: [TxKind; 3] = [TxKind::Tx, TxKind::Interactive, TxKind::Autocommit];

    /// The ends this kind can have: its series are made up front, and only these, so that the
    /// exposition carries no series that must stay zero.
    fn outcomes(self) -> &'static [TxOutcome] {
        use TxOutcome::*;
        match self {
            TxKind::Tx => &[Committed, RolledBack, CommitUnknown, NotStarted],
            TxKind::Interactive => &[Committed, RolledBack, CommitUnknown, Aborted, NotStarted],
            TxKind::Autocommit => &[Committed, RolledBack, CommitUnknown],
        }
    }

    fn label(self) -> &'static str {
        match self {
            TxKind::Tx => "tx",
            TxKind::Interactive => "begin",
            TxKind::Autocommit => "exec",
        }
    }
}

/// How a transaction ended, the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOutcome {
    Committed,
    RolledBack,
    /// The connection was lost while its commit was in flight.
    CommitUnknown,
    /// Ended behind its client's back (an interactive transaction).
    Aborted,
    /// Never started: its keys were not granted, or starting it failed.
    NotStarted,
}

impl TxOutcome {
    fn label(self) -> &'static str {
        match self {
            TxOutcome::Committed => "committed",
            TxOutcome::RolledBack => "rolled_back",
            TxOutcome::CommitUnknown => "commit_unknown",
            TxOutcome::Aborted => "aborted",
            TxOutcome::NotStarted => "not_started",
        }
    }
}

/// Where one transaction's time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxTimes {
    /// From the request that opened it to the answer of the one that ended it.
    pub total: Duration,
    /// Queued in the lock coordinator for its keys, or for a previous holder's commit before
    /// a read.
    pub key_wait: Duration,
    /// Waiting for this session's database connection to answer.
    pub database: Duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TxLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    mysql_code: u16,
}

/// The three histograms of one `op` and `outcome`, fetched from their families once so that
/// an observation costs no label lookup.
#[derive(Clone, Debug)]
struct TxHistograms {
    total: Histogram,
    key_wait: Histogram,
    database: Histogram,
}

type HistogramFamily = Family<TxLabels, Histogram, fn() -> Histogram>;

/// The transaction histograms: the three families, and the series of every possible
/// `op` and `outcome` taken from them once.
struct TransactionHistograms {
    families: [HistogramFamily; 3],
    series: Vec<(TxKind, TxOutcome, TxHistograms)>,
}

impl TransactionHistograms {
    /// Observes `times` in the series of `kind` and `outcome`: one made up front (no label
    /// lookup, no clone), or, for an end `TxKind::outcomes` does not list, one of its own.
    fn observe(&self, kind: TxKind, outcome: TxOutcome, times: TxTimes) {
        let made = self
            .series
            .iter()
            .find(|(k, o, _)| *k == kind && *o == outcome);
        match made {
            Some((_, _, histograms)) => histograms.observe(times),
            None => {
                let labels = TxLabels {
                    op: kind.label(),
                    outcome: outcome.label(),
                };
                let [total, key_wait, database] = &self.families;
                total
                    .get_or_create(&labels)
                    .observe(times.total.as_secs_f64());
                key_wait
                    .get_or_create(&labels)
                    .observe(times.key_wait.as_secs_f64());
                database
                    .get_or_create(&labels)
                    .observe(times.database.as_secs_f64());
            }
        }
    }
}

impl TxHistograms {
    fn observe(&self, times: TxTimes) {
        self.total.observe(times.total.as_secs_f64());
        self.key_wait.observe(times.key_wait.as_secs_f64());
        self.database.observe(times.database.as_secs_f64());
    }
}

pub struct Metrics {
    registry: Registry,
    sessions: Gauge,
    transactions_committed: Counter,
    transactions_rolled_back: Counter,
    /// The sum of `retries_by_code`, which Prometheus sums itself but `stats` cannot.
    retries: Counter,
    retries_by_code: Family<RetryLabels, Counter>,
    deadlocks: Counter,
    keys: KeyCounters,
    transactions: TransactionHistograms,
    lock_wait: Histogram,
    database: DatabaseCounters,
    client_bytes: ClientBytes,
    recent_latency: Mutex<LatencyWindow>,
    timing: Timing,
    lock_view: std::sync::Arc<LockViewCollector>,
}

/// What hand-over and group execution (protocol 1.1) did.
struct KeyCounters {
    handovers: Counter,
    groups_committed: Counter,
    transactions_grouped: Counter,
    reads_waiting: Gauge,
}

impl KeyCounters {
    fn register(registry: &mut Registry) -> KeyCounters {
        let reads_waiting = Gauge::default();
        registry.register(
            "reads_waiting",
            "Statements that read without locking, waiting now for a handed-over commit",
            reads_waiting.clone(),
        );
        KeyCounters {
            handovers: counter(
                registry,
                "handovers",
                "Transactions whose keys passed on when their COMMIT was sent",
            ),
            groups_committed: counter(
                registry,
                "groups_committed",
                "Database commits that carried a group of two or more requests",
            ),
            transactions_grouped: counter(
                registry,
                "transactions_grouped",
                "Requests committed in groups, leaders included",
            ),
            reads_waiting,
        }
    }
}

/// The sessions' database connections.
struct DatabaseCounters {
    connects: Counter,
    reconnects: Counter,
    connect_errors: Counter,
    connections_lost: Counter,
}

impl DatabaseCounters {
    fn register(registry: &mut Registry) -> DatabaseCounters {
        DatabaseCounters {
            connects: counter(
                registry,
                "database_connects",
                "Database connections opened by sessions",
            ),
            reconnects: counter(
                registry,
                "database_reconnects",
                "Database connections opened to replace one a session had lost or found dead",
            ),
            connect_errors: counter(
                registry,
                "database_connect_errors",
                "Attempts to open a database connection that failed",
            ),
            connections_lost: counter(
                registry,
                "database_connections_lost",
                "Database connections that broke under a request",
            ),
        }
    }
}

/// Protocol bytes to and from TCP clients, counted by their frame codecs.
struct ClientBytes {
    received: Counter,
    sent: Counter,
}

impl ClientBytes {
    fn register(registry: &mut Registry) -> ClientBytes {
        let received = Counter::default();
        registry.register_with_unit(
            "client_received",
            "Protocol bytes received from TCP clients, frame headers included",
            Unit::Bytes,
            received.clone(),
        );
        let sent = Counter::default();
        registry.register_with_unit(
            "client_sent",
            "Protocol bytes sent to TCP clients, frame headers included",
            Unit::Bytes,
            sent.clone(),
        );
        ClientBytes { received, sent }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(Timing::Measured)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The retries counted by MySQL error code, with the two codes every conflict retry has so
/// far present from the start, so that a rate over them reads 0 rather than nothing.
fn retries_by_code(registry: &mut Registry) -> Family<RetryLabels, Counter> {
    let retries_by_code = Family::<RetryLabels, Counter>::default();
    for mysql_code in [1205, 1213] {
        let _ = retries_by_code.get_or_create(&RetryLabels { mysql_code });
    }
    registry.register(
        "retries",
        "Extra runs of a tx after a conflict the database reported, by MySQL error code",
        retries_by_code.clone(),
    );
    retries_by_code
}

impl Metrics {
    pub fn new(timing: Timing) -> Metrics {
        let mut registry = Registry::with_prefix("txbroker");
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Sessions open now: TCP clients and embedded sessions",
            sessions.clone(),
        );
        let transactions_committed = counter(
            &mut registry,
            "transactions_committed",
            "Transactions committed: tx requests and interactive commits",
        );
        let transactions_rolled_back = counter(
            &mut registry,
            "transactions_rolled_back",
            "Transactions that ended in rollback, each counted once however many runs it made",
        );
        let retries_by_code = retries_by_code(&mut registry);
        let deadlocks = counter(
            &mut registry,
            "deadlocks",
            "Deadlocks the database reported (1213 or SQLSTATE 40001)",
        );
        let keys = KeyCounters::register(&mut registry);
        let transactions = transaction_histograms(&mut registry);
        let lock_wait = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "lock_wait",
            "Time requests (tx, begin, lock) took to be granted their keys or refused",
            Unit::Seconds,
            lock_wait.clone(),
        );
        let database = DatabaseCounters::register(&mut registry);
        let client_bytes = ClientBytes::register(&mut registry);
        let lock_view = std::sync::Arc::new(LockViewCollector::default());
        registry.register_collector(Box::new(lock_view.clone()));
        Metrics {
            registry,
            sessions,
            transactions_committed,
            transactions_rolled_back,
            retries: Counter::default(),
            retries_by_code,
            deadlocks,
            keys,
            transactions,
            lock_wait,
            database,
            client_bytes,
            recent_latency: Mutex::new(LatencyWindow::new(LATENCY_WINDOW_SECONDS, Instant::now())),
            timing,
            lock_view,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn session_started(&self) {
        self.sessions.inc();
    }

    pub fn session_ended(&self) {
        self.sessions.dec();
    }

    /// A transaction ended: counts it and observes where its time went.
    pub fn transaction_ended(&self, kind: TxKind, outcome: TxOutcome, times: TxTimes) {
        match outcome {
            TxOutcome::Committed if kind != TxKind::Autocommit => {
                self.transactions_committed.inc();
            }
            TxOutcome::RolledBack | TxOutcome::Aborted => {
                self.transactions_rolled_back.inc();
            }
            _ => {}
        }
        if self.timing == Timing::Skipped {
            return;
        }
        self.transactions.observe(kind, outcome, times);
        if kind != TxKind::Autocommit && outcome != TxOutcome::NotStarted {
            self.recent_latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(times.total, Instant::now());
        }
    }

    /// A request was granted its keys, or refused them, after `waited`.
    pub fn lock_waited(&self, waited: Duration) {
        if self.timing == Timing::Skipped {
            return;
        }
        self.lock_wait.observe(waited.as_secs_f64());
    }

    pub fn retried(&self, mysql_code: u16) {
        self.retries.inc();
        self.retries_by_code
            .get_or_create(&RetryLabels { mysql_code })
            .inc();
    }

    pub fn deadlock_reported(&self) {
        self.deadlocks.inc();
    }

    pub fn handed_over(&self) {
        self.keys.handovers.inc();
    }

    /// A group's transaction committed `requests` requests (two or more).
    pub fn group_committed(&self, requests: u64) {
        self.keys.groups_committed.inc();
        self.keys.transactions_grouped.inc_by(requests);
    }

    /// A statement starts waiting for a handed-over commit; the guard counts its end.
    pub fn read_waiting(&self) -> ReadWaiting<'_> {
        self.keys.reads_waiting.inc();
        ReadWaiting(self)
    }

    /// A session opened a database connection; `replacing` when it had one before.
    pub fn database_connected(&self, replacing: bool) {
        self.database.connects.inc();
        if replacing {
            self.database.reconnects.inc();
        }
    }

    pub fn database_connect_failed(&self) {
        self.database.connect_errors.inc();
    }

    pub fn database_connection_lost(&self) {
        self.database.connections_lost.inc();
    }

    /// The counter a codec reading client frames adds their sizes to.
    pub fn bytes_received(&self) -> Counter {
        self.client_bytes.received.clone()
    }

    /// The counter a codec writing client frames adds their sizes to.
    pub fn bytes_sent(&self) -> Counter {
        self.client_bytes.sent.clone()
    }

    /// Latency percentiles of the transactions that ended in the last seconds.
    pub fn recent_latency(&self) -> Option<LatencySummary> {
        self.recent_latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .summary(Instant::now())
    }

    /// What the lock coordinator said when last asked, for the next encoding of the registry.
    pub fn record_lock_view(&self, view: LockView) {
        *self
            .lock_view
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = view;
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let gauge = |gauge: &Gauge| u64::try_from(gauge.get()).unwrap_or(0);
        MetricsSnapshot {
            sessions: gauge(&self.sessions),
            transactions_committed: self.transactions_committed.get(),
            transactions_rolled_back: self.transactions_rolled_back.get(),
            retries: self.retries.get(),
            deadlocks: self.deadlocks.get(),
            handovers: self.keys.handovers.get(),
            groups_committed: self.keys.groups_committed.get(),
            transactions_grouped: self.keys.transactions_grouped.get(),
            reads_waiting: gauge(&self.keys.reads_waiting),
        }
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// The three families of transaction histograms, with the series of every possible `op` and
/// `outcome` made up front: a series that exists from the start reads as zero, not as
/// missing, in a rate.
fn transaction_histograms(registry: &mut Registry) -> TransactionHistograms {
    let family = || -> HistogramFamily {
        Family::new_with_constructor(|| Histogram::new(latency_buckets()))
    };
    let families = [family(), family(), family()];
    let mut series = Vec::new();
    for kind in TxKind::ALL {
        for &outcome in kind.outcomes() {
            let labels = TxLabels {
                op: kind.label(),
                outcome: outcome.label(),
            };
            let [total, key_wait, database] = &families;
            let histograms = TxHistograms {
                total: total.get_or_create_owned(&labels),
                key_wait: key_wait.get_or_create_owned(&labels),
                database: database.get_or_create_owned(&labels),
            };
            series.push((kind, outcome, histograms));
        }
    }
    let [total, key_wait, database] = families.clone();
    registry.register_with_unit(
        "transaction",
        "Whole transactions, from the request that opened them to the answer of their end",
        Unit::Seconds,
        total,
    );
    registry.register_with_unit(
        "transaction_key_wait",
        "Part of a transaction spent queued for keys or for a previous holder's commit",
        Unit::Seconds,
        key_wait,
    );
    registry.register_with_unit(
        "transaction_database",
        "Part of a transaction spent waiting for the session's database connection",
        Unit::Seconds,
        database,
    );
    TransactionHistograms { families, series }
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

/// A statement waiting for a handed-over commit, counted in `reads_waiting` until dropped
/// (the wait may end by timeout or by the request being abandoned, as well as by the commit).
pub struct ReadWaiting<'a>(&'a Metrics);

impl Drop for ReadWaiting<'_> {
    fn drop(&mut self) {
        self.0.keys.reads_waiting.dec();
    }
}

/// What the lock coordinator owns and a scrape shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockView {
    pub locks_held: u64,
    pub lock_waiters: u64,
    pub lock_waits: u64,
    pub lock_timeouts: u64,
    pub hot_keys: Vec<HotKey>,
}

/// Encodes the last `LockView` at each scrape. Hot keys are labelled by key: only the top N
/// the coordinator keeps, so their number is bounded by configuration.
#[derive(Debug, Default)]
struct LockViewCollector {
    view: Mutex<LockView>,
}

impl Collector for LockViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let gauges = [
            ("locks_held", "Grants held now.", view.locks_held),
            (
                "lock_waiters",
                "Requests queued in the lock coordinator now.",
                view.lock_waiters,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "lock_waits",
                "Requests that queued in the lock coordinator, once per request.",
                view.lock_waits,
            ),
            (
                "lock_timeouts",
                "Requests that failed with lock_timeout.",
                view.lock_timeouts,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        encode_hot_keys(&view.hot_keys, &mut encoder)
    }
}

fn encode_hot_keys(
    hot_keys: &[HotKey],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    type Field = fn(&HotKey) -> f64;
    let families: [(&str, &str, Option<Unit>, Field); 4] = [
        (
            "hot_key_wait",
            "Seconds requests spent queued for a hot key over the recent window, summed.",
            Some(Unit::Seconds),
            |key| key.wait_seconds,
        ),
        (
            "hot_key_waits",
            "Requests that queued for a hot key over the recent window.",
            None,
            |key| key.waits as f64,
        ),
        (
            "hot_key_grants",
            "Grants of a hot key over the recent window.",
            None,
            |key| key.grants as f64,
        ),
        (
            "hot_key_waiting",
            "Requests queued for a hot key now.",
            None,
            |key| key.waiting as f64,
        ),
    ];
    if hot_keys.is_empty() {
        return Ok(());
    }
    for (name, help, unit, field) in families {
        let mut family = encoder.encode_descriptor(
            name,
            help,
            unit.as_ref(),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for key in hot_keys {
            let labels = [("key", key.key.as_str())];
            ConstGauge::new(field(key)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}
