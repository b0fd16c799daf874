//! The sidecar's start-up, step by step: [`build`] reads the settings, the Configuration and the resources;
//! [`listen`] binds every port; [`serve`] assembles the runtime over the bound ports (name resolution needs
//! them), starts the servers and, in the background, [`initialise`]s components and waits for the app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::app_channel::{AppChannel, HealthProbe};
use super::args::{Args, Mode};
use super::components::{ComponentLoader, ComponentTable, Loaded, References};
use super::hot_reload;
use super::http;
use super::identity;
use super::invoke::{self, Invoker};
use super::metadata::{AppConnection, AppHealthInfo, SidecarMetadata};
use super::metrics::Metrics;
use super::resources::{self, Resources};
use super::runtime::{Parts, Runtime};
use super::secrets::Secrets;
use super::server::{self, Limits};
use crate::api::access_control::AccessControl;
use crate::api::configuration::NameResolutionSpec;
use crate::api::{Component, Configuration};
use crate::components::nameresolution::{self, NameResolver};
use crate::components::{Kind, Metadata, Registry};
use crate::control_plane::SidecarResources;
use crate::control_plane::identity::SpiffeId;
use crate::control_plane::mtls::WorkloadIdentity;
use crate::control_plane::operator_client::OperatorClient;
use crate::resiliency::Resiliency;

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
    pub name_resolution: Option<NameResolutionSpec>,
    /// The SQLite file jobs are kept in; in memory when unset.
    pub jobs_store: Option<std::path::PathBuf>,
}

/// Step 1's result: everything decided before a port is bound.
pub struct Plan {
    registry: Arc<Registry>,
    config: Arc<Configuration>,
    resources: Resources,
    /// Kubernetes mode: the operator to follow for changes, from what was loaded at start.
    operator: Option<(OperatorClient, SidecarResources)>,
    max_body: usize,
    api_token: Option<Arc<str>>,
    api_logging: bool,
    resiliency: Arc<Resiliency>,
    acl: Arc<AccessControl>,
    channel: Option<Arc<AppChannel>>,
    probe: Option<HealthProbe>,
    app_connection: AppConnection,
    name_resolution: NameResolutionSpec,
    jobs_store: Option<std::path::PathBuf>,
    /// The workload identity for mTLS, when enabled; its renewal stops with `renewal`.
    identity: Option<Arc<WorkloadIdentity>>,
    renewal: CancellationToken,
}

