//! The state store kind: one trait every backend implements, and the request types it takes.

pub mod memory;
pub mod mysql;
pub mod postgres;
pub mod query;
pub mod redis;
pub mod sqlite;
pub mod sqlvalue;

use std::time::SystemTime;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::{ComponentKind, Kind};
use crate::echo::echo;

pub use query::{Query, QueryItem, QueryResponse};

/// Optional capabilities a backend declares; the metadata API reports them by these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    Etag,
    Transactional,
    QueryApi,
    Ttl,
    Actor,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Etag => "ETAG",
            Feature::Transactional => "TRANSACTIONAL",
            Feature::QueryApi => "QUERY_API",
            Feature::Ttl => "TTL",
            Feature::Actor => "ACTOR",
        }
    }
}

/// First-write refuses to overwrite without the current etag; last-write (default) does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    #[default]
    Unspecified,
    FirstWrite,
    LastWrite,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateItem {
    pub data: Bytes,
    pub etag: Option<String>,
    /// When the item expires, for items saved with a TTL.
    pub expires_at: Option<SystemTime>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetRequest {
    /// The full key, prefix included.
    pub key: String,
    pub value: Bytes,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    /// Seconds to live; `Some(-1)` means never expire.
    pub ttl: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TransactionOp {
    Set(SetRequest),
    Delete(DeleteRequest),
}

impl TransactionOp {
    pub fn key(&self) -> &str {
        match self {
            TransactionOp::Set(r) => &r.key,
            TransactionOp::Delete(r) => &r.key,
        }
    }

    /// The etag the caller gave, if any.
    pub fn etag(&self) -> Option<&str> {
        match self {
            TransactionOp::Set(r) => r.etag.as_deref(),
            TransactionOp::Delete(r) => r.etag.as_deref(),
        }
    }

    pub fn concurrency(&self) -> Concurrency {
        match self {
            TransactionOp::Set(r) => r.concurrency,
            TransactionOp::Delete(r) => r.concurrency,
        }
    }

    /// Checks this operation against the key's current etag (`None`: the key does not exist).
    pub fn check(&self, current: Option<&str>) -> Result<(), StateError> {
        check_etag(current, self.etag(), self.concurrency(), self.key())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    #[error("possible etag mismatch. error from state store: {0}")]
    EtagMismatch(String),
    #[error("invalid etag value: {0}")]
    EtagInvalid(String),
    #[error("{0} is not supported by this state store")]
    NotSupported(&'static str),
    #[error("{0}")]
    Backend(String),
}

impl StateError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        StateError::Backend(e.to_string())
    }
}

/// A state store backend. Keys arrive fully prefixed; the runtime owns Dapr's key scheme.
#[async_trait]
pub trait StateStore: Send + Sync {
    fn features(&self) -> &'static [Feature];

    /// The item under `key`, or `None` when it does not exist (or has expired).
    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError>;

    async fn set(&self, req: &SetRequest) -> Result<(), StateError>;

    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError>;

    /// Many keys, in order, at most `parallelism` lookups at a time.
    async fn bulk_get(&self, keys: &[String], parallelism: usize) -> Vec<Result<Option<StateItem>, StateError>> {
        let mut lookups = Vec::with_capacity(keys.len());
        for k in keys {
            lookups.push(self.get(k));
        }
        futures::stream::iter(lookups)
            .buffered(parallelism.max(1))
            .collect()
            .await
    }

    /// Applies every operation or none of them.
    async fn transact(&self, _ops: &[TransactionOp]) -> Result<(), StateError> {
        Err(StateError::NotSupported("transactions"))
    }

    /// Runs a Dapr state query over the keys that start with `prefix`.
    async fn query(&self, _prefix: &str, _query: &Query) -> Result<QueryResponse, StateError> {
        Err(StateError::NotSupported("query"))
    }

    async fn close(&self) {}
}

impl ComponentKind for dyn StateStore {
    const KIND: Kind = Kind::State;

    fn capabilities(store: &Self) -> Vec<String> {
        capabilities(store.features())
    }

    fn close(store: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { store.close().await })
    }
}

/// Capabilities a state store reports: its features, plus `ACTOR` when it has both etags and transactions (as Dapr does).
pub fn capabilities(features: &[Feature]) -> Vec<String> {
    let mut caps: Vec<String> = features.iter().map(|f| f.as_str().to_owned()).collect();
    if features.contains(&Feature::Etag)
        && features.contains(&Feature::Transactional)
        && !features.contains(&Feature::Actor)
    {
        caps.push(Feature::Actor.as_str().to_owned());
    }
    caps
}

/// Dapr's etag rules, shared by every backend: a given etag must equal the current one; first-write without
/// an etag only creates. Any etag the store did not issue is a mismatch (stores whose etags have a format,
/// like Redis versions, answer `EtagInvalid` for a malformed one before calling this).
pub fn check_etag(
    current: Option<&str>,
    given: Option<&str>,
    concurrency: Concurrency,
    key: &str,
) -> Result<(), StateError> {
    let conflict = match given.filter(|e| !e.is_empty()) {
        Some(given) => match current {
            None => Some(EtagConflict::Missing),
            Some(cur) if cur != given => Some(EtagConflict::Mismatch),
            Some(_) => None,
        },
        None if concurrency == Concurrency::FirstWrite && current.is_some() => Some(EtagConflict::Exists),
        None => None,
    };
    conflict.map_or(Ok(()), |c| Err(c.error(key)))
}

/// Why a write's etag check failed; stores that check etags server-side (Redis) report one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtagConflict {
    /// An etag was given for a key that does not exist (or expired).
    Missing,
    /// The given etag is not the key's current one.
    Mismatch,
    /// First-write without an etag, on a key that exists.
    Exists,
}

