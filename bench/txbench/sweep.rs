//! What `txbench sweep` measured: one `compare` per client count, and how it is written out,
//! the medians as CSV (one row per client count and target) and the chart as SVG.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chart;
use crate::db::ServerInfo;
use crate::report::{self, Comparison};
use crate::target::Target;

/// One client count's `compare`.
#[derive(Debug, Serialize)]
pub struct Step {
    pub clients: usize,
    pub comparison: Comparison,
}

/// A whole sweep: the settings every step shared, and the steps in the order measured.
#[derive(Debug, Serialize)]
pub struct Sweep {
    pub workload: String,
    pub accounts: u32,
    pub hot: u32,
    pub rounds: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub targets: Vec<Target>,
    pub server: ServerInfo,
    pub steps: Vec<Step>,
}

impl Sweep {
    pub fn all_checks_passed(&self) -> bool {
        self.steps.iter().all(|s| s.comparison.all_checks_passed())
    }

    /// (clients, median) of one figure of one target, by client count; steps where the
    /// figure is not a number (nothing committed) are left out.
    pub fn series(&self, target: Target, figure: &str) -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = self
            .steps
            .iter()
            .filter_map(|step| {
                let median = step.comparison.median(target.name(), figure)?;
                median.is_finite().then_some((step.clients as f64, median))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    }

    /// What every point of the chart is, in one line.
    pub fn title(&self) -> String {
        format!(
            "{}, {} hot of {} accounts: median of {} round{} of {} s (warm-up {} s), targets alternating",
            self.workload,
            self.hot,
            self.accounts,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
            self.duration_s,
            self.warmup_s
        )
    }
}

/// The medians as CSV: a header, then one row per client count and target, in the order
/// measured. A figure that is not a number (no binary log, no group) is an empty field.
pub fn csv(sweep: &Sweep) -> String {
    let mut text = String::from("workload,hot,accounts,rounds,duration_s,clients,target");
    for (name, _) in report::figure_columns() {
        let _ = write!(text, ",{name}");
    }
    text.push_str(",checks_passed,runs,transport\n");
    for step in &sweep.steps {
        let c = &step.comparison;
        for target in &sweep.targets {
            let name = target.name();
            let _ = write!(
                text,
                "{},{},{},{},{},{},{name}",
                sweep.workload,
                sweep.hot,
                sweep.accounts,
                sweep.rounds,
                sweep.duration_s,
                step.clients
            );
            for (figure, decimals) in report::figure_columns() {
                match c.median(name, figure) {
                    Some(value) if value.is_finite() => {
                        let _ = write!(text, ",{value:.*}", decimals);
                    }
                    _ => text.push(','),
                }
            }
            let (passed, runs) = c
                .checks_passed
                .iter()
                .find(|(t, _, _)| t == name)
                .map_or((0, 0), |(_, passed, runs)| (*passed, *runs));
            let transport = c
                .transports
                .iter()
                .find(|(t, _)| t == name)
                .map_or("", |(_, transport)| transport.as_str());
            let _ = writeln!(text, ",{passed},{runs},{transport}");
        }
    }
    text
}

/// Writes `sweep.csv` and `sweep.svg` into `dir` (created when missing); returns their paths.
pub fn write(sweep: &Sweep, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let files = [
        (dir.join("sweep.csv"), csv(sweep)),
        (dir.join("sweep.svg"), chart::svg(sweep)?),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (path, text) in files {
        std::fs::write(&path, text)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::report::{Check, Latency, RunResult};

    pub const CLIENTS: [usize; 4] = [1, 8, 32, 128];
    const TARGETS: [Target; 3] = [Target::Broker, Target::Direct, Target::DirectSorted];

    /// The throughput of the runs of `target` at `clients`, round 1 and round 2 (median: the
    /// mean of the two): made-up figures, each different.
    fn tx_per_s(target: Target, clients: usize) -> [f64; 2] {
        let base = match target {
            Target::Broker => 1000.0,
            Target::Direct => 300.0,
            Target::DirectSorted => 600.0,
            Target::BrokerKeyed => 800.0,
        };
        // Direct makes nothing at 128 clients: no p99 either.
        if target == Target::Direct && clients == 128 {
            return [0.0, 0.0];
        }
        let value = base * (clients as f64).sqrt();
        [value - 10.0, value + 30.0]
    }

    /// Two rounds per client count, targets alternating; the second round of direct-sorted at 8
    /// clients fails its check.
    pub fn synthetic_sweep() -> Sweep {
        let steps = CLIENTS
            .iter()
            .map(|clients| {
                let mut runs = Vec::new();
                for round in 1..=2 {
                    for target in TARGETS {
                        let tx_per_s = tx_per_s(target, *clients)[round as usize - 1];
                        runs.push(RunResult {
                            target: target.name().to_string(),
                            clients: *clients,
                            round,
                            tx_per_s,
                            latency: Latency {
                                p99_ms: if tx_per_s > 0.0 { 1e5 / tx_per_s } else { 0.0 },
                                ..Latency::default()
                            },
                            fsyncs_per_tx: f64::NAN,
                            check: Check {
                                ok: !(target == Target::DirectSorted
                                    && *clients == 8
                                    && round == 2),
                                ..Check::default()
                            },
                            ..RunResult::default()
                        });
                    }
                }
                Step {
                    clients: *clients,
                    comparison: report::compare(&TARGETS, runs, &ServerInfo::default()),
                }
            })
            .collect();
        Sweep {
            workload: "transfer".to_string(),
            accounts: 1000,
            hot: 2,
            rounds: 2,
            duration_s: 5.0,
            warmup_s: 1.0,
            targets: TARGETS.to_vec(),
            server: ServerInfo::default(),
            steps,
        }
    }

    #[test]
    fn the_csv_has_a_row_per_client_count_and_target_with_the_medians() {
        let sweep = synthetic_sweep();
        let text = csv(&sweep);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
        let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
        assert_eq!(rows.len(), CLIENTS.len() * TARGETS.len());
        assert!(rows.iter().all(|row| row.len() == header.len()));
        for (index, row) in rows.iter().enumerate() {
            let clients = CLIENTS[index / TARGETS.len()];
            let target = TARGETS[index % TARGETS.len()];
            assert_eq!(row[column("clients")], clients.to_string());
            assert_eq!(row[column("target")], target.name());
            let [first, second] = tx_per_s(target, clients);
            let median: f64 = row[column("tx_per_s")].parse().expect("a number");
            assert_eq!(median, ((first + second) / 2.0).round());
            // No run made a NaN figure a number: the field is empty.
            assert_eq!(row[column("fsyncs_per_tx")], "");
            let failed_one = target == Target::DirectSorted && clients == 8;
            let passed = if failed_one { "1" } else { "2" };
            assert_eq!(row[column("checks_passed")], passed, "row {index}");
            assert_eq!(row[column("runs")], "2");
        }
        assert_eq!(
            header[..7],
            [
                "workload",
                "hot",
                "accounts",
                "rounds",
                "duration_s",
                "clients",
                "target"
            ]
        );
        assert!(!sweep.all_checks_passed());
    }

    #[test]
    fn write_puts_the_csv_and_the_chart_in_the_directory() {
        let sweep = synthetic_sweep();
        let dir = std::env::temp_dir().join(format!("txbench-sweep-{}", std::process::id()));
        let written = write(&sweep, &dir.join("made")).expect("written");
        let names: Vec<String> = written
            .iter()
            .map(|path| {
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["sweep.csv", "sweep.svg"]);
        assert_eq!(
            std::fs::read_to_string(&written[0]).expect("csv"),
            csv(&sweep)
        );
        let svg = std::fs::read_to_string(&written[1]).expect("svg");
        assert_eq!(svg, chart::svg(&sweep).expect("drawn"));
        std::fs::remove_dir_all(&dir).expect("removed");
    }
}
