//! The callee side of service invocation, served on `--dapr-internal-grpc-port` as HTTP/2 (h2c): checks access
//! control, then forwards the request to the app — HTTP/1.1 to an HTTP app, `AppCallback.OnInvoke` for an
//! HTTP-style call to a gRPC app, or the gRPC call itself (trailers included) for proxied gRPC.
//!
//! tandem's sidecar-to-sidecar protocol is plain HTTP/2: the method path and query are the request's path, the
//! verb is the request's method, headers travel as headers, bodies stream both ways, and `tandem-invoke` says
//! whether the call is HTTP-style (`http`) or a gRPC call to forward as it is (`grpc`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};

use super::headers::{self, CALLER_APP_ID, CALLER_NAMESPACE, MODE};
use crate::api::access_control::{AccessControl, CallerIdentity};
use crate::sidecar::app_channel::{AppChannel, AppProtocol};
use crate::sidecar::error::ApiError;
use crate::sidecar::server::PeerIdentity;

pub struct Callee {
    pub app_id: String,
    pub app: Option<Arc<AppChannel>>,
    pub acl: Arc<AccessControl>,
    /// With mTLS the caller is who its certificate says, never what its headers claim.
    pub mtls: bool,
}

/// Which kind of call arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Http,
    Grpc,
}

impl Mode {
    pub fn header(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Grpc => "grpc",
        }
    }
}

/// The error in the protocol of the call: Dapr's JSON body for HTTP, a gRPC status for gRPC.
fn error_response(mode: Mode, e: ApiError) -> Response<Body> {
    match mode {
        Mode::Http => axum::response::IntoResponse::into_response(e),
        Mode::Grpc => e.into_grpc_response(),
    }
}

impl Callee {
    /// Handles one invocation that reached this sidecar (from another sidecar, or from itself).
    #[tracing::instrument(level = "debug", name = "internal.invoke", skip_all, fields(path = %req.uri().path()))]
    pub async fn handle(&self, mut req: Request<Body>) -> Response<Body> {
        let mode = match headers::get(req.headers(), MODE) {
            Some("grpc") => Mode::Grpc,
            _ => Mode::Http,
        };
        let caller = if self.mtls {
            let Some(PeerIdentity(id)) = req.extensions().get::<PeerIdentity>().cloned() else {
                return error_response(
                    mode,
                    ApiError::permission_denied(&self.app_id, "the caller presented no workload certificate"),
                );
            };
            // The app sees the proven identity: whatever the request claimed is replaced.
            headers::set_caller(req.headers_mut(), &id.app_id, &id.namespace);
            CallerIdentity {
                app_id: id.app_id,
                namespace: id.namespace,
                trust_domain: id.trust_domain,
            }
        } else {
            CallerIdentity {
                app_id: headers::get(req.headers(), CALLER_APP_ID)
                    .unwrap_or_default()
                    .to_owned(),
                namespace: headers::get(req.headers(), CALLER_NAMESPACE)
                    .unwrap_or_default()
                    .to_owned(),
                trust_domain: headers::get(req.headers(), headers::CALLER_TRUST_DOMAIN)
                    .unwrap_or_default()
                    .to_owned(),
            }
        };
        let operation = req.uri().path().to_owned();
        let verb = (mode == Mode::Http).then(|| req.method().as_str().to_owned());
        let Some(app) = self.app.clone() else {
            return error_response(
                mode,
                ApiError::direct_invoke(&self.app_id, "app channel is not initialized"),
            );
        };
        let app_http = app.protocol == AppProtocol::Http;
        let decision = self.acl.check(&caller, &operation, verb.as_deref(), app_http);
        if !decision.allowed {
            tracing::info!(caller = %caller.app_id, operation, reason = %decision.reason, "access control denied a call");
            let message = format!(
                "access control policy has denied access to id: spiffe://{}/ns/{}/{} operation: {} verb: {}",
                if caller.trust_domain.is_empty() {
                    "public"
                } else {
                    &caller.trust_domain
                },
                caller.namespace,
                caller.app_id,
                operation.trim_start_matches('/'),
                verb.as_deref().unwrap_or("NONE")
            );
            return error_response(mode, ApiError::permission_denied(&self.app_id, &message));
        }
        headers::strip_internal(req.headers_mut());
        // An early call (the sidecar is registered, its app still starting) waits for the app, bounded.
        if let Err(e) = app.until_listening().await {
            return error_response(mode, ApiError::direct_invoke(&self.app_id, &e.to_string()));
        }
        let result = match mode {
            Mode::Grpc => app.forward_grpc(req).await,
            Mode::Http => app.invoke_method(req).await,
        };
        match result {
            Ok(resp) => resp,
            Err(e @ crate::sidecar::app_channel::AppCallError::Unhealthy) => {
                error_response(mode, ApiError::direct_invoke(&self.app_id, &e.to_string()))
            }
            Err(e) => error_response(
                mode,
                ApiError::direct_invoke(&self.app_id, &format!("error invoking app channel: {e}")),
            ),
        }
    }
}
