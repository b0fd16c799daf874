//! The contract between the sidecar and the control plane: the dapr.io resource kinds as they travel, the JSON
//! of the operator's sidecar API, and the sidecar's client of that API. Below both sides: it imports no role.

pub mod identity;
pub mod kinds;
pub mod mtls;
pub mod operator_client;
pub mod wire;

pub use kinds::{DaprKind, DaprResource};
pub use wire::{EventType, ResourceEvent, SidecarResources, TOKEN_AUDIENCE};