/// Step 1: settings, Configuration and resources — from files, or from the operator in Kubernetes mode.
pub async fn build(args: &Args, defaults: Defaults, registry: Arc<Registry>) -> anyhow::Result<Plan> {
    args.validate().map_err(anyhow::Error::msg)?;
    let max_body = args.max_body_bytes().map_err(anyhow::Error::msg)?;
    let operator = operator_client(args)?;
    let config = match &operator {
        _ if args.config.is_empty() => Configuration::default(),
        Some(op) => op
            .configuration(&args.config)
            .await
            .map_err(|e| anyhow::anyhow!("loading Configuration {:?} from the operator: {e}", args.config))?,
        None => resources::load_configuration(&args.config)?,
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
        resources::load(&args.resources_path, &args.app_id, args.manifest_namespace())?
    };
    if args.mode == Mode::Kubernetes && !resources.components.iter().any(|c| c.name() == "kubernetes") {
        let mut builtin = hot_reload::builtin_kubernetes_secret_store();
        // Outside a cluster (tests, local runs in kubernetes mode) there is no API to read Secrets from.
        builtin.spec.ignore_errors = true;
        resources.components.insert(0, builtin);
    }
    let channel = AppChannel::from_args(args, max_body);
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
    let api_logging = args.enable_api_logging.unwrap_or_else(|| {
        config
            .spec
            .logging
            .as_ref()
            .and_then(|l| l.api_logging.as_ref())
            .is_some_and(|a| a.enabled)
    });
    let (resiliency, resiliency_errors) = Resiliency::new_lenient(&resources.resiliencies);
    for e in resiliency_errors {
        tracing::error!("skipping Resiliency resource: {e}");
    }
    let acl = AccessControl::new(config.spec.access_control.as_ref()).map_err(anyhow::Error::msg)?;
    let mut name_resolution = config
        .spec
        .name_resolution
        .clone()
        .or(defaults.name_resolution.clone())
        .unwrap_or_default();
    if name_resolution.component.is_empty() {
        name_resolution.component = nameresolution::default_component(args.mode == Mode::Kubernetes).to_owned();
    }
    let renewal = CancellationToken::new();
    let identity = if args.enable_mtls {
        let expected = SpiffeId::new(acl.trust_domain(), &args.namespace, &args.app_id).map_err(anyhow::Error::msg)?;
        Some(identity::obtain(&expected, operator.as_ref(), renewal.clone()).await?)
    } else {
        None
    };
    Ok(Plan {
        registry,
        config: Arc::new(config),
        resources,
        operator: operator.zip(baseline),
        max_body,
        api_token: args.api_token.clone().filter(|t| !t.is_empty()).map(Into::into),
        api_logging,
        resiliency: Arc::new(resiliency),
        acl: Arc::new(acl),
        channel,
        probe,
        app_connection,
        name_resolution,
        jobs_store: defaults.jobs_store,
        identity,
        renewal,
    })
}

/// Kubernetes mode: the client of the operator's sidecar API, which serves resources and Configuration.
fn operator_client(args: &Args) -> anyhow::Result<Option<OperatorClient>> {
    if args.mode != Mode::Kubernetes || args.control_plane_address.is_empty() {
        return Ok(None);
    }
    let mut builder =
        OperatorClient::builder(&hot_reload::operator_url(&args.control_plane_address)).namespace(&args.namespace);
    if !args.config.is_empty() {
        builder = builder.configuration(&args.config);
    }
    // Hidden override of the projected-token path, for running a sidecar outside a pod (tests).
    if let Some(path) = std::env::var_os("TANDEM_OPERATOR_TOKEN_FILE").filter(|p| !p.is_empty()) {
        builder = builder.token_file(path);
    }
    Ok(Some(
        builder.build().map_err(|e| anyhow::anyhow!("operator client: {e}"))?,
    ))
}

/// Step 2's result: every listener, bound.
pub struct Listeners {
    pub ports: Ports,
    http: Vec<TcpListener>,
    grpc: Vec<TcpListener>,
    internal: Vec<TcpListener>,
    metrics: Option<Vec<TcpListener>>,
    public: Option<Vec<TcpListener>>,
}

