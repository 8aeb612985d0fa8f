//! txbench: the load generator of issue 3. It runs one workload against txbroker or straight
//! against MariaDB and reports throughput, latency, retries, deadlocks and a correctness
//! check; `compare` runs several targets alternately and quotes medians and ratios; `sweep`
//! does a `compare` per client count and charts throughput and p99 against clients.
//!
//! See bench/README.md for how to run it and what each figure means.

mod chart;
mod db;
mod report;
mod server;
mod sweep;
mod target;
mod workload;

/// The private server of the integration tests, reused as it is (`--server private|binlog`).
#[path = "../../tests/private_mariadb/mod.rs"]
mod private_mariadb;

/// The tests' helper module, which tests/private_mariadb uses (processes, signals); txbench
/// calls none of it directly (the module allows its own dead code).
#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use txbroker::client::Client;
use txbroker::protocol::Stats;
use txbroker::{logging, Broker, Config};

use db::{BenchDb, ServerInfo, Totals};
use report::{Check, Latency, RunResult};
use server::{Server, ServerKind};
use target::{Idempotency, Session, Target};
use workload::{Generator, Op, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "txbench",
    version,
    about = "Load generator for txbroker (issue 3)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One run of one target.
    Run {
        /// broker, direct or direct-sorted.
        #[arg(long, value_enum, default_value = "broker")]
        target: Target,
        #[command(flatten)]
        options: Options,
    },
    /// Several targets alternately (A B C A B C ...), then each figure's median and ratios.
    Compare {
        #[command(flatten)]
        targets: Targets,
        /// Rounds: every target runs once per round.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[command(flatten)]
        options: Options,
    },
    /// A `compare` per client count, then the medians as CSV and a chart of throughput and
    /// p99 against clients (SVG).
    Sweep {
        #[command(flatten)]
        targets: Targets,
        /// Rounds per client count: every target runs once per round.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Comma-separated client counts, measured in this order.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        clients_list: Vec<usize>,
        /// Directory for sweep.csv and sweep.svg (created when missing).
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        options: Options,
    },
}

/// The targets of `compare` and `sweep`.
#[derive(Args, Debug, Clone)]
struct Targets {
    /// Comma-separated targets, run in this order every round.
    #[arg(
        long = "targets",
        value_enum,
        value_delimiter = ',',
        default_value = "broker,direct,direct-sorted"
    )]
    list: Vec<Target>,
}

#[derive(Args, Debug, Clone)]
struct Options {
    /// transfer, uncontended, read or mixed.
    #[arg(long, value_enum, default_value = "transfer")]
    workload: Workload,
    /// Concurrent clients, each with its own connection.
    #[arg(long, short = 'c', default_value_t = 32)]
    clients: usize,
    /// Measured time after the warm-up: 10s, 500ms, 2m, or plain seconds.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Time run before measuring starts.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Seed of every client's random generator (client i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the results as JSON on stdout (the progress line stays on stderr).
    #[arg(long)]
    json: bool,
    /// Accounts in the table (ids 1..=N).
    #[arg(long, default_value_t = 100_000)]
    accounts: u32,
    /// Hot accounts that transfer and mixed use (spread evenly over the ids).
    #[arg(long, default_value_t = 10)]
    hot: u32,
    /// Retries of a transaction after 1213/1205, for every target alike.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Which MariaDB: shared (the one at --database-url), private (one started for this run
    /// with the defaults) or binlog (private, with --log-bin --sync-binlog=1 --server-id=1).
    #[arg(long, value_enum, default_value = "shared")]
    server: ServerKind,
    /// MariaDB for the direct targets, the in-process broker and the table (with --server
    /// private or binlog, only its database name is used). Without prefer_socket=false,
    /// mysql_async leaves TCP for the server's Unix socket when it can reach it.
    #[arg(
        long,
        default_value = "mysql://root@127.0.0.1:3306/txbench?prefer_socket=false"
    )]
    database_url: String,
    /// Use the broker at this address instead of starting one in-process.
    #[arg(long)]
    broker_addr: Option<String>,
    /// Session threads of the in-process broker (0: one per core); default: the broker's own.
    #[arg(long)]
    broker_session_threads: Option<usize>,
}

