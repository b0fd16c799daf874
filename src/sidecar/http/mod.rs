//! HTTP API (axum): routes, the API-token and metrics middleware, and the single place `ApiError` becomes a response.

mod bindings;
mod configuration;
mod conversation;
mod crypto;
mod invoke;
mod jobs;
mod lock;
mod metadata;
pub mod openapi;
mod pubsub;
mod secrets;
mod state;
mod subtle_crypto;
mod workflow;

pub use pubsub::{new_traceparent, trace_context};
/// The request-body decoders of the state handlers, public for the fuzz targets in `fuzz/`.
pub use state::{decode_bulk_get, decode_save, decode_transaction};

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::error::ApiError;
use super::metrics::Metrics;
use super::runtime::Runtime;

/// Shared state of every handler.
#[derive(Clone)]
pub struct ApiState {
    pub rt: Arc<Runtime>,
    pub max_body: usize,
    pub api_token: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    pub api_logging: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::json!({ "errorCode": self.code, "message": self.message });
        if let Some(reason) = self.reason {
            // Dapr's order: request-specific details, then ResourceInfo, then ErrorInfo.
            let extras = self.extras.as_deref().cloned().unwrap_or_default();
            let mut details = vec![];
            if let Some((field, description)) = &extras.bad_field {
                details.push(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "field_violations": [{ "field": field, "description": description }],
                }));
            }
            if let Some((kind, name)) = &extras.resource {
                details.push(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                    "description": "", "owner": "", "resource_name": name, "resource_type": kind,
                }));
            }
            details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io",
                "metadata": extras.app_id.map(|id| serde_json::json!({ "appID": id })),
                "reason": reason,
            }));
            body["details"] = serde_json::Value::Array(details);
        }
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

