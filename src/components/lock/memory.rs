//! `lock.in-memory`: locks held in the sidecar's memory, for local development and tests (Dapr has no such
//! component; it is tandem's). Expiry is honoured; locks are not shared with any other process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{LockError, LockKey, LockStore, TryLockRequest, UnlockStatus};
use crate::components::{ComponentError, Metadata};

/// Locks held before expired ones are swept out on the next acquisition (the threshold then doubles with the
/// live count, so sweeping stays proportional to the work done).
const FIRST_SWEEP: usize = 1024;

pub async fn build(_md: Metadata) -> Result<Arc<dyn LockStore>, ComponentError> {
    Ok(Arc::new(MemoryLocks::default()))
}

struct Held {
    owner: String,
    until: Instant,
}

struct Inner {
    held: HashMap<String, Held>,
    sweep_at: usize,
}

pub struct MemoryLocks {
    inner: Mutex<Inner>,
}

impl Default for MemoryLocks {
    fn default() -> Self {
        MemoryLocks {
            inner: Mutex::new(Inner {
                held: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }
}

impl MemoryLocks {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The instant `seconds` from `now`; a time past what the clock can hold counts as never.
fn deadline(now: Instant, seconds: u32) -> Instant {
    now.checked_add(Duration::from_secs(u64::from(seconds)))
        .unwrap_or(now + Duration::from_secs(u64::from(u32::MAX >> 2)))
}

#[async_trait]
impl LockStore for MemoryLocks {
    async fn try_lock(&self, req: &TryLockRequest) -> Result<bool, LockError> {
        let now = Instant::now();
        let mut inner = self.inner();
        if inner.held.get(&req.key.resource_id).is_some_and(|h| h.until > now) {
            return Ok(false);
        }
        inner.held.insert(
            req.key.resource_id.clone(),
            Held {
                owner: req.key.owner.clone(),
                until: deadline(now, req.expiry_seconds),
            },
        );
        if inner.held.len() >= inner.sweep_at {
            inner.held.retain(|_, h| h.until > now);
            inner.sweep_at = (inner.held.len() * 2).max(FIRST_SWEEP);
        }
        Ok(true)
    }

    async fn unlock(&self, key: &LockKey) -> Result<UnlockStatus, LockError> {
        let now = Instant::now();
        let mut inner = self.inner();
        let status = match inner.held.get(&key.resource_id) {
            Some(h) if h.until <= now => {
                inner.held.remove(&key.resource_id);
                UnlockStatus::LockDoesNotExist
            }
            None => UnlockStatus::LockDoesNotExist,
            Some(h) if h.owner != key.owner => UnlockStatus::LockBelongsToOthers,
            Some(_) => {
                inner.held.remove(&key.resource_id);
                UnlockStatus::Success
            }
        };
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, owner: &str, expiry_seconds: u32) -> TryLockRequest {
        TryLockRequest {
            key: LockKey {
                resource_id: id.into(),
                owner: owner.into(),
            },
            expiry_seconds,
        }
    }

    #[tokio::test]
    async fn expired_locks_are_swept_so_memory_stays_bounded() {
        let locks = MemoryLocks::default();
        {
            let mut inner = locks.inner();
            let past = Instant::now() - Duration::from_secs(1);
            for i in 0..FIRST_SWEEP - 1 {
                let held = Held {
                    owner: "o".into(),
                    until: past,
                };
                inner.held.insert(format!("old-{i}"), held);
            }
        }
        assert!(locks.try_lock(&req("new", "o", 60)).await.unwrap());
        let inner = locks.inner();
        assert_eq!(inner.held.len(), 1, "only the live lock is left");
        assert!(inner.held.contains_key("new"));
        assert_eq!(inner.sweep_at, FIRST_SWEEP);
    }

    #[test]
    fn the_longest_expiry_does_not_overflow() {
        let now = Instant::now();
        assert!(deadline(now, u32::MAX) > now + Duration::from_secs(3600 * 24 * 365));
    }
}
