//! Monitoring over HTTP, for Prometheus, load balancers and orchestrators:
//!
//! - `GET /metrics`: the registry of `crate::metrics` in the OpenMetrics text format, which
//!   Prometheus scrapes natively; the lock coordinator's figures are asked for at each scrape.
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness).
//! - `GET /readyz`: 200 when the database answers and the broker is not draining, 503 with
//!   the reason otherwise (readiness: send no new clients here).
//!
//! A `Monitor` is a cheap handle holding what the routes need. The broker serves it on
//! `metrics_listen` with actix-web inside its own actix `System`; an application embedding
//! the broker mounts the same routes in its own `App` with `Monitor::configure`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::dev::ServerHandle;
use actix_web::http::header::{self, ContentType};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use tokio::sync::watch;

use crate::coordinator::{Coordinator, GetStats};
use crate::db::Database;
use crate::metrics::{LockView, Metrics};
use crate::txn::ServerPhase;

/// How long a scrape waits for the lock coordinator; one that does not answer in this time
/// is stuck, and the scrape fails rather than show stale figures.
const COORDINATOR_PATIENCE: Duration = Duration::from_secs(2);

/// How long `/readyz` waits for the database to accept a connection and answer a ping.
const DATABASE_PATIENCE: Duration = Duration::from_secs(2);

/// The content type of the OpenMetrics text format, which prometheus-client writes and
/// Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the classic Prometheus text format, for every other reader (`curl`,
/// `promtool check metrics`, older scrapers).
const CLASSIC_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the monitoring routes read.
#[derive(Clone)]
pub struct Monitor {
    metrics: Arc<Metrics>,
    coordinator: Addr<Coordinator>,
    database: Database,
    phase: watch::Receiver<ServerPhase>,
}

impl Monitor {
    pub fn new(
        metrics: Arc<Metrics>,
        coordinator: Addr<Coordinator>,
        database: Database,
        phase: watch::Receiver<ServerPhase>,
    ) -> Monitor {
        Monitor {
            metrics,
            coordinator,
            database,
            phase,
        }
    }

    /// Adds `/metrics`, `/healthz` and `/readyz` to an actix-web `App`:
    ///
    /// ```no_run
    /// # fn demo(broker: &txbroker::Broker) {
    /// let monitor = broker.monitor();
    /// let app = actix_web::App::new().configure(|routes| monitor.configure(routes));
    /// # }
    /// ```
    pub fn configure(&self, routes: &mut web::ServiceConfig) {
        routes
            .app_data(web::Data::new(self.clone()))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
    }

    /// The registry as Prometheus reads it, the coordinator's figures asked for first.
    pub async fn encode_metrics(&self) -> Result<String, MonitorError> {
        let stats = tokio::time::timeout(COORDINATOR_PATIENCE, self.coordinator.send(GetStats))
            .await
            .map_err(|_| MonitorError::CoordinatorSilent)?
            .map_err(|_| MonitorError::CoordinatorGone)?;
        self.metrics.record_lock_view(LockView {
            locks_held: stats.table.locks_held,
            lock_waiters: stats.table.lock_waiters,
            lock_waits: stats.table.lock_waits,
            lock_timeouts: stats.lock_timeouts,
            hot_keys: stats.hot_keys,
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, self.metrics.registry())
            .map_err(|_| MonitorError::Encoding)?;
        Ok(text)
    }

    /// Why the broker should get no new clients now, if it should not.
    pub async fn unready_because(&self) -> Option<String> {
        if *self.phase.borrow() == ServerPhase::Draining {
            return Some("draining".to_string());
        }
        match self.database.answers(DATABASE_PATIENCE).await {
            Ok(()) => None,
            Err(reason) => Some(format!("database unavailable: {reason}")),
        }
    }

    /// Serves the routes on `address` with one worker thread; the broker stops it at shutdown.
    pub fn serve(&self, address: &str) -> Result<(ServerHandle, SocketAddr), std::io::Error> {
        let monitor = self.clone();
        let server =
            HttpServer::new(move || App::new().configure(|routes| monitor.configure(routes)))
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(address)?;
        let bound = server.addrs().first().copied().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "bound no address")
        })?;
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok((handle, bound))
    }
}

/// Why `/metrics` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("the lock coordinator did not answer within {} s", COORDINATOR_PATIENCE.as_secs())]
    CoordinatorSilent,
    #[error("the lock coordinator is gone")]
    CoordinatorGone,
    #[error("the metrics could not be encoded")]
    Encoding,
}

/// OpenMetrics to a scraper that accepts it, the classic text format to anyone else: the two
/// differ only in how a counter's family is named and in the `# UNIT` and `# EOF` lines.
async fn metrics(request: HttpRequest, monitor: web::Data<Monitor>) -> HttpResponse {
    let wants_openmetrics = request
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    match monitor.encode_metrics().await {
        Ok(text) if wants_openmetrics => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, OPENMETRICS))
            .body(text),
        Ok(text) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, CLASSIC_TEXT))
            .body(classic_text(&text)),
        Err(error) => HttpResponse::ServiceUnavailable()
            .insert_header(ContentType::plaintext())
            .body(format!("{error}\n")),
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text: a counter's `# HELP`
/// and `# TYPE` name its samples' `_total` name, and `# UNIT` and `# EOF` go. prometheus-client
/// writes only OpenMetrics (prometheus/client_rust#51).
pub fn classic_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut classic = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match described {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                classic.push_str(&format!("{tag}{name}{suffix} {tail}"));
            }
            None => classic.push_str(line),
        }
        classic.push('\n');
    }
    classic
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::plaintext())
        .body("ok\n")
}

async fn readyz(monitor: web::Data<Monitor>) -> HttpResponse {
    match monitor.unready_because().await {
        None => HttpResponse::Ok()
            .insert_header(ContentType::plaintext())
            .body("ready\n"),
        Some(reason) => HttpResponse::ServiceUnavailable()
            .insert_header(ContentType::plaintext())
            .body(format!("{reason}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counter_families_by_their_samples() {
        let openmetrics = "\
# HELP txbroker_deadlocks Deadlocks.
# TYPE txbroker_deadlocks counter
txbroker_deadlocks_total 3
# HELP txbroker_sessions Sessions.
# TYPE txbroker_sessions gauge
txbroker_sessions 2
# HELP txbroker_lock_wait_seconds Waits.
# TYPE txbroker_lock_wait_seconds histogram
# UNIT txbroker_lock_wait_seconds seconds
txbroker_lock_wait_seconds_sum 0.5
txbroker_lock_wait_seconds_count 1
txbroker_lock_wait_seconds_bucket{le=\"+Inf\"} 1
# EOF
";
        assert_eq!(
            classic_text(openmetrics),
            "\
# HELP txbroker_deadlocks_total Deadlocks.
# TYPE txbroker_deadlocks_total counter
txbroker_deadlocks_total 3
# HELP txbroker_sessions Sessions.
# TYPE txbroker_sessions gauge
txbroker_sessions 2
# HELP txbroker_lock_wait_seconds Waits.
# TYPE txbroker_lock_wait_seconds histogram
txbroker_lock_wait_seconds_sum 0.5
txbroker_lock_wait_seconds_count 1
txbroker_lock_wait_seconds_bucket{le=\"+Inf\"} 1
"
        );
    }
}
