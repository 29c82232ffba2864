//! Brute-force protection for logins: failure counters per username and per client
//! address with an escalating lockout. Bounded in memory; state is per controller process.
//!
//! An attempt is reserved (`begin`) before the password is hashed and settled after: the
//! failures so far plus the attempts in flight may not exceed the limit, so guesses sent
//! all at once get no more tries than guesses sent one by one.

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
    /// Attempts reserved and not yet settled.
    pending: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant, window: Duration) -> bool {
        self.pending > 0
            || self.locked_until.is_some_and(|u| u > now)
            || now - self.window_start < window
    }
}

/// How long a caller refused for attempts in flight (not a lockout) is asked to wait.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// A reserved attempt. Settle it with `failed` or `succeeded`; dropping it unsettled
/// (the attempt neither failed nor succeeded, e.g. a TOTP code is still required) only
/// releases the reservation.
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a Limiter,
    key: String,
    settled: bool,
}

impl Attempt<'_> {
    /// Counts a failure; returns the lockout it triggered, if any.
    pub fn failed(mut self, now: Instant) -> Option<Duration> {
        self.settled = true;
        self.limiter.release(&self.key);
        self.limiter.fail(&self.key, now)
    }

    /// Clears the key's failures.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.succeed(&self.key);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.release(&self.key);
        }
    }
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

    /// Reserves an attempt for `key`, or says how long to wait: while the key is locked
    /// out, or while failures so far plus attempts in flight reach the limit.
    pub fn begin(&self, key: &str, now: Instant) -> Result<Attempt<'_>, Duration> {
        let p = self.policy;
        let mut map = self.lock();
        let entry = self.entry(&mut map, key, now);
        if let Some(until) = entry.locked_until.filter(|u| *u > now) {
            return Err(until - now);
        }
        if now - entry.window_start >= p.window && entry.pending == 0 {
            entry.failures = 0;
            entry.window_start = now;
            entry.locked_until = None;
        }
        if entry.failures + entry.pending >= p.max_failures {
            return Err(IN_FLIGHT_RETRY);
        }
        entry.pending += 1;
        Ok(Attempt {
            limiter: self,
            key: key.to_owned(),
            settled: false,
        })
    }

    fn release(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.pending = e.pending.saturating_sub(1);
        }
    }

    /// Drops entries that no longer hold anything (called periodically, so memory does
    /// not wait for the capacity to be reached to shrink).
    pub fn prune(&self, now: Instant) -> usize {
        let window = self.policy.window;
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, e| e.live(now, window));
        before - map.len()
    }

    /// `key`'s entry, created (room made first) if it has none.
    fn entry<'m>(
        &self,
        map: &'m mut HashMap<String, Entry>,
        key: &str,
        now: Instant,
    ) -> &'m mut Entry {
        self.make_room(map, key, now);
        map.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            pending: 0,
            window_start: now,
            locked_until: None,
        })
    }

    /// Keeps the map under its capacity before `key` is added.
    fn make_room(&self, map: &mut HashMap<String, Entry>, key: &str, now: Instant) {
        if map.len() < self.capacity || map.contains_key(key) {
            return;
        }
        let window = self.policy.window;
        map.retain(|_, e| e.live(now, window));
        if map.len() >= self.capacity {
            // Still full of live entries: drop the oldest half rather than grow.
            let mut starts: Vec<Instant> = map.values().map(|e| e.window_start).collect();
            starts.sort_unstable();
            let cutoff = starts[starts.len() / 2];
            map.retain(|_, e| e.window_start > cutoff || e.pending > 0);
        }
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
        let entry = self.entry(&mut map, key, now);
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
        let mut map = self.lock();
        // The attempt that succeeded was one of the pending ones: it is no longer in flight
        // (without this, every success leaked one, and five logins in a row locked a user
        // out of their own account).
        let busy = map.get_mut(key).is_some_and(|e| {
            e.pending = e.pending.saturating_sub(1);
            e.failures = 0;
            e.locked_until = None;
            e.pending > 0
        });
        if !busy {
            map.remove(key);
        }
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
    fn attempts_in_flight_count_against_the_limit() {
        let l = Limiter::new(policy(), 100);
        let t = Instant::now();
        let a = l.begin("a", t).expect("1st");
        let b = l.begin("a", t).expect("2nd");
        let c = l.begin("a", t).expect("3rd");
        assert!(l.begin("a", t).is_err(), "a 4th while three are in flight");
        assert_eq!(a.failed(t), None);
        assert_eq!(b.failed(t), None);
        assert_eq!(c.failed(t), Some(Duration::from_secs(10)));
        assert_eq!(
            l.begin("a", t).expect_err("locked"),
            Duration::from_secs(10)
        );
        // An unsettled attempt only gives its reservation back.
        let d = l.begin("d", t).expect("d");
        drop(d);
        for _ in 0..3 {
            l.begin("d", t).expect("free again").failed(t);
        }
        assert!(l.check("d", t).is_some());
        // Success clears the key even with another attempt in flight.
        let e1 = l.begin("e", t).expect("e1");
        let e2 = l.begin("e", t).expect("e2");
        e1.failed(t);
        e2.succeeded();
        assert!(l.begin("e", t).is_ok());
    }

    #[test]
    fn successes_never_add_up_to_a_lockout() {
        let l = Limiter::new(policy(), 100);
        let t = Instant::now();
        for i in 0..20 {
            l.begin("a", t)
                .unwrap_or_else(|_| panic!("success {i} refused"))
                .succeeded();
        }
        assert!(
            l.lock().is_empty(),
            "nothing held once every attempt settled"
        );
    }

    #[test]
    fn idle_entries_are_pruned() {
        let l = Limiter::new(policy(), 100);
        let t = Instant::now();
        l.fail("old", t);
        let _held = l.begin("busy", t).expect("busy");
        assert_eq!(l.prune(t + Duration::from_secs(61)), 1);
        assert_eq!(
            l.lock().len(),
            1,
            "the entry with an attempt in flight stays"
        );
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
