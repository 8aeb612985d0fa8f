//! What a run measured, and how runs are printed and compared.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::db::{ServerInfo, Totals, Transport};
use crate::target::Target;

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// The correctness check at the end of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Check {
    pub ok: bool,
    pub message: String,
    pub totals: Totals,
    pub expected_balance_sum: i64,
    /// One-row updates committed over the whole run, warm-up included: `updates_sum` must
    /// equal it (no lost update, nothing committed twice).
    pub expected_updates: u64,
}

/// The binary log during the window (with `log_bin` on): transactions written to it, and the
/// groups written at once (with `sync_binlog = 1`, one sync each).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Binlog {
    pub commits: u64,
    pub group_commits: u64,
    /// commits / group_commits: above 1, the binary log's group commit at work.
    pub commits_per_group: f64,
    /// group_commits per transaction the clients committed: the binary log's syncs per tx.
    pub groups_per_tx: f64,
}

impl Binlog {
    pub fn new(commits: u64, group_commits: u64, committed: u64) -> Binlog {
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                f64::NAN
            } else {
                a as f64 / b as f64
            }
        };
        Binlog {
            commits,
            group_commits,
            commits_per_group: ratio(commits, group_commits),
            groups_per_tx: ratio(group_commits, committed),
        }
    }
}

/// Every figure of one run. Counts are of the measured window only (after the warm-up).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub target: String,
    pub workload: String,
    pub clients: usize,
    pub accounts: u32,
    pub hot: u32,
    pub round: u32,
    pub seconds: f64,
    pub committed: u64,
    pub tx_per_s: f64,
    pub latency: Latency,
    /// Attempts per finished transaction (committed or failed); 1.0 means no retry.
    pub attempts_per_tx: f64,
    /// Deadlocks (1213) reported by the database: for the broker, the difference of its
    /// `stats` counter `deadlocks`; for direct targets, the 1213 errors the clients saw.
    pub deadlocks: u64,
    /// Lock wait timeouts (1205) from the database: for direct targets, every one seen; for
    /// the broker, those still there after its retries.
    pub db_lock_timeouts: u64,
    /// The broker's own `lock_timeout` answers (difference of `stats.lock_timeouts`).
    pub lock_timeouts: u64,
    /// Transactions that ended without commit (retries exhausted or another error).
    pub failed: u64,
    /// The broker's `stats.retries` difference; absent for direct targets.
    pub broker_retries: Option<u64>,
    /// The broker's `stats.lock_waits` difference; absent for direct targets.
    pub broker_lock_waits: Option<u64>,
    /// Requests per group the broker committed in the window (`stats.transactions_grouped`
    /// over `stats.groups_committed`, differences); absent for direct targets, NaN when no
    /// group committed.
    pub broker_group_size: Option<f64>,
    /// Redo-log fsyncs on the server during the window (server-wide) per transaction committed
    /// in it: below 1, InnoDB flushed several commits at once. NaN when nothing committed.
    pub fsyncs_per_tx: f64,
    /// The binary log's commits and group commits in the window; absent with `log_bin` off.
    pub binlog: Option<Binlog>,
    /// The server measured, as read at the start.
    pub server: ServerInfo,
    /// How the clients' (direct) or the broker's sessions' connections reached the server.
    pub transport: Transport,
    /// One error message per distinct kind, with its count.
    pub errors: Vec<(String, u64)>,
    pub check: Check,
}

impl RunResult {
    pub fn lock_timeouts_total(&self) -> u64 {
        self.db_lock_timeouts + self.lock_timeouts
    }

    pub fn binlog_commits_per_group(&self) -> f64 {
        self.binlog.map_or(f64::NAN, |b| b.commits_per_group)
    }

    pub fn group_size(&self) -> f64 {
        self.broker_group_size.unwrap_or(f64::NAN)
    }
}

