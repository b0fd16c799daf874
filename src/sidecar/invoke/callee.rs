//! The callee side of service invocation, served on `--dapr-internal-grpc-port` as HTTP/2 (h2c): checks access
//! control, then forwards the request to the app — HTTP/1.1 to an HTTP app, `AppCallback.OnInvoke` for an
//! HTTP-style call to a gRPC app, or the gRPC call itself (trailers included) for proxied gRPC.
//!
//! tandem's sidecar-to-sidecar protocol is plain HTTP/2: the method path and query are the request's path, the
//! verb is the request's method, headers travel as headers, bodies stream both ways, and `tandem-invoke` says
//! whether the call is HTTP-style (`http`) or a gRPC call to forward as it is (`grpc`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri};
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::headers::{self, CALLER_APP_ID, CALLER_NAMESPACE, MODE};
use super::{grpc_error_response, http_status_from_code};
use crate::api::access_control::{AccessControl, CallerIdentity};
use crate::sidecar::app_channel::{AppChannel, AppProtocol};
use crate::sidecar::error::ApiError;

pub struct Callee {
    pub app_id: String,
    pub app: Option<Arc<AppChannel>>,
    /// h2c client for gRPC calls forwarded to the app.
    pub app_h2: Client<HttpConnector, Body>,
    pub acl: Arc<AccessControl>,
    pub max_body: usize,
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

fn error_response(mode: Mode, e: ApiError) -> Response<Body> {
    match mode {
        Mode::Http => axum::response::IntoResponse::into_response(e),
        Mode::Grpc => grpc_error_response(e.grpc, &e.message),
    }
}

impl Callee {
    /// Handles one invocation that reached this sidecar (from another sidecar, or from itself).
    pub async fn handle(&self, mut req: Request<Body>) -> Response<Body> {
        let mode = match headers::get(req.headers(), MODE) {
            Some("grpc") => Mode::Grpc,
            _ => Mode::Http,
        };
        let caller = CallerIdentity {
            app_id: headers::get(req.headers(), CALLER_APP_ID)
                .unwrap_or_default()
                .to_owned(),
            namespace: headers::get(req.headers(), CALLER_NAMESPACE)
                .unwrap_or_default()
                .to_owned(),
            trust_domain: headers::get(req.headers(), headers::CALLER_TRUST_DOMAIN)
                .unwrap_or_default()
                .to_owned(),
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
        let _permit = match &app.concurrency {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        headers::strip_internal(req.headers_mut());
        if let Some(token) = app.token.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
            req.headers_mut().insert("dapr-api-token", token);
        }
        let result = match (mode, app.protocol) {
            (Mode::Grpc, _) => self.forward(&self.app_h2, &app, req, axum::http::Version::HTTP_2).await,
            (Mode::Http, AppProtocol::Http) => {
                self.forward(app.http_client(), &app, req, axum::http::Version::HTTP_11)
                    .await
            }
            (Mode::Http, AppProtocol::Grpc) => return self.on_invoke(&app, req).await,
        };
        match result {
            Ok(resp) => resp,
            Err(e) => error_response(
                mode,
                ApiError::direct_invoke(&self.app_id, &format!("error invoking app channel: {e}")),
            ),
        }
    }

    /// Forwards the request to the app as it is, streaming both ways.
    async fn forward(
        &self,
        client: &Client<HttpConnector, Body>,
        app: &AppChannel,
        mut req: Request<Body>,
        version: axum::http::Version,
    ) -> Result<Response<Body>, String> {
        let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: Uri = format!("http://{}:{}{pq}", app.address, app.port)
            .parse()
            .map_err(|e| format!("{e}"))?;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{e}: {}", super::source_chain(&e)))?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// An HTTP-style call to a gRPC app: `AppCallback.OnInvoke`.
    async fn on_invoke(&self, app: &AppChannel, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let data = match http_body_util::Limited::new(body, self.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return error_response(Mode::Http, ApiError::body_read(e)),
        };
        let verb = common::http_extension::Verb::from_str_name(parts.method.as_str())
            .unwrap_or(common::http_extension::Verb::Post);
        let content_type = headers::get(&parts.headers, "content-type")
            .unwrap_or_default()
            .to_owned();
        let message = common::InvokeRequest {
            method: parts.uri.path().trim_start_matches('/').to_owned(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type,
            http_extension: Some(common::HttpExtension {
                verb: verb as i32,
                querystring: parts.uri.query().unwrap_or_default().to_owned(),
            }),
        };
        let mut request = tonic::Request::new(message);
        for (name, value) in parts.headers.iter() {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_bytes()),
            ) {
                if !matches!(name.as_str(), "content-type" | "content-length" | "te") {
                    request.metadata_mut().insert(k, v);
                }
            }
        }
        let mut client = AppCallbackClient::new(app.grpc_channel());
        match client.on_invoke(request).await {
            Ok(resp) => {
                let r = resp.into_inner();
                let mut out = Response::new(Body::from(r.data.map(|a| a.value).unwrap_or_default()));
                if let Ok(ct) = HeaderValue::from_str(if r.content_type.is_empty() {
                    "application/json"
                } else {
                    &r.content_type
                }) {
                    out.headers_mut().insert("content-type", ct);
                }
                out
            }
            Err(status) => {
                let code = http_status_from_code(status.code());
                let body =
                    serde_json::json!({ "code": status.code() as i32, "message": status.message(), "details": [] });
                let mut out = Response::new(Body::from(body.to_string()));
                *out.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                out.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                out
            }
        }
    }
}
