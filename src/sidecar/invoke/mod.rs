//! Service invocation, caller side: resolves the target (app, `app.namespace`, HTTPEndpoint or URL) and sends the
//! call over tandem's sidecar-to-sidecar HTTP/2 protocol (see `callee`), with bodies streamed both ways.

pub mod callee;
pub mod endpoints;
pub mod headers;
pub mod mesh;
pub mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::sidecar::net::source_chain;
pub use callee::{Callee, Mode};
use endpoints::{Endpoints, HttpsClient, https_client};
use mesh::Mesh;
use target::Target;

use crate::components::nameresolution::{NameResolver, ResolveRequest};
use crate::resiliency::{PolicyError, Resiliency, Retryable, Status};
use crate::sidecar::error::ApiError;

/// Bodies up to this size are kept so a call can be retried; larger ones stream once.
const REPLAYABLE_BODY: usize = 1 << 20;

pub struct Invoker {
    pub app_id: String,
    pub namespace: String,
    /// This sidecar's internal port: resolvers answer with the callee's address on the same port, as in Dapr.
    pub internal_port: u16,
    resolver: Arc<dyn NameResolver>,
    /// Connections to other sidecars (mTLS when this sidecar has a workload identity).
    mesh: Mesh,
    external: HttpsClient,
    endpoints: Arc<Endpoints>,
    /// Calls to this app itself skip the network.
    local: Arc<Callee>,
    next: AtomicUsize,
    trust_domain: String,
    resiliency: Arc<Resiliency>,
}

impl Invoker {
    pub fn new(
        app_id: &str,
        namespace: &str,
        internal_port: u16,
        resolver: Arc<dyn NameResolver>,
        local: Arc<Callee>,
    ) -> Self {
        Invoker {
            app_id: app_id.into(),
            namespace: namespace.into(),
            internal_port,
            resolver,
            mesh: Mesh::plain(),
            external: https_client(),
            endpoints: Arc::default(),
            local,
            next: AtomicUsize::new(0),
            trust_domain: "public".into(),
            resiliency: Arc::new(Resiliency::default()),
        }
    }

    /// Timeouts, retries and circuit breakers for app targets.
    pub fn with_resiliency(mut self, resiliency: Arc<Resiliency>) -> Self {
        self.resiliency = resiliency;
        self
    }

    /// Calls other sidecars over mutual TLS with `identity`.
    pub fn with_mesh(mut self, mesh: Mesh) -> Self {
        self.mesh = mesh;
        self
    }

    /// The trust domain this app asserts to callees (its `accessControl.trustDomain`).
    pub fn with_trust_domain(mut self, trust_domain: &str) -> Self {
        self.trust_domain = trust_domain.to_owned();
        self
    }

    /// The name resolver calls to other apps go through.
    pub fn resolver(&self) -> &Arc<dyn NameResolver> {
        &self.resolver
    }

    /// The HTTPEndpoints this invoker calls by name.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// Invokes `method` on `target` (an app id, `app.namespace`, HTTPEndpoint name or URL). The request's method,
    /// query, headers and body are forwarded; the app's status, headers and body come back as they are.
    pub async fn invoke(
        &self,
        target: &str,
        method: &str,
        req: Request<Body>,
        mode: Mode,
        client: Option<SocketAddr>,
    ) -> Result<Response<Body>, ApiError> {
        let fail = |e: &dyn std::fmt::Display| ApiError::direct_invoke(target, &e.to_string());
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let path = format!("/{}{query}", method.trim_start_matches('/'));
        let (app_id, namespace) = match target::classify(target).map_err(|e| fail(&e))? {
            Target::Url(base) => {
                return self
                    .external(&self.external, &base, &path, req, &[])
                    .await
                    .map_err(|e| fail(&e));
            }
            Target::Name(name) => {
                if let Some(ep) = self.endpoints.get(&name) {
                    let client = ep.client.as_ref().unwrap_or(&self.external);
                    return self
                        .external(client, &ep.base_url, &path, req, &ep.headers)
                        .await
                        .map_err(|e| fail(&e));
                }
                (name, self.namespace.clone())
            }
            Target::App { app_id, namespace } => (app_id, namespace),
        };
        let (mut parts, body) = req.into_parts();
        headers::prepare_outgoing(
            &mut parts.headers,
            (&self.app_id, &self.namespace, &self.trust_domain),
            (&app_id, &namespace),
            mode.header(),
            client,
        );
        parts.uri = path.parse().map_err(|e: axum::http::uri::InvalidUri| fail(&e))?;
        if app_id == self.app_id && namespace == self.namespace {
            let mut req = Request::from_parts(parts, body);
            if let Some(identity) = self.mesh.identity() {
                req.extensions_mut()
                    .insert(crate::sidecar::server::PeerIdentity(identity.id().clone()));
            }
            return Ok(self.local.handle(req).await);
        }
        let replay = replayable(&parts.headers, body).await.map_err(|e| fail(&e))?;
        let request = ResolveRequest {
            app_id: app_id.clone(),
            namespace: namespace.clone(),
            port: self.internal_port,
        };
        let call = Call {
            request: &request,
            parts: &parts,
            path: &path,
            replay: &replay,
        };
        let classify = move |resp: &Response<Body>| match mode {
            Mode::Http => Status::http_failure(resp.status().as_u16()),
            Mode::Grpc => grpc_status_of(resp).and_then(Status::grpc_failure),
        };
        // Dapr's layering: the app's policy around the whole call; each attempt under the built-in retry
        // (3 tries, 1 s apart, only when the other sidecar cannot be reached) unless a target names the app.
        let builtin = (!self.resiliency.has_app_target(&app_id)).then(|| self.resiliency.builtin_service_retry());
        let attempt = || async {
            match &builtin {
                Some(b) => b
                    .run(|_: &Response<Body>| None, || self.send(&call))
                    .await
                    .map_err(AttemptError::from),
                None => self.send(&call).await,
            }
        };
        let result = match self.resiliency.app_policy(&app_id) {
            Some(policy) => policy.run(&format!("{app_id}:{method}"), classify, attempt).await,
            None => attempt().await.map_err(PolicyError::Op),
        };
        result.map_err(|e| match e {
            PolicyError::Op(e) => fail(&e),
            PolicyError::Timeout(d) => fail(&format!("timeout after {d:?}: context deadline exceeded")),
            PolicyError::CircuitOpen { breaker } => fail(&format!("circuit breaker is open ({breaker})")),
            PolicyError::TooManyRequests { breaker } => {
                fail(&format!("too many requests: circuit breaker {breaker} is half-open"))
            }
        })
    }

