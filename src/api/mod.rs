//! Dapr resource types (group `dapr.io`): the shapes users write in YAML, served as CRDs.

pub mod access_control;
pub mod common;
pub mod component;
pub mod configuration;
pub mod crd;
pub mod http_endpoint;
pub mod resiliency;
pub mod subscription;

pub use common::{Auth, DynamicValue, NameValuePair, ResourceStatus, SecretKeyRef};
pub use component::{Component, ComponentSpec};
pub use configuration::{Configuration, ConfigurationSpec, MtlsSpec};
pub use crd::all_crds;
pub use http_endpoint::{HttpEndpoint, HttpEndpointSpec};
pub use resiliency::{Resiliency, ResiliencySpec};
pub use subscription::{Subscription, SubscriptionV1Alpha1};

/// The API group every Dapr resource belongs to.
pub const GROUP: &str = "dapr.io";

/// True when `scopes` admits `app_id` (an empty list admits every app).
pub fn in_scope(scopes: &[String], app_id: &str) -> bool {
    scopes.is_empty() || scopes.iter().any(|s| s == app_id)
}