pub fn print_run(result: &RunResult) {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} {} clients={} accounts={} hot={}: {:.1} s measured",
        result.target, result.workload, result.clients, result.accounts, result.hot, result.seconds
    );
    let _ = writeln!(text, "  server           {}", result.server.describe());
    let _ = writeln!(
        text,
        "  transport        {}{}",
        result.transport.describe(),
        if result.target == "broker" {
            ": the broker's sessions"
        } else {
            ""
        }
    );
    let l = &result.latency;
    let _ = writeln!(
        text,
        "  committed        {:>10} ({:.0} tx/s)",
        result.committed, result.tx_per_s
    );
    let _ = writeln!(
        text,
        "  latency ms       p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
    let _ = writeln!(text, "  attempts/tx      {:>10.3}", result.attempts_per_tx);
    let _ = writeln!(text, "  deadlocks (db)   {:>10}", result.deadlocks);
    let _ = writeln!(
        text,
        "  lock timeouts    {:>10} (db 1205: {}, broker: {})",
        result.lock_timeouts_total(),
        result.db_lock_timeouts,
        result.lock_timeouts
    );
    let _ = writeln!(text, "  failed tx        {:>10}", result.failed);
    let _ = writeln!(
        text,
        "  fsyncs/tx        {:>10.3} (server-wide, InnoDB)",
        result.fsyncs_per_tx
    );
    match &result.binlog {
        Some(b) => {
            let _ = writeln!(
                text,
                "  binlog commits   {:>10} in {} group commits: {:.2} commits/group, {:.3} groups/tx",
                b.commits, b.group_commits, b.commits_per_group, b.groups_per_tx
            );
        }
        None => {
            let _ = writeln!(text, "  binlog                  off");
        }
    }
    if let (Some(retries), Some(waits)) = (result.broker_retries, result.broker_lock_waits) {
        let _ = writeln!(text, "  broker retries   {retries:>10}  lock waits {waits}");
    }
    if let Some(size) = result.broker_group_size {
        let _ = writeln!(
            text,
            "  broker groups    {size:>10.1} requests per group committed"
        );
    }
    for (message, count) in &result.errors {
        let _ = writeln!(text, "  error x{count}: {message}");
    }
    let _ = writeln!(
        text,
        "  check            {} ({})",
        if result.check.ok { "ok" } else { "FAILED" },
        result.check.message
    );
    print!("{text}");
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// A figure quoted by `compare`: its name and how to read it from a run.
struct Figure {
    name: &'static str,
    json: &'static str,
    read: fn(&RunResult) -> f64,
    decimals: usize,
}

const FIGURES: &[Figure] = &[
    Figure {
        name: "committed tx/s",
        json: "tx_per_s",
        read: |r| r.tx_per_s,
        decimals: 0,
    },
    Figure {
        name: "p50 ms",
        json: "p50_ms",
        read: |r| r.latency.p50_ms,
        decimals: 2,
    },
    Figure {
        name: "p99 ms",
        json: "p99_ms",
        read: |r| r.latency.p99_ms,
        decimals: 2,
    },
    Figure {
        name: "p99.9 ms",
        json: "p999_ms",
        read: |r| r.latency.p999_ms,
        decimals: 2,
    },
    Figure {
        name: "attempts/tx",
        json: "attempts_per_tx",
        read: |r| r.attempts_per_tx,
        decimals: 3,
    },
    Figure {
        name: "deadlocks (db)",
        json: "deadlocks",
        read: |r| r.deadlocks as f64,
        decimals: 0,
    },
    Figure {
        name: "lock timeouts",
        json: "lock_timeouts",
        read: |r| r.lock_timeouts_total() as f64,
        decimals: 0,
    },
    Figure {
        name: "failed tx",
        json: "failed",
        read: |r| r.failed as f64,
        decimals: 0,
    },
    Figure {
        name: "fsyncs/tx",
        json: "fsyncs_per_tx",
        read: |r| r.fsyncs_per_tx,
        decimals: 3,
    },
    Figure {
        name: "binlog cmt/group",
        json: "binlog_commits_per_group",
        read: RunResult::binlog_commits_per_group,
        decimals: 2,
    },
    Figure {
        name: "broker group size",
        json: "broker_group_size",
        read: RunResult::group_size,
        decimals: 1,
    },
];

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub server: ServerInfo,
    /// Per target: how its connections reached the server in each run (`TCP`, `Unix socket`,
    /// `MIXED`), distinct values joined by `/`.
    pub transports: Vec<(String, String)>,
    /// Per target, per figure: the median over rounds.
    pub medians: Vec<(String, Vec<(String, f64)>)>,
    /// Per figure: broker/direct and broker/direct-sorted of the medians, where both ran.
    pub ratios: Vec<(String, Vec<(String, f64)>)>,
    /// Per target: runs whose correctness check passed, out of runs.
    pub checks_passed: Vec<(String, usize, usize)>,
    pub runs: Vec<RunResult>,
}

impl Comparison {
    pub fn all_checks_passed(&self) -> bool {
        self.runs.iter().all(|r| r.check.ok)
    }

    /// The median of the figure named `json` (a key of [`FIGURES`]) for `target`.
    pub fn median(&self, target: &str, json: &str) -> Option<f64> {
        let (_, figures) = self.medians.iter().find(|(name, _)| name == target)?;
        figures
            .iter()
            .find(|(name, _)| name == json)
            .map(|(_, value)| *value)
    }
}

/// The JSON name of every figure `compare` quotes, in its order, with the decimals it prints.
pub fn figure_columns() -> impl Iterator<Item = (&'static str, usize)> {
    FIGURES.iter().map(|figure| (figure.json, figure.decimals))
}

