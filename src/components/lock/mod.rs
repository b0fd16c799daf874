//! The lock store kind (Dapr's distributed lock, `lock.*` components): one trait every backend implements —
//! try to take a lock on a resource for an owner with an expiry, and release it only for its owner.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::{ComponentKind, Kind};

/// What a lock request names: the resource's full key (the sidecar's prefix included) and who asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockKey {
    pub resource_id: String,
    pub owner: String,
}

/// A try-lock: take `key` for `expiry_seconds` (at least 1, at most `i32::MAX`, as Dapr's API carries it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TryLockRequest {
    pub key: LockKey,
    pub expiry_seconds: u32,
}

/// How an unlock ended, numbered as Dapr's `UnlockResponse.Status` (0..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockStatus {
    Success = 0,
    LockDoesNotExist = 1,
    LockBelongsToOthers = 2,
    InternalError = 3,
}

/// A backend's failure (the store could not be reached, answered something unexpected, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LockError(pub String);

/// A distributed lock backend.
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Takes the lock when nobody holds it (or the holder's expiry has passed); `false` when someone holds it,
    /// the caller included (a lock is not re-entrant, as in Dapr).
    async fn try_lock(&self, req: &TryLockRequest) -> Result<bool, LockError>;

    /// Releases the lock when `key.owner` holds it.
    async fn unlock(&self, key: &LockKey) -> Result<UnlockStatus, LockError>;

    /// Releases connections; called once, when nothing uses the store any more.
    async fn close(&self) {}
}

impl ComponentKind for dyn LockStore {
    const KIND: Kind = Kind::Lock;

    fn close(store: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { store.close().await })
    }
}
