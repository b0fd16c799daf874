//! The sidecar API: where sidecars in Kubernetes mode load their Components, Subscriptions, HTTPEndpoints,
//! Resiliencies and Configuration from, and watch them change. Served by every operator replica; callers are
//! authenticated by their ServiceAccount token and see only their own namespace. The JSON is in
//! [`crate::control_plane::wire`].

pub mod auth;
pub mod cache;
mod handlers;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{Authenticator, Caller};
pub use cache::ResourceCache;
pub use tls::load_server_config;

use crate::control_plane::wire::ErrorBody;

/// How often an idle watch stream carries a heartbeat line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub cache: Arc<ResourceCache>,
    pub auth: Arc<Authenticator>,
    /// Reads the Secrets that `secretKeyRef`s point to.
    pub client: Client,
    pub heartbeat: Duration,
    /// Ends open watch streams so that the server can stop.
    pub shutdown: CancellationToken,
    /// Signs workload certificates, when the operator is the certificate authority.
    pub ca: Option<Arc<crate::operator::ca::Authority>>,
    /// The operator's namespace, where the `daprsystem` Configuration sets certificate lifetimes.
    pub system_namespace: String,
}

impl ApiState {
    pub fn new(cache: Arc<ResourceCache>, client: Client, audience: &str, shutdown: CancellationToken) -> Self {
        ApiState {
            cache,
            auth: Arc::new(Authenticator::new(client.clone(), audience)),
            client,
            heartbeat: HEARTBEAT,
            shutdown,
            ca: None,
            system_namespace: "default".into(),
        }
    }

    /// Issues workload certificates with `ca`; `system_namespace` holds the `daprsystem` Configuration.
    pub fn with_ca(mut self, ca: Arc<crate::operator::ca::Authority>, system_namespace: &str) -> Self {
        self.ca = Some(ca);
        self.system_namespace = system_namespace.into();
        self
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/resources", get(handlers::resources))
        .route("/v1/configurations/{name}", get(handlers::configuration))
        .route("/v1/watch", get(handlers::watch))
        .route("/v1/certificate", axum::routing::post(handlers::certificate))
        .with_state(state)
}

/// An error as the API returns it: a status and Dapr's `{"errorCode","message"}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "ERR_UNAUTHENTICATED", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "ERR_PERMISSION_DENIED", message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "ERR_BAD_REQUEST", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn not_ready() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ERR_NOT_READY",
            "the operator has not finished listing dapr.io resources yet; retry shortly",
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR_INTERNAL", message)
    }
    pub fn secrets(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR_SECRET_GET", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "{}", self.message);
        } else {
            tracing::debug!(code = self.code, "{}", self.message);
        }
        let body = ErrorBody {
            error_code: self.code.into(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config, shutdown.clone());
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    }
}

#[cfg(test)]
mod tests;
