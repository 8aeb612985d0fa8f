//! Shared helpers for the integration tests: a real broker on port 0 in its own actix
//! system, a private database per test on the real MariaDB, and raw frame I/O for tests that
//! must send bytes no well-behaved client would.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use txbroker::client::Client;
use txbroker::protocol::{Response, Stats};
use txbroker::{logging, Broker, Config};

/// The server the tests use; `DATABASE_URL` overrides it.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A database that belongs to one test: dropped and created anew when the test starts.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create(label: &str) -> TestDb {
        let name = format!("txb_{label}");
        let base = base_url();
        let mut admin = mysql_async::Conn::from_url(&base)
            .await
            .expect("connect to MariaDB");
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await
            .expect("drop test database");
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create test database");
        admin.disconnect().await.ok();
        let url = match base.rfind('/') {
            Some(slash) if slash > "mysql://".len() => format!("{}/{name}", &base[..slash]),
            _ => format!("{base}/{name}"),
        };
        TestDb { name, url }
    }

    pub async fn conn(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// Runs statements on a fresh direct connection.
    pub async fn run(&self, statements: &[&str]) {
        run_and_disconnect(self.conn().await, statements).await;
    }

    /// One integer from a query, read directly from the database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        scalar_and_disconnect(self.conn().await, sql).await
    }

    /// A broker configuration pointing at this database, on a free port.
    pub fn config(&self) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            database_url: self.url.clone(),
            session_threads: 1,
            ..Config::default()
        }
    }
}

/// Runs `statements` on `conn`, then closes it.
pub async fn run_and_disconnect(mut conn: mysql_async::Conn, statements: &[&str]) {
    for sql in statements {
        conn.query_drop(*sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.disconnect().await.ok();
}

/// The integer `sql` returns on `conn`, which is then closed.
pub async fn scalar_and_disconnect(mut conn: mysql_async::Conn, sql: &str) -> i64 {
    let value: Option<i64> = conn.query_first(sql).await.expect(sql);
    conn.disconnect().await.ok();
    value.expect("query returns a row")
}

/// A broker running in a thread of its own, stopped (drained) when dropped.
pub struct TestBroker {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestBroker {
    pub fn start(config: Config) -> TestBroker {
        let (addr_sender, addr_receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let log = match std::env::var("TXBROKER_TEST_LOG") {
                    Ok(level) => logging::terminal(level.parse().unwrap_or(slog::Level::Debug)),
                    Err(_) => logging::discard(),
                };
                let broker = Broker::start(config, log).await.expect("broker starts");
                addr_sender
                    .send(broker.local_addr().expect("the test broker listens"))
                    .expect("test waits for the address");
                let _ = stopped.await;
                broker.shutdown().await;
            });
        });
        let addr = addr_receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("broker reports its address");
        TestBroker {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr)
            .await
            .expect("connect to the broker")
    }

    /// Starts the drain and returns at once; the broker thread finishes on its own.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Drains and waits until the broker has stopped.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.begin_shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Polls `probe` until it returns true, failing the test after `limit`. For conditions that
/// are only observable by asking (a waiter queued in the coordinator, a row lock in InnoDB).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the broker's stats satisfy `condition`.
pub async fn stats_until(client: &Client, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = client.stats().await.expect("stats");
        if condition(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw TCP connection speaking frames byte by byte.
pub struct RawConn {
    pub stream: TcpStream,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends `body` as one frame.
    pub async fn send_frame(&mut self, body: &[u8]) {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        self.send_bytes(&bytes).await;
    }

    /// Sends a MessagePack map given as rmpv entries.
    pub async fn send_value(&mut self, value: &rmpv::Value) {
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, value).expect("encode");
        self.send_frame(&body).await;
    }

    /// Reads one frame and decodes it as a response; None at end of stream.
    pub async fn read_response(&mut self) -> Option<Response> {
        let body = self.read_frame().await?;
        Some(Response::decode(&body).expect("server sends valid responses"))
    }

    pub async fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut length = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_exact(&mut length))
            .await
            .expect("server answers in time")
            .ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(body)
    }

    /// True when the server closes the connection within the limit; whatever it still sends
    /// before closing (a TLS alert, say) is read and dropped.
    pub async fn is_closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_to_end(&mut rest))
            .await
            .is_ok()
    }
}

/// Builds a MessagePack map from string keys.
pub fn map(entries: Vec<(&str, rmpv::Value)>) -> rmpv::Value {
    rmpv::Value::Map(
        entries
            .into_iter()
            .map(|(key, value)| (rmpv::Value::from(key), value))
            .collect(),
    )
}