/// The Dapr API router served on `--dapr-http-port`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(health_routes())
        .route("/v1.0/metadata", get(metadata::get_metadata))
        .route("/v1.0/metadata/{key}", axum::routing::put(metadata::put_metadata))
        .route("/v1.0/state/{store}", post(state::save).put(state::save))
        // Keys named "bulk" or "transaction" are still read and deleted, as in Dapr.
        .route(
            "/v1.0/state/{store}/bulk",
            post(state::bulk_get)
                .put(state::bulk_get)
                .get(state::get)
                .delete(state::delete),
        )
        .route(
            "/v1.0/state/{store}/transaction",
            post(state::transaction)
                .put(state::transaction)
                .get(state::get)
                .delete(state::delete),
        )
        .route("/v1.0/state/{store}/{key}", get(state::get).delete(state::delete))
        .route("/v1.0-alpha1/state/{store}/query", post(state::query).put(state::query))
        .route("/v1.0/publish/{pubsub}", post(pubsub::publish).put(pubsub::publish))
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(pubsub::publish).put(pubsub::publish),
        )
        .route(
            "/v1.0/publish/bulk/{pubsub}/{*topic}",
            post(pubsub::bulk_publish).put(pubsub::bulk_publish),
        )
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
            post(pubsub::bulk_publish).put(pubsub::bulk_publish),
        )
        .route("/v1.0/bindings/{name}", post(bindings::invoke).put(bindings::invoke))
        .route("/v1.0/configuration/{store}", get(configuration::get))
        .route("/v1.0-alpha1/configuration/{store}", get(configuration::get))
        .route("/v1.0/configuration/{store}/subscribe", get(configuration::subscribe))
        .route(
            "/v1.0-alpha1/configuration/{store}/subscribe",
            get(configuration::subscribe),
        )
        .route(
            "/v1.0/configuration/{store}/{id}/unsubscribe",
            get(configuration::unsubscribe),
        )
        .route(
            "/v1.0-alpha1/configuration/{store}/{id}/unsubscribe",
            get(configuration::unsubscribe),
        )
        .route(
            "/v1.0-alpha1/jobs/{name}",
            post(jobs::schedule).get(jobs::get).delete(jobs::delete),
        )
        .route(
            "/v1.0/jobs/{name}",
            post(jobs::schedule).get(jobs::get).delete(jobs::delete),
        )
        .route("/v1.0-alpha1/lock/{store}", post(lock::try_lock))
        .route("/v1.0-alpha1/unlock/{store}", post(lock::unlock))
        .route(
            "/v1.0-alpha1/conversation/{name}/converse",
            post(conversation::converse_alpha1),
        )
        .route(
            "/v1.0-alpha2/conversation/{name}/converse",
            post(conversation::converse_alpha2),
        )
        .route(
            "/v1.0-alpha1/crypto/{store}/encrypt",
            axum::routing::put(crypto::encrypt),
        )
        .route(
            "/v1.0-alpha1/crypto/{store}/decrypt",
            axum::routing::put(crypto::decrypt),
        )
        .route("/v1.0-alpha1/subtlecrypto/{store}/getkey", post(subtle_crypto::get_key))
        .route(
            "/v1.0-alpha1/subtlecrypto/{store}/encrypt",
            post(subtle_crypto::encrypt),
        )
        .route(
            "/v1.0-alpha1/subtlecrypto/{store}/decrypt",
            post(subtle_crypto::decrypt),
        )
        .route(
            "/v1.0-alpha1/subtlecrypto/{store}/wrapkey",
            post(subtle_crypto::wrap_key),
        )
        .route(
            "/v1.0-alpha1/subtlecrypto/{store}/unwrapkey",
            post(subtle_crypto::unwrap_key),
        )
        .route("/v1.0-alpha1/subtlecrypto/{store}/sign", post(subtle_crypto::sign))
        .route("/v1.0-alpha1/subtlecrypto/{store}/verify", post(subtle_crypto::verify))
        .route("/v1.0/workflows/{component}/{name}/start", post(workflow::start))
        .route("/v1.0/workflows/{component}/{instanceID}", get(workflow::get))
        .route(
            "/v1.0/workflows/{component}/{instanceID}/raiseEvent/{eventName}",
            post(workflow::raise_event),
        )
        .route("/v1.0/workflows/{component}/{instanceID}/pause", post(workflow::pause))
        .route(
            "/v1.0/workflows/{component}/{instanceID}/resume",
            post(workflow::resume),
        )
        .route(
            "/v1.0/workflows/{component}/{instanceID}/terminate",
            post(workflow::terminate),
        )
        .route("/v1.0/workflows/{component}/{instanceID}/purge", post(workflow::purge))
        .route("/v1.0-beta1/workflows/{component}/{name}/start", post(workflow::start))
        .route("/v1.0-beta1/workflows/{component}/{instanceID}", get(workflow::get))
        .route(
            "/v1.0-beta1/workflows/{component}/{instanceID}/raiseEvent/{eventName}",
            post(workflow::raise_event),
        )
        .route(
            "/v1.0-beta1/workflows/{component}/{instanceID}/pause",
            post(workflow::pause),
        )
        .route(
            "/v1.0-beta1/workflows/{component}/{instanceID}/resume",
            post(workflow::resume),
        )
        .route(
            "/v1.0-beta1/workflows/{component}/{instanceID}/terminate",
            post(workflow::terminate),
        )
        .route(
            "/v1.0-beta1/workflows/{component}/{instanceID}/purge",
            post(workflow::purge),
        )
        .route("/v1.0/secrets/{store}/bulk", get(secrets::bulk))
        .route("/v1.0/secrets/{store}/{key}", get(secrets::get))
        .route("/v1.0/shutdown", post(metadata::shutdown))
        .route("/v1.0/openapi.yaml", get(openapi::document))
        .route("/v1.0/invoke/{*rest}", axum::routing::any(invoke::invoke))
        // Dapr answers unknown paths and wrong methods from its invocation fallback: a `dapr-app-id` header
        // proxies the call to that app, anything else is 404 ERR_DIRECT_INVOKE.
        .fallback(invoke::invoke)
        .method_not_allowed_fallback(invoke::invoke)
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn_with_state(state.clone(), api_token))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Health only, as Dapr's: what `--dapr-public-port` serves on every interface (the metadata API, which names
/// the app's components and endpoints, stays on the API port).
pub fn public_router(state: ApiState) -> Router {
    Router::new()
        .merge(health_routes())
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

fn health_routes() -> Router<ApiState> {
    Router::new()
        .route("/v1.0/healthz", get(metadata::healthz))
        .route("/v1.0/healthz/outbound", get(metadata::healthz_outbound))
}

/// A request whose handling panics (a bug) is answered 500 `ERR_INTERNAL`; the panic is logged, and every other
/// request — on this connection too — goes on.
pub async fn catch_panic(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(next.run(req))).await {
        Ok(resp) => resp,
        Err(panic) => {
            let path = crate::echo::echo(&path);
            tracing::error!(%method, %path, panic = panic_message(&*panic), "a request handler panicked");
            ApiError::internal_bug().into_response()
        }
    }
}

/// The text a panic carried, when it is text.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}

/// With `DAPR_API_TOKEN` set, every call but GET healthz needs a matching `dapr-api-token` header.
async fn api_token(State(st): State<ApiState>, mut req: Request, next: Next) -> Response {
    if let Some(token) = &st.api_token {
        let path = req.uri().path().trim_end_matches('/');
        let exempt = req.method() == Method::GET && (path == "/v1.0/healthz" || path == "/v1.0/healthz/outbound");
        if !exempt {
            let given = req.headers().get("dapr-api-token").map(|v| v.as_bytes());
            if !given.is_some_and(|g| crate::sidecar::net::same_secret(g, token.as_bytes())) {
                let mut resp = (StatusCode::UNAUTHORIZED, "invalid api token\n").into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                return resp;
            }
        }
        req.headers_mut().remove("dapr-api-token");
    }
    next.run(req).await
}