    /// One attempt: resolve, pick an address, send over the internal HTTP/2 connection.
    async fn send(&self, call: &Call<'_>) -> Result<Response<Body>, AttemptError> {
        let addrs = self
            .resolver
            .resolve(call.request)
            .await
            .map_err(|e| AttemptError::Other(e.to_string()))?;
        if addrs.is_empty() {
            return Err(AttemptError::Other(format!(
                "no address found for app {:?}",
                call.request.app_id
            )));
        }
        let addr = addrs[self.next.fetch_add(1, Ordering::Relaxed) % addrs.len()];
        let body = match call.replay {
            Replay::Buffered(bytes) => Body::from(bytes.clone()),
            Replay::Streaming(cell) => cell.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or_else(|| {
                AttemptError::Other("the request body was streamed once and cannot be replayed for a retry".into())
            })?,
        };
        let mut req = Request::from_parts(call.parts.clone(), body);
        *req.uri_mut() = format!("{}://{addr}{}", self.mesh.scheme(), call.path)
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| AttemptError::Other(e.to_string()))?;
        *req.version_mut() = axum::http::Version::HTTP_2;
        match self
            .mesh
            .request(&call.request.namespace, &call.request.app_id, req)
            .await
        {
            Ok(resp) => Ok(resp.map(Body::new)),
            Err(e) if e.is_connect() => {
                self.resolver.invalidate(call.request);
                Err(AttemptError::Transport(e.to_string()))
            }
            Err(e) => Err(AttemptError::Other(e.to_string())),
        }
    }

    async fn external(
        &self,
        client: &HttpsClient,
        base: &str,
        path: &str,
        req: Request<Body>,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Body>, String> {
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove("host");
        parts.headers.remove("dapr-api-token");
        for (k, v) in extra {
            parts.headers.insert(k.clone(), v.clone());
        }
        parts.uri = format!("{}{path}", base.trim_end_matches('/'))
            .parse::<Uri>()
            .map_err(|e| e.to_string())?;
        parts.version = axum::http::Version::HTTP_11;
        let resp = client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// What every attempt of one call shares.
struct Call<'a> {
    request: &'a ResolveRequest,
    parts: &'a axum::http::request::Parts,
    path: &'a str,
    replay: &'a Replay,
}

/// Why one attempt failed: transport errors (the other sidecar unreachable) are the ones retries are for.
#[derive(Debug)]
enum AttemptError {
    Transport(String),
    Other(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Transport(e) | AttemptError::Other(e) => f.write_str(e),
        }
    }
}

impl Retryable for AttemptError {
    fn is_transport(&self) -> bool {
        matches!(self, AttemptError::Transport(_))
    }
}

impl From<PolicyError<AttemptError>> for AttemptError {
    fn from(e: PolicyError<AttemptError>) -> Self {
        match e {
            PolicyError::Op(e) => e,
            other => AttemptError::Other(other.to_string()),
        }
    }
}

/// The gRPC status of a response when it is known from its headers (trailers-only responses).
fn grpc_status_of(resp: &Response<Body>) -> Option<tonic::Code> {
    headers::get(resp.headers(), "grpc-status")
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

enum Replay {
    Buffered(Bytes),
    Streaming(std::sync::Mutex<Option<Body>>),
}

/// Small bodies (known length ≤ 1 MiB, or none) are read so the call can be retried; others stream once.
async fn replayable(headers: &HeaderMap, body: Body) -> Result<Replay, String> {
    let len = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = headers.contains_key("transfer-encoding");
    match len {
        Some(n) if n <= REPLAYABLE_BODY => Ok(Replay::Buffered(
            body.collect().await.map_err(|e| e.to_string())?.to_bytes(),
        )),
        None if !chunked && http_body::Body::is_end_stream(&body) => Ok(Replay::Buffered(Bytes::new())),
        _ => Ok(Replay::Streaming(std::sync::Mutex::new(Some(body)))),
    }
}
