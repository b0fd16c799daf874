//! `tandem injector`: the mutating admission webhook that adds the `daprd` sidecar to pods annotated
//! `dapr.io/enabled: "true"`. Serves `/mutate` over HTTPS and `/healthz`, `/readyz` over plain HTTP.

pub mod annotations;
pub mod container;
pub mod handler;
pub mod patch;
pub mod requester;
pub mod tls;
pub mod webhook_config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use clap::ArgAction;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use handler::Webhook;
pub use patch::{Deny, InjectorConfig, patch_for};

/// `tandem injector` flags; names and environment variables follow Dapr's injector where it has one.
#[derive(Clone, Debug, clap::Args)]
pub struct InjectorArgs {
    /// Port serving the webhook over HTTPS.
    #[arg(long, default_value_t = 4000)]
    pub port: u16,
    /// Port serving /healthz and /readyz over plain HTTP.
    #[arg(long, default_value_t = 8080)]
    pub health_port: u16,
    /// Address both servers listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: String,
    /// MutatingWebhookConfiguration whose caBundle the injector keeps set to its own CA (without --tls-cert-file).
    #[arg(long, default_value = "tandem-sidecar-injector")]
    pub webhook_name: String,
    /// Service in front of the injector; the self-made certificate is for <service>.<namespace>.svc.
    #[arg(long, default_value = "tandem-sidecar-injector")]
    pub service_name: String,
    /// Image of the injected sidecar (a tandem image; `dapr.io/sidecar-image` overrides it per pod).
    #[arg(long, env = "SIDECAR_IMAGE")]
    pub sidecar_image: String,
    /// imagePullPolicy of the injected sidecar (Always, IfNotPresent or Never); Kubernetes' default when unset.
    #[arg(long, env = "SIDECAR_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub sidecar_image_pull_policy: Option<String>,
    /// Namespace of tandem's control plane; sidecars reach the operator at tandem-api.<namespace>.svc:443.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tandem-system")]
    pub control_plane_namespace: String,
    /// PEM certificate (chain) to serve; re-read when it changes. Without it the injector makes its own CA.
    #[arg(long, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
    /// More service accounts whose pods are injected, as comma-separated `namespace:name` glob patterns
    /// (the built-in workload controllers and group system:masters always are).
    #[arg(long, env = "ALLOWED_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub allowed_service_accounts: Vec<String>,
    /// --placement-host-address for sidecars whose pod has no dapr.io/placement-host-address.
    #[arg(long, env = "PLACEMENT_HOST_ADDRESS")]
    pub placement_host_address: Option<String>,
    /// Inject daprd as a native sidecar (init container with restartPolicy Always, Kubernetes 1.29+) unless
    /// the pod's dapr.io/enable-native-sidecar says otherwise.
    #[arg(long, env = "NATIVE_SIDECAR_ENABLED", action = ArgAction::Set, default_value_t = false,
          num_args = 0..=1, default_missing_value = "true")]
    pub enable_native_sidecar: bool,
    /// Sidecars talk to each other over mutual TLS with certificates from the operator (the chart's
    /// `mtls.enabled`, on by default).
    #[arg(long, env = "TANDEM_MTLS_ENABLED", action = ArgAction::Set, default_value_t = false,
          num_args = 0..=1, default_missing_value = "true")]
    pub enable_mtls: bool,
    /// debug, info, warn, error or fatal.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Print logs as JSON.
    #[arg(long, action = ArgAction::Set, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub log_as_json: bool,
}

impl InjectorArgs {
    pub fn injector_config(&self) -> InjectorConfig {
        InjectorConfig {
            sidecar_image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            control_plane_namespace: self.control_plane_namespace.clone(),
            placement_host_address: self.placement_host_address.clone().filter(|s| !s.is_empty()),
            native_sidecar: self.enable_native_sidecar,
            mtls: self.enable_mtls,
        }
    }
}

/// Whether `/readyz` answers 200: the webhook serves a certificate the API server trusts.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// `/healthz` (alive) and `/readyz` (ready) on the health port.
pub fn health_router(ready: Readiness) -> Router {
    Router::new().route("/healthz", get(|| async { StatusCode::OK })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                if ready.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    )
}

/// Serves `app` over TLS on `listener` until `shutdown`, then lets open connections finish (up to 10 s).
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accepting a webhook connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "webhook connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("webhook connections still open after 10s; closing them");
    }
}

/// Serves the webhook (HTTPS, presenting `certs`) and the health endpoints until `shutdown`.
pub async fn serve(
    webhook_listener: TcpListener,
    health_listener: TcpListener,
    certs: Arc<tls::CertStore>,
    webhook: Arc<Webhook>,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let https = serve_https(
        webhook_listener,
        tls::server_config(certs),
        handler::router(webhook),
        shutdown.clone(),
    );
    let health = async {
        if let Err(e) = axum::serve(health_listener, health_router(ready))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
        {
            tracing::error!("health server failed: {e}");
        }
    };
    tokio::join!(https, health);
}

