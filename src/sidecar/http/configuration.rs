//! HTTP configuration handlers: get, subscribe, unsubscribe (`/v1.0/configuration/...` and `/v1.0-alpha1/...`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::instrument;

use super::{ApiState, DaprPath, json_response, query_metadata};
use crate::components::configuration::SubscribeRequest;

type Params = Query<Vec<(String, String)>>;

/// Every `key` query parameter, in order.
fn keys(params: &[(String, String)]) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == "key")
        .map(|(_, v)| v.clone())
        .collect()
}

#[instrument(level = "debug", name = "http.configuration.get", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn get(State(st): State<ApiState>, path: DaprPath, Query(params): Params) -> Response {
    let keys = keys(&params);
    match st
        .rt
        .configuration
        .get(path.store(), &keys, &query_metadata(&params))
        .await
    {
        Ok(items) if items.is_empty() => StatusCode::NO_CONTENT.into_response(),
        Ok(items) => json_response(StatusCode::OK, items),
        Err(e) => e.into_response(),
    }
}

#[instrument(level = "debug", name = "http.configuration.subscribe", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn subscribe(State(st): State<ApiState>, path: DaprPath, Query(params): Params) -> Response {
    let req = SubscribeRequest {
        keys: keys(&params),
        metadata: query_metadata(&params),
    };
    match st.rt.configuration.subscribe_app(path.store(), req).await {
        Ok(id) => json_response(StatusCode::OK, serde_json::json!({ "id": id })),
        Err(e) => e.into_response(),
    }
}

#[instrument(level = "debug", name = "http.configuration.unsubscribe", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn unsubscribe(State(st): State<ApiState>, path: DaprPath) -> Response {
    let id = path.0.get(1).cloned().unwrap_or_default();
    match st.rt.configuration.unsubscribe(path.store(), &id) {
        Ok(()) => json_response(StatusCode::OK, serde_json::json!({ "ok": true })),
        Err(e) => e.into_response(),
    }
}
