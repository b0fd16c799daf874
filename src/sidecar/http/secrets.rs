//! HTTP secrets handlers.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use tracing::instrument;

use super::{ApiState, DaprPath, json_response, query_metadata};
use crate::sidecar::error::ApiResult;

#[instrument(level = "debug", name = "http.secrets.get", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn get(
    State(st): State<ApiState>,
    path: DaprPath,
    uri: axum::http::Uri,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let (store, key) = (path.store().to_owned(), path.key(&uri));
    let secret = st.rt.secrets.get(&store, &key, &query_metadata(&params)).await?;
    Ok(json_response(StatusCode::OK, secret))
}

#[instrument(level = "debug", name = "http.secrets.bulk", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn bulk(
    State(st): State<ApiState>,
    path: DaprPath,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let store = path.store().to_owned();
    let all = st.rt.secrets.bulk(&store, &query_metadata(&params)).await?;
    Ok(json_response(StatusCode::OK, all))
}
