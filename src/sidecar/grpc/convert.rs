//! Proto <-> core conversions for the gRPC API, as free functions.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;

use crate::components::state::{Concurrency, StateError};
use crate::sidecar::error::ApiError;
use crate::sidecar::metadata::MetadataSnapshot;
use crate::sidecar::state::{DeleteItem, SaveItem};

pub fn metadata(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

pub fn concurrency(options: Option<&common::StateOptions>) -> Concurrency {
    use common::state_options::StateConcurrency;
    match options.map(|o| StateConcurrency::try_from(o.concurrency)) {
        Some(Ok(StateConcurrency::ConcurrencyFirstWrite)) => Concurrency::FirstWrite,
        Some(Ok(StateConcurrency::ConcurrencyLastWrite)) => Concurrency::LastWrite,
        _ => Concurrency::Unspecified,
    }
}

/// A proto state item to save. Values are stored as the bytes given, unless `contentType` says JSON.
pub fn save_item(item: common::StateItem) -> Result<SaveItem, ApiError> {
    if item.key.is_empty() {
        return Err(ApiError::empty_key_grpc());
    }
    let concurrency = concurrency(item.options.as_ref());
    let value = if item
        .metadata
        .get("contentType")
        .is_some_and(|c| c == "application/json")
    {
        let v: serde_json::Value = serde_json::from_slice(&item.value)
            .map_err(|e| ApiError::state_save("", &StateError::Backend(format!("value is not valid JSON: {e}"))))?;
        Bytes::from(serde_json::to_vec(&v).expect("a JSON value serialises"))
    } else {
        Bytes::from(item.value)
    };
    Ok(SaveItem {
        key: item.key,
        value,
        etag: item.etag.map(|e| e.value),
        concurrency,
        metadata: metadata(item.metadata),
    })
}

pub fn delete_item(item: common::StateItem) -> DeleteItem {
    DeleteItem {
        concurrency: concurrency(item.options.as_ref()),
        key: item.key,
        etag: item.etag.map(|e| e.value),
        metadata: metadata(item.metadata),
    }
}

/// Configuration items as the gRPC API carries them.
pub fn configuration_items(
    items: crate::components::configuration::Items,
) -> HashMap<String, common::ConfigurationItem> {
    items
        .into_iter()
        .map(|(k, i)| {
            let item = common::ConfigurationItem {
                value: i.value,
                version: i.version,
                metadata: i.metadata.into_iter().collect(),
            };
            (k, item)
        })
        .collect()
}

pub fn metadata_response(m: MetadataSnapshot) -> rt::GetMetadataResponse {
    let app = m.app_connection;
    rt::GetMetadataResponse {
        id: m.id,
        runtime_version: m.runtime_version,
        enabled_features: m.enabled_features,
        registered_components: m
            .components
            .into_iter()
            .map(|c| rt::RegisteredComponents {
                name: c.name,
                r#type: c.type_,
                version: c.version,
                capabilities: c.capabilities,
            })
            .collect(),
        extended_metadata: m.extended.into_iter().collect(),
        subscriptions: m
            .subscriptions
            .into_iter()
            .map(|s| rt::PubsubSubscription {
                pubsub_name: s.pubsub,
                topic: s.topic,
                metadata: s.metadata.into_iter().collect(),
                rules: Some(rt::PubsubSubscriptionRules {
                    rules: s
                        .rules
                        .into_iter()
                        .map(|(m, path)| rt::PubsubSubscriptionRule { r#match: m, path })
                        .collect(),
                }),
                dead_letter_topic: s.dead_letter_topic,
                r#type: rt::PubsubSubscriptionType::from_str_name(s.type_)
                    .unwrap_or(rt::PubsubSubscriptionType::Unknown) as i32,
            })
            .collect(),
        http_endpoints: m
            .http_endpoints
            .into_iter()
            .map(|name| rt::MetadataHttpEndpoint { name })
            .collect(),
        app_connection_properties: Some(rt::AppConnectionProperties {
            port: app.port.map(i32::from).unwrap_or(0),
            protocol: app.protocol,
            channel_address: app.channel_address,
            max_concurrency: app.max_concurrency.map(|c| c as i32).unwrap_or(0),
            health: app.health.map(|h| rt::AppConnectionHealthProperties {
                health_check_path: h.path.unwrap_or_default(),
                health_probe_interval: h.interval,
                health_probe_timeout: h.timeout,
                health_threshold: h.threshold as i32,
            }),
        }),
        actor_runtime: Some(rt::ActorRuntime {
            runtime_status: rt::actor_runtime::ActorRuntimeStatus::Disabled as i32,
            active_actors: vec![],
            host_ready: false,
            placement: "placement: disconnected".into(),
        }),
        ..Default::default()
    }
}
