//! The `txbroker` command: reads the configuration, starts the broker in an actix `System`,
//! and drains it on SIGINT or SIGTERM; or, with a subcommand, asks a running broker for its
//! stats, watches it (`top`) or runs one statement through it. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use slog::{error, info};

use std::io::IsTerminal;

use txbroker::protocol::Stats;
use txbroker::{admin, logging, top, Broker, Config};

/// Client tokens from the environment (comma- or newline-separated), added to the file's.
const TOKENS_VARIABLE: &str = "TXBROKER_AUTH_TOKENS";

/// Where the configuration is read from when `--config` is not given.
const DEFAULT_CONFIG_PATH: &str = "config/txbroker.toml";

#[derive(Debug, Parser)]
#[command(
    name = "txbroker",
    version,
    about = "Transaction broker for MySQL and MariaDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file [default: config/txbroker.toml when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the file's `listen`
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Database URL, overriding the file's `database_url`
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Address for /metrics, /healthz and /readyz, overriding the file's `metrics_listen`
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a running broker's counters
    Stats {
        /// Broker address
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7306")]
        addr: String,
        /// Token for `hello`, when the broker requires one
        #[arg(long, env = "TXBROKER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print one JSON object instead of a table (with --every: one object per line)
        #[arg(long)]
        json: bool,
        /// Keep watching: every SECONDS, print a line with the counters as rates per second
        /// and the gauges (sessions, locks_held, lock_waiters) as they are
        #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
        every: Option<f64>,
        /// With --every, stop after this many lines (default: until interrupted)
        #[arg(long, value_name = "N", requires = "every")]
        count: Option<u64>,
    },
    /// Watch a running broker like `top`: rates, latency percentiles and the hot keys with
    /// their queues, redrawn every interval
    Top {
        /// Broker address
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7306")]
        addr: String,
        /// Token for `hello`, when the broker requires one
        #[arg(long, env = "TXBROKER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Seconds between screens
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = positive_seconds)]
        every: f64,
        /// Stop after this many screens (default: until interrupted)
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Run one statement through a running broker (autocommit) and print its result
    Exec {
        /// Broker address
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7306")]
        addr: String,
        /// Token for `hello`, when the broker requires one
        #[arg(long, env = "TXBROKER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Send the statement as a `tx` with this idempotency key: run again with the same key
        /// (after a lost answer, say), it prints the recorded result instead of running twice
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// The statement, with `?` placeholders
        sql: String,
        /// Parameters: integers and decimals are numbers, `null` is NULL, the rest is text
        params: Vec<String>,
    },
}

fn load_config(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path).map_err(|error| error.to_string())?,
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::from_file(std::path::Path::new(DEFAULT_CONFIG_PATH))
                .map_err(|error| error.to_string())?
        }
        None => Config::default(),
    };
    if let Some(listen) = &cli.listen {
        config.listen = listen.clone();
    }
    if let Some(url) = &cli.database_url {
        config.database_url = url.clone();
    }
    if let Some(address) = &cli.metrics_listen {
        config.metrics_listen = Some(address.clone());
    }
    if let Ok(tokens) = std::env::var(TOKENS_VARIABLE) {
        config
            .auth_tokens
            .extend(txbroker::config::parse_token_lines(
                &tokens.replace(',', "\n"),
            ));
    }
    config.validate().map_err(|error| error.to_string())?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return run_admin(command);
    }
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("txbroker: {message}");
            return ExitCode::from(2);
        }
    };
    let log = logging::terminal(config.slog_level());
    let system = actix_rt::System::new();
    let outcome = system.block_on(async {
        let broker = Broker::start(config, log.clone()).await?;
        let signal = wait_for_signal().await;
        info!(log, "signal received, draining"; "signal" => signal);
        broker.shutdown().await;
        Ok::<(), txbroker::StartError>(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(start_error) => {
            error!(log, "cannot start"; "error" => %start_error);
            drop(log);
            eprintln!("txbroker: {start_error}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// `stats`, `top` and `exec`: talk to the broker at `--addr` like any client.
async fn run_admin_command(command: Command) -> Result<(), txbroker::client::ClientError> {
    match command {
        Command::Stats {
            addr,
            token,
            json,
            every,
            count,
        } => {
            let client = admin::connect(&addr, token.as_deref()).await?;
            match every {
                Some(seconds) => {
                    watch_stats(&client, Duration::from_secs_f64(seconds), count, json).await
                }
                None => {
                    let stats = client.stats().await?;
                    println!("{}", admin::render_stats(&stats, json));
                    Ok(())
                }
            }
        }
        Command::Top {
            addr,
            token,
            every,
            count,
        } => run_top(&addr, token.as_deref(), every, count).await,
        Command::Exec {
            addr,
            token,
            idempotency_key,
            sql,
            params,
        } => {
            let client = admin::connect(&addr, token.as_deref()).await?;
            let params = params.iter().map(|p| admin::parse_param(p)).collect();
            println!(
                "{}",
                admin::exec(&client, &sql, params, idempotency_key).await?
            );
            Ok(())
        }
    }
}

/// `top`: the screen every `every` seconds, until `count` screens or the broker goes away.
async fn run_top(
    addr: &str,
    token: Option<&str>,
    every: f64,
    count: Option<u64>,
) -> Result<(), txbroker::client::ClientError> {
    let client = admin::connect(addr, token).await?;
    // Redrawn in place on a terminal; one screen after another into a pipe or file.
    let clear = if std::io::stdout().is_terminal() {
        "\x1b[H\x1b[2J"
    } else {
        "\n"
    };
    let interval = Duration::from_secs_f64(every);
    every_interval(&client, interval, count, |before, now, seconds| {
        print!("{clear}{}", top::render_top(addr, before, now, seconds));
    })
    .await
}

/// `stats --every`: a line per interval, until `count` lines or the broker goes away.
async fn watch_stats(
    client: &txbroker::client::Client,
    interval: Duration,
    count: Option<u64>,
    json: bool,
) -> Result<(), txbroker::client::ClientError> {
    if !json {
        println!("{}", admin::rates_header());
    }
    every_interval(client, interval, count, |before, now, seconds| {
        println!("{}", admin::render_rates(before, now, seconds, json));
    })
    .await
}

/// Asks for `stats` every `interval` and shows each answer beside the one before, with the
/// seconds between them, `count` times or until the broker goes away. Each answer is asked
/// for `interval` after the one before came, so that an interval is never shorter than asked
/// (a fixed tick would make the first one short by however long the first answer took).
async fn every_interval(
    client: &txbroker::client::Client,
    interval: Duration,
    count: Option<u64>,
    mut show: impl FnMut(&Stats, &Stats, f64),
) -> Result<(), txbroker::client::ClientError> {
    let mut before = client.stats().await?;
    let mut before_at = Instant::now();
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(before_at + interval)).await;
        let now = client.stats().await?;
        let now_at = Instant::now();
        let seconds = now_at.duration_since(before_at).as_secs_f64();
        show(&before, &now, seconds);
        (before, before_at) = (now, now_at);
        printed += 1;
    }
    Ok(())
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

fn run_admin(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("txbroker: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome: Result<(), txbroker::client::ClientError> =
        runtime.block_on(run_admin_command(command));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("txbroker: {error}");
            ExitCode::FAILURE
        }
    }
}
