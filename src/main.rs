//! The `txbroker` command: reads the configuration, starts the broker in an actix `System`,
//! and drains it on SIGINT or SIGTERM. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use slog::{error, info};

use txbroker::{logging, Broker, Config};

/// Where the configuration is read from when `--config` is not given.
const DEFAULT_CONFIG_PATH: &str = "config/txbroker.toml";

#[derive(Debug, Parser)]
#[command(
    name = "txbroker",
    version,
    about = "Transaction broker for MySQL and MariaDB"
)]
struct Cli {
    /// TOML configuration file [default: config/txbroker.toml when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the file's `listen`
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Database URL, overriding the file's `database_url`
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
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
    config.validate().map_err(|error| error.to_string())?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
