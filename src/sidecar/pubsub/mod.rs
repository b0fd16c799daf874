//! The pub/sub building block: publish and bulk publish over the loaded pub/sub components (CloudEvent envelope,
//! topic scopes), and — in [`subscriber`] — the subscriptions that deliver a topic's events to the app.

pub mod bulk;
pub mod cloudevent;
pub mod delivery;
pub mod routes;
pub mod streaming;
pub mod subscriber;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::components::pubsub::{BulkEntry, FailedEntry, Feature, Message, PubSub};
use crate::sidecar::components::{ComponentTable, Handle, Loaded};
use crate::sidecar::error::{ApiError, ApiResult};

/// A publish as the HTTP and gRPC adapters decode it.
#[derive(Clone, Debug, Default)]
pub struct PublishRequest {
    pub pubsub: String,
    pub topic: String,
    pub data: Bytes,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
    pub traceparent: String,
    pub tracestate: String,
}

/// One entry of a bulk publish, its event already as bytes.
#[derive(Clone, Debug, Default)]
pub struct BulkPublishEntry {
    pub entry_id: String,
    pub event: Bytes,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
}

/// Which topics this app may use on a component: Dapr's `allowedTopics`, `protectedTopics`, and the app's entry of
/// `publishingScopes` / `subscriptionScopes`, worked out when the component is admitted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicScopes {
    pub allowed: Vec<String>,
    pub protected: Vec<String>,
    pub publishing: Vec<String>,
    pub subscribing: Vec<String>,
}

impl TopicScopes {
    pub fn from_loaded(c: &Loaded, app_id: &str) -> TopicScopes {
        let md = &c.metadata;
        let find = |name: &str| {
            md.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.replace(' ', ""))
                .unwrap_or_default()
        };
        let list = |v: String| -> Vec<String> { v.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect() };
        let scoped = |v: String| -> Vec<String> {
            let mut out: Vec<String> = vec![];
            for app in v.split(';') {
                let Some((id, topics)) = app.split_once('=') else {
                    continue;
                };
                if id != app_id {
                    continue;
                }
                for t in topics.split(',') {
                    if !out.iter().any(|o| o == t) {
                        out.push(t.to_owned());
                    }
                }
            }
            out
        };
        TopicScopes {
            allowed: list(find("allowedTopics")),
            protected: list(find("protectedTopics")),
            publishing: scoped(find("publishingScopes")),
            subscribing: scoped(find("subscriptionScopes")),
        }
    }

    /// Dapr's `IsOperationAllowed`: the topic must be allowed (when a list is given); a protected topic, or any
    /// topic once the app has scopes, must be in the app's scope.
    fn allows(&self, topic: &str, scoped: &[String]) -> bool {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|t| t == topic) {
            return false;
        }
        let protected = self.protected.iter().any(|t| t == topic);
        if !protected && scoped.is_empty() {
            return true;
        }
        scoped.iter().any(|t| t == topic)
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.allows(topic, &self.publishing)
    }

    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.allows(topic, &self.subscribing)
    }
}

/// Records a pub/sub component's topic scopes for this app (the component's app id) when it is loaded.
pub fn admit(_: &ComponentTable, c: &Loaded) -> Result<(), String> {
    c.set_settings(TopicScopes::from_loaded(c, &c.metadata.app_id));
    Ok(())
}

/// The publish side of the block, over the loaded components.
#[derive(Clone)]
pub struct PubSubApi {
    table: Arc<ComponentTable>,
    app_id: String,
    pub(crate) metrics: Arc<crate::sidecar::metrics::Metrics>,
}

/// A pub/sub component in use, with its scopes.
pub struct Component {
    pub handle: Handle<dyn PubSub>,
}

impl Component {
    pub fn scopes(&self) -> TopicScopes {
        self.handle
            .component
            .settings::<TopicScopes>()
            .cloned()
            .unwrap_or_default()
    }

    fn handles_ttl(&self) -> bool {
        self.handle.features().contains(&Feature::MessageTtl)
    }
}

impl PubSubApi {
    pub fn new(table: Arc<ComponentTable>, app_id: &str, metrics: Arc<crate::sidecar::metrics::Metrics>) -> Self {
        PubSubApi {
            table,
            app_id: app_id.to_owned(),
            metrics,
        }
    }

    /// The component and topic a publish names: Dapr's checks, in Dapr's order.
    pub fn target(&self, pubsub: &str, topic: &str) -> ApiResult<Component> {
        if pubsub.is_empty() {
            return Err(ApiError::pubsub_name_empty());
        }
        let handle = self
            .table
            .get::<dyn PubSub>(pubsub)
            .ok_or_else(|| ApiError::pubsub_not_found(pubsub))?;
        if topic.is_empty() {
            return Err(ApiError::topic_empty(pubsub));
        }
        Ok(Component { handle })
    }

    fn check_scope(&self, c: &Component, pubsub: &str, topic: &str) -> ApiResult<()> {
        if c.scopes().may_publish(topic) {
            Ok(())
        } else {
            Err(ApiError::pubsub_forbidden(pubsub, topic, &self.app_id))
        }
    }

    /// Publishes one event: wrapped in a CloudEvent unless `rawPayload` is set.
    pub async fn publish(&self, req: PublishRequest) -> ApiResult<()> {
        let c = self.target(&req.pubsub, &req.topic)?;
        let message = self.message(
            &c,
            &req.pubsub,
            &req.topic,
            &req.data,
            &req.content_type,
            req.metadata,
            &req.traceparent,
            &req.tracestate,
        )?;
        self.check_scope(&c, &req.pubsub, &req.topic)?;
        let started = std::time::Instant::now();
        let published = c.handle.publish(&message).await;
        self.metrics
            .pubsub_egress(&req.pubsub, &req.topic, published.is_ok(), started.elapsed());
        published.map_err(|e| ApiError::pubsub_publish(&req.pubsub, &req.topic, e))
    }

