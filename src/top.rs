//! `txbroker top`: a live view of a running broker, redrawn like `top`. The broker is asked
//! for `stats` every interval over the ordinary protocol; this module only turns two
//! successive answers into a screen (`render_top`, pure, tested on recorded stats), so that
//! what an operator sees is what a test checks.

use std::fmt::Write as _;

use crate::protocol::Stats;

/// The widest hot key shown; longer ones end in `…`.
const KEY_COLUMN: usize = 40;

/// The screen for `now`, taken `seconds` after `before`: counts per second, gauges as they
/// are, latency percentiles of the recent window, and the hot keys with their queues.
pub fn render_top(address: &str, before: &Stats, now: &Stats, seconds: f64) -> String {
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds.max(1e-9);
    let mut screen = String::new();
    let _ = writeln!(screen, "txbroker top - {address} - every {seconds:.1} s");
    let _ = writeln!(
        screen,
        "sessions {}   keys held {}   waiting for keys {}   reads waiting {}",
        now.sessions, now.locks_held, now.lock_waiters, now.reads_waiting
    );
    let _ = writeln!(
        screen,
        "committed/s {:.1}   rolled back/s {:.1}   retries/s {:.1}   deadlocks/s {:.1}",
        rate(now.transactions_committed, before.transactions_committed),
        rate(
            now.transactions_rolled_back,
            before.transactions_rolled_back
        ),
        rate(now.retries, before.retries),
        rate(now.deadlocks, before.deadlocks),
    );
    let _ = writeln!(
        screen,
        "lock waits/s {:.1}   lock timeouts/s {:.1}   handovers/s {:.1}   grouped/s {:.1}",
        rate(now.lock_waits, before.lock_waits),
        rate(now.lock_timeouts, before.lock_timeouts),
        rate(now.handovers, before.handovers),
        rate(now.transactions_grouped, before.transactions_grouped),
    );
    let _ = match &now.latency {
        Some(latency) => writeln!(
            screen,
            "latency, last {} s, {} tx: p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            latency.window_seconds,
            latency.count,
            latency.p50_ms,
            latency.p90_ms,
            latency.p99_ms,
            latency.max_ms
        ),
        None => writeln!(screen, "latency: no transaction in the recent window"),
    };
    screen.push('\n');
    render_hot_keys(now, &mut screen);
    screen
}

fn render_hot_keys(now: &Stats, screen: &mut String) {
    if now.hot_keys.is_empty() {
        screen.push_str("no hot keys: nothing queued for a key lately\n");
        return;
    }
    let _ = writeln!(
        screen,
        "{:<KEY_COLUMN$} {:>10} {:>8} {:>8} {:>7}",
        "HOT KEY", "WAIT s", "WAITS", "GRANTS", "QUEUED"
    );
    for key in &now.hot_keys {
        let _ = writeln!(
            screen,
            "{:<KEY_COLUMN$} {:>10.3} {:>8} {:>8} {:>7}",
            printable_key(&key.key),
            key.wait_seconds,
            key.waits,
            key.grants,
            key.waiting
        );
    }
}

/// A key as it may be printed on a terminal: clients choose keys, so control characters
/// (which could move the cursor or retitle the window) are shown as `?`, and a long key is
/// cut to the column.
fn printable_key(key: &str) -> String {
    let shown: String = key
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if shown.chars().count() <= KEY_COLUMN {
        return shown;
    }
    let mut cut: String = shown.chars().take(KEY_COLUMN - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HotKey, LatencySummary};

    fn recorded() -> (Stats, Stats) {
        let before = Stats {
            sessions: 30,
            transactions_committed: 1_000,
            lock_waits: 100,
            ..Stats::default()
        };
        let now = Stats {
            sessions: 32,
            transactions_committed: 3_000,
            lock_waits: 500,
            locks_held: 4,
            lock_waiters: 28,
            latency: Some(LatencySummary {
                window_seconds: 10,
                count: 20_000,
                p50_ms: 3.5,
                p90_ms: 7.25,
                p99_ms: 12.0,
                max_ms: 40.0,
            }),
            hot_keys: vec![
                HotKey {
                    key: "accounts:1".into(),
                    wait_seconds: 12.5,
                    waits: 400,
                    grants: 410,
                    waiting: 20,
                },
                HotKey {
                    key: format!("evil\u{1b}]0;owned\u{7}{}", "x".repeat(60)),
                    wait_seconds: 0.25,
                    waits: 3,
                    grants: 3,
                    waiting: 0,
                },
            ],
            ..Stats::default()
        };
        (before, now)
    }

    #[test]
    fn the_screen_shows_rates_gauges_latency_and_hot_keys() {
        let (before, now) = recorded();
        let screen = render_top("127.0.0.1:7306", &before, &now, 2.0);
        let lines: Vec<&str> = screen.lines().collect();
        assert_eq!(lines[0], "txbroker top - 127.0.0.1:7306 - every 2.0 s");
        assert_eq!(
            lines[1],
            "sessions 32   keys held 4   waiting for keys 28   reads waiting 0"
        );
        assert!(
            lines[2].starts_with("committed/s 1000.0   "),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("lock waits/s 200.0   "),
            "{}",
            lines[3]
        );
        assert_eq!(
            lines[4],
            "latency, last 10 s, 20000 tx: p50 3.50 ms   p90 7.25 ms   p99 12.00 ms   max 40.00 ms"
        );
        assert!(lines[6].starts_with("HOT KEY"), "{}", lines[6]);
        let hot: Vec<&str> = lines[7].split_whitespace().collect();
        assert_eq!(hot, ["accounts:1", "12.500", "400", "410", "20"]);
    }

    #[test]
    fn keys_cannot_drive_the_terminal_and_long_ones_are_cut() {
        let (before, now) = recorded();
        let screen = render_top("b", &before, &now, 1.0);
        assert!(
            !screen.chars().any(|c| c.is_control() && c != '\n'),
            "{screen:?}"
        );
        let evil = screen.lines().nth(8).expect("second hot key");
        assert!(evil.starts_with("evil?]0;owned?xxx"), "{evil}");
        assert_eq!(
            evil.find('…'),
            Some(evil.find(' ').expect("columns") - '…'.len_utf8())
        );
    }

    #[test]
    fn an_idle_broker_says_so() {
        let stats = Stats::default();
        let screen = render_top("b", &stats, &stats, 1.0);
        assert!(screen.contains("latency: no transaction in the recent window"));
        assert!(screen.contains("no hot keys"));
    }
}
