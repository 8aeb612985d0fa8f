//! Broker configuration: one plain struct, read from TOML once, validated once and then
//! passed down explicitly (behind an `Arc`) to every actor. There are no globals.
//!
//! Every key is optional; `config/txbroker.toml` documents each one with its unit and default.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::protocol::Isolation;

/// Why a configuration could not be used. Messages are one line, for the command line.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("bad config: {0}")]
    Invalid(String),
}

/// Most hot keys reported: each is a label value of four series in `/metrics`.
pub const MAX_HOT_KEYS: usize = 100;

/// Where the lock coordinator runs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CoordinatorThread {
    /// On the first session thread: grants and releases are same-thread messages.
    WithSessions,
    /// On a thread of its own.
    Own,
}

/// How this broker's grants are made to hold across brokers sharing its database.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Coordination {
    /// Keys are this broker's alone: right when it is the only broker on its database.
    Local,
    /// Each granted key is also taken as a MariaDB named lock (`GET_LOCK`) on the session's
    /// connection, in the same ascending order, so that brokers sharing one database order
    /// their transactions among themselves too (`docs/scaling.md`).
    Database,
}

/// A client token. Its `Debug` never shows the secret, so a config printed by mistake leaks
/// nothing.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Token {
    fn from(secret: &str) -> Token {
        Token::new(secret)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Tokens listed one per line; blank lines and lines starting with `#` are skipped.
pub fn parse_token_lines(text: &str) -> Vec<Token> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(Token::new)
        .collect()
}