/// Records Dapr's HTTP server metrics and, with API logging on, logs each call.
async fn observe(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let route = match &route {
        Some(r) if status != 401 => r.as_str(),
        _ => "",
    };
    st.metrics.http_request(&method, route, status, elapsed);
    if st.api_logging {
        let path = crate::echo::echo(&path);
        tracing::info!(target: "dapr.runtime.http-info", method = %method, %path, status = resp.status().as_u16(), duration_ms = elapsed.as_secs_f64() * 1e3, "HTTP API called");
    }
    resp
}

/// Collapses `//` and drops a trailing `/` before routing, as Dapr's router does.
pub fn normalize_path(mut req: Request) -> Request {
    let path = req.uri().path();
    // Invocation paths keep their slashes: a target may be a URL (`/v1.0/invoke/http://host/method/x`).
    if path.starts_with("/v1.0/invoke/") || !(path.contains("//") || (path.len() > 1 && path.ends_with('/'))) {
        return req;
    }
    let mut clean = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        clean.push('/');
        clean.push_str(seg);
    }
    if clean.is_empty() {
        clean.push('/');
    }
    if let Some(q) = req.uri().query() {
        clean.push('?');
        clean.push_str(q);
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = clean.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Path parameters decoded as Dapr decodes them (`url.QueryUnescape`: `%XX` escapes, and `+` is a space).
pub(crate) struct DaprPath(pub Vec<String>);

impl DaprPath {
    /// The first parameter (the store); routes always capture it.
    pub fn store(&self) -> &str {
        self.0.first().map(String::as_str).unwrap_or_default()
    }

    /// The second parameter, or for literal routes such as `/state/{store}/bulk`, the last path segment.
    pub fn key(&self, uri: &axum::http::Uri) -> String {
        self.0
            .get(1)
            .cloned()
            .unwrap_or_else(|| uri.path().rsplit('/').next().unwrap_or_default().to_owned())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for DaprPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let out: Vec<String> = raw
            .iter()
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|e| ApiError::bad_request(format!("failed to unescape request parameter {v:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(DaprPath(out))
    }
}

/// Reads a request body up to `--max-body-size`.
/// The body as `T`, up to `--max-body-size`; an empty body is every field unset (`None`), as in Dapr.
pub(crate) async fn read_json<T: for<'de> serde::Deserialize<'de>>(
    st: &ApiState,
    body: Body,
) -> Result<Option<T>, ApiError> {
    let body = read_body(body, st.max_body).await.map_err(ApiError::body_read)?;
    if body.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(ApiError::malformed_request)
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, String> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            format!("stream too large (the body exceeds --max-body-size of {limit} bytes)")
        } else {
            e.to_string()
        }
    })
}

/// `metadata.<k>=v` query parameters as request metadata.
pub(crate) fn query_metadata(params: &[(String, String)]) -> BTreeMap<String, String> {
    let mut md = BTreeMap::new();
    for (k, v) in params {
        if let Some(name) = k.strip_prefix("metadata.") {
            md.entry(name.to_owned()).or_insert_with(|| v.clone());
        }
    }
    md
}

/// The first value of query parameter `name`.
pub(crate) fn query_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Stored bytes as a JSON value: raw when they are JSON, else as a string.
pub(crate) fn json_data(data: &[u8]) -> Box<serde_json::value::RawValue> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
        && let Ok(text) = std::str::from_utf8(data)
        && let Ok(raw) = serde_json::value::RawValue::from_string(text.trim().to_owned())
    {
        return raw;
    }
    let s = serde_json::to_string(&String::from_utf8_lossy(data)).expect("a string serialises");
    serde_json::value::RawValue::from_string(s).expect("valid JSON")
}

/// A JSON response body.
pub(crate) fn json_response(status: StatusCode, body: impl serde::Serialize) -> Response {
    match serde_json::to_vec(&body) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => ApiError::new(500, tonic::Code::Internal, "ERROR", e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_keeps_json_and_quotes_text() {
        assert_eq!(json_data(br#"{"a":1}"#).get(), r#"{"a":1}"#);
        assert_eq!(json_data(b"hello").get(), r#""hello""#);
        assert_eq!(json_data(b"42").get(), "42");
    }

    #[test]
    fn metadata_params() {
        let p = vec![
            ("metadata.ttlInSeconds".to_owned(), "5".to_owned()),
            ("consistency".into(), "strong".into()),
        ];
        assert_eq!(
            query_metadata(&p),
            BTreeMap::from([("ttlInSeconds".to_owned(), "5".to_owned())])
        );
        assert_eq!(query_param(&p, "consistency"), Some("strong"));
    }
}
