//! The channel to the user's app: every call the sidecar makes to the app goes through here. It decides HTTP or
//! gRPC (`AppCallback`) by the app protocol and applies, in one place, what every call needs: app health
//! (`--enable-app-health-check`), the `--app-max-concurrency` limit, `APP_API_TOKEN` as `dapr-api-token`, and
//! the caller's trace context (`traceparent`/`tracestate` travel as headers, or as metadata to `AppCallback`).
//! It also waits for the app to listen and probes its health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1::JobEventRequest;
use dapr::dapr::proto::runtime::v1::app_callback_alpha_client::AppCallbackAlphaClient;
use dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient;
use dapr::dapr::proto::runtime::v1::app_callback_health_check_client::AppCallbackHealthCheckClient;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Invocations held at once while the app starts; more fail at once.
pub const MAX_HELD: usize = 1024;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::args::Args;
use super::net::{self as headers, h2c_client, http_status_from_code, source_chain};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    Http,
    Grpc,
}

/// Settings of `--enable-app-health-check`.
#[derive(Clone, Debug)]
pub struct HealthProbe {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub threshold: u32,
}

/// Why a call did not reach the app.
#[derive(Debug, thiserror::Error)]
pub enum AppCallError {
    /// Dapr's `ErrAppUnhealthy`: the health probe marked the app unhealthy.
    #[error("app is not in a healthy state")]
    Unhealthy,
    /// The app did not start listening within the hold.
    #[error("app is not ready: {0}")]
    NotReady(String),
    #[error("{0}")]
    Failed(String),
}

pub struct AppChannel {
    pub port: u16,
    pub protocol: AppProtocol,
    pub address: String,
    /// Pooled keep-alive HTTP/1.1 client for HTTP apps.
    http: Client<HttpConnector, Body>,
    /// HTTP/2 (h2c) client for gRPC calls forwarded to a gRPC app as they are.
    h2: Client<HttpConnector, Body>,
    /// `AppCallback` and health checks of a gRPC app.
    grpc: Channel,
    /// Sent to the app as `dapr-api-token` (APP_API_TOKEN).
    token: Option<HeaderValue>,
    healthy: AtomicBool,
    /// The health as the probe last saw it, for those who pause while the app is unhealthy (subscriptions).
    health: tokio::sync::watch::Sender<bool>,
    /// Whether the app has listened on its port yet (start-up).
    listening: tokio::sync::watch::Sender<bool>,
    /// Invocations waiting for the app to start listening, bounded by [`MAX_HELD`].
    held: std::sync::atomic::AtomicUsize,
    /// How long an early invocation may wait for the app to listen (`--app-ready-hold`).
    hold: Duration,
    /// `--app-max-concurrency` permits.
    concurrency: Option<Arc<Semaphore>>,
    /// The largest request body read whole (an HTTP-style call to a gRPC app), `--max-body-size`.
    max_body: usize,
}

impl AppChannel {
    /// The channel `args` describe, or `None` without `--app-port`.
    pub fn from_args(args: &Args, max_body: usize) -> Option<Arc<Self>> {
        let port = args.app_port.filter(|p| *p > 0)?;
        let protocol = if args.app_protocol == "grpc" {
            AppProtocol::Grpc
        } else {
            AppProtocol::Http
        };
        let address = args.app_channel_address.clone();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let grpc = Endpoint::from_shared(format!("http://{address}:{port}"))
            .expect("a host and port make a valid URI")
            .tcp_nodelay(true)
            .connect_lazy();
        let concurrency = usize::try_from(args.app_max_concurrency)
            .ok()
            .filter(|c| *c > 0)
            .map(|c| Arc::new(Semaphore::new(c)));
        let token = args
            .app_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .and_then(|t| HeaderValue::from_str(t).ok());
        Some(Arc::new(AppChannel {
            port,
            protocol,
            address,
            http,
            h2: h2c_client(),
            grpc,
            token,
            healthy: AtomicBool::new(true),
            health: tokio::sync::watch::Sender::new(true),
            listening: tokio::sync::watch::Sender::new(false),
            held: std::sync::atomic::AtomicUsize::new(0),
            hold: args.app_ready_hold,
            concurrency,
            max_body,
        }))
    }