/// Everything the broker can be told. Field names are the TOML keys.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the TCP listener binds, `host:port`.
    pub listen: String,
    /// Where the sessions' database connections go.
    pub database_url: String,
    /// Sessions allowed at once; the next client is answered `busy`.
    pub max_sessions: usize,
    /// Largest frame body accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// How long a request may wait for its keys, in milliseconds.
    pub lock_wait_timeout_ms: u64,
    /// How long an interactive transaction may sit with no request, in milliseconds.
    pub idle_tx_timeout_ms: u64,
    /// How long any transaction may stay open, in milliseconds; 0 means no limit.
    pub max_tx_duration_ms: u64,
    /// Retries of a whole `tx` after a deadlock or lock wait timeout, when the request names none.
    pub default_retries: u32,
    /// Isolation level of a transaction whose request names none.
    pub default_isolation: Isolation,
    /// Tokens a client may present in `hello`; empty means no authentication.
    pub auth_tokens: Vec<Token>,
    /// A file of further tokens, one per line (`#` comments allowed), read at start-up.
    pub auth_tokens_file: Option<String>,
    /// PEM certificate chain for client TLS; with `tls_key`, clients must speak TLS.
    pub tls_cert: Option<String>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<String>,
    /// How long a draining server lets open transactions finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Threads running session actors; 0 means one per CPU core.
    pub session_threads: usize,
    /// Where the lock coordinator runs: `with_sessions` or `own`.
    pub coordinator_thread: CoordinatorThread,
    /// Requests read from one client before its answers are written; bounds a session's memory.
    pub max_pipelined_requests: usize,
    /// How long a client may leave a partial frame without sending more, in milliseconds.
    pub client_read_timeout_ms: u64,
    /// Most keys (`locks` and `read_locks` together) one request may name.
    pub max_keys_per_request: usize,
    /// Most statements one `tx` may hold.
    pub max_statements_per_tx: usize,
    /// Longest SQL text of one statement, in bytes.
    pub max_sql_bytes: usize,
    /// `innodb_lock_wait_timeout` set on every database connection, in seconds; 0 keeps the server's.
    pub innodb_lock_wait_timeout_s: u64,
    /// Whether a `tx` of one INSERT, UPDATE, DELETE or REPLACE runs as one autocommit statement.
    pub single_write_autocommit: bool,
    /// Whether keys pass to the next waiter as soon as `COMMIT` is sent (protocol 1.1).
    pub handover_at_commit: bool,
    /// Most requests in one group (its leader included) run in one database transaction;
    /// 0 or 1 turns group execution off.
    pub max_group_size: usize,
    /// Address of the monitoring HTTP listener (`/metrics`, `/healthz`, `/readyz`),
    /// `host:port`; none when unset.
    pub metrics_listen: Option<String>,
    /// Whether transactions are timed: the latency histograms of `/metrics` and
    /// `stats.latency`. Off leaves only the counters.
    pub latency_metrics: bool,
    /// How many hot keys the coordinator reports (`stats.hot_keys`, `/metrics`); 0 turns
    /// hot-key tracking off. At most `MAX_HOT_KEYS`, so that `/metrics` has few series.
    pub hot_keys: usize,
    /// Table of idempotency records (the outcome of each transaction that carried a key).
    pub idempotency_table: String,
    /// Database holding `idempotency_table`; `None`: the database of `database_url`.
    pub idempotency_database: Option<String>,
    /// How long an idempotency record answers retries, in seconds.
    pub idempotency_ttl_s: u64,
    /// Largest recorded response, in bytes; a larger one is recorded without its rows.
    pub idempotency_max_response_bytes: usize,
    /// Expired records deleted per statement by the background purge (count).
    pub idempotency_purge_batch: u64,
    /// Pause between two rounds of the purge, in milliseconds.
    pub idempotency_purge_interval_ms: u64,
    /// Whether grants hold across brokers: `local` or `database` (named locks).
    pub coordination: Coordination,
    /// Log level: `error`, `warning`, `info`, `debug` or `trace`.
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7306".to_string(),
            database_url: "mysql://root@127.0.0.1:3306/test".to_string(),
            max_sessions: 256,
            max_frame_bytes: 16 * 1024 * 1024,
            lock_wait_timeout_ms: 5_000,
            idle_tx_timeout_ms: 30_000,
            max_tx_duration_ms: 0,
            default_retries: 3,
            default_isolation: Isolation::RepeatableRead,
            auth_tokens: Vec::new(),
            auth_tokens_file: None,
            tls_cert: None,
            tls_key: None,
            shutdown_grace_ms: 10_000,
            session_threads: 1,
            coordinator_thread: CoordinatorThread::WithSessions,
            coordination: Coordination::Local,
            max_pipelined_requests: 64,
            client_read_timeout_ms: 30_000,
            max_keys_per_request: 1024,
            max_statements_per_tx: 1000,
            max_sql_bytes: 1024 * 1024,
            innodb_lock_wait_timeout_s: 10,
            single_write_autocommit: true,
            handover_at_commit: true,
            max_group_size: 24,
            metrics_listen: None,
            latency_metrics: true,
            hot_keys: 10,
            idempotency_table: "txbroker_outcomes".to_string(),
            idempotency_database: None,
            idempotency_ttl_s: 86_400,
            idempotency_max_response_bytes: 64 * 1024,
            idempotency_purge_batch: 500,
            idempotency_purge_interval_ms: 1_000,
            log_level: "info".to_string(),
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut config = Config::from_toml(&text).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: shown,
                message,
            },
            other => other,
        })?;
        config.load_token_file()?;
        Ok(config)
    }

    /// Adds the tokens of `auth_tokens_file`, if one is named.
    pub fn load_token_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.auth_tokens_file.clone() else {
            return Ok(());
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let tokens = parse_token_lines(&text);
        if tokens.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "auth_tokens_file {path} holds no token"
            )));
        }
        self.auth_tokens.extend(tokens);
        Ok(())
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: "<text>".to_string(),
            message: error.message().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges and parseable addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_string()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() && !self.listen.contains(':') {
            return invalid("listen must be host:port");
        }
        if mysql_async::Opts::from_url(&self.database_url).is_err() {
            return invalid("database_url is not a mysql:// URL");
        }
        if let Some(name) = self.first_zero_count() {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        if self.max_frame_bytes < 64 || self.max_frame_bytes > u32::MAX as usize {
            return invalid("max_frame_bytes must be between 64 and 4294967295");
        }
        if self.hot_keys > MAX_HOT_KEYS {
            return invalid("hot_keys must be at most 100");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key go together");
        }
        if self.auth_tokens.iter().any(Token::is_empty) {
            return invalid("auth_tokens must not hold an empty token");
        }
        let is_identifier = |name: &str| {
            (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        };
        if !is_identifier(&self.idempotency_table)
            || !self
                .idempotency_database
                .as_deref()
                .is_none_or(is_identifier)
        {
            return invalid(
                "idempotency_table and idempotency_database must be 1 to 64 letters, digits, _ or $",
            );
        }
        if parse_log_level(&self.log_level).is_none() {
            return invalid("log_level must be error, warning, info, debug or trace");
        }
        Ok(())
    }

    /// The first of the counts and durations that must not be 0 and is.
    fn first_zero_count(&self) -> Option<&'static str> {
        let counts = [
            ("max_sessions", self.max_sessions as u64),
            ("lock_wait_timeout_ms", self.lock_wait_timeout_ms),
            ("idle_tx_timeout_ms", self.idle_tx_timeout_ms),
            ("client_read_timeout_ms", self.client_read_timeout_ms),
            ("max_pipelined_requests", self.max_pipelined_requests as u64),
            ("max_keys_per_request", self.max_keys_per_request as u64),
            ("max_statements_per_tx", self.max_statements_per_tx as u64),
            ("max_sql_bytes", self.max_sql_bytes as u64),
            ("idempotency_ttl_s", self.idempotency_ttl_s),
            ("idempotency_purge_batch", self.idempotency_purge_batch),
            (
                "idempotency_purge_interval_ms",
                self.idempotency_purge_interval_ms,
            ),
        ];
        counts
            .into_iter()
            .find(|(_, count)| *count == 0)
            .map(|(name, _)| name)
    }

    pub fn lock_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.lock_wait_timeout_ms)
    }

    pub fn idle_tx_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_tx_timeout_ms)
    }

    /// The longest a transaction may stay open, if limited.
    pub fn max_tx_duration(&self) -> Option<Duration> {
        (self.max_tx_duration_ms > 0).then(|| Duration::from_millis(self.max_tx_duration_ms))
    }

    pub fn client_read_timeout(&self) -> Duration {
        Duration::from_millis(self.client_read_timeout_ms)
    }

    pub fn idempotency_purge_interval(&self) -> Duration {
        Duration::from_millis(self.idempotency_purge_interval_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Threads for session actors, with 0 resolved to the number of cores.
    pub fn session_thread_count(&self) -> usize {
        match self.session_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The log level, already checked by `validate`.
    pub fn slog_level(&self) -> slog::Level {
        parse_log_level(&self.log_level).unwrap_or(slog::Level::Info)
    }
}

/// Accepts the usual spellings of a log level, case-insensitively.
fn parse_log_level(text: &str) -> Option<slog::Level> {
    match text.to_ascii_lowercase().as_str() {
        "critical" => Some(slog::Level::Critical),
        "error" => Some(slog::Level::Error),
        "warn" | "warning" => Some(slog::Level::Warning),
        "info" => Some(slog::Level::Info),
        "debug" => Some(slog::Level::Debug),
        "trace" => Some(slog::Level::Trace),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_contract_defaults() {
        let config = Config::from_toml("").expect("empty config is valid");
        assert_eq!(config.listen, "127.0.0.1:7306");
        assert_eq!(config.database_url, "mysql://root@127.0.0.1:3306/test");
        assert_eq!(config.max_sessions, 256);
        assert_eq!(config.max_frame_bytes, 16_777_216);
        assert_eq!(config.lock_wait_timeout_ms, 5000);
        assert_eq!(config.idle_tx_timeout_ms, 30000);
        assert_eq!(config.default_retries, 3);
        assert_eq!(config.default_isolation, Isolation::RepeatableRead);
        assert!(config.auth_tokens.is_empty());
        assert_eq!(config.shutdown_grace_ms, 10000);
        assert!(config.single_write_autocommit);
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/txbroker.toml");
        Config::from_file(&path).expect("config/txbroker.toml parses");
    }

    #[test]
    fn tokens_come_from_the_file_too_and_never_show_in_debug() {
        let path = std::env::temp_dir().join(format!("txbroker-tokens-{}", std::process::id()));
        std::fs::write(&path, "# ops team\nalpha\n\n  beta  \n").expect("write tokens");
        let mut config = Config::from_toml(&format!(
            "auth_tokens = [\"inline\"]\nauth_tokens_file = {:?}",
            path.display().to_string()
        ))
        .expect("valid");
        config.load_token_file().expect("tokens load");
        assert_eq!(
            config.auth_tokens,
            vec![
                Token::new("inline"),
                Token::new("alpha"),
                Token::new("beta")
            ]
        );
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("alpha") && !shown.contains("inline"),
            "{shown}"
        );
        std::fs::write(&path, "# nothing\n").expect("write");
        assert!(config.load_token_file().is_err());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        for text in [
            "lisen = \"x\"",
            "max_sessions = -1",
            "max_sessions = 0",
            "default_isolation = \"snapshot\"",
            "database_url = \"postgres://x\"",
            "log_level = \"loud\"",
            "max_frame_bytes = [",
            "idempotency_table = \"x; DROP\"",
            "idempotency_ttl_s = 0",
        ] {
            let error = Config::from_toml(text).expect_err(text).to_string();
            assert!(!error.contains('\n'), "{text}: {error}");
        }
    }
}
