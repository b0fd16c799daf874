//! The configuration kind: one trait every configuration store implements. A store answers what its items are
//! now ([`ConfigurationStore::get`]) and watches them for changes ([`ConfigurationStore::subscribe`]); which
//! subscriptions exist, their ids and where changes go is the runtime's (`sidecar::configuration`).

pub mod postgres;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{ComponentKind, Kind};

/// One configuration item, as Dapr's `configuration.Item` (empty fields are left out of JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Items by key.
pub type Items = BTreeMap<String, Item>;

/// Takes the items one change touched (a deleted key comes as an empty item, as in Dapr); the store waits for
/// it before reading the next change.
pub type ChangeHandler = Arc<dyn Fn(Items) -> BoxFuture<'static, ()> + Send + Sync>;

/// A store's own failure; the runtime wraps it in Dapr's error for the call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigurationError(pub String);

impl ConfigurationError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        ConfigurationError(message.to_string())
    }
}

/// What a subscription watches: `keys` (every key when empty), with the request's metadata.
#[derive(Clone, Debug, Default)]
pub struct SubscribeRequest {
    pub keys: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A configuration store backend.
#[async_trait]
pub trait ConfigurationStore: Send + Sync {
    /// The items of `keys` that exist (every item when `keys` is empty).
    async fn get(&self, keys: &[String], metadata: &BTreeMap<String, String>) -> Result<Items, ConfigurationError>;

    /// Starts watching what `req` names and returns once the watch is in place: every change from then on goes
    /// to `handler`, until `stop` is cancelled (or the store closes).
    async fn subscribe(
        &self,
        req: &SubscribeRequest,
        handler: ChangeHandler,
        stop: CancellationToken,
    ) -> Result<(), ConfigurationError>;

    /// Stops every watch and releases connections.
    async fn close(&self) {}
}

/// The watch tasks of one store: each runs until its subscription's `stop` or the store's close, and close
/// waits for them all.
#[derive(Default)]
pub struct Watches {
    closed: CancellationToken,
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Watches {
    /// Runs `watch` until `stop` is cancelled or the store closes.
    pub fn spawn(&self, stop: CancellationToken, watch: impl std::future::Future<Output = ()> + Send + 'static) {
        let closed = self.closed.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = closed.cancelled() => {}
                _ = watch => {}
            }
        });
    }

    /// An error once the store has closed: nothing new may start.
    pub fn ensure_open(&self) -> Result<(), ConfigurationError> {
        if self.closed.is_cancelled() {
            return Err(ConfigurationError::new("configuration store is closed"));
        }
        Ok(())
    }

    /// Stops every watch and waits until they have ended.
    pub async fn close(&self) {
        self.closed.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}

impl ComponentKind for dyn ConfigurationStore {
    const KIND: Kind = Kind::Configuration;

    fn close(component: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { component.close().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_serialise_as_dapr_does() {
        let mut items = Items::new();
        items.insert(
            "a".into(),
            Item {
                value: "1".into(),
                version: "v2".into(),
                metadata: [("m".to_owned(), "x".to_owned())].into(),
            },
        );
        items.insert("gone".into(), Item::default());
        assert_eq!(
            serde_json::to_string(&items).unwrap(),
            r#"{"a":{"value":"1","version":"v2","metadata":{"m":"x"}},"gone":{}}"#
        );
    }
}
