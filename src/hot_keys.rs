//! Hot keys: the keys requests queued for longest in the recent past, kept by the lock
//! coordinator (`crate::coordinator`), which sees every wait, for `stats.hot_keys`,
//! `/metrics` and `txbroker top`. Pure: time is passed in.
//!
//! Memory is bounded whatever the workload: the figures live in two generations of
//! `GENERATION` each (the current one and the one before), each a map of at most `capacity`
//! keys. When a map is full, a key seen for the first time evicts the one with the least
//! wait (what the evicted key had is forgotten), so a key that keeps being waited for stays
//! while a stream of keys waited for once passes through. What is reported is the sum of both
//! generations: the last 5 to 10 seconds.
//!
//! Only waits cost anything, one map update each, when the wait ends (waits in progress are
//! added when the summary is read); a request granted at once touches the maps only when they
//! hold something, and then with one lookup per key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::locks::KeyName;

/// How long one generation lasts; the window reported is one to two of them.
pub const GENERATION: Duration = Duration::from_secs(5);

/// Keys kept per generation for each key reported: room for keys on their way up.
const KEPT_PER_REPORTED: usize = 8;

/// One key's figures over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyHeat {
    pub key: KeyName,
    /// Time requests spent queued for it, summed; waits still in progress count so far.
    pub wait: Duration,
    /// Requests that queued for it, those still queued included.
    pub waits: u64,
    /// Requests granted it while it was hot (after queueing, or at once while it was kept).
    pub grants: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Figures {
    wait: Duration,
    waits: u64,
    grants: u64,
}

#[derive(Debug)]
struct Generation {
    started: Instant,
    keys: HashMap<KeyName, Figures>,
}

impl Generation {
    fn new(started: Instant) -> Generation {
        Generation {
            started,
            keys: HashMap::new(),
        }
    }

    /// The figures of `key`, making room for it by evicting the least waited-for key when
    /// the map is full. A key already kept costs one lookup and no copy.
    fn figures_of(&mut self, key: &KeyName, capacity: usize) -> &mut Figures {
        if !self.keys.contains_key(key) {
            if self.keys.len() >= capacity {
                let coldest = self
                    .keys
                    .iter()
                    .min_by_key(|(_, figures)| figures.wait)
                    .map(|(key, _)| key.clone());
                if let Some(coldest) = coldest {
                    self.keys.remove(&coldest);
                }
            }
            self.keys.insert(key.clone(), Figures::default());
        }
        self.keys
            .get_mut(key)
            .expect("the key is kept: it was there or was just inserted")
    }
}

/// The hot-key summary of one coordinator.
#[derive(Debug)]
pub struct HotKeys {
    /// Keys reported.
    top: usize,
    /// Keys kept per generation.
    capacity: usize,
    current: Generation,
    previous: Generation,
}

impl HotKeys {
    /// A summary reporting the `top` hottest keys (at least one), empty at `now`.
    pub fn new(top: usize, now: Instant) -> HotKeys {
        let top = top.max(1);
        HotKeys {
            top,
            capacity: top * KEPT_PER_REPORTED,
            current: Generation::new(now),
            previous: Generation::new(now),
        }
    }

    /// A request that queued for `key` stopped waiting after `waited`, `granted` or not.
    pub fn waited(&mut self, key: &KeyName, waited: Duration, granted: bool, now: Instant) {
        self.rotate(now);
        let figures = self.current.figures_of(key, self.capacity);
        figures.waits += 1;
        figures.wait += waited;
        figures.grants += u64::from(granted);
    }

    /// Whether `key` is kept now: a grant of it at once is worth counting.
    pub fn keeps(&self, key: &str) -> Option<&KeyName> {
        if self.current.keys.is_empty() {
            return None;
        }
        self.current.keys.get_key_value(key).map(|(key, _)| key)
    }

    /// A request was granted `key` at once; counted only for a key kept (`keeps`).
    pub fn granted(&mut self, key: &KeyName, now: Instant) {
        self.rotate(now);
        if let Some(figures) = self.current.keys.get_mut(key) {
            figures.grants += 1;
        }
    }