impl EtagConflict {
    /// The etag-mismatch error for `key` (named by a bounded prefix).
    pub fn error(self, key: &str) -> StateError {
        let key = echo(key);
        StateError::EtagMismatch(match self {
            EtagConflict::Missing => format!("state does not exist or expired for key {key}"),
            EtagConflict::Mismatch => format!("etag does not match for key {key}"),
            EtagConflict::Exists => {
                format!("item {key} already exists and no etag was given with first-write concurrency")
            }
        })
    }
}

/// Expiry instant for a TTL in seconds (`None` or a non-positive TTL: no expiry).
pub fn expiry(ttl: Option<i64>) -> Option<SystemTime> {
    match ttl {
        Some(s) if s > 0 => SystemTime::now().checked_add(std::time::Duration::from_secs(s.unsigned_abs())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_capability_follows_etag_and_transactions() {
        assert_eq!(
            capabilities(&[Feature::Etag, Feature::Transactional]),
            ["ETAG", "TRANSACTIONAL", "ACTOR"]
        );
        assert_eq!(capabilities(&[Feature::Etag]), ["ETAG"]);
    }

    #[test]
    fn etag_rules() {
        assert!(check_etag(None, None, Concurrency::Unspecified, "k").is_ok());
        assert!(check_etag(Some("1"), None, Concurrency::LastWrite, "k").is_ok());
        assert!(check_etag(Some("1"), Some("1"), Concurrency::FirstWrite, "k").is_ok());
        assert!(matches!(
            check_etag(Some("1"), Some("2"), Concurrency::Unspecified, "k"),
            Err(StateError::EtagMismatch(_))
        ));
        assert!(matches!(
            check_etag(None, Some("2"), Concurrency::LastWrite, "k"),
            Err(StateError::EtagMismatch(_))
        ));
        assert!(matches!(
            check_etag(Some("1"), None, Concurrency::FirstWrite, "k"),
            Err(StateError::EtagMismatch(_))
        ));
        assert!(check_etag(None, None, Concurrency::FirstWrite, "k").is_ok());
        assert!(matches!(
            check_etag(Some("1"), Some("x"), Concurrency::Unspecified, "k"),
            Err(StateError::EtagMismatch(_))
        ));
    }
}