/// Step 2: binds the API (HTTP, gRPC), internal, metrics and public ports.
pub async fn listen(args: &Args, policy: PortPolicy) -> anyhow::Result<Listeners> {
    let addrs = &args.dapr_listen_addresses;
    let all = ["0.0.0.0".to_owned()];
    let internal_addr = [args.dapr_internal_grpc_listen_address.clone()];
    let internal = bind_all(
        &internal_addr,
        args.dapr_internal_grpc_port,
        Args::DEFAULT_INTERNAL_GRPC_PORT,
        policy,
    )
    .await?;
    let http = bind_all(addrs, args.dapr_http_port, Args::DEFAULT_HTTP_PORT, policy).await?;
    let grpc = bind_all(addrs, args.dapr_grpc_port, Args::DEFAULT_GRPC_PORT, policy).await?;
    let metrics = if args.enable_metrics {
        Some(bind_all(&all, args.metrics_port, Args::DEFAULT_METRICS_PORT, policy).await?)
    } else {
        None
    };
    let public = match args.dapr_public_port {
        Some(p) => Some(bind_all(&all, Some(p), p, PortPolicy::Defaults).await?),
        None => None,
    };
    let ports = Ports {
        http: port_of(&http),
        grpc: port_of(&grpc),
        metrics: metrics.as_deref().map(port_of),
        public: public.as_deref().map(port_of),
        internal: port_of(&internal),
    };
    Ok(Listeners {
        ports,
        http,
        grpc,
        internal,
        metrics,
        public,
    })
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

/// Step 3's result: the runtime and its running servers.
pub struct Serving {
    pub rt: Arc<Runtime>,
    pub servers: JoinSet<()>,
}

/// Step 3: assembles the runtime over the bound ports, starts every server, and starts initialising components
/// and waiting for the app in the background.
pub async fn serve(
    args: &Args,
    plan: Plan,
    listeners: Listeners,
    started: Instant,
) -> anyhow::Result<(Serving, tokio::task::JoinHandle<()>)> {
    let ports = listeners.ports.clone();
    let Assembled { rt, loader, callee, me } = assemble(args, &plan, &ports).await?;
    let metrics = rt.metrics.clone();
    let state = http::ApiState {
        rt: rt.clone(),
        max_body: plan.max_body,
        api_token: plan.api_token.clone(),
        metrics: metrics.clone(),
        api_logging: plan.api_logging,
    };
    let shutdown = rt.shutdown.clone();
    server::spawn_memory_trimmer(shutdown.clone());
    let mut servers = JoinSet::new();
    let api = http::router(state.clone());
    for l in listeners.http {
        servers.spawn(serve_http(l, api.clone(), shutdown.clone(), Limits::API));
    }
    if let Some(ls) = listeners.public {
        let public = http::public_router(state.clone());
        for l in ls {
            servers.spawn(serve_http(l, public.clone(), shutdown.clone(), Limits::PROBES));
        }
    }
    if let Some(ls) = listeners.metrics {
        let router = metrics_router(metrics.clone());
        for l in ls {
            servers.spawn(serve_http(l, router.clone(), shutdown.clone(), Limits::PROBES));
        }
    }
    let grpc_api = super::grpc::router(rt.clone(), plan.api_token.clone(), plan.max_body, metrics);
    for l in listeners.grpc {
        servers.spawn(server::serve(l, grpc_api.clone(), shutdown.clone(), Limits::API));
    }
    let tls = match &plan.identity {
        Some(identity) => Some(identity.server_config().map_err(anyhow::Error::msg)?),
        None => {
            if !is_loopback(&args.dapr_internal_grpc_listen_address) {
                tracing::warn!(
                    address = %args.dapr_internal_grpc_listen_address,
                    "the internal port serves other sidecars on a non-loopback address without mTLS: anyone who \
                     reaches it can call the app and claim any caller app id; use --enable-mtls, or \
                     --dapr-internal-grpc-listen-address 127.0.0.1 on a single machine"
                );
            }
            None
        }
    };
    {
        let (renewal, shutdown) = (plan.renewal.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            renewal.cancel();
        });
    }
    let internal = axum::Router::new()
        .fallback(move |req: axum::extract::Request| {
            let callee = callee.clone();
            async move { callee.handle(req).await }
        })
        .layer(axum::middleware::from_fn(http::catch_panic));
    for l in listeners.internal {
        servers.spawn(server::serve_with(
            l,
            internal.clone(),
            shutdown.clone(),
            Limits::API,
            tls.clone(),
        ));
    }
    tracing::info!(
        app_id = %args.app_id,
        http_port = ports.http,
        grpc_port = ports.grpc,
        metrics_port = ?ports.metrics,
        public_port = ?ports.public,
        internal_grpc_port = ports.internal,
        name_resolution = %plan.name_resolution.component,
        mode = ?args.mode,
        "tandem sidecar listening"
    );
    let init = tokio::spawn(initialise(
        rt.clone(),
        loader,
        Startup {
            resources: plan.resources,
            channel: plan.channel,
            probe: plan.probe,
            me,
            operator: plan.operator,
            started,
        },
    ));
    Ok((Serving { rt, servers }, init))
}

