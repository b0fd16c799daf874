//! HTTP secrets handlers.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{ApiState, json_response, query_metadata};
use crate::sidecar::error::ApiResult;

pub async fn get(
    State(st): State<ApiState>,
    Path((store, key)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let secret = st
        .rt
        .get_secret(&store, &key, &query_metadata(&params))
        .await?;
    Ok(json_response(StatusCode::OK, secret))
}

pub async fn bulk(
    State(st): State<ApiState>,
    Path(store): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let all = st
        .rt
        .get_bulk_secret(&store, &query_metadata(&params))
        .await?;
    Ok(json_response(StatusCode::OK, all))
}
