//! The sidecar core the HTTP and gRPC adapters call: one plain async API per building block (state, secrets,
//! metadata, invocation) over the component table, plus the app channel, readiness and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::app_channel::AppChannel;
use super::bindings::BindingsApi;
use super::bindings::input::InputBindings;
use super::components::{ComponentTable, References};
use super::configuration::ConfigurationApi;
use super::conversation::ConversationApi;
use super::crypto::CryptoApi;
use super::invoke::Invoker;
use super::jobs::JobsApi;
use super::lock::Locks;
use super::metadata::SidecarMetadata;
use super::pubsub::PubSubApi;
use super::pubsub::subscriber::Subscriber;
use super::secrets::Secrets;
use super::state::State;
use super::workflow::Workflows;
use crate::api::Configuration;

/// Readiness flags behind /v1.0/healthz and /v1.0/healthz/outbound.
#[derive(Debug, Default)]
pub struct Health {
    outbound: AtomicBool,
    ready: AtomicBool,
}

impl Health {
    pub fn set_outbound_ready(&self) {
        self.outbound.store(true, Ordering::Release);
    }
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
    pub fn outbound_ready(&self) -> bool {
        self.outbound.load(Ordering::Acquire)
    }
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub struct Runtime {
    pub app_id: String,
    pub namespace: String,
    pub config: Arc<Configuration>,
    pub health: Health,
    /// Cancelled to begin a graceful shutdown (signal or POST /v1.0/shutdown).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Why the sidecar is stopping on its own, if it is (a component that could not start).
    fatal: std::sync::OnceLock<String>,
    /// Every loaded component, of every kind.
    pub components: Arc<ComponentTable>,
    /// Resolves the secret and environment references of resources (HTTPEndpoints on hot reload).
    pub references: References,
    pub state: State,
    pub secrets: Secrets,
    pub metadata: Arc<SidecarMetadata>,
    pub invoker: Arc<Invoker>,
    /// The channel to the app, when it has a port.
    pub app: Option<Arc<AppChannel>>,
    pub pubsub: PubSubApi,
    pub subscriber: Arc<Subscriber>,
    pub bindings: BindingsApi,
    /// Distributed locks.
    pub locks: Locks,
    pub conversation: ConversationApi,
    pub crypto: CryptoApi,
    /// Input bindings: their events delivered to the app.
    pub inputs: Arc<InputBindings>,
    /// Configuration stores: reads and subscriptions.
    pub configuration: Arc<ConfigurationApi>,
    pub metrics: Arc<super::metrics::Metrics>,
    /// Jobs and their scheduler.
    pub jobs: JobsApi,
    /// Workflows: the embedded durable-task engine.
    pub workflows: Workflows,
}

/// The parts a [`Runtime`] is made of.
pub struct Parts {
    pub app_id: String,
    pub namespace: String,
    pub config: Arc<Configuration>,
    pub components: Arc<ComponentTable>,
    pub references: References,
    pub secrets: Secrets,
    pub metadata: SidecarMetadata,
    pub invoker: Arc<Invoker>,
    pub app: Option<Arc<AppChannel>>,
    pub resiliency: Arc<crate::resiliency::Resiliency>,
    /// `--dapr-graceful-shutdown-seconds`.
    pub grace: std::time::Duration,
    pub metrics: Arc<super::metrics::Metrics>,
    /// The SQLite file jobs are kept in; in memory when unset.
    pub jobs_store: Option<std::path::PathBuf>,
}

impl Runtime {
    pub fn new(parts: Parts) -> Self {
        let metadata = Arc::new(parts.metadata);
        let pubsub = PubSubApi::new(parts.components.clone(), &parts.app_id, parts.metrics.clone());
        let subscriber = Arc::new(Subscriber::new(
            parts.components.clone(),
            pubsub.clone(),
            parts.resiliency.clone(),
            metadata.clone(),
            parts.app.clone(),
            parts.grace,
        ));
        let inputs = Arc::new(InputBindings::new(
            parts.components.clone(),
            parts.app.clone(),
            parts.resiliency,
            parts.metrics.clone(),
            &parts.app_id,
            parts.grace,
        ));
        let shutdown = tokio_util::sync::CancellationToken::new();
        Runtime {
            jobs: JobsApi::new(parts.jobs_store.as_deref(), &parts.namespace, &parts.app_id),
            workflows: Workflows::new(parts.components.clone(), &parts.app_id, shutdown.clone()),
            configuration: Arc::new(ConfigurationApi::new(parts.components.clone(), parts.app.clone())),
            bindings: BindingsApi::new(parts.components.clone(), parts.metrics.clone()),
            locks: Locks::new(parts.components.clone()),
            conversation: ConversationApi::new(parts.components.clone(), parts.metrics.clone()),
            crypto: CryptoApi::new(parts.components.clone()),
            inputs,
            metrics: parts.metrics,
            pubsub,
            subscriber,
            state: State::new(parts.components.clone(), &parts.app_id),
            app_id: parts.app_id,
            namespace: parts.namespace,
            config: parts.config,
            health: Health::default(),
            shutdown,
            fatal: Default::default(),
            components: parts.components,
            references: parts.references,
            secrets: parts.secrets,
            metadata,
            invoker: parts.invoker,
            app: parts.app,
        }
    }

    /// Stops the sidecar because of `error`; `Sidecar::wait` then reports it and the process exits non-zero.
    pub fn fail(&self, error: String) {
        let _ = self.fatal.set(error);
        self.shutdown.cancel();
    }

    pub fn fatal_error(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }
}
