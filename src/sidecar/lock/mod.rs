//! The distributed lock building block: Dapr's try-lock and unlock (`/v1.0-alpha1/lock|unlock/<store>`, gRPC
//! `TryLockAlpha1`/`UnlockAlpha1`) over the loaded lock stores, with Dapr's checks in Dapr's order and its key
//! scheme (`lock||<prefix>||<resourceId>`, the prefix chosen by the component's `keyPrefix`).

use std::sync::Arc;

use crate::components::Kind;
use crate::components::Metadata;
use crate::components::lock::{LockKey, LockStore, TryLockRequest, UnlockStatus};
use crate::echo::echo;
use crate::sidecar::components::{ComponentTable, Handle, Loaded};
use crate::sidecar::error::{ApiError, ApiResult};

/// Separates the parts of a lock key; neither a resource id nor a key prefix may hold it.
const SEPARATOR: &str = "||";

/// The prefix a lock store's keys are stored under, worked out when the store is admitted.
struct LockPrefix(String);

/// The key prefix of lock store `md` by its `keyPrefix` strategy, as Dapr's lock API builds it: `appid`
/// (default; `lock||` alone when there is no app id), `name`, `none`, or any other value, lower-cased, used
/// as it is.
pub fn key_prefix(md: &Metadata) -> Result<String, String> {
    let strategy = md.get("keyPrefix").unwrap_or("appid").to_lowercase();
    if strategy.contains(SEPARATOR) {
        return Err(format!(
            "failed to save lock keyprefix: input key/keyPrefix '{strategy}' can't contain '{SEPARATOR}'"
        ));
    }
    let middle = match strategy.as_str() {
        "none" => None,
        "name" => Some(md.name.as_str()),
        "appid" if md.app_id.is_empty() => None,
        "appid" => Some(md.app_id.as_str()),
        other => Some(other),
    };
    Ok(match middle {
        None => format!("lock{SEPARATOR}"),
        Some(m) => format!("lock{SEPARATOR}{m}{SEPARATOR}"),
    })
}

/// What a lock store must satisfy before it is loaded: a valid `keyPrefix`.
pub fn admit(_table: &ComponentTable, candidate: &Loaded) -> Result<(), String> {
    candidate.set_settings(LockPrefix(key_prefix(&candidate.metadata)?));
    Ok(())
}

/// The lock API over the loaded lock stores.
#[derive(Clone)]
pub struct Locks {
    table: Arc<ComponentTable>,
}

/// Which operation a request is, for its error.
#[derive(Clone, Copy)]
enum Op {
    TryLock,
    Unlock,
}

impl Op {
    fn failed(self, detail: impl std::fmt::Display) -> ApiError {
        match self {
            Op::TryLock => ApiError::try_lock(detail),
            Op::Unlock => ApiError::unlock(detail),
        }
    }
}

impl Locks {
    pub fn new(table: Arc<ComponentTable>) -> Self {
        Locks { table }
    }

    /// Dapr's checks shared by both operations, in its order: a lock store is configured, the resource id and
    /// owner are given, the store exists; then the full key.
    fn resolve(
        &self,
        op: Op,
        store: &str,
        resource_id: &str,
        owner: &str,
    ) -> ApiResult<(Handle<dyn LockStore>, LockKey)> {
        if self.table.is_empty(Kind::Lock) {
            return Err(ApiError::lock_stores_not_configured());
        }
        if resource_id.is_empty() {
            return Err(ApiError::lock_field(store, "ResourceId is empty"));
        }
        if owner.is_empty() {
            return Err(ApiError::lock_field(store, "LockOwner is empty"));
        }
        let handle = self
            .table
            .get::<dyn LockStore>(store)
            .ok_or_else(|| ApiError::lock_store_not_found(store))?;
        if resource_id.contains(SEPARATOR) {
            let e = format!(
                "input key/keyPrefix '{}' can't contain '{SEPARATOR}'",
                echo(resource_id)
            );
            return Err(op.failed(e).illegal_lock_key());
        }
        let prefix = match handle.component.settings::<LockPrefix>() {
            Some(p) => p.0.clone(),
            None => key_prefix(handle.metadata()).map_err(|e| op.failed(e))?,
        };
        let key = LockKey {
            resource_id: format!("{prefix}{resource_id}"),
            owner: owner.to_owned(),
        };
        Ok((handle, key))
    }

    /// Takes lock `resource_id` in `store` for `owner` during `expiry_in_seconds`: `false` when it is held.
    pub async fn try_lock(
        &self,
        store: &str,
        resource_id: &str,
        owner: &str,
        expiry_in_seconds: i32,
    ) -> ApiResult<bool> {
        // Dapr checks the expiry before anything else, even whether a lock store is configured.
        let Some(expiry_seconds) = u32::try_from(expiry_in_seconds).ok().filter(|s| *s > 0) else {
            return Err(ApiError::lock_field(store, "ExpiryInSeconds is not positive"));
        };
        let (handle, key) = self.resolve(Op::TryLock, store, resource_id, owner)?;
        handle
            .try_lock(&TryLockRequest { key, expiry_seconds })
            .await
            .map_err(|e| Op::TryLock.failed(e))
    }

    /// Releases lock `resource_id` in `store` when `owner` holds it.
    pub async fn unlock(&self, store: &str, resource_id: &str, owner: &str) -> ApiResult<UnlockStatus> {
        let (handle, key) = self.resolve(Op::Unlock, store, resource_id, owner)?;
        handle.unlock(&key).await.map_err(|e| Op::Unlock.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(name: &str, app_id: &str, key_prefix: Option<&str>) -> Metadata {
        let props = key_prefix.map(|p| ("keyPrefix".to_owned(), p.to_owned()));
        Metadata::new(name, app_id, "ns", props)
    }

    #[test]
    fn key_prefixes_follow_daprs_strategies() {
        assert_eq!(key_prefix(&md("l", "app", None)).unwrap(), "lock||app||");
        assert_eq!(key_prefix(&md("l", "", None)).unwrap(), "lock||");
        assert_eq!(key_prefix(&md("l", "app", Some("AppId"))).unwrap(), "lock||app||");
        assert_eq!(key_prefix(&md("l", "app", Some("name"))).unwrap(), "lock||l||");
        assert_eq!(key_prefix(&md("l", "app", Some("none"))).unwrap(), "lock||");
        assert_eq!(key_prefix(&md("l", "app", Some("Shared"))).unwrap(), "lock||shared||");
        // `namespace` is no lock strategy: a literal, as in Dapr.
        assert_eq!(
            key_prefix(&md("l", "app", Some("namespace"))).unwrap(),
            "lock||namespace||"
        );
        let err = key_prefix(&md("l", "app", Some("a||b"))).unwrap_err();
        assert!(err.contains("can't contain '||'"), "{err}");
    }
}
