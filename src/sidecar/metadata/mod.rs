//! The metadata building block: what GET /v1.0/metadata (and gRPC GetMetadata) says about this sidecar — its
//! components and their capabilities, subscriptions, HTTPEndpoints, app connection — and the attributes the app
//! sets with PUT /v1.0/metadata/<key>.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::components::Kind;
use crate::sidecar::components::ComponentTable;
use crate::sidecar::invoke::endpoints::Endpoints;

pub const RUNTIME_VERSION: &str = concat!("tandem-", env!("CARGO_PKG_VERSION"));

/// Extended attributes the app may set, at most this many (each key and value at most `MAX_ATTRIBUTE_LEN`).
const MAX_ATTRIBUTES: usize = 1024;
const MAX_ATTRIBUTE_LEN: usize = 4096;

/// How a loaded component shows in the metadata API.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentInfo {
    pub name: String,
    pub type_: String,
    pub version: String,
    pub capabilities: Vec<String>,
}

/// How a subscription shows in the metadata API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscriptionInfo {
    pub pubsub: String,
    pub topic: String,
    pub metadata: BTreeMap<String, String>,
    /// (CEL match, path) in order; the default route has an empty match.
    pub rules: Vec<(String, String)>,
    pub dead_letter_topic: String,
    /// DECLARATIVE, PROGRAMMATIC or STREAMING.
    pub type_: &'static str,
}

/// What the metadata API says about the app channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppConnection {
    pub port: Option<u16>,
    pub protocol: String,
    pub channel_address: String,
    pub max_concurrency: Option<u32>,
    pub health: Option<AppHealthInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppHealthInfo {
    pub path: Option<String>,
    pub interval: String,
    pub timeout: String,
    pub threshold: u32,
}

/// A snapshot for GET /v1.0/metadata and gRPC GetMetadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataSnapshot {
    pub id: String,
    pub runtime_version: String,
    pub enabled_features: Vec<String>,
    pub components: Vec<ComponentInfo>,
    pub extended: BTreeMap<String, String>,
    pub subscriptions: Vec<SubscriptionInfo>,
    pub http_endpoints: Vec<String>,
    pub app_connection: AppConnection,
}

/// Why an attribute could not be set.
#[derive(Debug, thiserror::Error)]
pub enum AttributeError {
    #[error("the metadata key and value may be at most {MAX_ATTRIBUTE_LEN} bytes each")]
    TooLong,
    #[error("at most {MAX_ATTRIBUTES} metadata attributes may be set")]
    TooMany,
}

/// The metadata API over the sidecar's parts.
pub struct SidecarMetadata {
    app_id: String,
    enabled_features: Vec<String>,
    app_connection: AppConnection,
    table: Arc<ComponentTable>,
    endpoints: Arc<Endpoints>,
    extended: RwLock<BTreeMap<String, String>>,
    subscriptions: RwLock<Vec<SubscriptionInfo>>,
}

impl SidecarMetadata {
    pub fn new(
        app_id: &str,
        enabled_features: Vec<String>,
        app_connection: AppConnection,
        table: Arc<ComponentTable>,
        endpoints: Arc<Endpoints>,
    ) -> Self {
        SidecarMetadata {
            app_id: app_id.to_owned(),
            enabled_features,
            app_connection,
            table,
            endpoints,
            extended: RwLock::default(),
            subscriptions: RwLock::default(),
        }
    }

    pub fn snapshot(&self) -> MetadataSnapshot {
        let mut extended = self.extended.read().unwrap_or_else(|p| p.into_inner()).clone();
        extended.insert("daprRuntimeVersion".into(), RUNTIME_VERSION.into());
        let components = self
            .table
            .list()
            .iter()
            // Name resolution is configured in the Configuration, not as a Component: Dapr does not list it.
            .filter(|c| c.kind() != Kind::NameResolution)
            .map(|c| ComponentInfo {
                name: c.name.clone(),
                type_: c.type_.clone(),
                version: c.version.clone(),
                capabilities: c.instance.capabilities().to_vec(),
            })
            .collect();
        MetadataSnapshot {
            id: self.app_id.clone(),
            runtime_version: RUNTIME_VERSION.into(),
            enabled_features: self.enabled_features.clone(),
            components,
            extended,
            subscriptions: self.subscriptions.read().unwrap_or_else(|p| p.into_inner()).clone(),
            http_endpoints: self.endpoints.names(),
            app_connection: self.app_connection.clone(),
        }
    }

    /// Sets an extended attribute (an empty key is ignored, as Dapr does).
    pub fn set(&self, key: &str, value: &str) -> Result<(), AttributeError> {
        if key.is_empty() {
            return Ok(());
        }
        if key.len() > MAX_ATTRIBUTE_LEN || value.len() > MAX_ATTRIBUTE_LEN {
            return Err(AttributeError::TooLong);
        }
        let mut extended = self.extended.write().unwrap_or_else(|p| p.into_inner());
        if extended.len() >= MAX_ATTRIBUTES && !extended.contains_key(key) {
            return Err(AttributeError::TooMany);
        }
        extended.insert(key.into(), value.into());
        Ok(())
    }

    pub fn set_subscriptions(&self, subs: Vec<SubscriptionInfo>) {
        *self.subscriptions.write().unwrap_or_else(|p| p.into_inner()) = subs;
    }
}
