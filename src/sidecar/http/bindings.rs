//! HTTP bindings handler: invoking an output binding.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tracing::instrument;

use super::{ApiState, DaprPath, read_body, trace_context};
use crate::components::bindings::InvokeRequest;
use crate::sidecar::error::ApiError;

/// The body of `POST /v1.0/bindings/<name>`, as Dapr reads it.
#[derive(serde::Deserialize)]
struct BindingJson {
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    operation: String,
}

/// `metadata.<key>` headers for a binding's answer metadata (values a header cannot carry are left out).
fn with_metadata(mut resp: Response, md: &BTreeMap<String, String>) -> Response {
    for (k, v) in md {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(format!("metadata.{k}")),
            HeaderValue::try_from(v.as_str()),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

#[instrument(level = "debug", name = "http.bindings.invoke", skip_all, fields(binding = %crate::echo::echo(path.store())))]
pub async fn invoke(State(st): State<ApiState>, path: DaprPath, headers: HeaderMap, body: Body) -> Response {
    let name = path.store().to_owned();
    let body = match read_body(body, st.max_body).await {
        Ok(b) => b,
        Err(e) => return ApiError::body_read(e).into_response(),
    };
    // Only the first JSON value counts, as Go's decoder reads it; the content type is not looked at.
    let mut values = serde_json::Deserializer::from_slice(&body).into_iter::<BindingJson>();
    let parsed = match values.next() {
        Some(Ok(p)) => p,
        Some(Err(e)) => return ApiError::malformed_request(e).into_response(),
        None => return ApiError::malformed_request("EOF").into_response(),
    };
    // `data` reaches the binding as JSON text (a string keeps its quotes), as in Dapr.
    let data = Bytes::from(serde_json::to_vec(&parsed.data).unwrap_or_default());
    let mut metadata = parsed.metadata.unwrap_or_default();
    let (traceparent, tracestate) = trace_context(&headers);
    metadata.insert("traceparent".into(), traceparent);
    if !tracestate.is_empty() {
        metadata.insert("tracestate".into(), tracestate);
    }
    let req = InvokeRequest {
        operation: parsed.operation,
        data,
        metadata,
    };
    match st.rt.bindings.invoke(&name, req).await {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Ok(Some(answer)) => {
            let mut resp = (StatusCode::OK, answer.data).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            with_metadata(resp, &answer.metadata)
        }
        Err(failure) => with_metadata(failure.error.into_response(), &failure.metadata),
    }
}
