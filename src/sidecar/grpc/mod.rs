//! gRPC API (tonic, `dapr.proto.runtime.v1.Dapr` from the `dapr` crate): the service, the API-token check,
//! metrics, and the single place `ApiError` becomes a `Status`.

mod convert;
mod handlers;
mod service;

use std::sync::Arc;
use std::task::{Context, Poll};

use dapr::dapr::proto::runtime::v1::dapr_server::DaprServer;
use futures::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;

use super::error::ApiError;
use super::metrics::{Metrics, grpc_code_name};
use super::runtime::Runtime;

/// The Dapr gRPC service over the runtime.
pub struct DaprApi {
    pub rt: Arc<Runtime>,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.grpc, e.message)
    }
}

/// The `Dapr` service, checking `dapr-api-token` when a token is configured, with messages up to `max_body` bytes.
pub fn dapr_service(
    rt: Arc<Runtime>,
    api_token: Option<Arc<str>>,
    max_body: usize,
) -> tonic::service::interceptor::InterceptedService<
    DaprServer<DaprApi>,
    impl tonic::service::Interceptor + Clone,
> {
    let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &api_token {
            match req
                .metadata()
                .get("dapr-api-token")
                .and_then(|v| v.to_str().ok())
            {
                Some(given) if given == token.as_ref() => {}
                _ => return Err(Status::unauthenticated("Unauthorized")),
            }
        }
        Ok(req)
    };
    let server = DaprServer::new(DaprApi { rt })
        .max_decoding_message_size(max_body)
        .max_encoding_message_size(max_body);
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

impl<S> tower::Service<http::Request<Body>> for MetricsService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let resp = fut.await?;
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from_i32)
                .unwrap_or(tonic::Code::Ok);
            if code != tonic::Code::Unauthenticated {
                metrics.grpc_call(&method, grpc_code_name(code), started.elapsed());
            }
            Ok(resp)
        })
    }
}
