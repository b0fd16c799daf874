//! HTTP pub/sub handlers: publish and bulk publish.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::instrument;

use super::{ApiState, DaprPath, json_response, query_metadata, read_body};
use crate::sidecar::error::{ApiError, ApiResult};
use crate::sidecar::pubsub::{BulkPublishEntry, PublishRequest, cloudevent};

/// The caller's W3C trace context, or a new (unsampled) one, as Dapr stamps every event with one.
pub fn trace_context(headers: &HeaderMap) -> (String, String) {
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let parent = get("traceparent");
    let parent = if parent.len() == 55 && parent.is_ascii() {
        parent
    } else {
        new_traceparent()
    };
    (parent, get("tracestate"))
}

pub fn new_traceparent() -> String {
    format!("00-{:032x}-{:016x}-00", rand::random::<u128>(), rand::random::<u64>())
}

fn pubsub_and_topic(path: &DaprPath) -> (String, String) {
    (
        path.0.first().cloned().unwrap_or_default(),
        path.0.get(1).cloned().unwrap_or_default(),
    )
}

#[instrument(level = "debug", name = "http.pubsub.publish", skip_all, fields(pubsub = %crate::echo::echo(path.store())))]
pub async fn publish(
    State(st): State<ApiState>,
    path: DaprPath,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
    body: Body,
) -> ApiResult<Response> {
    let (pubsub, topic) = pubsub_and_topic(&path);
    st.rt.pubsub.target(&pubsub, &topic)?;
    let data = read_body(body, st.max_body).await.map_err(ApiError::body_read)?;
    let (traceparent, tracestate) = trace_context(&headers);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    st.rt
        .pubsub
        .publish(PublishRequest {
            pubsub,
            topic,
            data,
            content_type,
            metadata: query_metadata(&params),
            traceparent,
            tracestate,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One entry of a bulk publish body, as Dapr reads it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryJson {
    #[serde(default, alias = "entryID")]
    entry_id: String,
    #[serde(default)]
    event: serde_json::Value,
    #[serde(default)]
    content_type: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// An entry's event as bytes, per its content type (Dapr's `ConvertEventToBytes`): base64 for binary, a string
/// for text, JSON for JSON and CloudEvents.
fn event_bytes(e: &EntryJson) -> Result<bytes::Bytes, String> {
    let mismatch = || {
        format!(
            "the event of entry {:?} does not match its content type {:?}",
            crate::echo::echo(&e.entry_id),
            crate::echo::echo(&e.content_type)
        )
    };
    if cloudevent::is_binary(&e.content_type) {
        let serde_json::Value::String(s) = &e.event else {
            return Err(mismatch());
        };
        return base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s)
            .map(Into::into)
            .map_err(|err| format!("unable to decode base64 application/octet-stream data: {err}"));
    }
    if cloudevent::is_string(&e.content_type) {
        let serde_json::Value::String(s) = &e.event else {
            return Err(mismatch());
        };
        return Ok(bytes::Bytes::from(s.clone()));
    }
    if cloudevent::is_json(&e.content_type) || cloudevent::is_cloudevent(&e.content_type) {
        return serde_json::to_vec(&e.event)
            .map(Into::into)
            .map_err(|err| err.to_string());
    }
    Err(mismatch())
}

#[instrument(level = "debug", name = "http.pubsub.bulk_publish", skip_all, fields(pubsub = %crate::echo::echo(path.store())))]
pub async fn bulk_publish(
    State(st): State<ApiState>,
    path: DaprPath,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
    body: Body,
) -> ApiResult<Response> {
    let (pubsub, topic) = pubsub_and_topic(&path);
    st.rt.pubsub.target(&pubsub, &topic)?;
    let body = read_body(body, st.max_body).await.map_err(ApiError::body_read)?;
    let entries: Vec<EntryJson> =
        serde_json::from_slice(&body).map_err(|e| ApiError::pubsub_unmarshal_events(&pubsub, &topic, e))?;
    let mut decoded = Vec::with_capacity(entries.len());
    for e in &entries {
        let event = event_bytes(e).map_err(|err| ApiError::pubsub_marshal_events(&pubsub, &topic, err))?;
        decoded.push(BulkPublishEntry {
            entry_id: e.entry_id.clone(),
            event,
            content_type: e.content_type.clone(),
            metadata: e.metadata.clone(),
        });
    }
    let (traceparent, _) = trace_context(&headers);
    let failed = st
        .rt
        .pubsub
        .bulk_publish(&pubsub, &topic, decoded, query_metadata(&params), &traceparent)
        .await?;
    if failed.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let failed_entries: Vec<serde_json::Value> = failed
        .iter()
        .map(|f| serde_json::json!({ "entryId": f.entry_id, "error": f.error }))
        .collect();
    Ok(json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        serde_json::json!({ "failedEntries": failed_entries, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE" }),
    ))
}
