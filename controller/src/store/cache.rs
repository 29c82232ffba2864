//! A read-through cache of resolved sessions, so an authenticated request does not need a
//! database round trip. Every store method that changes a user or a session invalidates
//! the affected entries, so revocation is immediate on this controller; entries also
//! expire after a few seconds, which bounds staleness if another process edits the
//! database.

use super::SessionUser;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(5);
const CAPACITY: usize = 50_000;

#[derive(Debug, Default)]
pub(super) struct SessionCache {
    map: Mutex<HashMap<[u8; 32], (SessionUser, Instant)>>,
    /// Bumped by every invalidation; a read that started before one must not be cached.
    generation: AtomicU64,
}

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (SessionUser, Instant)>> {
        // The map only caches; after a panic elsewhere, dropping it all is always safe.
        self.map.lock().unwrap_or_else(|p| {
            let mut g = p.into_inner();
            g.clear();
            g
        })
    }

    pub(super) fn get(&self, hash: &[u8; 32]) -> Option<SessionUser> {
        let mut map = self.lock();
        match map.get(hash) {
            Some((s, at)) if at.elapsed() < TTL => Some(s.clone()),
            Some(_) => {
                map.remove(hash);
                None
            }
            None => None,
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a row read while the generation was `seen`; dropped if anything was
    /// invalidated since.
    pub(super) fn put(&self, hash: [u8; 32], session: SessionUser, seen: u64) {
        let mut map = self.lock();
        if self.generation() != seen {
            return;
        }
        if map.len() >= CAPACITY {
            map.retain(|_, (_, at)| at.elapsed() < TTL);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(hash, (session, Instant::now()));
    }

    pub(super) fn touch(&self, hash: &[u8; 32], now: i64) {
        if let Some((s, _)) = self.lock().get_mut(hash) {
            s.last_seen = now;
        }
    }

    pub(super) fn remove(&self, hash: &[u8; 32]) {
        let mut map = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.remove(hash);
    }

    pub(super) fn remove_user(&self, user_id: i64) {
        let mut map = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, (s, _)| s.user.id != user_id);
    }

    pub(super) fn clear(&self) {
        let mut map = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }
}