fn is_loopback(address: &str) -> bool {
    address == "localhost" || address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn metrics_router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().fallback(move || {
        let m = metrics.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                m.render(),
            )
        }
    })
}

async fn serve_http(listener: TcpListener, router: axum::Router, shutdown: CancellationToken, limits: Limits) {
    let service = tower::ServiceExt::map_request(router, http::normalize_path);
    server::serve(listener, service, shutdown, limits).await
}

/// The runtime over the bound ports, and what serving it needs besides.
struct Assembled {
    rt: Arc<Runtime>,
    loader: ComponentLoader,
    /// The handler of the internal port.
    callee: Arc<invoke::Callee>,
    /// This sidecar, as name resolution registers it once its components are ready.
    me: nameresolution::Instance,
}

/// The runtime: the component table with name resolution in it (it answers with addresses on this sidecar's
/// internal port, so it is built once that is bound), the blocks over the table, invocation, and the loader that
/// will fill the table.
async fn assemble(args: &Args, plan: &Plan, ports: &Ports) -> anyhow::Result<Assembled> {
    let table = Arc::new(ComponentTable::default());
    let me = nameresolution::Instance {
        app_id: args.app_id.clone(),
        namespace: args.namespace.clone(),
        address: std::env::var("DAPR_HOST_IP").unwrap_or_else(|_| "127.0.0.1".into()),
        internal_port: ports.internal,
        http_port: ports.http,
        app_port: plan.channel.as_ref().map(|c| c.port),
    };
    let nr = &plan.name_resolution;
    let resolver_instance =
        nameresolution::build_with(&plan.registry, &nr.component, &nr.version, &nr.configuration, &me)
            .await
            .map_err(|e| anyhow::anyhow!("name resolution {}: {e}", nr.component))?;
    let resolver: Arc<dyn NameResolver> = resolver_instance
        .get::<dyn NameResolver>()
        .ok_or_else(|| anyhow::anyhow!("name resolution {} built no resolver", nr.component))?;
    let mut nr_metadata = Metadata::new(&nr.component, &args.app_id, &args.namespace, []);
    nr_metadata.configuration = nr.configuration.clone();
    let nr_type = format!("nameresolution.{}", nr.component.to_ascii_lowercase());
    table.insert(Loaded::new(
        Component::new(&nr.component, &nr_type, &[]),
        nr_metadata,
        resolver_instance,
    ));

    let callee = Arc::new(invoke::Callee {
        app_id: args.app_id.clone(),
        app: plan.channel.clone(),
        acl: plan.acl.clone(),
        mtls: plan.identity.is_some(),
    });
    let mesh = match &plan.identity {
        Some(identity) => invoke::mesh::Mesh::mtls(identity.clone()),
        None => invoke::mesh::Mesh::plain(),
    };
    let invoker = Arc::new(
        Invoker::new(&args.app_id, &args.namespace, ports.internal, resolver, callee.clone())
            .with_trust_domain(plan.acl.trust_domain())
            .with_mesh(mesh)
            .with_resiliency(plan.resiliency.clone()),
    );
    let metadata = SidecarMetadata::new(
        &args.app_id,
        plan.config.enabled_features(),
        plan.app_connection.clone(),
        table.clone(),
        invoker.endpoints().clone(),
    );
    let references = References::new(table.clone(), &args.app_id, &args.namespace, args.mode);
    let rt = Arc::new(Runtime::new(Parts {
        app_id: args.app_id.clone(),
        namespace: args.namespace.clone(),
        config: plan.config.clone(),
        components: table.clone(),
        references: references.clone(),
        secrets: Secrets::new(table.clone(), plan.config.clone()),
        metadata,
        invoker,
        app: plan.channel.clone(),
        resiliency: plan.resiliency.clone(),
        metrics: Arc::new(Metrics::new(&args.app_id).in_namespace(&args.namespace)),
        grace: Duration::from_secs(args.dapr_graceful_shutdown_seconds.max(0) as u64),
        jobs_store: plan.jobs_store.clone(),
    }));
    let loader = ComponentLoader::new(
        plan.registry.clone(),
        table,
        references,
        plan.resiliency.clone(),
        &args.app_id,
        &args.namespace,
    )
    .with_admission(Kind::State, super::state::admit)
    .with_admission(Kind::PubSub, super::pubsub::admit)
    .with_admission(Kind::Lock, super::lock::admit);
    Ok(Assembled { rt, loader, callee, me })
}

