//! `tandem sidecar`: the daprd equivalent. Wires the runtime core to the HTTP, gRPC, public and metrics servers,
//! loads components, waits for the app, and drains on shutdown.

pub mod app_channel;
pub mod args;
pub mod args_render;
pub mod error;
pub mod grpc;
pub mod hot_reload;
pub mod http;
pub mod invoke;
pub mod loader;
pub mod metrics;
pub mod processor;

pub mod runtime;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use args::{Args, Mode};

use crate::api::{Component, Configuration};
use crate::components::Registry;
use crate::components::nameresolution;
use app_channel::{AppChannel, HealthProbe};
use loader::Resources;
use metrics::Metrics;
use runtime::{AppConnection, AppHealthInfo, Runtime};

/// How a port left unset on the command line is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPolicy {
    /// daprd's fixed defaults (3500, 50001, ...).
    Defaults,
    /// The default when free, else any free port (`tandem run`, where several apps share a machine).
    DefaultsIfFree,
}

/// Where a started sidecar listens.
#[derive(Clone, Debug)]
pub struct Ports {
    pub http: u16,
    pub grpc: u16,
    pub metrics: Option<u16>,
    pub public: Option<u16>,
    pub internal: u16,
}

/// What `tandem run` supplies when the user gives no resources or Configuration.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub components: Vec<Component>,
    pub name_resolution: Option<crate::api::configuration::NameResolutionSpec>,
}

/// A sidecar whose listeners are bound and whose servers run.
pub struct Sidecar {
    pub rt: Arc<Runtime>,
    pub ports: Ports,
    servers: JoinSet<()>,
    init: tokio::task::JoinHandle<()>,
    resolver: Arc<dyn nameresolution::NameResolver>,
    grace: Duration,
}

async fn bind_all(
    addrs: &[String],
    port: Option<u16>,
    default: u16,
    policy: PortPolicy,
) -> anyhow::Result<Vec<TcpListener>> {
    let mut port = match (port, policy) {
        (Some(p), _) => p,
        (None, PortPolicy::Defaults) => default,
        (None, PortPolicy::DefaultsIfFree) => {
            let first = addrs.first().map(String::as_str).unwrap_or("127.0.0.1");
            match TcpListener::bind(sock(first, default)?).await {
                Ok(_) => default,
                Err(_) => 0,
            }
        }
    };
    // Like daprd, an address that cannot be bound (e.g. [::1] where IPv6 is off) is skipped with a warning as
    // long as another one works.
    let mut out = vec![];
    let mut failures = vec![];
    for a in addrs {
        match TcpListener::bind(sock(a, port)?).await {
            Ok(l) => {
                port = l.local_addr()?.port();
                out.push(l);
            }
            Err(e) => failures.push(format!("{a}:{port}: {e}")),
        }
    }
    if out.is_empty() {
        anyhow::bail!("listening on {}", failures.join("; "));
    }
    for f in failures {
        tracing::warn!("could not listen on {f}; serving on the other addresses");
    }
    Ok(out)
}

