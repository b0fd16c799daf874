//! HTTP service invocation: `/v1.0/invoke/<target>/method/<method>` for every verb, and any path carrying a
//! `dapr-app-id` header (or Basic auth user `dapr-app-id`).

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use tracing::instrument;

use super::ApiState;
use crate::sidecar::error::ApiError;
use crate::sidecar::invoke::Mode;
use crate::sidecar::invoke::target::{self, TargetError};

#[instrument(level = "debug", name = "http.invoke.invoke", skip_all)]
pub async fn invoke(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    mut req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    let (target, method) = match target::from_http(&path, req.headers_mut()) {
        Ok(t) => t,
        Err(TargetError::NoMethod) => return ApiError::invoke_no_method().into_response(),
        Err(_) => return ApiError::no_app_id().into_response(),
    };
    match st
        .rt
        .invoker
        .invoke(&target, &method, req, Mode::Http, Some(peer))
        .await
    {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}
