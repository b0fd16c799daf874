//! The channel to the user's app: a pooled keep-alive HTTP client or a gRPC AppCallback client, readiness
//! (waiting for the app port) and optional health probing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use dapr::dapr::proto::runtime::v1::app_callback_health_check_client::AppCallbackHealthCheckClient;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::args::Args;

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

pub struct AppChannel {
    pub port: u16,
    pub protocol: AppProtocol,
    pub address: String,
    http: Client<HttpConnector, Body>,
    grpc: Channel,
    /// Sent to the app as `dapr-api-token` (APP_API_TOKEN).
    pub token: Option<String>,
    healthy: AtomicBool,
    /// `--app-max-concurrency` permits.
    pub concurrency: Option<Arc<Semaphore>>,
}

impl AppChannel {
    /// The channel `args` describe, or `None` without `--app-port`.
    pub fn from_args(args: &Args) -> Option<Arc<Self>> {
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
        Some(Arc::new(AppChannel {
            port,
            protocol,
            address,
            http,
            grpc,
            token: args.app_token.clone().filter(|t| !t.is_empty()),
            healthy: AtomicBool::new(true),
            concurrency,
        }))
    }

    pub fn http_client(&self) -> &Client<HttpConnector, Body> {
        &self.http
    }

    pub fn grpc_channel(&self) -> Channel {
        self.grpc.clone()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Waits until the app accepts TCP connections on its port (or shutdown begins).
    pub async fn wait_until_listening(&self, shutdown: &CancellationToken) {
        let addr = format!("{}:{}", self.address, self.port);
        let started = std::time::Instant::now();
        let mut last_log = started;
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                tracing::info!(address = %addr, waited_ms = started.elapsed().as_millis() as u64, "app is listening");
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
                    let mut req = http::Request::get(uri).body(Body::empty()).ok()?;
                    if let Some(t) = &self.token {
                        req.headers_mut().insert("dapr-api-token", t.parse().ok()?);
                    }
                    let resp = self.http.request(req).await.ok()?;
                    Some(resp.status().is_success())
                }
                AppProtocol::Grpc => {
                    let mut client = AppCallbackHealthCheckClient::new(self.grpc.clone());
                    let mut req = tonic::Request::new(());
                    if let Some(t) = &self.token {
                        req.metadata_mut().insert("dapr-api-token", t.parse().ok()?);
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
                    }
                } else {
                    failures += 1;
                    if failures >= probe.threshold && channel.healthy.swap(false, Ordering::AcqRel) {
                        tracing::warn!(failures, "app is unhealthy");
                    }
                }
            }
        });
    }
}
