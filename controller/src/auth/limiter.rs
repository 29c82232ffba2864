//! Brute-force protection for logins: failure counters per username and per client
//! address with an escalating lockout. Bounded in memory; state is per controller process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures allowed inside `window` before the key is locked.
    pub max_failures: u32,
    pub window: Duration,
    /// First lockout; each further failure while over the limit doubles it.
    pub base_lockout: Duration,
    pub max_lockout: Duration,
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// A map of failure counters with a hard cap on its size.
#[derive(Debug)]
pub struct Limiter {
    policy: Policy,
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Limiter {
    pub fn new(policy: Policy, capacity: usize) -> Self {
        Self {
            policy,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned map only holds counters; keep using it rather than failing logins.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(wait)` while `key` is locked out.
    pub fn check(&self, key: &str, now: Instant) -> Option<Duration> {
        let map = self.lock();
        let until = map.get(key)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns the lockout it triggered, if any.
    pub fn fail(&self, key: &str, now: Instant) -> Option<Duration> {
        let p = self.policy;
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(key) {
            map.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now) || now - e.window_start < p.window
            });
            if map.len() >= self.capacity {
                // Still full of live entries: drop the oldest half rather than grow.
                let mut starts: Vec<Instant> = map.values().map(|e| e.window_start).collect();
                starts.sort_unstable();
                let cutoff = starts[starts.len() / 2];
                map.retain(|_, e| e.window_start > cutoff);
            }
        }
        let entry = map.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
        });
        if now - entry.window_start >= p.window && entry.locked_until.is_none_or(|u| u <= now) {
            entry.failures = 0;
            entry.window_start = now;
            entry.locked_until = None;
        }
        entry.failures += 1;
        if entry.failures < p.max_failures {
            return None;
        }
        let over = entry.failures - p.max_failures;
        let lockout = p
            .base_lockout
            .saturating_mul(1u32 << over.min(16))
            .min(p.max_lockout);
        entry.locked_until = Some(now + lockout);
        entry.window_start = now;
        Some(lockout)
    }

    pub fn succeed(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_failures: 3,
            window: Duration::from_secs(60),
            base_lockout: Duration::from_secs(10),
            max_lockout: Duration::from_secs(40),
        }
    }

    #[test]
    fn locks_after_limit_and_escalates() {
        let l = Limiter::new(policy(), 100);
        let t = Instant::now();
        assert_eq!(l.fail("a", t), None);
        assert_eq!(l.fail("a", t), None);
        assert_eq!(l.fail("a", t), Some(Duration::from_secs(10)));
        assert!(l.check("a", t).is_some());
        assert!(l.check("b", t).is_none());
        assert_eq!(l.fail("a", t), Some(Duration::from_secs(20)));
        assert_eq!(l.fail("a", t), Some(Duration::from_secs(40)));
        assert_eq!(l.fail("a", t), Some(Duration::from_secs(40)));
        assert!(l.check("a", t + Duration::from_secs(41)).is_none());
        l.succeed("a");
        assert!(l.check("a", t).is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let l = Limiter::new(policy(), 10);
        let t = Instant::now();
        for i in 0..1000 {
            l.fail(&format!("user{i}"), t + Duration::from_millis(i));
        }
        assert!(l.lock().len() <= 10);
    }
}