/// Keeps `enabled` in step with `spec.mtls.enabled` of the `daprsystem` Configuration in the control plane's
/// namespace, as Dapr's injector decides whether sidecars get mTLS: absent or unreadable means enabled.
async fn follow_system_mtls(
    client: kube::Client,
    namespace: String,
    enabled: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    use crate::control_plane::{DaprKind, DaprResource};
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client, &namespace, &DaprKind::Configuration.api_resource());
    loop {
        let now = match api.get_opt("daprsystem").await {
            Ok(Some(obj)) => match DaprResource::from_dynamic(DaprKind::Configuration, &obj) {
                Ok(DaprResource::Configuration(c)) => c.mtls().map(|m| m.enabled).unwrap_or(true),
                _ => true,
            },
            Ok(None) => true,
            Err(e) => {
                tracing::debug!("cannot read Configuration {namespace}/daprsystem: {e}");
                enabled.load(std::sync::atomic::Ordering::Relaxed)
            }
        };
        if enabled.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
            tracing::info!(
                mtls = now,
                "daprsystem spec.mtls.enabled changed: new sidecars follow it"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// `tandem injector`.
pub async fn run(args: InjectorArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::sidecar::cancel_on_signals(shutdown.clone());
    let requesters = requester::AllowedRequesters::new(&args.allowed_service_accounts).map_err(anyhow::Error::msg)?;
    let system_mtls = Arc::new(std::sync::atomic::AtomicBool::new(true));
    if args.enable_mtls {
        match kube::Client::try_default().await {
            Ok(client) => {
                tokio::spawn(follow_system_mtls(
                    client,
                    args.control_plane_namespace.clone(),
                    system_mtls.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => tracing::warn!(
                "cannot read the daprsystem Configuration (no Kubernetes client: {e}); injecting --enable-mtls as \
                 --enable-mtls says"
            ),
        }
    }
    let webhook = Arc::new(Webhook {
        config: args.injector_config(),
        requesters,
        system_mtls,
    });
    let ready = Readiness::default();

    let certs = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let stamp = tls::stamp(&[cert, key]);
            let certs = tls::CertStore::new(tls::load_pem_files(cert, key)?);
            tls::spawn_reloader(
                certs.clone(),
                cert.clone(),
                key.clone(),
                stamp,
                args.tls_reload_interval,
                shutdown.clone(),
            );
            ready.set_ready();
            certs
        }
        _ => {
            let names = tls::dns_names(&args.service_name, &args.control_plane_namespace);
            let own = tls::bootstrap(&names)?;
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!(
                    "no --tls-cert-file was given, so the injector makes its own CA and must put it into the \
                     MutatingWebhookConfiguration's caBundle, but no Kubernetes client configuration was found \
                     (run in a cluster or set KUBECONFIG): {e}"
                )
            })?;
            tracing::info!(dns_names = ?names, "serving a certificate from the injector's own CA");
            let on_ready = {
                let ready = ready.clone();
                move || ready.set_ready()
            };
            tokio::spawn(webhook_config::keep_ca_bundle(
                client,
                args.webhook_name.clone(),
                own.ca_pem,
                Duration::from_secs(60),
                on_ready,
                shutdown.clone(),
            ));
            tls::CertStore::new(own.certified)
        }
    };

    let ip: std::net::IpAddr = args
        .listen_address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("--listen-address {:?} is not an IP address", args.listen_address))?;
    let bind = |port: u16| async move {
        let sock = SocketAddr::new(ip, port);
        TcpListener::bind(sock)
            .await
            .with_context(|| format!("listening on {sock}"))
    };
    let webhook_listener = bind(args.port).await?;
    let health_listener = bind(args.health_port).await?;
    tracing::info!(
        port = args.port,
        health_port = args.health_port,
        sidecar_image = %args.sidecar_image,
        "sidecar injector listening"
    );
    serve(webhook_listener, health_listener, certs, webhook, ready, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "tandem",
            "injector",
            "--sidecar-image",
            "ghcr.io/x/tandem:1",
            "--allowed-service-accounts",
            "argo:*,ci:builder",
            "--enable-native-sidecar",
        ])
        .unwrap();
        let Command::Injector(a) = cli.command else {
            panic!("injector")
        };
        assert_eq!((a.port, a.health_port), (4000, 8080));
        assert_eq!(a.webhook_name, "tandem-sidecar-injector");
        assert_eq!(a.service_name, "tandem-sidecar-injector");
        assert_eq!(a.allowed_service_accounts, ["argo:*", "ci:builder"]);
        assert!(a.tls_cert_file.is_none());
        let c = a.injector_config();
        assert!(c.native_sidecar);
        assert_eq!(c.sidecar_image, "ghcr.io/x/tandem:1");
        if std::env::var_os("POD_NAMESPACE").is_none() {
            assert_eq!(c.control_plane_address(), "tandem-api.tandem-system.svc:443");
        }
    }

    #[test]
    fn a_certificate_file_needs_its_key() {
        let e = Cli::try_parse_from([
            "tandem",
            "injector",
            "--sidecar-image",
            "x",
            "--tls-cert-file",
            "/tls/tls.crt",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--tls-key-file"), "{e}");
    }
}
