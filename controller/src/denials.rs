//! Counting anonymous denials for the audit log: repeats of one kind are counted within
//! a window instead of each written (`api::audit` writes the first and a summary).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Window in which repeats of one anonymous denial are counted instead of recorded.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(60);
/// Kinds of anonymous denial tracked at once; past it, denials are counted in bulk.
const DENIAL_KINDS: usize = 10_000;

/// Anonymous denials (no signed-in user: 401, 403, 429) of one kind — the same address,
/// route and claimed username — are recorded once per window; the repeats are counted
/// and recorded as one summary when the window ends. Without this, anyone could grow the
/// audit table and the log by a record per request.
#[derive(Debug, Default)]
pub struct Denials {
    kinds: std::sync::Mutex<HashMap<DenialKey, Window>>,
    /// Denials not tracked because the table was full.
    overflow: std::sync::atomic::AtomicU64,
}

/// `(ip, action, claimed actor, status)`.
pub type DenialKey = (Option<String>, String, Option<String>, u16);

#[derive(Debug)]
struct Window {
    start: Instant,
    repeats: u64,
}

/// What to do with one anonymous denial.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Record it (`ended`: repeats of the window before, to record as a summary first).
    Record { ended: u64 },
    /// Count it only.
    Count,
}

impl Denials {
    pub fn admit(&self, key: DenialKey, now: Instant) -> Admit {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = kinds.get_mut(&key) {
            if now.duration_since(w.start) < DENIAL_WINDOW {
                w.repeats += 1;
                return Admit::Count;
            }
            let ended = w.repeats;
            *w = Window {
                start: now,
                repeats: 0,
            };
            return Admit::Record { ended };
        }
        if kinds.len() >= DENIAL_KINDS {
            kinds.retain(|_, w| now.duration_since(w.start) < DENIAL_WINDOW || w.repeats > 0);
            if kinds.len() >= DENIAL_KINDS {
                self.overflow
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Admit::Count;
            }
        }
        kinds.insert(
            key,
            Window {
                start: now,
                repeats: 0,
            },
        );
        Admit::Record { ended: 0 }
    }

    /// Windows that ended with repeats, taken out (their summaries are due), and the
    /// count of denials not tracked since the last call.
    pub fn ended(&self, now: Instant) -> (Vec<(DenialKey, u64)>, u64) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        kinds.retain(|k, w| {
            if now.duration_since(w.start) < DENIAL_WINDOW {
                return true;
            }
            if w.repeats > 0 {
                due.push((k.clone(), w.repeats));
            }
            false
        });
        let overflow = self.overflow.swap(0, std::sync::atomic::Ordering::Relaxed);
        (due, overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_anonymous_denials_are_counted_then_summarized() {
        let d = Denials::default();
        let t0 = Instant::now();
        let key = |ip: &str| {
            (
                Some(ip.to_owned()),
                "POST /api/servers".to_owned(),
                None,
                401u16,
            )
        };
        assert_eq!(d.admit(key("192.0.2.1"), t0), Admit::Record { ended: 0 });
        for i in 1..=500 {
            assert_eq!(
                d.admit(key("192.0.2.1"), t0 + Duration::from_millis(i)),
                Admit::Count
            );
        }
        // Another source is its own kind.
        assert_eq!(d.admit(key("192.0.2.2"), t0), Admit::Record { ended: 0 });
        // The window ends: the summary is due once, and the next denial is recorded.
        let later = t0 + DENIAL_WINDOW + Duration::from_secs(1);
        let (due, overflow) = d.ended(later);
        assert_eq!(due, vec![(key("192.0.2.1"), 500)]);
        assert_eq!(overflow, 0);
        assert_eq!(d.ended(later).0, vec![]);
        assert_eq!(d.admit(key("192.0.2.1"), later), Admit::Record { ended: 0 });
        // A repeat after its window, before a flush, carries the count itself.
        assert_eq!(d.admit(key("192.0.2.1"), later), Admit::Count);
        let much_later = later + DENIAL_WINDOW;
        assert_eq!(
            d.admit(key("192.0.2.1"), much_later),
            Admit::Record { ended: 1 }
        );
    }
}
