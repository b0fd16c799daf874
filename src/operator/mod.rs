//! The operator: keeps `<app-id>-dapr` Services for Dapr-enabled workloads, reports whether each dapr.io resource
//! is valid, and serves sidecars their resources. Reconcilers run on the elected leader only; the sidecar API
//! on every replica.

pub mod ca;
pub mod context;
pub mod error;
pub mod health;
pub mod leader;
pub mod resources;
pub mod secrets;
pub mod sidecar_api;
pub mod status;
pub mod validate;
pub mod workload;

#[cfg(test)]
mod fixtures;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::control_plane::{DaprKind, TOKEN_AUDIENCE};
use context::Context;
use health::{Metrics, Readiness};
use sidecar_api::{ApiState, ResourceCache};

/// `tandem operator` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct OperatorArgs {
    /// Port of the sidecar API (sidecars load their resources from it).
    #[arg(long, env = "TANDEM_API_PORT", default_value_t = 6500)]
    pub api_port: u16,
    /// Port serving /healthz, /readyz and /metrics.
    #[arg(long, env = "TANDEM_HEALTH_PORT", default_value_t = 8080)]
    pub health_port: u16,
    /// Run the reconcilers only while holding the `tandem-operator` Lease (for several replicas).
    #[arg(long, env = "TANDEM_LEADER_ELECT")]
    pub leader_elect: bool,
    /// PEM certificate chain: serve the sidecar API over HTTPS (with --tls-key-file).
    #[arg(long, env = "TANDEM_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "TANDEM_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Audience the sidecars' tokens must carry.
    #[arg(long, default_value = TOKEN_AUDIENCE)]
    pub token_audience: String,
    /// Act as the certificate authority of sidecar mTLS: keep the trust bundle in the `dapr-trust-bundle` Secret
    /// (generated when absent) and sign workload certificates on the sidecar API.
    #[arg(long, env = "TANDEM_ENABLE_MTLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_mtls: bool,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in Events (its pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "TANDEM_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "TANDEM_LOG_AS_JSON")]
    pub log_as_json: bool,
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(sidecar_api::load_server_config(cert, key).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot configure the Kubernetes client (no in-cluster config and no usable kubeconfig): {e}")
    })?;
    let bind = |port: u16, what: &'static str| async move {
        TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("cannot listen on port {port} for the {what}; choose another port"))
    };
    let api_listener = bind(args.api_port, "sidecar API (--api-port)").await?;
    let health_listener = bind(args.health_port, "health endpoints (--health-port)").await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let cache = ResourceCache::new(&readiness);
    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("tandem-operator-{}", uuid::Uuid::new_v4()));

    let mut watches = JoinSet::new();
    for kind in DaprKind::ALL {
        let span = tracing::info_span!("resource_cache", %kind);
        watches.spawn(cache.clone().watch(client.clone(), kind).instrument(span));
    }
    let mut servers = JoinSet::new();
    let mut state = ApiState::new(cache, client.clone(), &args.token_audience, shutdown.clone());
    if args.enable_mtls {
        let authority = ca::load_or_create(&client, &args.lease_namespace)
            .await
            .context("cannot set up the certificate authority (--enable-mtls)")?;
        state = state.with_ca(Arc::new(authority), &args.lease_namespace);
        tracing::info!(
            "certificate authority ready: trust bundle in {}/{}",
            args.lease_namespace,
            ca::TRUST_BUNDLE
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("sidecar API listening on {scheme}://0.0.0.0:{}", args.api_port);
    servers.spawn(sidecar_api::serve(
        api_listener,
        sidecar_api::router(state),
        tls,
        shutdown.clone(),
    ));
    tracing::info!("health endpoints listening on http://0.0.0.0:{}", args.health_port);
    servers.spawn(sidecar_api::serve(
        health_listener,
        health::router(metrics.clone(), readiness),
        None,
        shutdown.clone(),
    ));

    let start = {
        let (client, metrics, identity) = (client.clone(), metrics.clone(), identity.clone());
        move |stop: CancellationToken| run_reconcilers(client.clone(), metrics.clone(), Some(identity.clone()), stop)
    };
    if args.leader_elect {
        let lock = leader::LeaseLock::new(
            client.clone(),
            &args.lease_namespace,
            leader::LEASE_NAME,
            &identity,
            leader::LEASE_DURATION,
        );
        let (leading_tx, leading) = watch::channel(false);
        let campaign = tokio::spawn(leader::campaign(lock, leading_tx, shutdown.clone()));
        lead_while_elected(leading, start, shutdown.clone()).await;
        let _ = campaign.await;
    } else {
        start(shutdown.clone()).await;
    }

    shutdown.cancelled().await;
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(r) = servers.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!("server stopped with an error: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still open after 10s; closing them");
    }
    watches.abort_all();
    tracing::info!("tandem operator stopped");
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Runs the reconcilers while `leading` is true, stopping them when the lease is lost, until shutdown.
async fn lead_while_elected<F>(mut leading: watch::Receiver<bool>, start: F, shutdown: CancellationToken)
where
    F: Fn(CancellationToken) -> BoxFuture<'static, ()>,
{
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        let stop = shutdown.child_token();
        let mut reconcilers = tokio::spawn(start(stop.clone()));
        tokio::select! {
            _ = leading.wait_for(|l| !*l) => {}
            _ = shutdown.cancelled() => {}
            _ = &mut reconcilers => {}
        }
        stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut reconcilers)
            .await
            .is_err()
        {
            reconcilers.abort();
        }
        if shutdown.is_cancelled() {
            return;
        }
        tracing::info!("reconcilers stopped; waiting to be elected again");
    }
}

