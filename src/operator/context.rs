//! What every reconciler shares: the client, metrics, the event recorder and the caches it reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use super::health::Metrics;
use crate::components::Registry;
use crate::control_plane::kinds::DaprKind;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tandem-operator";

pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Component types tandem implements.
    pub registry: Arc<Registry>,
    /// Services labelled `dapr.io/enabled=true`, to find the ones a workload no longer needs.
    pub services: Store<Service>,
    /// The `Ready` condition last written per object uid: the transition source when status cannot be stored.
    pub(crate) last_ready: Mutex<HashMap<String, Condition>>,
    /// Kinds whose CRD has no status subresource (warned about once).
    pub(crate) no_status: Mutex<BTreeSet<DaprKind>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, services: Store<Service>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            registry: Registry::builtin(),
            services,
            last_ready: Mutex::default(),
            no_status: Mutex::default(),
        }
    }
}