pub fn compare(targets: &[Target], runs: Vec<RunResult>, server: &ServerInfo) -> Comparison {
    let of_target = |target: Target| -> Vec<&RunResult> {
        runs.iter().filter(|r| r.target == target.name()).collect()
    };
    let median_of = |target: Target, figure: &Figure| -> f64 {
        let mut values: Vec<f64> = of_target(target).iter().map(|r| (figure.read)(r)).collect();
        median(&mut values)
    };
    let medians = targets
        .iter()
        .map(|target| {
            let figures = FIGURES
                .iter()
                .map(|figure| (figure.json.to_string(), median_of(*target, figure)))
                .collect();
            (target.name().to_string(), figures)
        })
        .collect();
    let mut ratios = Vec::new();
    let pairs = [
        (Target::Broker, Target::Direct),
        (Target::Broker, Target::DirectSorted),
        (Target::BrokerKeyed, Target::Broker),
    ];
    for (one, other) in pairs {
        if targets.contains(&one) && targets.contains(&other) {
            let figures = FIGURES
                .iter()
                .map(|figure| {
                    let ratio = median_of(one, figure) / median_of(other, figure);
                    (figure.json.to_string(), ratio)
                })
                .collect();
            ratios.push((format!("{}/{}", one.name(), other.name()), figures));
        }
    }
    let checks_passed = targets
        .iter()
        .map(|target| {
            let runs = of_target(*target);
            let passed = runs.iter().filter(|r| r.check.ok).count();
            (target.name().to_string(), passed, runs.len())
        })
        .collect();
    let transports = targets
        .iter()
        .map(|target| {
            let mut kinds: Vec<&str> = Vec::new();
            for run in of_target(*target) {
                let kind = run.transport.kind();
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            (target.name().to_string(), kinds.join("/"))
        })
        .collect();
    Comparison {
        server: server.clone(),
        transports,
        medians,
        ratios,
        checks_passed,
        runs,
    }
}

pub fn print_comparison(title: &str, comparison: &Comparison) {
    let mut text = String::new();
    let _ = writeln!(text, "{title}");
    let _ = write!(text, "{:<16}", "median");
    for (target, _) in &comparison.medians {
        let _ = write!(text, "{target:>15}");
    }
    for (name, _) in &comparison.ratios {
        let _ = write!(text, "{name:>22}");
    }
    let _ = writeln!(text);
    for (index, figure) in FIGURES.iter().enumerate() {
        let _ = write!(text, "{:<16}", figure.name);
        for (_, figures) in &comparison.medians {
            let value = figures[index].1;
            if value.is_finite() {
                let _ = write!(text, "{value:>15.*}", figure.decimals);
            } else {
                let _ = write!(text, "{:>15}", "-");
            }
        }
        for (_, figures) in &comparison.ratios {
            let ratio = figures[index].1;
            if ratio.is_finite() {
                let _ = write!(text, "{ratio:>21.2}x");
            } else {
                let _ = write!(text, "{:>22}", "-");
            }
        }
        let _ = writeln!(text);
    }
    let _ = write!(text, "{:<16}", "transport");
    for (_, transport) in &comparison.transports {
        let _ = write!(text, "{transport:>15}");
    }
    let _ = writeln!(text);
    let _ = write!(text, "{:<16}", "check passed");
    for (_, passed, total) in &comparison.checks_passed {
        let _ = write!(text, "{:>15}", format!("{passed}/{total}"));
    }
    let _ = writeln!(text);
    print!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn ratios_are_broker_over_the_other_target() {
        let run = |target: Target, tx_per_s: f64| RunResult {
            target: target.name().to_string(),
            tx_per_s,
            ..RunResult::default()
        };
        let runs = vec![
            run(Target::Broker, 300.0),
            run(Target::Direct, 100.0),
            run(Target::DirectSorted, 200.0),
            run(Target::Broker, 100.0),
            run(Target::Direct, 100.0),
            run(Target::DirectSorted, 200.0),
            run(Target::Broker, 200.0),
            run(Target::Direct, 100.0),
            run(Target::DirectSorted, 200.0),
        ];
        let targets = [Target::Broker, Target::Direct, Target::DirectSorted];
        let comparison = compare(&targets, runs, &ServerInfo::default());
        assert_eq!(comparison.medians[0].1[0], ("tx_per_s".to_string(), 200.0));
        assert_eq!(comparison.ratios[0].0, "broker/direct");
        assert_eq!(comparison.ratios[0].1[0].1, 2.0);
        assert_eq!(comparison.ratios[1].1[0].1, 1.0);
    }
}
