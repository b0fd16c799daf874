//! gRPC API (tonic, `dapr.proto.runtime.v1.Dapr` from the `dapr` crate): the service, the API-token check,
//! metrics, and the single place `ApiError` becomes a `Status`.

mod convert;
mod crypto;
pub mod durabletask;
mod handlers;
pub mod invoke;
mod jobs;
mod service;

use std::sync::Arc;
use std::task::{Context, Poll};

use dapr::dapr::proto::runtime::v1::dapr_server::DaprServer;
use futures::future::BoxFuture;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use axum::extract::ConnectInfo;
use std::net::SocketAddr;

use super::error::ApiError;
use super::metrics::{Metrics, grpc_code_name};
use super::runtime::Runtime;
use invoke::ProxyState;

/// The Dapr gRPC service over the runtime.
pub struct DaprApi {
    pub rt: Arc<Runtime>,
    pub max_body: usize,
}

/// The gRPC API: the `Dapr` service, with any other gRPC call proxied to the app named by `dapr-app-id`.
pub fn router(rt: Arc<Runtime>, api_token: Option<Arc<str>>, max_body: usize, metrics: Arc<Metrics>) -> axum::Router {
    let proxy = ProxyState {
        invoker: rt.invoker.clone(),
        api_token: api_token.clone(),
    };
    let workflows = durabletask_service(rt.workflows.clone(), api_token.clone(), max_body);
    tonic::service::Routes::new(dapr_service(rt, api_token, max_body))
        .add_service(workflows)
        .into_axum_router()
        .fallback(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: axum::extract::Request| {
                let proxy = proxy.clone();
                async move { invoke::proxy(proxy, peer, req).await }
            },
        )
        .layer(axum::middleware::from_fn(catch_panic))
        .layer(MetricsLayer(metrics))
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let Some(reason) = e.reason else {
            return Status::new(e.grpc, e.message);
        };
        let mut details = ErrorDetails::new();
        let info: std::collections::HashMap<String, String> = e
            .extras
            .as_deref()
            .map(|x| x.info.iter().cloned().collect())
            .unwrap_or_default();
        details.set_error_info(reason, "dapr.io", info);
        if let Some(extras) = e.extras.as_deref() {
            if let Some((kind, name)) = &extras.resource {
                details.set_resource_info(*kind, name.as_str(), "", "");
            }
            if let Some((field, description)) = &extras.bad_field {
                details.add_bad_request_violation(field.as_str(), description.as_str());
            }
        }
        Status::with_error_details(e.grpc, e.message, details)
    }
}

impl ApiError {
    /// The error as a trailers-only gRPC response, for gRPC calls answered outside the tonic service (proxied
    /// calls, the internal port): the same status and details `From<ApiError> for Status` gives.
    pub fn into_grpc_response(self) -> axum::response::Response {
        let (parts, ()) = Status::from(self).into_http::<()>().into_parts();
        axum::response::Response::from_parts(parts, axum::body::Body::empty())
    }
}

/// A gRPC call whose handling panics (a bug) ends with status INTERNAL; the panic is logged, and every other call
/// on the connection goes on.
async fn catch_panic(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let method = req.uri().path().to_owned();
    match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(next.run(req))).await {
        Ok(resp) => resp,
        Err(panic) => {
            let panic = super::http::panic_message(&*panic);
            let method = crate::echo::echo(&method);
            tracing::error!(%method, panic, "a gRPC handler panicked");
            ApiError::internal_bug().into_grpc_response()
        }
    }
}

/// With `DAPR_API_TOKEN` set, every gRPC call (the Dapr service and proxied calls) must carry it.
fn check_token(expected: Option<&str>, given: Option<&str>) -> Result<(), ApiError> {
    match (expected, given) {
        (None, _) => Ok(()),
        (Some(t), Some(g)) if super::net::same_secret(g.as_bytes(), t.as_bytes()) => Ok(()),
        (Some(_), Some(_)) => Err(ApiError::unauthenticated("authentication error: api token mismatch")),
        (Some(_), None) => Err(ApiError::unauthenticated("missing api token in request metadata")),
    }
}

/// The `Dapr` service, checking `dapr-api-token` when a token is configured, with messages up to `max_body` bytes.
pub fn dapr_service(
    rt: Arc<Runtime>,
    api_token: Option<Arc<str>>,
    max_body: usize,
) -> tonic::service::interceptor::InterceptedService<DaprServer<DaprApi>, impl tonic::service::Interceptor + Clone> {
    let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
        let given = req.metadata().get("dapr-api-token").and_then(|v| v.to_str().ok());
        check_token(api_token.as_deref(), given)?;
        Ok(req)
    };
    let server = DaprServer::new(DaprApi { rt, max_body })
        .max_decoding_message_size(max_body)
        .max_encoding_message_size(max_body);
    tonic::service::interceptor::InterceptedService::new(server, check)
}