    /// Waits, within the configured hold (`--app-ready-hold`), until the app has started listening: an invocation
    /// arriving while the app is still starting is held rather than failed. At most [`MAX_HELD`] wait at once.
    pub async fn until_listening(&self) -> Result<(), AppCallError> {
        if *self.listening.borrow() {
            return Ok(());
        }
        if self.held.fetch_add(1, Ordering::AcqRel) >= MAX_HELD {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(AppCallError::NotReady(format!(
                "the app has not started listening on port {} yet and {MAX_HELD} calls already wait for it",
                self.port
            )));
        }
        let mut rx = self.listening.subscribe();
        let waited = tokio::time::timeout(self.hold, rx.wait_for(|l| *l)).await;
        self.held.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(AppCallError::NotReady(format!(
                "the app did not start listening on port {} within {:?} (--app-ready-hold)",
                self.port, self.hold
            ))),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Follows the app's health: `true` while healthy.
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<bool> {
        self.health.subscribe()
    }

    /// Whether the app has started listening.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// What every call to the app goes through: refused while the app is unhealthy, then a concurrency permit
    /// (held until the returned guard drops), and the app token set.
    async fn admit(
        &self,
        headers: &mut HeaderMap,
        check_health: bool,
    ) -> Result<Option<OwnedSemaphorePermit>, AppCallError> {
        if check_health && !self.is_healthy() {
            return Err(AppCallError::Unhealthy);
        }
        let permit = match &self.concurrency {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        headers.remove("dapr-api-token");
        if let Some(token) = &self.token {
            headers.insert("dapr-api-token", token.clone());
        }
        Ok(permit)
    }

    /// An HTTP-style method call (service invocation): forwarded over HTTP/1.1 to an HTTP app, or as
    /// `AppCallback.OnInvoke` to a gRPC app. The app's status, headers and body come back as they are.
    pub async fn invoke_method(&self, mut req: Request<Body>) -> Result<Response<Body>, AppCallError> {
        let _permit = self.admit(req.headers_mut(), true).await?;
        match self.protocol {
            AppProtocol::Http => self.forward(&self.http, req, Version::HTTP_11).await,
            AppProtocol::Grpc => Ok(self.on_invoke(req).await),
        }
    }

    /// A gRPC call forwarded to the app's gRPC server as it is (proxied gRPC), streaming both ways, trailers
    /// included.
    pub async fn forward_grpc(&self, mut req: Request<Body>) -> Result<Response<Body>, AppCallError> {
        let _permit = self.admit(req.headers_mut(), false).await?;
        self.forward(&self.h2, req, Version::HTTP_2).await
    }

    /// Sends the request to the app as it is, streaming both ways.
    async fn forward(
        &self,
        client: &Client<HttpConnector, Body>,
        mut req: Request<Body>,
        version: Version,
    ) -> Result<Response<Body>, AppCallError> {
        let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: Uri = format!("http://{}:{}{pq}", self.address, self.port)
            .parse()
            .map_err(|e| AppCallError::Failed(format!("{e}")))?;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        let resp = client
            .request(req)
            .await
            .map_err(|e| AppCallError::Failed(format!("{e}: {}", source_chain(&e))))?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// An HTTP-style call to a gRPC app: `AppCallback.OnInvoke`, with the request headers (trace context and
    /// token included) as metadata. A gRPC error from the app becomes the HTTP status Dapr maps it to.
    async fn on_invoke(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let data = match http_body_util::Limited::new(body, self.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return axum::response::IntoResponse::into_response(crate::sidecar::error::ApiError::body_read(e));
            }
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
            if matches!(name.as_str(), "content-type" | "content-length" | "te") {
                continue;
            }
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_bytes()),
            ) {
                request.metadata_mut().insert(k, v);
            }
        }
        let mut client = AppCallbackClient::new(self.grpc.clone());
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

    /// A call the sidecar itself makes to an HTTP app (an event delivery, `GET /dapr/subscribe`): `body` sent with
    /// `content_type` and `headers`, the status and up to `--max-body-size` of the answer returned. Events are
    /// refused while the app is unhealthy (`check_health`).
    pub async fn call_http(
        &self,
        method: axum::http::Method,
        path: &str,
        body: bytes::Bytes,
        content_type: &str,
        extra: &[(String, String)],
        check_health: bool,
    ) -> Result<(u16, bytes::Bytes), AppCallError> {
        let mut hdrs = HeaderMap::new();
        let _permit = self.admit(&mut hdrs, check_health).await?;
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let uri: Uri = format!("http://{}:{}{path}", self.address, self.port)
            .parse()
            .map_err(|e| AppCallError::Failed(format!("path {path:?}: {e}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .map_err(|e| AppCallError::Failed(e.to_string()))?;
        *req.headers_mut() = hdrs;
        if let Ok(ct) = HeaderValue::from_str(content_type) {
            req.headers_mut().insert("content-type", ct);
        }
        for (k, v) in extra {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) && !req.headers().contains_key(&k)
            {
                req.headers_mut().insert(k, v);
            }
        }
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| AppCallError::Failed(format!("{e}: {}", source_chain(&e))))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), self.max_body)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| AppCallError::Failed(format!("reading the app's answer: {e}")))?;
        Ok((status, body))
    }

    /// A gRPC `AppCallback` call the sidecar makes (topic events, subscriptions, bindings), with the app token
    /// and `metadata` attached. The outer error says the app could not be called at all; the inner one is the
    /// app's own answer.
    pub async fn callback<T, R, F, Fut>(
        &self,
        message: T,
        metadata: &[(String, String)],
        check_health: bool,
        call: F,
    ) -> Result<Result<R, tonic::Status>, AppCallError>
    where
        F: FnOnce(AppCallbackClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let (request, _permit) = self.grpc_request(message, metadata, check_health).await?;
        let client = AppCallbackClient::new(self.grpc.clone())
            .max_decoding_message_size(self.max_body)
            .max_encoding_message_size(self.max_body);
        Ok(call(client, request).await.map(tonic::Response::into_inner))
    }

    /// A request to a gRPC app, admitted (the permit held until it drops), with the app token and `metadata`.
    async fn grpc_request<T>(
        &self,
        message: T,
        metadata: &[(String, String)],
        check_health: bool,
    ) -> Result<(tonic::Request<T>, Option<OwnedSemaphorePermit>), AppCallError> {
        let mut hdrs = HeaderMap::new();
        let permit = self.admit(&mut hdrs, check_health).await?;
        let mut request = tonic::Request::new(message);
        for (name, value) in hdrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(metadata.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
        {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value),
            ) {
                request.metadata_mut().insert(k, v);
            }
        }
        Ok((request, permit))
    }

    /// A triggered job for a gRPC app, as daprd sends it: `AppCallback.OnJobEvent`, then
    /// `AppCallbackAlpha.OnJobEventAlpha1` when the app does not implement the stable method.
    pub async fn job_event(&self, req: JobEventRequest) -> Result<Result<(), tonic::Status>, AppCallError> {
        let stable = self
            .callback(
                req.clone(),
                &[],
                true,
                |mut c, r| async move { c.on_job_event(r).await },
            )
            .await?;
        match stable {
            Err(s) if s.code() == tonic::Code::Unimplemented => {}
            other => return Ok(other.map(|_| ())),
        }
        let (request, _permit) = self.grpc_request(req, &[], true).await?;
        let mut client = AppCallbackAlphaClient::new(self.grpc.clone())
            .max_decoding_message_size(self.max_body)
            .max_encoding_message_size(self.max_body);
        // Deprecated in the proto, still what apps built on older SDKs implement.
        #[allow(deprecated)]
        let answer = client.on_job_event_alpha1(request).await;
        Ok(answer.map(|_| ()))
    }

    /// Waits until the app accepts TCP connections on its port (or shutdown begins).
    pub async fn wait_until_listening(&self, shutdown: &CancellationToken) {
        let addr = format!("{}:{}", self.address, self.port);
        let started = std::time::Instant::now();
        let mut last_log = started;
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                tracing::info!(address = %addr, waited_ms = started.elapsed().as_millis() as u64, "app is listening");
                self.listening.send_replace(true);
                return;
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(address = %addr, "waiting for the app to listen");
                last_log = std::time::Instant::now();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// One probe: HTTP GET of the health path (2xx healthy) or gRPC `AppCallbackHealthCheck/HealthCheck`.
    pub async fn probe(&self, probe: &HealthProbe) -> bool {
        let attempt = async {
            match self.protocol {
                AppProtocol::Http => {
                    let uri = format!("http://{}:{}{}", self.address, self.port, probe.path);
                    let mut req = Request::get(uri).body(Body::empty()).ok()?;
                    if let Some(t) = &self.token {
                        req.headers_mut().insert("dapr-api-token", t.clone());
                    }
                    let resp = self.http.request(req).await.ok()?;
                    Some(resp.status().is_success())
                }
                AppProtocol::Grpc => {
                    let mut client = AppCallbackHealthCheckClient::new(self.grpc.clone());
                    let mut req = tonic::Request::new(());
                    if let Some(t) = &self.token {
                        req.metadata_mut()
                            .insert("dapr-api-token", t.to_str().ok()?.parse().ok()?);
                    }
                    Some(client.health_check(req).await.is_ok())
                }
            }
        };
        matches!(tokio::time::timeout(probe.timeout, attempt).await, Ok(Some(true)))
    }

    /// Probes every `interval`; `threshold` consecutive failures mark the app unhealthy, one success healthy again.
    pub fn spawn_health_probe(self: &Arc<Self>, probe: HealthProbe, shutdown: CancellationToken) {
        let channel = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(probe.interval) => {}
                }
                if channel.probe(&probe).await {
                    failures = 0;
                    if !channel.healthy.swap(true, Ordering::AcqRel) {
                        tracing::info!("app is healthy again");
                        channel.health.send_replace(true);
                    }
                } else {
                    failures += 1;
                    if failures >= probe.threshold && channel.healthy.swap(false, Ordering::AcqRel) {
                        tracing::warn!(failures, "app is unhealthy");
                        channel.health.send_replace(false);
                    }
                }
            }
        });
    }
}

/// Why one call to the app failed, for the Resiliency policy around it: the status it answered, if any.
#[derive(Debug)]
pub struct CallFailure {
    pub message: String,
    pub http: Option<u16>,
    pub grpc: Option<tonic::Code>,
}

impl CallFailure {
    pub fn new(message: impl Into<String>) -> Self {
        CallFailure {
            message: message.into(),
            http: None,
            grpc: None,
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl crate::resiliency::Retryable for CallFailure {
    fn http_status(&self) -> Option<u16> {
        self.http
    }
    fn grpc_code(&self) -> Option<tonic::Code> {
        self.grpc
    }
}