    /// The message a publish sends: the CloudEvent (or the raw bytes) and the request's metadata.
    #[allow(clippy::too_many_arguments)]
    fn message(
        &self,
        c: &Component,
        pubsub: &str,
        topic: &str,
        data: &[u8],
        content_type: &str,
        metadata: BTreeMap<String, String>,
        traceparent: &str,
        tracestate: &str,
    ) -> ApiResult<Message> {
        let raw = raw_payload(&metadata).map_err(|e| ApiError::pubsub_metadata(pubsub, e))?;
        let ttl = cloudevent::ttl(&metadata).map_err(|e| ApiError::pubsub_metadata(pubsub, e))?;
        let (data, content_type) = if raw {
            (Bytes::copy_from_slice(data), content_type.to_owned())
        } else {
            let p = cloudevent::Publication {
                source: &self.app_id,
                topic,
                pubsub,
                content_type,
                data,
                traceparent,
                tracestate,
            };
            let mut ce = cloudevent::envelope(&p, &metadata).map_err(|e| ApiError::pubsub_cloudevent(pubsub, e))?;
            if !c.handles_ttl() {
                cloudevent::apply_ttl(&mut ce, ttl);
            }
            let bytes = serde_json::to_vec(&ce).map_err(|e| ApiError::pubsub_cloudevent(pubsub, e))?;
            (Bytes::from(bytes), cloudevent::CLOUDEVENT_CONTENT_TYPE.to_owned())
        };
        Ok(Message {
            topic: topic.to_owned(),
            data,
            content_type: (!content_type.is_empty()).then_some(content_type),
            metadata,
        })
    }

    /// Publishes many events; answers the entries that failed (an error only when none could be tried).
    pub async fn bulk_publish(
        &self,
        pubsub: &str,
        topic: &str,
        entries: Vec<BulkPublishEntry>,
        metadata: BTreeMap<String, String>,
        traceparent: &str,
    ) -> ApiResult<Vec<FailedEntry>> {
        let c = self.target(pubsub, topic)?;
        raw_payload(&metadata).map_err(|e| ApiError::pubsub_metadata(pubsub, e))?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if e.entry_id.is_empty() || !seen.insert(e.entry_id.clone()) {
                return Err(ApiError::pubsub_marshal_events(
                    pubsub,
                    topic,
                    "entryId is duplicated or not present for entry",
                ));
            }
            // Entry metadata wins over the request's.
            let mut md = e.metadata;
            for (k, v) in &metadata {
                md.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let message = self.message(&c, pubsub, topic, &e.event, &e.content_type, md, traceparent, "")?;
            out.push(BulkEntry {
                entry_id: e.entry_id,
                message,
            });
        }
        self.check_scope(&c, pubsub, topic)?;
        let started = std::time::Instant::now();
        let failed = c.handle.bulk_publish(&out).await;
        self.metrics
            .pubsub_egress(pubsub, topic, failed.is_empty(), started.elapsed());
        Ok(failed)
    }

    /// Publishes a message as it is (a dead letter keeps the original bytes, content type and metadata).
    pub async fn forward(&self, pubsub: &str, message: &Message) -> Result<(), String> {
        let c = self
            .table
            .get::<dyn PubSub>(pubsub)
            .ok_or_else(|| format!("pubsub {pubsub} is not found"))?;
        c.publish(message).await.map_err(|e| e.to_string())
    }
}

/// `rawPayload` metadata: a boolean, false when absent.
pub fn raw_payload(metadata: &BTreeMap<String, String>) -> Result<bool, String> {
    match metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case("rawPayload")) {
        None => Ok(false),
        Some((_, v)) => crate::components::metadata::parse_bool(v)
            .ok_or_else(|| format!("rawPayload value {:?} is not a boolean", crate::echo::echo(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(md: &[(&str, &str)], app: &str) -> TopicScopes {
        let c = crate::api::Component::new("p", "pubsub.in-memory", &[]);
        let md = crate::components::Metadata::new("p", app, "", md.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let loaded = Loaded::new(
            c,
            md,
            crate::components::Instance::new::<dyn PubSub>(Arc::new(
                crate::components::pubsub::memory::MemoryPubSub::new(std::time::Duration::from_secs(1)),
            )),
        );
        TopicScopes::from_loaded(&loaded, app)
    }

    #[test]
    fn scopes_follow_dapr_rules() {
        let s = scopes(
            &[
                ("publishingScopes", "a=t1,t2; b=t3"),
                ("subscriptionScopes", "a=t1"),
                ("allowedTopics", "t1,t2,t4"),
            ],
            "a",
        );
        assert!(s.may_publish("t1") && s.may_publish("t2"));
        assert!(!s.may_publish("t3") && !s.may_publish("t4"));
        assert!(s.may_subscribe("t1") && !s.may_subscribe("t2"));
        // An app without scopes may use any allowed topic; a protected one needs a scope.
        let s = scopes(&[("allowedTopics", "t1,t2"), ("protectedTopics", "t2")], "b");
        assert!(s.may_publish("t1") && !s.may_publish("t2") && !s.may_publish("t5"));
        assert!(scopes(&[], "c").may_publish("anything"));
    }

    #[test]
    fn raw_payload_is_a_boolean() {
        assert_eq!(raw_payload(&BTreeMap::new()), Ok(false));
        let md = BTreeMap::from([("rawPayload".to_owned(), "true".to_owned())]);
        assert_eq!(raw_payload(&md), Ok(true));
        let md = BTreeMap::from([("rawPayload".to_owned(), "yes please".to_owned())]);
        assert!(raw_payload(&md).is_err());
    }
}
