//! tandem: a lean, Kubernetes-native distributed application runtime, drop-in compatible with Dapr.

pub mod api;
pub mod cli;
pub mod components;
pub mod control_plane;
pub mod crdgen;
pub mod echo;
pub mod injector;
pub mod operator;
pub mod resiliency;
pub mod run;
pub mod sidecar;
pub mod telemetry;
