//! HTTP health, metadata and shutdown handlers.

use std::collections::BTreeMap;
use tracing::instrument;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{ApiState, DaprPath, json_response, query_param, read_body};
use crate::sidecar::error::{ApiError, ApiResult};
use crate::sidecar::metadata::MetadataSnapshot;

#[instrument(level = "debug", name = "http.metadata.healthz", skip_all)]
pub async fn healthz(State(st): State<ApiState>, Query(params): Query<Vec<(String, String)>>) -> ApiResult<StatusCode> {
    if !st.rt.health.ready() {
        return Err(ApiError::not_ready("[runtime]"));
    }
    if query_param(&params, "appid").is_some_and(|id| id != st.rt.app_id) {
        return Err(ApiError::app_id_mismatch());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[instrument(level = "debug", name = "http.metadata.healthz_outbound", skip_all)]
pub async fn healthz_outbound(State(st): State<ApiState>) -> ApiResult<StatusCode> {
    if st.rt.health.outbound_ready() {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::outbound_not_ready())
    }
}

#[instrument(level = "debug", name = "http.metadata.put_metadata", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn put_metadata(State(st): State<ApiState>, path: DaprPath, body: Body) -> ApiResult<StatusCode> {
    let key = path.store().to_owned();
    let bytes = read_body(body, st.max_body).await.map_err(ApiError::body_read)?;
    st.rt
        .metadata
        .set(&key, &String::from_utf8_lossy(&bytes))
        .map_err(ApiError::metadata_set)?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1.0/shutdown: begin a graceful shutdown (for Kubernetes Jobs).
#[instrument(level = "debug", name = "http.metadata.shutdown", skip_all)]
pub async fn shutdown(State(st): State<ApiState>) -> StatusCode {
    st.rt.shutdown.cancel();
    StatusCode::NO_CONTENT
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ComponentJson<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    capabilities: &'a [String],
}

#[derive(Serialize)]
struct RuleJson<'a> {
    #[serde(rename = "match", skip_serializing_if = "str::is_empty")]
    match_: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    path: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionJson<'a> {
    pubsubname: &'a str,
    topic: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, String>,
    rules: Vec<RuleJson<'a>>,
    dead_letter_topic: &'a str,
    #[serde(rename = "type")]
    type_: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_path: Option<&'a str>,
    health_probe_interval: &'a str,
    health_probe_timeout: &'a str,
    health_threshold: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppConnectionJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    protocol: &'a str,
    channel_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthJson<'a>>,
}

#[derive(Serialize)]
struct NameJson<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActorRuntimeJson {
    runtime_status: &'static str,
    host_ready: bool,
    placement: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataJson<'a> {
    id: &'a str,
    runtime_version: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    enabled_features: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    components: Vec<ComponentJson<'a>>,
    extended: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subscriptions: Vec<SubscriptionJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    http_endpoints: Vec<NameJson<'a>>,
    app_connection_properties: AppConnectionJson<'a>,
    actor_runtime: ActorRuntimeJson,
}

fn to_json(m: &MetadataSnapshot) -> MetadataJson<'_> {
    let app = &m.app_connection;
    MetadataJson {
        id: &m.id,
        runtime_version: &m.runtime_version,
        enabled_features: &m.enabled_features,
        components: m
            .components
            .iter()
            .map(|c| ComponentJson {
                name: &c.name,
                type_: &c.type_,
                version: &c.version,
                capabilities: &c.capabilities,
            })
            .collect(),
        extended: &m.extended,
        subscriptions: m
            .subscriptions
            .iter()
            .map(|s| SubscriptionJson {
                pubsubname: &s.pubsub,
                topic: &s.topic,
                metadata: &s.metadata,
                rules: s.rules.iter().map(|(m, p)| RuleJson { match_: m, path: p }).collect(),
                dead_letter_topic: &s.dead_letter_topic,
                type_: s.type_,
            })
            .collect(),
        http_endpoints: m.http_endpoints.iter().map(|n| NameJson { name: n }).collect(),
        app_connection_properties: AppConnectionJson {
            port: app.port,
            protocol: &app.protocol,
            channel_address: &app.channel_address,
            max_concurrency: app.max_concurrency,
            health: app.health.as_ref().map(|h| HealthJson {
                health_check_path: h.path.as_deref(),
                health_probe_interval: &h.interval,
                health_probe_timeout: &h.timeout,
                health_threshold: h.threshold,
            }),
        },
        actor_runtime: ActorRuntimeJson {
            runtime_status: "DISABLED",
            host_ready: false,
            placement: "placement: disconnected",
        },
    }
}

#[instrument(level = "debug", name = "http.metadata.get_metadata", skip_all)]
pub async fn get_metadata(State(st): State<ApiState>) -> Response {
    let snapshot = st.rt.metadata.snapshot();
    json_response(StatusCode::OK, to_json(&snapshot))
}
