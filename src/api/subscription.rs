//! `Subscription` (dapr.io/v1alpha1 and v2alpha1): declarative pub/sub subscriptions, normalised to v2alpha1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::ObjectMeta;

/// A subscription in its storage version (v2alpha1); v1alpha1 documents convert into it on load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: SubscriptionSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    pub pubsubname: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub routes: Routes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_subscribe: Option<BulkSubscribe>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// CEL expression over the CloudEvent.
    #[serde(rename = "match")]
    pub match_: String,
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkSubscribe {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_await_duration_ms: Option<i32>,
}

/// The v1alpha1 shape: a single `route` instead of `routes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionV1Alpha1 {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: SubscriptionSpecV1Alpha1,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpecV1Alpha1 {
    pub pubsubname: String,
    pub topic: String,
    pub route: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
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
        }
    }
}