impl Cli {
    /// Parses the command line. `sweep` refuses `--clients`, which `--clients-list` replaces:
    /// clap's `conflicts_with` cannot say so, as it ignores an argument left at its default.
    fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        if let Some(("sweep", sweep)) = matches.subcommand() {
            if sweep.value_source("clients") == Some(ValueSource::CommandLine) {
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "sweep takes --clients-list, not --clients",
                ));
            }
        }
        Cli::from_arg_matches(&matches)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{text:?} is not a duration like 10s, 500ms or 2m"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn main() {
    let cli = Cli::parse_args(std::env::args_os()).unwrap_or_else(|error| error.exit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let (Command::Run { options, .. }
        | Command::Compare { options, .. }
        | Command::Sweep { options, .. }) = &cli.command;
        if options.server != ServerKind::Shared && options.broker_addr.is_some() {
            return Err(format!(
                "--broker-addr names a broker connected to another MariaDB than --server {}",
                options.server.name()
            ));
        }
        let server = start_server(options.server, &options.database_url).await?;
        let command = async {
            match cli.command {
                Command::Run { target, options } => run_command(target, options, &server).await,
                Command::Compare {
                    targets,
                    rounds,
                    options,
                } => compare_command(targets.list, rounds, options, &server).await,
                Command::Sweep {
                    targets,
                    rounds,
                    clients_list,
                    out,
                    options,
                } => sweep_command(targets.list, rounds, clients_list, out, options, &server).await,
            }
        };
        let outcome = tokio::select! {
            outcome = command => outcome,
            signal = interrupted() => Err(format!("interrupted by {signal}")),
        };
        // Kills a private server and removes its directory.
        drop(server);
        outcome
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(message) => {
            eprintln!("txbench: {message}");
            std::process::exit(2);
        }
    }
}

/// Starts the server of `--server`. Interrupted while a private one starts, it waits until the
/// start has ended, so that the server is killed and its directory removed before txbench
/// exits (a second interrupt exits at once).
async fn start_server(kind: ServerKind, url: &str) -> Result<Server, String> {
    if kind != ServerKind::Shared {
        eprintln!("txbench: starting a private MariaDB ({})", kind.name());
    }
    let url = url.to_string();
    let mut starting = tokio::spawn(async move { Server::start(kind, &url).await });
    let started = tokio::select! {
        started = &mut starting => started,
        signal = interrupted() => {
            eprintln!("txbench: {signal}: removing the private MariaDB once it has started");
            tokio::select! {
                _ = starting => {}
                _ = interrupted() => {}
            }
            return Err(format!("interrupted by {signal}"));
        }
    };
    let server = started.map_err(|error| format!("starting the server: {error}"))??;
    if let Some(dir) = server.data_dir() {
        eprintln!("txbench: private MariaDB ready at {} ({dir})", server.url);
    }
    Ok(server)
}

/// Resolves on SIGINT (Ctrl-C), SIGTERM or SIGHUP, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let stream = |kind| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = stream(SignalKind::interrupt()) => "SIGINT",
        _ = stream(SignalKind::terminate()) => "SIGTERM",
        _ = stream(SignalKind::hangup()) => "SIGHUP",
    }
}

/// Returns whether every correctness check passed.
async fn run_command(target: Target, options: Options, server: &Server) -> Result<bool, String> {
    let mut bench = Bench::new(options, server).await?;
    let result = bench.run(target, 1, "").await?;
    if bench.options.json {
        println!("{}", serde_json::to_string_pretty(&result).expect("json"));
    } else {
        report::print_run(&result);
    }
    bench.stop().await;
    Ok(result.check.ok)
}