fn sock(addr: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let host = addr.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().with_context(|| format!("{addr:?} is not an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

fn port_of(ls: &[TcpListener]) -> u16 {
    ls.first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Sidecar {
    /// Loads resources, binds every listener and starts the servers; components initialise in the background.
    /// `defaults` are used when no `--resources-path` is given (`tandem run`'s embedded defaults).
    pub async fn start(args: Args, policy: PortPolicy, defaults: Defaults) -> anyhow::Result<Sidecar> {
        let started = Instant::now();
        args.validate().map_err(anyhow::Error::msg)?;
        let max_body = args.max_body_bytes().map_err(anyhow::Error::msg)?;
        // Kubernetes mode: resources and Configuration come from the operator (and keep coming: hot reload).
        let operator = if args.mode == Mode::Kubernetes && !args.control_plane_address.is_empty() {
            let mut builder = crate::control_plane::operator_client::OperatorClient::builder(
                &hot_reload::operator_url(&args.control_plane_address),
            )
            .namespace(&args.namespace);
            if !args.config.is_empty() {
                builder = builder.configuration(&args.config);
            }
            // Hidden override of the projected-token path, for running a sidecar outside a pod (tests).
            if let Some(path) = std::env::var_os("TANDEM_OPERATOR_TOKEN_FILE").filter(|p| !p.is_empty()) {
                builder = builder.token_file(path);
            }
            Some(builder.build().map_err(|e| anyhow::anyhow!("operator client: {e}"))?)
        } else {
            None
        };
        let config = match &operator {
            _ if args.config.is_empty() => Configuration::default(),
            Some(op) => op
                .configuration(&args.config)
                .await
                .map_err(|e| anyhow::anyhow!("loading Configuration {:?} from the operator: {e}", args.config))?,
            None => loader::load_configuration(&args.config)?,
        };
        let mut baseline = None;
        let mut resources = if let Some(op) = &operator {
            let r = op
                .resources(&args.app_id)
                .await
                .map_err(|e| anyhow::anyhow!("loading resources from the operator: {e}"))?;
            baseline = Some(r.clone());
            r
        } else if args.resources_path.is_empty() {
            Resources {
                components: defaults.components.clone(),
                ..Default::default()
            }
        } else {
            loader::load(&args.resources_path, &args.app_id, &args.namespace)?
        };
        if args.mode == Mode::Kubernetes && !resources.components.iter().any(|c| c.name() == "kubernetes") {
            let mut builtin = hot_reload::builtin_kubernetes_secret_store();
            // Outside a cluster (tests, local runs in kubernetes mode) there is no API to read Secrets from.
            builtin.spec.ignore_errors = true;
            resources.components.insert(0, builtin);
        }
        let channel = AppChannel::from_args(&args);
        let probe = args.enable_app_health_check.then(|| HealthProbe {
            path: args.app_health_check_path.clone(),
            interval: Duration::from_secs(args.app_health_probe_interval.max(1)),
            timeout: Duration::from_millis(args.app_health_probe_timeout.max(1)),
            threshold: args.app_health_threshold.max(1),
        });
        let app_connection = AppConnection {
            port: channel.as_ref().map(|c| c.port),
            protocol: args.app_protocol.clone(),
            channel_address: args.app_channel_address.clone(),
            max_concurrency: u32::try_from(args.app_max_concurrency).ok().filter(|c| *c > 0),
            health: probe.as_ref().map(|p| AppHealthInfo {
                path: (args.app_protocol == "http").then(|| p.path.clone()),
                interval: humantime::format_duration(p.interval).to_string(),
                timeout: humantime::format_duration(p.timeout).to_string(),
                threshold: p.threshold,
            }),
        };
        let rt = Arc::new(Runtime::new(&args.app_id, &args.namespace, config, app_connection));
        rt.set_subscriptions(resources.subscriptions.clone());
        rt.set_http_endpoints(resources.http_endpoints.clone());
        let metrics = Arc::new(Metrics::new(&args.app_id));
        let token: Option<Arc<str>> = args.api_token.clone().filter(|t| !t.is_empty()).map(Into::into);
        let api_logging = args.enable_api_logging.unwrap_or_else(|| {
            rt.config
                .spec
                .logging
                .as_ref()
                .and_then(|l| l.api_logging.as_ref())
                .is_some_and(|a| a.enabled)
        });
        let (resiliency, resiliency_errors) = crate::resiliency::Resiliency::new_lenient(&resources.resiliencies);
        for e in resiliency_errors {
            tracing::error!("skipping Resiliency resource: {e}");
        }
        let resiliency = Arc::new(resiliency);
        let acl = Arc::new(
            crate::api::access_control::AccessControl::new(rt.config.spec.access_control.as_ref())
                .map_err(anyhow::Error::msg)?,
        );

        let addrs = &args.dapr_listen_addresses;
        let all = ["0.0.0.0".to_owned()];
        let internal_addr = [args.dapr_internal_grpc_listen_address.clone()];
        let internal_ls = bind_all(
            &internal_addr,
            args.dapr_internal_grpc_port,
            Args::DEFAULT_INTERNAL_GRPC_PORT,
            policy,
        )
        .await?;
        let internal_port = port_of(&internal_ls);
        let http_ls = bind_all(addrs, args.dapr_http_port, Args::DEFAULT_HTTP_PORT, policy).await?;
        let grpc_ls = bind_all(addrs, args.dapr_grpc_port, Args::DEFAULT_GRPC_PORT, policy).await?;
        let metrics_ls = if args.enable_metrics {
            Some(bind_all(&all, args.metrics_port, Args::DEFAULT_METRICS_PORT, policy).await?)
        } else {
            None
        };
        let public_ls = match args.dapr_public_port {
            Some(p) => Some(bind_all(&all, Some(p), p, PortPolicy::Defaults).await?),
            None => None,
        };
        let ports = Ports {
            http: port_of(&http_ls),
            grpc: port_of(&grpc_ls),
            metrics: metrics_ls.as_deref().map(port_of),
            public: public_ls.as_deref().map(port_of),
            internal: internal_port,
        };

        let me = nameresolution::Instance {
            app_id: args.app_id.clone(),
            namespace: args.namespace.clone(),
            address: std::env::var("DAPR_HOST_IP").unwrap_or_else(|_| "127.0.0.1".into()),
            internal_port,
            http_port: ports.http,
            app_port: channel.as_ref().map(|c| c.port),
        };
        let nr = rt
            .config
            .spec
            .name_resolution
            .clone()
            .or(defaults.name_resolution)
            .unwrap_or_default();
        let nr_component = if nr.component.is_empty() {
            nameresolution::default_component(args.mode == Mode::Kubernetes).to_owned()
        } else {
            nr.component.clone()
        };
        let resolver = nameresolution::build(&nr_component, &nr.version, &nr.configuration, &me)
            .await
            .map_err(|e| anyhow::anyhow!("name resolution {nr_component}: {e}"))?;
        let callee = Arc::new(invoke::Callee {
            app_id: args.app_id.clone(),
            app: channel.clone(),
            app_h2: invoke::h2c_client(),
            acl: acl.clone(),
            max_body,
        });
        let invoker = Arc::new(
            invoke::Invoker::new(
                &args.app_id,
                &args.namespace,
                internal_port,
                resolver.clone(),
                callee.clone(),
            )
            .with_trust_domain(acl.trust_domain())
            .with_resiliency(resiliency),
        );
        let state = http::ApiState {
            rt: rt.clone(),
            max_body,
            api_token: token.clone(),
            metrics: metrics.clone(),
            api_logging,
            invoker: Some(invoker.clone()),
        };

        let shutdown = rt.shutdown.clone();
        let mut servers = JoinSet::new();
        let api = http::router(state.clone());
        for l in http_ls {
            servers.spawn(serve_http(l, api.clone(), shutdown.clone()));
        }
        if let Some(ls) = public_ls {
            let public = http::public_router(state.clone());
            for l in ls {
                servers.spawn(serve_http(l, public.clone(), shutdown.clone()));
            }
        }
        if let Some(ls) = metrics_ls {
            let m = metrics.clone();
            let router = axum::Router::new().fallback(move || {
                let m = m.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.render(),
                    )
                }
            });
            for l in ls {
                servers.spawn(serve_http(l, router.clone(), shutdown.clone()));
            }
        }
        let grpc_api = grpc::router(rt.clone(), invoker.clone(), token.clone(), max_body, metrics.clone());
        for l in grpc_ls {
            servers.spawn(serve(l, grpc_api.clone(), shutdown.clone()));
        }
        let internal = {
            let callee = callee.clone();
            axum::Router::new().fallback(move |req: axum::extract::Request| {
                let callee = callee.clone();
                async move { callee.handle(req).await }
            })
        };
        for l in internal_ls {
            servers.spawn(serve(l, internal.clone(), shutdown.clone()));
        }
        tracing::info!(
            app_id = %args.app_id,
            http_port = ports.http,
            grpc_port = ports.grpc,
            metrics_port = ?ports.metrics,
                        public_port = ?ports.public,
            internal_grpc_port = ports.internal,
            name_resolution = %nr_component,
            mode = ?args.mode,
            "tandem sidecar listening"
        );

        let init = tokio::spawn(initialise(
            rt.clone(),
            resources,
            args.mode,
            channel,
            probe,
            started,
            Registration {
                resolver: resolver.clone(),
                me,
                invoker,
                operator: operator.zip(baseline),
            },
        ));
        let grace = Duration::from_secs(args.dapr_graceful_shutdown_seconds.max(0) as u64);
        Ok(Sidecar {
            rt,
            ports,
            servers,
            init,
            grace,
            resolver,
        })
    }

    /// Runs until shutdown is requested (signal, POST /v1.0/shutdown, or a failed start), drains in-flight
    /// requests for up to `--dapr-graceful-shutdown-seconds`, then closes components.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let shutdown = self.rt.shutdown.clone();
        shutdown.cancelled().await;
        self.init.abort();
        tracing::info!(grace = ?self.grace, "shutting down: draining in-flight requests");
        let drained =
            tokio::time::timeout(self.grace, async { while self.servers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("grace period over; aborting the requests still in flight");
            self.servers.abort_all();
        }
        self.resolver.close().await;
        for store in self.rt.state_stores() {
            store.close().await;
        }
        tracing::info!("tandem sidecar stopped");
        match self.rt.fatal_error() {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => Ok(()),
        }
    }
}

async fn serve_http(listener: TcpListener, router: axum::Router, shutdown: CancellationToken) {
    serve(
        listener,
        tower::ServiceExt::map_request(router, http::normalize_path),
        shutdown,
    )
    .await
}

/// Serves HTTP/1.1 and HTTP/2 (h2c) on `listener` until shutdown, with the peer address available to handlers.
async fn serve<S>(listener: TcpListener, service: S, shutdown: CancellationToken)
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(service);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Components first (then outbound APIs work), then the app: /v1.0/healthz turns 204 once both are ready.
async fn initialise(
    rt: Arc<Runtime>,
    resources: Resources,
    mode: Mode,
    channel: Option<Arc<AppChannel>>,
    probe: Option<HealthProbe>,
    started: Instant,
    registration: Registration,
) {
    let registry = Registry::builtin();
    if let Err(e) = processor::load_components(&rt, &registry, &resources.components, mode).await {
        tracing::error!("error processing component, tandem will exit: {e}");
        rt.fail(e);
        return;
    }
    match processor::resolve_endpoints(&rt, &resources.http_endpoints, mode).await {
        Ok(endpoints) => registration.invoker.set_endpoints(endpoints),
        Err(e) => {
            tracing::error!("error processing HTTPEndpoint, tandem will exit: {e}");
            rt.fail(e);
            return;
        }
    }
    rt.health.set_outbound_ready();
    if let Some((client, baseline)) = registration.operator.clone() {
        tokio::spawn(hot_reload::follow(
            rt.clone(),
            registration.invoker.clone(),
            client,
            baseline,
            mode,
        ));
    }
    if let Some(channel) = &channel {
        channel.wait_until_listening(&rt.shutdown).await;
        if let Some(p) = probe {
            channel.spawn_health_probe(p, rt.shutdown.clone());
        }
    }
    if let Err(e) = registration.resolver.register(&registration.me).await {
        tracing::error!("registering with name resolution failed, tandem will exit: {e}");
        rt.fail(e.to_string());
        return;
    }
    rt.health.set_ready();
    tracing::info!(
        init_elapsed_ms = started.elapsed().as_millis() as u64,
        "tandem initialized. Status: Running"
    );
}

/// What `initialise` registers once the app is ready.
struct Registration {
    resolver: Arc<dyn nameresolution::NameResolver>,
    me: nameresolution::Instance,
    invoker: Arc<invoke::Invoker>,
    /// Kubernetes mode: the operator to follow for changes, from what was loaded at start.
    operator: Option<(
        crate::control_plane::operator_client::OperatorClient,
        crate::control_plane::operator_client::SidecarResources,
    )>,
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("received SIGINT"),
            _ = term => tracing::info!("received SIGTERM"),
        }
        token.cancel();
    });
}

/// `tandem sidecar`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let sidecar = Sidecar::start(args, PortPolicy::Defaults, Defaults::default()).await?;
    cancel_on_signals(sidecar.rt.shutdown.clone());
    sidecar.wait().await
}
