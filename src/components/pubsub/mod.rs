//! The pub/sub kind: one trait every broker backend implements. A backend moves opaque bytes (the runtime builds
//! and reads the CloudEvent envelope); it publishes, and delivers a topic's messages to a handler whose verdict it
//! turns into an ack or a redelivery.

pub mod jetstream;
pub mod kafka;
pub mod memory;
pub mod mqtt;
pub mod rabbitmq;
pub mod redis;
pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{ComponentKind, Kind};

/// Optional capabilities a backend declares (Dapr's pub/sub feature names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// The broker expires messages itself (`ttlInSeconds`); otherwise the runtime stamps `expiration`.
    MessageTtl,
    SubscribeWildcards,
    BulkPublish,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::MessageTtl => "MESSAGE_TTL",
            Feature::SubscribeWildcards => "SUBSCRIBE_WILDCARDS",
            Feature::BulkPublish => "BULK_PUBLISH",
        }
    }
}

/// A message to publish, or one delivered: the topic, the bytes (a CloudEvent unless raw), their content type and
/// the metadata that travels with them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub topic: String,
    pub data: Bytes,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// One entry of a bulk publish.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BulkEntry {
    pub entry_id: String,
    pub message: Message,
}

/// An entry a bulk publish could not publish, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedEntry {
    pub entry_id: String,
    pub error: String,
}

/// What to subscribe to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeRequest {
    pub topic: String,
    /// The subscription's metadata (Dapr passes it to the component).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PubSubError {
    #[error("{0}")]
    Backend(String),
    #[error("the component is closed")]
    Closed,
}

impl PubSubError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        PubSubError::Backend(e.to_string())
    }
}

/// Why a handler did not take a message: the backend must not acknowledge it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Nack {
    /// Deliver it again later (the app asked to retry, or failed and there is no dead-letter topic).
    #[error("{0}")]
    Retry(String),
    /// The subscription is stopping: leave the message where it is, unacknowledged and not dead-lettered, for
    /// this or another subscriber to take after the restart.
    #[error("the subscription is closing")]
    Closing,
}

/// Takes one delivered message; `Ok` means the backend may acknowledge it.
pub type Handler = Arc<dyn Fn(Message) -> BoxFuture<'static, Result<(), Nack>> + Send + Sync>;

/// A pub/sub backend.
#[async_trait]
pub trait PubSub: Send + Sync {
    fn features(&self) -> &'static [Feature];

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError>;

    /// Publishes every entry; answers the ones that failed. By default, one publish per entry, a few at a time.
    async fn bulk_publish(&self, entries: &[BulkEntry]) -> Vec<FailedEntry> {
        let mut failed = vec![];
        for chunk in entries.chunks(16) {
            let results = futures::future::join_all(chunk.iter().map(|e| self.publish(&e.message))).await;
            for (e, r) in chunk.iter().zip(results) {
                if let Err(err) = r {
                    failed.push(FailedEntry {
                        entry_id: e.entry_id.clone(),
                        error: err.to_string(),
                    });
                }
            }
        }
        failed
    }

    /// Starts delivering the topic's messages to `handler` and returns once the subscription is in place. Delivery
    /// stops when `stop` is cancelled; messages the handler did not take stay with the broker (or, for brokers
    /// without storage, are lost with the process).
    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Handler,
        stop: CancellationToken,
    ) -> Result<(), PubSubError>;

    async fn close(&self) {}
}

impl ComponentKind for dyn PubSub {
    const KIND: Kind = Kind::PubSub;

    fn capabilities(component: &Self) -> Vec<String> {
        component.features().iter().map(|f| f.as_str().to_owned()).collect()
    }

    fn close(component: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { component.close().await })
    }
}

/// What a subscription of a component watches: a token cancelled once the subscription is stopped (`stop`) or the
/// component closed (`closed`). The backend may cancel it itself too (that stops neither of the others).
pub fn subscription_stop(stop: CancellationToken, closed: &CancellationToken) -> CancellationToken {
    let either = closed.child_token();
    let watch = either.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => watch.cancel(),
            _ = watch.cancelled() => {}
        }
    });
    either
}

/// `consumerID` of a component: its consumer group, the app id unless set (Dapr's `{appID}`/`{namespace}`
/// placeholders are filled in).
pub fn consumer_id(md: &super::Metadata) -> String {
    match md.get("consumerID").map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => c.replace("{appID}", &md.app_id).replace("{namespace}", &md.namespace),
        None => md.app_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscription_stops_with_either_token_and_alone() {
        let (stop, closed) = (CancellationToken::new(), CancellationToken::new());
        let sub = subscription_stop(stop.clone(), &closed);
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), sub.cancelled())
            .await
            .unwrap();
        let (stop, closed) = (CancellationToken::new(), CancellationToken::new());
        let sub = subscription_stop(stop.clone(), &closed);
        closed.cancel();
        assert!(sub.is_cancelled());
        let (stop, closed) = (CancellationToken::new(), CancellationToken::new());
        let sub = subscription_stop(stop.clone(), &closed);
        sub.cancel();
        assert!(
            !stop.is_cancelled() && !closed.is_cancelled(),
            "cancelling it stops nothing else"
        );
    }

    #[test]
    fn consumer_defaults_to_the_app_id() {
        let md = super::super::Metadata::new("p", "orders", "ns", []);
        assert_eq!(consumer_id(&md), "orders");
        let md = super::super::Metadata::new(
            "p",
            "orders",
            "ns",
            [("consumerID".into(), "{namespace}-{appID}".into())],
        );
        assert_eq!(consumer_id(&md), "ns-orders");
    }
}