/// The Workload → Service and resource-status controllers, until `stop`.
fn run_reconcilers(
    client: Client,
    metrics: Arc<Metrics>,
    instance: Option<String>,
    stop: CancellationToken,
) -> BoxFuture<'static, ()> {
    async move {
        let label = format!("{}={}", workload::SERVICE_LABEL.0, workload::SERVICE_LABEL.1);
        let services_cfg = watcher::Config::default().labels(&label);
        let (services, writer) = reflector::store::<Service>();
        let service_cache = reflector(
            writer,
            watcher(Api::<Service>::all(client.clone()), services_cfg.clone()),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
        let ctx = Arc::new(Context::new(client.clone(), metrics, services.clone(), instance));

        let mut controllers: Vec<BoxFuture<'static, ()>> = vec![
            workload_controller::<Deployment>(&client, &services_cfg, &ctx, &stop),
            workload_controller::<StatefulSet>(&client, &services_cfg, &ctx, &stop),
        ];
        for kind in DaprKind::ALL {
            let ar = kind.api_resource();
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            let name = resources::controller_name(kind);
            let run = Controller::new_with(api, watcher::Config::default(), ar)
                .graceful_shutdown_on(stop.clone().cancelled_owned())
                .run(resources::reconcile, resources::error_policy, ctx.clone())
                .for_each(move |r| log_result(name, r))
                .instrument(tracing::info_span!("controller", name));
            controllers.push(run.boxed());
        }
        tracing::info!("reconcilers started");
        let all = futures::future::join_all(controllers);
        tokio::select! {
            _ = all => {}
            _ = service_cache => {}
        }
    }
    .boxed()
}

fn workload_controller<K: workload::Workload>(
    client: &Client,
    services_cfg: &watcher::Config,
    ctx: &Arc<Context>,
    stop: &CancellationToken,
) -> BoxFuture<'static, ()> {
    let (client, services_cfg, ctx, stop) = (client.clone(), services_cfg.clone(), ctx.clone(), stop.clone());
    async move {
        // Reconciling before the Service cache is complete could miss Services to delete.
        if ctx.services.wait_until_ready().await.is_err() {
            return;
        }
        Controller::new(Api::<K>::all(client.clone()), watcher::Config::default())
            .owns(Api::<Service>::all(client), services_cfg)
            .graceful_shutdown_on(stop.cancelled_owned())
            .run(workload::reconcile::<K>, workload::error_policy::<K>, ctx)
            .for_each(|r| log_result(K::CONTROLLER, r))
            .await
    }
    .instrument(tracing::info_span!("controller", name = K::CONTROLLER))
    .boxed()
}

/// Failed reconciliations were logged by their error policy; queue (watch) errors are logged here.
async fn log_result<T, E: std::error::Error>(
    controller: &str,
    result: Result<T, kube::runtime::controller::Error<E, watcher::Error>>,
) {
    use kube::runtime::controller::Error as ControllerError;
    match result {
        Ok(_) | Err(ControllerError::ReconcilerFailed(..)) | Err(ControllerError::ObjectNotFound(_)) => {}
        Err(ControllerError::QueueError(e)) => {
            tracing::warn!(
                controller,
                "watch failed, retrying: {e}{}",
                sidecar_api::cache::watch_hint(&e)
            )
        }
        Err(e) => tracing::warn!(controller, "{e}"),
    }
}
