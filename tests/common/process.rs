//! Real processes: the `txbroker` binary on a free port (`BrokerProcess`), its config files,
//! signals sent with the `kill` command, waiting for a process to exit with a deadline, and
//! the lines of a child's pipe collected as they come. A process a guard owns is killed and
//! reaped when the guard drops, including when a test fails.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use txbroker::client::Client;

/// How long the broker may take to log its address after it is spawned.
const START_LIMIT: Duration = Duration::from_secs(30);

pub type LogLines = Arc<Mutex<Vec<String>>>;

/// Collects the lines of a child's pipe in a thread of its own (so the pipe never fills and
/// blocks the child), optionally sending each line on a channel too.
pub fn collect_lines(
    pipe: impl Read + Send + 'static,
    into: LogLines,
    sender: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(sender) = &sender {
                let _ = sender.send(line.clone());
            }
            if let Ok(mut lines) = into.lock() {
                lines.push(line);
            }
        }
    });
}

/// The lines collected so far, one text.
pub fn joined(lines: &LogLines) -> String {
    lines.lock().map(|l| l.join("\n")).unwrap_or_default()
}

/// A command running the `txbroker` binary. Cargo names the binary to integration tests
/// and benchmarks only, hence `option_env!`: another binary may include this module (for
/// `tests/private_mariadb`, which uses it) and fails only if it calls this.
pub fn broker_command() -> Command {
    let Some(binary) = option_env!("CARGO_BIN_EXE_txbroker") else {
        panic!("the txbroker binary is known to integration tests and benchmarks only");
    };
    Command::new(binary)
}

/// Writes a config file for the broker into the temporary directory, named after `name` and
/// this test process, and returns its path.
pub fn write_config(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("txbroker-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Sends a signal by name (`TERM`, `INT`, `KILL`, ...) to a process, through `kill`.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Polls `child` until it exits, for at most `limit`; None if it is still running then (the
/// caller decides whether to kill it and how to fail).
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `txbroker` binary, started on 127.0.0.1:0 with a config file; its address is read from
/// its log. Killed (SIGKILL) and reaped on drop if it is still running.
pub struct BrokerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Everything the broker has logged (its stderr) so far.
    pub log: LogLines,
    config: PathBuf,
}

impl BrokerProcess {
    /// Starts the broker with a config file holding `config` (TOML).
    pub fn start(name: &str, config: &str) -> BrokerProcess {
        BrokerProcess::start_with_env(name, config, &[])
    }

    /// Like `start`, with environment variables for the broker.
    pub fn start_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> BrokerProcess {
        BrokerProcess::spawn(name, config, env, "127.0.0.1:0")
    }

    /// Like `start`, listening on `address` (a restart where a proxy expects the broker).
    pub fn start_on(name: &str, config: &str, address: SocketAddr) -> BrokerProcess {
        BrokerProcess::spawn(name, config, &[], &address.to_string())
    }

    fn spawn(name: &str, config: &str, env: &[(&str, &str)], listen: &str) -> BrokerProcess {
        let path = write_config(name, config);
        let mut child = broker_command()
            .envs(env.iter().copied())
            .args([
                "--config",
                path.to_str().expect("utf-8 path"),
                "--listen",
                listen,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn txbroker");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = LogLines::default();
        let (sender, lines) = mpsc::channel();
        collect_lines(stderr, log.clone(), Some(sender));
        // The guard exists before anything can fail, so the process never outlives the test.
        let mut broker = BrokerProcess {
            child,
            addr: "0.0.0.0:0".parse().expect("placeholder"),
            log,
            config: path,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(rest) = line.split("address: ").nth(1) {
                        let address = rest.split([',', ' ']).next().unwrap_or_default();
                        broker.addr = address.parse().expect("a socket address");
                        return broker;
                    }
                }
                Err(_) => panic!(
                    "txbroker did not log its address; its log:\n{}",
                    joined(&broker.log)
                ),
            }
        }
    }

    /// A client connected to the broker, admitted and served (it answered a ping).
    pub async fn client(&self) -> Client {
        let client = Client::connect(self.addr).await.expect("connect");
        client.ping().await.expect("admitted and served");
        client
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's resident set size in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Sends a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (blocking, polling the process) until the broker exits; panics after `limit`,
    /// and the guard then kills it.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_for_exit(&mut self.child, limit).unwrap_or_else(|| {
            panic!(
                "txbroker did not exit within {limit:?}; its log:\n{}",
                self.log_text()
            )
        })
    }

    pub fn log_text(&self) -> String {
        joined(&self.log)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).expect("VmRSS in /proc/PID/status")
}

/// VmRSS of a process in KiB; None once it is gone.
pub fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}