/// The durabletask `TaskHubSidecarService` the workflow SDKs use, behind the same API-token check.
pub fn durabletask_service(
    workflows: super::workflow::Workflows,
    api_token: Option<Arc<str>>,
    max_body: usize,
) -> tonic::service::interceptor::InterceptedService<
    durabletask::service::TaskHubServer,
    impl tonic::service::Interceptor + Clone,
> {
    let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
        let given = req.metadata().get("dapr-api-token").and_then(|v| v.to_str().ok());
        check_token(api_token.as_deref(), given)?;
        Ok(req)
    };
    let server = durabletask::service::TaskHubServer::new(durabletask::WorkflowGrpc { workflows }, max_body);
    tonic::service::interceptor::InterceptedService::new(server, check)
}

/// Records `dapr_grpc_io_server_*` for every call. Handler errors travel as trailers-only responses, so the
/// status is read from the response headers; a response without `grpc-status` there completed OK.
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut resp = fut.await?;
            too_large_as_resource_exhausted(&mut resp);
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from_i32)
                .unwrap_or(tonic::Code::Ok);
            if code != tonic::Code::Unauthenticated {
                metrics.grpc_call(method_label(&method, code), grpc_code_name(code), started.elapsed());
            }
            Ok(resp)
        })
    }
}

/// The `grpc_server_method` label: the method of the Dapr service that served the call, or `""` for proxied
/// calls and methods the service does not implement, so callers cannot grow the label set.
fn method_label(path: &str, code: tonic::Code) -> &str {
    if path.starts_with("/dapr.proto.runtime.v1.Dapr/") && code != tonic::Code::Unimplemented {
        path
    } else {
        ""
    }
}

/// tonic reports an oversized message as OUT_OF_RANGE; grpc-go (and so Dapr) says RESOURCE_EXHAUSTED.
fn too_large_as_resource_exhausted<B>(resp: &mut http::Response<B>) {
    let h = resp.headers();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v == "11");
    let raw = h.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let message = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if out_of_range && message.contains("message length too large") {
        let rewritten = format!("grpc: received message larger than max ({message})");
        let headers = resp.headers_mut();
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        let encoded = percent_encoding::utf8_percent_encode(&rewritten, percent_encoding::NON_ALPHANUMERIC);
        if let Ok(v) = http::HeaderValue::from_str(&encoded.to_string()) {
            headers.insert("grpc-message", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_outside_the_service_carry_the_same_status_and_details() {
        let e = ApiError::unauthenticated("missing api token in request metadata");
        let resp = e.clone().into_grpc_response();
        let status = Status::from_header_map(resp.headers()).expect("a trailers-only gRPC status");
        let direct = Status::from(e);
        assert_eq!((status.code(), status.message()), (direct.code(), direct.message()));
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("Unauthorized", "dapr.io")
        );
        assert_eq!(info.metadata.get("http.code").map(String::as_str), Some("401"));

        let state = ApiError::state_store_not_found("s").into_grpc_response();
        let status = Status::from_header_map(state.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "DAPR_STATE_NOT_FOUND");
    }

    #[test]
    fn method_labels_come_from_the_dapr_service_only() {
        let get = "/dapr.proto.runtime.v1.Dapr/GetState";
        assert_eq!(method_label(get, tonic::Code::NotFound), get);
        assert_eq!(
            method_label("/dapr.proto.runtime.v1.Dapr/Nope", tonic::Code::Unimplemented),
            ""
        );
        assert_eq!(method_label("/my.app.Service/Random123", tonic::Code::Ok), "");
    }

    #[test]
    fn the_api_token_is_checked_the_same_way_for_every_grpc_call() {
        assert!(check_token(None, None).is_ok());
        assert!(check_token(Some("t"), Some("t")).is_ok());
        let missing = check_token(Some("t"), None).unwrap_err();
        let wrong = check_token(Some("t"), Some("x")).unwrap_err();
        assert_eq!(
            (missing.grpc, wrong.grpc),
            (tonic::Code::Unauthenticated, tonic::Code::Unauthenticated)
        );
        assert!(
            wrong
                .extras
                .unwrap()
                .info
                .iter()
                .any(|(k, v)| k == "http.error_message" && v.contains("mismatch"))
        );
    }
}