async fn compare_command(
    targets: Vec<Target>,
    rounds: u32,
    options: Options,
    server: &Server,
) -> Result<bool, String> {
    if targets.is_empty() || rounds == 0 {
        return Err("compare needs at least one target and one round".to_string());
    }
    let mut bench = Bench::new(options, server).await?;
    let comparison = bench.compare(&targets, rounds, "").await?;
    let all_ok = comparison.all_checks_passed();
    if bench.options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&comparison).expect("json")
        );
    }
    bench.stop().await;
    Ok(all_ok)
}

/// Returns whether every correctness check of every client count passed.
async fn sweep_command(
    targets: Vec<Target>,
    rounds: u32,
    clients_list: Vec<usize>,
    out: std::path::PathBuf,
    mut options: Options,
    server: &Server,
) -> Result<bool, String> {
    if targets.is_empty() || rounds == 0 || clients_list.is_empty() {
        return Err("sweep needs at least one target, one round and one client count".to_string());
    }
    // The in-process broker is started once, for the most clients of the list.
    options.clients = clients_list.iter().copied().max().unwrap_or_default();
    let mut bench = Bench::new(options, server).await?;
    let mut steps = Vec::with_capacity(clients_list.len());
    for (index, clients) in clients_list.iter().enumerate() {
        bench.options.clients = *clients;
        let label = format!("clients {}/{} ", index + 1, clients_list.len());
        let comparison = bench.compare(&targets, rounds, &label).await?;
        steps.push(sweep::Step {
            clients: *clients,
            comparison,
        });
    }
    let o = &bench.options;
    let sweep = sweep::Sweep {
        workload: o.workload.name().to_string(),
        accounts: o.accounts,
        hot: o.hot,
        rounds,
        duration_s: o.duration.as_secs_f64(),
        warmup_s: o.warmup.as_secs_f64(),
        targets,
        server: bench.server.clone(),
        steps,
    };
    let json = o.json;
    bench.stop().await;
    let written = sweep::write(&sweep, &out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sweep).expect("json"));
    }
    for path in written {
        eprintln!("txbench: wrote {}", path.display());
    }
    Ok(sweep.all_checks_passed())
}