    /// The hottest keys over the window at `now`, most waited-for first, counting the
    /// `ongoing` waits (key, waited so far) too.
    pub fn hottest<'a>(
        &mut self,
        now: Instant,
        ongoing: impl Iterator<Item = (&'a KeyName, Duration)>,
    ) -> Vec<KeyHeat> {
        self.rotate(now);
        let mut merged: HashMap<&KeyName, Figures> = HashMap::new();
        for (key, figures) in self.previous.keys.iter().chain(&self.current.keys) {
            let sum = merged.entry(key).or_default();
            sum.wait += figures.wait;
            sum.waits += figures.waits;
            sum.grants += figures.grants;
        }
        for (key, waited) in ongoing {
            let sum = merged.entry(key).or_default();
            sum.wait += waited;
            sum.waits += 1;
        }
        let mut heats: Vec<KeyHeat> = merged
            .into_iter()
            .map(|(key, figures)| KeyHeat {
                key: key.clone(),
                wait: figures.wait,
                waits: figures.waits,
                grants: figures.grants,
            })
            .collect();
        heats.sort_by(|a, b| b.wait.cmp(&a.wait).then_with(|| a.key.cmp(&b.key)));
        heats.truncate(self.top);
        heats
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.current.started);
        if age < GENERATION {
            return;
        }
        let next = Generation::new(now);
        if age < 2 * GENERATION {
            self.previous = std::mem::replace(&mut self.current, next);
        } else {
            // Nothing happened for a whole generation: both are out of the window.
            self.previous = Generation::new(now);
            self.current = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(key: &str) -> KeyName {
        KeyName::from(key)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wait(hot: &mut HotKeys, key: &str, waited: Duration, now: Instant) {
        hot.waited(&name(key), waited, true, now);
    }

    fn ranking(hot: &mut HotKeys, now: Instant) -> Vec<(String, u64)> {
        hot.hottest(now, std::iter::empty())
            .into_iter()
            .map(|heat| (heat.key.to_string(), heat.wait.as_millis() as u64))
            .collect()
    }

    #[test]
    fn keys_rank_by_their_summed_wait() {
        let start = Instant::now();
        let mut hot = HotKeys::new(2, start);
        wait(&mut hot, "a", ms(10), start);
        wait(&mut hot, "b", ms(30), start);
        wait(&mut hot, "a", ms(15), start);
        wait(&mut hot, "c", ms(1), start);
        assert_eq!(
            ranking(&mut hot, start),
            [("b".to_string(), 30), ("a".to_string(), 25)]
        );
        let heats = hot.hottest(start, std::iter::empty());
        assert_eq!((heats[1].waits, heats[1].grants), (2, 2));
    }

    #[test]
    fn ongoing_waits_count_so_far() {
        let start = Instant::now();
        let mut hot = HotKeys::new(3, start);
        let stuck = name("stuck");
        let heats = hot.hottest(start, [(&stuck, ms(400))].into_iter());
        assert_eq!(heats.len(), 1);
        assert_eq!(
            (heats[0].wait, heats[0].waits, heats[0].grants),
            (ms(400), 1, 0)
        );
    }

    #[test]
    fn grants_at_once_count_only_for_kept_keys() {
        let start = Instant::now();
        let mut hot = HotKeys::new(3, start);
        assert_eq!(hot.keeps("a"), None);
        wait(&mut hot, "a", ms(5), start);
        let kept = hot.keeps("a").expect("a waited").clone();
        hot.granted(&kept, start);
        assert_eq!(hot.keeps("b"), None);
        assert_eq!(hot.hottest(start, std::iter::empty())[0].grants, 2);
    }

    #[test]
    fn the_window_forgets_after_two_generations() {
        let start = Instant::now();
        let mut hot = HotKeys::new(3, start);
        wait(&mut hot, "old", ms(50), start);
        let later = start + GENERATION;
        wait(&mut hot, "new", ms(5), later);
        // One generation on, both are in the window.
        assert_eq!(ranking(&mut hot, later).len(), 2);
        // Two on, only what happened in the last one.
        assert_eq!(
            ranking(&mut hot, later + GENERATION),
            [("new".to_string(), 5)]
        );
        assert!(ranking(&mut hot, later + 3 * GENERATION).is_empty());
    }

    #[test]
    fn memory_stays_bounded_and_a_hot_key_survives_a_stream_of_cold_ones() {
        let start = Instant::now();
        let mut hot = HotKeys::new(2, start);
        wait(&mut hot, "hot", ms(100), start);
        for cold in 0..10_000 {
            wait(&mut hot, &format!("cold:{cold}"), ms(1), start);
            assert!(hot.current.keys.len() <= 2 * KEPT_PER_REPORTED);
        }
        wait(&mut hot, "hot", ms(100), start);
        assert_eq!(ranking(&mut hot, start)[0], ("hot".to_string(), 200));
    }
}
