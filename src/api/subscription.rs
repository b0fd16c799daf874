//! `Subscription` (dapr.io/v1alpha1 and v2alpha1): declarative pub/sub subscriptions, normalised to v2alpha1.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::common::{ObjectMeta, ResourceStatus};

/// A declarative pub/sub subscription: which topic of which pub/sub component is delivered to which app route.
///
/// This is the storage version (v2alpha1); v1alpha1 documents convert into it on load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: SubscriptionSpec,
    /// App ids this subscription applies to; every app in the namespace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceStatus>,
}

/// The topic to subscribe to and where its events go (v2alpha1).
///
/// A v1alpha1-shaped `route` is accepted too and read as `routes.default`, so objects written as v1alpha1 (stored
/// without conversion) are understood.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = accept_v1alpha1_route)]
pub struct SubscriptionSpec {
    /// Name of the pub/sub component.
    pub pubsubname: String,
    /// Topic to subscribe to.
    pub topic: String,
    /// Subscription metadata passed to the pub/sub component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Where events are delivered: CEL rules tried in order, then the default path.
    #[serde(default)]
    pub routes: Routes,
    /// Topic that receives events the app failed to process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Deliver events to the app in batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_subscribe: Option<BulkSubscribe>,
}

/// The wire shape of [`SubscriptionSpec`]: v2alpha1 fields plus v1alpha1's `route`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionSpecWire {
    pubsubname: String,
    topic: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    routes: Routes,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    bulk_subscribe: Option<BulkSubscribe>,
}

impl<'de> Deserialize<'de> for SubscriptionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = SubscriptionSpecWire::deserialize(deserializer)?;
        let mut routes = wire.routes;
        if routes.default.is_empty() {
            routes.default = wire.route.unwrap_or_default();
        }
        Ok(SubscriptionSpec {
            pubsubname: wire.pubsubname,
            topic: wire.topic,
            metadata: wire.metadata,
            routes,
            dead_letter_topic: wire.dead_letter_topic,
            bulk_subscribe: wire.bulk_subscribe,
        })
    }
}

/// Keeps a v1alpha1 `route` stored under v2alpha1 from being pruned by the API server.
fn accept_v1alpha1_route(schema: &mut schemars::Schema) {
    if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert(
            "route".into(),
            serde_json::json!({
                "type": "string",
                "description": "v1alpha1's single route; read as `routes.default` when that is empty.",
            }),
        );
    }
}

/// Routing of a topic's events to app paths.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Routes {
    /// Rules tried in order; the first whose CEL expression matches the event picks the path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Path for events no rule matches.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default: String,
}

/// Sends events matching a CEL expression to a path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rule {
    /// CEL expression over the CloudEvent, e.g. `event.type == "order"`.
    #[serde(rename = "match")]
    pub match_: String,
    /// App path for events that match.
    pub path: String,
}

/// Bulk delivery settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkSubscribe {
    /// Deliver events in batches.
    #[serde(default)]
    pub enabled: bool,
    /// Most events in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_count: Option<i32>,
    /// Longest wait, in milliseconds, before a partial batch is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_await_duration_ms: Option<i32>,
}

/// A declarative pub/sub subscription in its v1alpha1 shape: a single `route` instead of `routes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionV1Alpha1 {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: SubscriptionSpecV1Alpha1,
    /// App ids this subscription applies to; every app in the namespace when empty.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceStatus>,
}

/// The topic to subscribe to and the one app path its events go to (v1alpha1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpecV1Alpha1 {
    /// Name of the pub/sub component.
    pub pubsubname: String,
    /// Topic to subscribe to.
    pub topic: String,
    /// App path events are delivered to.
    pub route: String,
    /// Subscription metadata passed to the pub/sub component.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Topic that receives events the app failed to process.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Deliver events to the app in batches.
    #[serde(default)]
    pub bulk_subscribe: Option<BulkSubscribe>,
}

impl From<SubscriptionV1Alpha1> for Subscription {
    fn from(v1: SubscriptionV1Alpha1) -> Self {
        Subscription {
            api_version: "dapr.io/v2alpha1".into(),
            kind: "Subscription".into(),
            metadata: v1.metadata,
            spec: SubscriptionSpec {
                pubsubname: v1.spec.pubsubname,
                topic: v1.spec.topic,
                metadata: v1.spec.metadata,
                routes: Routes {
                    rules: vec![],
                    default: v1.spec.route,
                },
                dead_letter_topic: v1.spec.dead_letter_topic,
                bulk_subscribe: v1.spec.bulk_subscribe,
            },
            scopes: v1.scopes,
            status: v1.status,
        }
    }
}