/// A broker started in this process, in its own thread with its own actix System.
struct InProcessBroker {
    address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessBroker {
    fn start(config: Config) -> Result<InProcessBroker, String> {
        let (address_sender, address) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("txbroker".to_string())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    match Broker::start(config, logging::discard()).await {
                        Ok(broker) => {
                            let _ = address_sender.send(Ok(broker
                                .local_addr()
                                .map_or_else(String::new, |address| address.to_string())));
                            let _ = stopped.await;
                            broker.shutdown().await;
                        }
                        Err(error) => {
                            let _ = address_sender.send(Err(error.to_string()));
                        }
                    }
                });
            })
            .map_err(|error| format!("cannot start the broker thread: {error}"))?;
        let address = address
            .recv()
            .map_err(|_| "the broker thread ended before it started".to_string())?
            .map_err(|error| format!("cannot start the broker: {error}"))?;
        Ok(InProcessBroker {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

struct Bench {
    /// `clients` is the next run's; a sweep changes it between runs.
    options: Options,
    /// The most clients of any run, which the in-process broker's `max_sessions` allows for.
    max_clients: usize,
    server: ServerInfo,
    db: BenchDb,
    generator: Generator,
    broker: Option<InProcessBroker>,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DONE: u8 = 2;

/// What the progress line and the correctness check read while clients run.
#[derive(Default)]
struct Live {
    phase: AtomicU8,
    committed: AtomicU64,
    failed: AtomicU64,
    /// One-row updates committed in any phase, for the correctness check.
    updates_committed: AtomicU64,
}

/// Net amount the committed transfers moved into (+) or out of (-) each account, over the
/// whole run (warm-up included), for the correctness check.
type Moved = HashMap<u32, i64>;

/// One client's figures for the measured window.
struct ClientTally {
    latency: Histogram<u64>,
    committed: u64,
    failed: u64,
    attempts: u64,
    deadlocks: u64,
    db_lock_timeouts: u64,
    lock_timeouts: u64,
    errors: HashMap<String, u64>,
    fatal: Option<String>,
    /// Over the whole run, not only the window.
    moved: Moved,
}

impl ClientTally {
    fn new() -> ClientTally {
        ClientTally {
            latency: report::new_histogram(),
            committed: 0,
            failed: 0,
            attempts: 0,
            deadlocks: 0,
            db_lock_timeouts: 0,
            lock_timeouts: 0,
            errors: HashMap::new(),
            fatal: None,
            moved: Moved::new(),
        }
    }
}

impl Bench {
    async fn new(options: Options, server: &Server) -> Result<Bench, String> {
        if options.clients == 0 {
            return Err("--clients must be at least 1".to_string());
        }
        if options.accounts < 2 {
            return Err("--accounts must be at least 2".to_string());
        }
        if options.duration.is_zero() {
            return Err("--duration must be more than 0".to_string());
        }
        let db = BenchDb::prepare(&server.url, options.accounts).await?;
        let mut info = db.server_info().await?;
        info.kind = server.kind.name().to_string();
        info.data_dir = server.data_dir();
        info.intended_transport = server::intended_transport(&db.url);
        if !options.json {
            println!("server: {}", info.describe());
            if let Some(dir) = &info.data_dir {
                println!("data directory: {dir} (removed at the end)");
            }
            println!("connections: {}", info.intended_transport);
        }
        let generator = Generator::new(options.workload, options.accounts, options.hot);
        Ok(Bench {
            max_clients: options.clients,
            options,
            server: info,
            db,
            generator,
            broker: None,
        })
    }

    async fn stop(self) {
        if let Some(broker) = self.broker {
            broker.stop().await;
        }
    }

    /// Runs every target once per round, alternately (A B C A B C ...), printing each run,
    /// then the medians (as text unless `--json`).
    async fn compare(
        &mut self,
        targets: &[Target],
        rounds: u32,
        label: &str,
    ) -> Result<report::Comparison, String> {
        let mut runs = Vec::new();
        for round in 1..=rounds {
            for target in targets {
                let run_label = format!("{label}round {round}/{rounds} ");
                let result = self.run(*target, round, &run_label).await?;
                if !self.options.json {
                    report::print_run(&result);
                }
                runs.push(result);
            }
        }
        let comparison = report::compare(targets, runs, &self.server);
        if !self.options.json {
            let o = &self.options;
            let title = format!(
                "\n{} clients={} accounts={} hot={}: median of {rounds} rounds of {:.0?} (warm-up {:.0?}), targets run alternately\nserver: {}",
                o.workload.name(),
                o.clients,
                o.accounts,
                o.hot,
                o.duration,
                o.warmup,
                self.server.describe()
            );
            report::print_comparison(&title, &comparison);
        }
        Ok(comparison)
    }

    /// The broker's address, starting the in-process one the first time.
    fn broker_address(&mut self) -> Result<String, String> {
        if let Some(address) = &self.options.broker_addr {
            return Ok(address.clone());
        }
        if self.broker.is_none() {
            let config = Config {
                listen: "127.0.0.1:0".to_string(),
                database_url: self.db.url.clone(),
                max_sessions: self.max_clients + 16,
                session_threads: self
                    .options
                    .broker_session_threads
                    .unwrap_or(Config::default().session_threads),
                shutdown_grace_ms: 1_000,
                ..Config::default()
            };
            self.broker = Some(InProcessBroker::start(config)?);
        }
        Ok(self
            .broker
            .as_ref()
            .map(|b| b.address.clone())
            .unwrap_or_default())
    }

    async fn run(&mut self, target: Target, round: u32, label: &str) -> Result<RunResult, String> {
        let o = self.options.clone();
        self.db.reset().await?;
        let broker = match target {
            Target::Broker | Target::BrokerKeyed => {
                let address = self.broker_address()?;
                let stats = Client::connect(address.as_str())
                    .await
                    .map_err(|error| format!("cannot reach the broker at {address}: {error}"))?;
                Some((address, stats))
            }
            _ => None,
        };
        let baseline_sessions = match &broker {
            Some((_, stats)) => Some(broker_stats(stats).await?.sessions),
            None => None,
        };

        let mut sessions = Vec::with_capacity(o.clients);
        for _ in 0..o.clients {
            let session = match (target, &broker) {
                (Target::Broker | Target::BrokerKeyed, Some((address, _))) => {
                    let idempotency = match target {
                        Target::BrokerKeyed => Idempotency::FreshKeys,
                        _ => Idempotency::None,
                    };
                    Session::broker(address, &self.db, o.retries, idempotency)
                        .await
                        .map_err(|error| format!("cannot connect to the broker: {error}"))?
                }
                _ => Session::direct(&self.db, target == Target::DirectSorted, o.retries)
                    .await
                    .map_err(|error| format!("cannot connect to MariaDB: {error}"))?,
            };
            sessions.push(session);
        }

        let live = Arc::new(Live::default());
        if o.warmup.is_zero() {
            live.phase.store(MEASURE, Ordering::Relaxed);
        }
        let mut tasks = Vec::with_capacity(o.clients);
        for (index, session) in sessions.into_iter().enumerate() {
            let live = live.clone();
            let generator = self.generator.clone();
            let rng = StdRng::seed_from_u64(o.seed.wrapping_add(index as u64));
            tasks.push(tokio::spawn(client_loop(session, generator, rng, live)));
        }

        let prefix = format!(
            "{label}{} {} c={}",
            target.name(),
            o.workload.name(),
            o.clients
        );
        let progress = tokio::spawn(progress_line(live.clone(), prefix, o.warmup, o.duration));
        tokio::time::sleep(o.warmup).await;
        let before = match &broker {
            Some((_, stats)) => Some(broker_stats(stats).await?),
            None => None,
        };
        // Every client is connected now (at the end of the window some have left already):
        // how they reach the server, as it sees them.
        let transport = self.db.transport().await?;
        let server_before = self.db.server_counters().await?;
        live.phase.store(MEASURE, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(o.duration).await;
        live.phase.store(DONE, Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        let after = match &broker {
            Some((_, stats)) => Some(broker_stats(stats).await?),
            None => None,
        };
        let server_after = self.db.server_counters().await?;
        let _ = progress.await;

        let mut tally = ClientTally::new();
        let mut unfinished = 0;
        let drain_deadline = Instant::now() + Duration::from_secs(60);
        for task in tasks {
            let remaining = drain_deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, task).await {
                Ok(Ok(client)) => merge(&mut tally, client),
                Ok(Err(error)) => tally.fatal = Some(format!("client task failed: {error}")),
                Err(_) => unfinished += 1,
            }
        }

        // Wait until the broker has ended this run's sessions, so that the next run starts
        // with their database connections closed.
        if let (Some((_, stats)), Some(baseline)) = (&broker, baseline_sessions) {
            let give_up = Instant::now() + Duration::from_secs(10);
            while Instant::now() < give_up {
                match broker_stats(stats).await {
                    Ok(now) if now.sessions <= baseline => break,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => break,
                }
            }
        }

        let finished = tally.committed + tally.failed;
        let mut errors: Vec<(String, u64)> = tally.errors.into_iter().collect();
        errors.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let mut result = RunResult {
            target: target.name().to_string(),
            workload: o.workload.name().to_string(),
            clients: o.clients,
            accounts: o.accounts,
            hot: o.hot,
            round,
            seconds,
            committed: tally.committed,
            tx_per_s: tally.committed as f64 / seconds,
            latency: Latency::of(&tally.latency),
            attempts_per_tx: if finished == 0 {
                0.0
            } else {
                tally.attempts as f64 / finished as f64
            },
            deadlocks: tally.deadlocks,
            db_lock_timeouts: tally.db_lock_timeouts,
            lock_timeouts: tally.lock_timeouts,
            failed: tally.failed,
            broker_retries: None,
            broker_lock_waits: None,
            broker_group_size: None,
            fsyncs_per_tx: server_before.fsyncs_per_tx(&server_after, tally.committed),
            binlog: None,
            server: self.server.clone(),
            transport,
            errors,
            check: Check::default(),
        };
        if self.server.log_bin {
            let (commits, groups) = server_after.binlog_since(&server_before);
            result.binlog = Some(report::Binlog::new(commits, groups, tally.committed));
        }
        if let (Some(before), Some(after)) = (before, after) {
            result.deadlocks = after.deadlocks.saturating_sub(before.deadlocks);
            result.lock_timeouts = after.lock_timeouts.saturating_sub(before.lock_timeouts);
            result.broker_retries = Some(after.retries.saturating_sub(before.retries));
            result.broker_lock_waits = Some(after.lock_waits.saturating_sub(before.lock_waits));
            let groups = after
                .groups_committed
                .saturating_sub(before.groups_committed);
            let grouped = after
                .transactions_grouped
                .saturating_sub(before.transactions_grouped);
            result.broker_group_size = Some(grouped as f64 / groups as f64);
        }
        drop(broker);

        let expected_updates = live.updates_committed.load(Ordering::Relaxed);
        let expected_balance_sum = Totals::expected_balance_sum(o.accounts);
        let totals = self.db.totals().await?;
        let mut problems = Vec::new();
        if totals.rows != u64::from(o.accounts) {
            problems.push(format!("{} rows, expected {}", totals.rows, o.accounts));
        }
        if totals.balance_sum != expected_balance_sum {
            problems.push(format!(
                "sum of balances {} changed from {expected_balance_sum}",
                totals.balance_sum
            ));
        }
        if totals.negative > 0 {
            problems.push(format!("{} negative balances", totals.negative));
        }
        let balance_problems =
            db::balance_problems(&tally.moved, &self.db.changed_balances().await?);
        let off_balance = balance_problems.len();
        problems.extend(balance_problems.into_iter().take(5));
        if off_balance > 5 {
            problems.push(format!("{} accounts off in all", off_balance));
        }
        if totals.updates_sum != expected_updates {
            problems.push(format!(
                "{} updates in the table, {expected_updates} committed",
                totals.updates_sum
            ));
        }
        if unfinished > 0 {
            problems.push(format!("{unfinished} clients did not finish within 60 s"));
        }
        if let Some(fatal) = &tally.fatal {
            problems.push(format!("a client stopped: {fatal}"));
        }
        result.check = Check {
            ok: problems.is_empty(),
            message: if problems.is_empty() {
                format!(
                    "sum of balances {} unchanged, none negative, every balance as the committed transfers left it ({} accounts moved), {} committed updates all present",
                    totals.balance_sum,
                    tally.moved.values().filter(|net| **net != 0).count(),
                    totals.updates_sum
                )
            } else {
                problems.join("; ")
            },
            totals,
            expected_balance_sum,
            expected_updates,
        };
        Ok(result)
    }
}

async fn broker_stats(client: &Client) -> Result<Stats, String> {
    client
        .stats()
        .await
        .map_err(|error| format!("broker stats: {error}"))
}

fn merge(into: &mut ClientTally, client: ClientTally) {
    let _ = into.latency.add(&client.latency);
    into.committed += client.committed;
    into.failed += client.failed;
    into.attempts += client.attempts;
    into.deadlocks += client.deadlocks;
    into.db_lock_timeouts += client.db_lock_timeouts;
    into.lock_timeouts += client.lock_timeouts;
    for (message, count) in client.errors {
        *into.errors.entry(message).or_default() += count;
    }
    if client.fatal.is_some() {
        into.fatal = client.fatal;
    }
    for (id, net) in client.moved {
        *into.moved.entry(id).or_default() += net;
    }
}

/// Error messages name values (ids, amounts); keep their first words so that kinds group.
fn error_kind(message: &str) -> String {
    message.chars().take(90).collect()
}

async fn client_loop(
    mut session: Session,
    generator: Generator,
    mut rng: StdRng,
    live: Arc<Live>,
) -> ClientTally {
    let mut tally = ClientTally::new();
    while live.phase.load(Ordering::Relaxed) != DONE {
        let op = generator.next(&mut rng);
        let started = Instant::now();
        let outcome = session.run(op).await;
        let micros = started.elapsed().as_micros() as u64;
        if outcome.committed {
            live.committed.fetch_add(1, Ordering::Relaxed);
            if op.is_update() {
                live.updates_committed.fetch_add(1, Ordering::Relaxed);
            }
            if let Op::Transfer { from, to, amount } = op {
                *tally.moved.entry(from).or_default() -= amount;
                *tally.moved.entry(to).or_default() += amount;
            }
        } else {
            live.failed.fetch_add(1, Ordering::Relaxed);
        }
        // Counted when it finishes inside the measured window.
        if live.phase.load(Ordering::Relaxed) == MEASURE {
            if outcome.committed {
                tally.committed += 1;
                tally.latency.saturating_record(micros.max(1));
            } else {
                tally.failed += 1;
            }
            tally.attempts += u64::from(outcome.attempts);
            tally.deadlocks += u64::from(outcome.deadlocks);
            tally.db_lock_timeouts += u64::from(outcome.db_lock_timeouts);
            tally.lock_timeouts += u64::from(outcome.lock_timeouts);
            if let Some(error) = &outcome.error {
                *tally.errors.entry(error_kind(error)).or_default() += 1;
            }
        }
        if outcome.fatal {
            tally.fatal = outcome.error;
            break;
        }
    }
    session.close().await;
    tally
}

/// Once a second on stderr: phase, elapsed, committed/s and errors in the last second.
async fn progress_line(live: Arc<Live>, prefix: String, warmup: Duration, duration: Duration) {
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut committed, mut failed) = (0u64, 0u64);
    let mut ticks = 0u64;
    loop {
        ticker.tick().await;
        ticks += 1;
        let phase = live.phase.load(Ordering::Relaxed);
        let now_committed = live.committed.load(Ordering::Relaxed);
        let now_failed = live.failed.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        let line = format!(
            "{prefix} {} {:>4.0}/{:.0}s  committed/s {:>7}  failed/s {:>5}",
            if phase == WARMUP {
                "warm-up"
            } else {
                "measure"
            },
            elapsed.as_secs_f64(),
            (warmup + duration).as_secs_f64(),
            now_committed - committed,
            now_failed - failed,
        );
        committed = now_committed;
        failed = now_failed;
        if phase == DONE {
            if terminal {
                eprint!("\r\x1b[2K");
            }
            return;
        }
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else if ticks.is_multiple_of(5) {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_or_without_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "txbench",
            "compare",
            "--targets",
            "broker,direct,direct-sorted",
            "--rounds",
            "3",
            "--workload",
            "transfer",
            "--clients",
            "128",
            "--duration",
            "10s",
            "--warmup",
            "2s",
            "--hot",
            "10",
            "--json",
        ])
        .expect("parses");
        let Command::Compare {
            targets, options, ..
        } = cli.command
        else {
            panic!("compare expected");
        };
        assert_eq!(
            targets.list,
            vec![Target::Broker, Target::Direct, Target::DirectSorted]
        );
        assert_eq!(options.clients, 128);
        assert!(options.json);
        assert_eq!(options.server, ServerKind::Shared);
    }

    /// A sweep as the command line gives it, on the real server: every target ran at every
    /// client count, passed its check and committed, and both files were written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_sweep_on_the_real_server_writes_a_row_per_target_and_client_count() {
        let db = common::TestDb::create("txbench_sweep").await;
        let out = std::env::temp_dir().join(format!("txbench-real-sweep-{}", std::process::id()));
        let out_arg = out.to_string_lossy().into_owned();
        let cli = Cli::parse_args([
            "txbench",
            "sweep",
            "--clients-list",
            "1,4",
            "--rounds",
            "1",
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--accounts",
            "100",
            "--hot",
            "2",
            "--database-url",
            &db.url,
            "--out",
            &out_arg,
        ])
        .expect("parses");
        let Command::Sweep {
            targets,
            rounds,
            clients_list,
            out: out_dir,
            options,
        } = cli.command
        else {
            panic!("sweep expected");
        };
        let server = Server::start(ServerKind::Shared, &options.database_url)
            .await
            .expect("the shared server");
        let all_ok = sweep_command(
            targets.list,
            rounds,
            clients_list,
            out_dir,
            options,
            &server,
        )
        .await
        .expect("the sweep ran");
        assert!(all_ok, "a correctness check failed");

        let csv = std::fs::read_to_string(out.join("sweep.csv")).expect("sweep.csv");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
        let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
        let measured: Vec<(&str, &str)> = rows
            .iter()
            .map(|row| (row[column("clients")], row[column("target")]))
            .collect();
        let expected: Vec<(&str, &str)> = ["1", "4"]
            .into_iter()
            .flat_map(|c| ["broker", "direct", "direct-sorted"].map(|t| (c, t)))
            .collect();
        assert_eq!(measured, expected);
        for row in &rows {
            let tx_per_s: f64 = row[column("tx_per_s")].parse().expect("tx/s");
            assert!(tx_per_s > 0.0, "nothing committed: {row:?}");
            assert_eq!(row[column("checks_passed")], "1");
            // Not its value: without a warm-up the broker's sessions may not have reached
            // the server when it is read ("not seen").
            assert!(column("transport") < row.len());
        }
        let svg = std::fs::read_to_string(out.join("sweep.svg")).expect("sweep.svg");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        std::fs::remove_dir_all(&out).expect("removed");
    }

    #[test]
    fn sweep_takes_a_list_of_client_counts_and_refuses_clients() {
        let cli = Cli::parse_args(["txbench", "sweep", "--out", "charts"]).expect("parses");
        let Command::Sweep { clients_list, .. } = cli.command else {
            panic!("sweep expected");
        };
        assert_eq!(clients_list, [1, 8, 32, 128]);
        for clients in [["--clients", "3"], ["-c", "3"]] {
            let args = [
                "txbench", "sweep", "--out", "charts", clients[0], clients[1],
            ];
            let error = Cli::parse_args(args).expect_err("refused");
            assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
        assert!(Cli::parse_args(["txbench", "compare", "--clients", "3"]).is_ok());
    }

    #[test]
    fn the_default_url_keeps_to_tcp_and_binlog_is_a_server() {
        let cli = Cli::try_parse_from([
            "txbench",
            "run",
            "--server",
            "binlog",
            "--workload",
            "transfer",
            "--hot",
            "2",
        ])
        .expect("parses");
        let Command::Run { options, .. } = cli.command else {
            panic!("run expected");
        };
        assert_eq!(options.server, ServerKind::Binlog);
        assert_eq!(options.hot, 2);
        let url = mysql_async::Opts::from_url(&options.database_url).expect("a URL");
        assert!(!url.prefer_socket() && url.socket().is_none());
        assert!(server::intended_transport(&options.database_url).starts_with("TCP to"));
    }
}
