//! Component kinds (one trait each, in one folder each with its backends), the registry that builds a backend
//! from its Dapr type and version, and the type-erased [`Instance`] a built component is held as.

pub mod amqp;
pub mod bindings;
pub mod configuration;
pub mod conversation;
pub mod crypto;
pub mod http_client;
pub mod instance;
pub mod kafka;
pub mod kind;
pub mod lock;
pub mod metadata;
pub mod mqtt;
pub mod nameresolution;
pub mod postgres;
pub mod pubsub;
pub mod registry;
pub mod secretstores;
pub mod sqlite;
pub mod state;

pub use instance::Instance;
pub use kind::{ComponentKind, Kind};
pub use metadata::Metadata;
pub use registry::Registry;

/// Why a component could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("couldn't find component type {type_}/{version}; registered component types are: {known}")]
    UnknownType {
        type_: String,
        version: String,
        known: String,
    },
    #[error("invalid metadata {field:?}: {message}")]
    InvalidMetadata { field: String, message: String },
    #[error("{0}")]
    Init(String),
}

impl ComponentError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ComponentError::InvalidMetadata {
            field: field.into(),
            message: message.into(),
        }
    }
}
