//! Percentiles of transaction latency over the last few seconds, for `stats.latency` and
//! `txbroker top`. Prometheus gets cumulative histograms and computes its own percentiles
//! from their rates; a client asking `stats` has no history, so the broker keeps one: a ring
//! of one-second HdrHistograms, merged when asked. Memory is fixed (one histogram per slot)
//! and recording is one bucket increment. Time is passed in, so tests control it.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::protocol::LatencySummary;

/// The longest latency recorded exactly; longer ones count as this. An hour is far past any
/// transaction the broker lets live.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Two significant figures: a percentile is off by at most 1 %, and a slot takes a few
/// kilobytes.
const SIGNIFICANT_FIGURES: u8 = 2;

/// Latencies of the last `slots` seconds.
#[derive(Debug)]
pub struct LatencyWindow {
    /// Second `s` since `origin` is kept in slot `s % slots.len()`.
    slots: Vec<Slot>,
    origin: Instant,
}

#[derive(Debug)]
struct Slot {
    /// Seconds since `origin` this slot holds.
    second: u64,
    histogram: Histogram<u64>,
}

impl LatencyWindow {
    /// A window of `seconds` one-second slots (at least one), starting empty at `now`.
    pub fn new(seconds: u64, now: Instant) -> LatencyWindow {
        let slots = (0..seconds.max(1))
            .map(|_| Slot {
                second: u64::MAX,
                histogram: Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_FIGURES)
                    .expect("constant bounds that hdrhistogram accepts"),
            })
            .collect();
        LatencyWindow { slots, origin: now }
    }

    pub fn record(&mut self, latency: Duration, now: Instant) {
        let second = self.second_of(now);
        let ring = self.slots.len() as u64;
        let slot = &mut self.slots[(second % ring) as usize];
        if slot.second != second {
            slot.histogram.reset();
            slot.second = second;
        }
        let micros = (latency.as_micros() as u64).clamp(1, HIGHEST_MICROS);
        slot.histogram.saturating_record(micros);
    }

    /// The percentiles over the slots still inside the window at `now`; `None` when nothing
    /// was recorded in it.
    pub fn summary(&self, now: Instant) -> Option<LatencySummary> {
        let newest = self.second_of(now);
        let ring = self.slots.len() as u64;
        let oldest = newest.saturating_sub(ring - 1);
        let mut merged: Option<Histogram<u64>> = None;
        for slot in &self.slots {
            if slot.second < oldest || slot.second > newest || slot.histogram.is_empty() {
                continue;
            }
            match &mut merged {
                Some(merged) => merged
                    .add(&slot.histogram)
                    .expect("slots share their bounds, so adding cannot overflow them"),
                None => merged = Some(slot.histogram.clone()),
            }
        }
        let merged = merged?;
        let millis = |micros: u64| micros as f64 / 1000.0;
        Some(LatencySummary {
            window_seconds: ring,
            count: merged.len(),
            p50_ms: millis(merged.value_at_quantile(0.50)),
            p90_ms: millis(merged.value_at_quantile(0.90)),
            p99_ms: millis(merged.value_at_quantile(0.99)),
            max_ms: millis(merged.max()),
        })
    }

    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_empty_window_has_no_summary() {
        let start = Instant::now();
        assert_eq!(LatencyWindow::new(10, start).summary(start), None);
    }

    #[test]
    fn percentiles_come_from_what_was_recorded() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(10, start);
        for latency in 1..=100 {
            window.record(ms(latency), start + ms(latency * 10));
        }
        let summary = window.summary(start + ms(1500)).expect("recorded");
        assert_eq!(summary.count, 100);
        assert_eq!(summary.window_seconds, 10);
        let close = |value: f64, expected: f64| (value - expected).abs() <= expected * 0.01;
        assert!(close(summary.p50_ms, 50.0), "{summary:?}");
        assert!(close(summary.p90_ms, 90.0), "{summary:?}");
        assert!(close(summary.p99_ms, 99.0), "{summary:?}");
        assert!(close(summary.max_ms, 100.0), "{summary:?}");
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(3, start);
        window.record(ms(500), start);
        window.record(ms(5), start + Duration::from_secs(2));
        let both = window.summary(start + Duration::from_secs(2)).expect("two");
        assert_eq!(both.count, 2);
        let later = window.summary(start + Duration::from_secs(3)).expect("one");
        assert_eq!(later.count, 1);
        assert!(later.max_ms < 10.0, "{later:?}");
        assert_eq!(window.summary(start + Duration::from_secs(5)), None);
    }

    #[test]
    fn a_slot_reused_after_a_lap_forgets_its_old_second() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(2, start);
        window.record(ms(900), start);
        // Second 2 lands in the slot of second 0.
        window.record(ms(1), start + Duration::from_secs(2));
        let summary = window.summary(start + Duration::from_secs(2)).expect("one");
        assert_eq!(summary.count, 1);
        assert!(summary.max_ms < 2.0, "{summary:?}");
    }

    #[test]
    fn latencies_beyond_the_bounds_are_clamped_not_lost() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(1, start);
        window.record(Duration::ZERO, start);
        window.record(Duration::from_secs(10 * 3600), start);
        let summary = window.summary(start).expect("two");
        assert_eq!(summary.count, 2);
        assert!(summary.max_ms >= 3_500_000.0, "{summary:?}");
    }
}
