//! `tandem sidecar`: the daprd equivalent. Starts in three steps — build (settings, resources and
//! Configuration, from files or the operator), listen (every port bound), serve (the runtime assembled over the
//! bound ports, the servers started) — then loads components in the background and drains on shutdown.

pub mod app_channel;
pub mod args;
pub mod args_render;
pub mod bindings;
pub mod components;
pub mod configuration;
pub mod conversation;
pub mod crypto;
pub mod error;
pub mod grpc;
pub mod hot_reload;
pub mod http;
pub mod identity;
pub mod invoke;
pub mod jobs;
pub mod lock;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod pubsub;
pub mod resources;
pub mod runtime;
pub mod secrets;
pub mod server;
mod startup;
pub mod state;
pub mod workflow;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use args::{Args, Mode};
pub use startup::{Defaults, PortPolicy, Ports};

use crate::components::Registry;
use runtime::Runtime;

/// A sidecar whose listeners are bound and whose servers run.
pub struct Sidecar {
    pub rt: Arc<Runtime>,
    pub ports: Ports,
    servers: JoinSet<()>,
    init: tokio::task::JoinHandle<()>,
    grace: Duration,
}

impl Sidecar {
    /// Loads resources, binds every listener and starts the servers; components initialise in the background.
    /// `defaults` are used when no `--resources-path` is given (`tandem run`'s embedded defaults).
    pub async fn start(args: Args, policy: PortPolicy, defaults: Defaults) -> anyhow::Result<Sidecar> {
        Sidecar::start_with(args, policy, defaults, Registry::builtin()).await
    }

    /// [`Sidecar::start`] with the component backends of `registry`.
    pub async fn start_with(
        args: Args,
        policy: PortPolicy,
        defaults: Defaults,
        registry: Arc<Registry>,
    ) -> anyhow::Result<Sidecar> {
        let started = Instant::now();
        let plan = startup::build(&args, defaults, registry).await?;
        let listeners = startup::listen(&args, policy).await?;
        let ports = listeners.ports.clone();
        let (rt, init) = startup::serve(&args, plan, listeners, started).await?;
        Ok(Sidecar {
            grace: Duration::from_secs(args.dapr_graceful_shutdown_seconds.max(0) as u64),
            rt: rt.rt,
            servers: rt.servers,
            ports,
            init,
        })
    }

    /// Runs until shutdown is requested (signal, POST /v1.0/shutdown, or a failed start), drains in-flight
    /// requests for up to `--dapr-graceful-shutdown-seconds`, then closes every component.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let shutdown = self.rt.shutdown.clone();
        shutdown.cancelled().await;
        self.init.abort();
        // Subscriptions and input bindings stop first: no new message is taken, and deliveries under way finish while the app and
        // the components are still there.
        self.rt.configuration.shutdown();
        tokio::join!(self.rt.subscriber.shutdown(), self.rt.inputs.shutdown());
        let deadline = tokio::time::Instant::now() + self.grace;
        tracing::info!(grace = ?self.grace, "shutting down: draining in-flight requests");
        let drained =
            tokio::time::timeout_at(deadline, async { while self.servers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("grace period over; aborting the requests still in flight");
            self.servers.abort_all();
        }
        // Components close in what is left of the grace period (a moment at least, to let them say goodbye).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.rt.components.close_all(left.max(Duration::from_millis(500))).await;
        tracing::info!("tandem sidecar stopped");
        match self.rt.fatal_error() {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => Ok(()),
        }
    }
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