/// What the background initialisation needs.
struct Startup {
    resources: Resources,
    channel: Option<Arc<AppChannel>>,
    probe: Option<HealthProbe>,
    /// This sidecar, as name resolution registers it once its components are ready.
    me: nameresolution::Instance,
    operator: Option<(OperatorClient, SidecarResources)>,
    started: Instant,
}

/// Components first (then outbound APIs work), then the app: /v1.0/healthz turns 204 once both are ready.
async fn initialise(rt: Arc<Runtime>, loader: ComponentLoader, s: Startup) {
    if let Err(e) = loader.load_all(&s.resources.components).await {
        tracing::error!("error processing component, tandem will exit: {e}");
        rt.fail(e);
        return;
    }
    if let Err(e) = rt
        .invoker
        .endpoints()
        .load(&rt.references, &s.resources.http_endpoints)
        .await
    {
        tracing::error!("error processing HTTPEndpoint, tandem will exit: {e}");
        rt.fail(e);
        return;
    }
    rt.health.set_outbound_ready();
    rt.subscriber.set_declarative(&s.resources.subscriptions).await;
    tokio::spawn(rt.subscriber.clone().follow());
    tokio::spawn(rt.inputs.clone().follow());
    tokio::spawn(rt.configuration.clone().follow());
    // Workflows that were running when the sidecar last stopped go on (their work waits for a worker).
    let workflows = rt.workflows.clone();
    tokio::spawn(async move { workflows.resume_all().await });
    if let Some((client, baseline)) = s.operator {
        let span = tracing::info_span!("hot_reload", app_id = %rt.app_id);
        tokio::spawn(tracing::Instrument::instrument(
            hot_reload::follow(rt.clone(), loader, client, baseline),
            span,
        ));
    }
    // Registered before the app listens: calls that find this sidecar early are held until the app is ready
    // (`--app-ready-hold`), so apps started together lose no early call.
    if let Err(e) = rt.invoker.resolver().register(&s.me).await {
        tracing::error!("registering with name resolution failed, tandem will exit: {e}");
        rt.fail(e.to_string());
        return;
    }
    if let Some(channel) = &s.channel {
        channel.wait_until_listening(&rt.shutdown).await;
        if let Some(p) = s.probe {
            channel.spawn_health_probe(p, rt.shutdown.clone());
        }
        // Subscriptions start before /v1.0/healthz says ready, unless asking the app for its subscriptions takes
        // long (an app that accepts connections but does not answer yet): then they start when it answers.
        let subscriber = rt.subscriber.clone();
        let asking = tokio::spawn(async move { subscriber.app_ready().await });
        let _ = tokio::time::timeout(Duration::from_secs(5), asking).await;
        let inputs = rt.inputs.clone();
        let probing = tokio::spawn(async move { inputs.app_ready().await });
        let _ = tokio::time::timeout(Duration::from_secs(5), probing).await;
        rt.jobs.start(channel.clone(), rt.shutdown.clone());
    }
    rt.health.set_ready();
    tracing::info!(
        init_elapsed_ms = s.started.elapsed().as_millis() as u64,
        "tandem initialized. Status: Running"
    );
}
