//! Component kinds and the registry that builds a backend from its Dapr type and version.

pub mod metadata;
pub mod nameresolution;
pub mod secretstores;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use metadata::Metadata;
use secretstores::SecretStore;
use state::StateStore;

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

/// A backend that has been built and initialised.
#[derive(Clone)]
pub enum Instance {
    State(Arc<dyn StateStore>),
    Secret(Arc<dyn SecretStore>),
}

type Built<T> = BoxFuture<'static, Result<T, ComponentError>>;

/// How to build one registered component type.
#[derive(Clone, Copy)]
pub enum Factory {
    State(fn(Metadata) -> Built<Arc<dyn StateStore>>),
    Secret(fn(Metadata) -> Built<Arc<dyn SecretStore>>),
}

/// Maps a lowercased Dapr component type and version (`state.redis`, `v1`) to its factory.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<(String, String), Factory>,
}

impl Registry {
    /// Every backend tandem ships.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        r.register(
            "state.in-memory",
            "v1",
            Factory::State(|md| Box::pin(state::memory::build(md))),
        );
        r.register(
            "state.sqlite",
            "v1",
            Factory::State(|md| Box::pin(state::sqlite::build(md))),
        );
        r.register(
            "state.redis",
            "v1",
            Factory::State(|md| Box::pin(state::redis::build(md))),
        );
        r.register(
            "secretstores.local.file",
            "v1",
            Factory::Secret(|md| Box::pin(secretstores::local_file::build(md))),
        );
        r.register(
            "secretstores.local.env",
            "v1",
            Factory::Secret(|md| Box::pin(secretstores::local_env::build(md))),
        );
        r.register(
            "secretstores.kubernetes",
            "v1",
            Factory::Secret(|md| Box::pin(secretstores::kubernetes::build(md))),
        );
        r
    }

    pub fn register(&mut self, type_: &str, version: &str, factory: Factory) {
        self.factories
            .insert((type_.to_ascii_lowercase(), version.to_ascii_lowercase()), factory);
    }

    /// The factory for `type_`/`version`, or an error listing every registered type.
    pub fn factory(&self, type_: &str, version: &str) -> Result<Factory, ComponentError> {
        self.factories
            .get(&(type_.to_ascii_lowercase(), version.to_ascii_lowercase()))
            .copied()
            .ok_or_else(|| ComponentError::UnknownType {
                type_: type_.into(),
                version: version.into(),
                known: self.registered().join(", "),
            })
    }

    /// `type/version` of every registered component, sorted.
    pub fn registered(&self) -> Vec<String> {
        self.factories.keys().map(|(t, v)| format!("{t}/{v}")).collect()
    }

    /// Build and initialise a component.
    pub async fn build(&self, type_: &str, version: &str, md: Metadata) -> Result<Instance, ComponentError> {
        Ok(match self.factory(type_, version)? {
            Factory::State(f) => Instance::State(f(md).await?),
            Factory::Secret(f) => Instance::Secret(f(md).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_lists_registered_ones() {
        let err = Registry::builtin()
            .factory("state.nope", "v1")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("state.nope/v1"), "{err}");
        assert!(err.contains("state.redis/v1"), "{err}");
        assert!(err.contains("secretstores.local.file/v1"), "{err}");
    }

    #[test]
    fn lookup_ignores_case() {
        assert!(Registry::builtin().factory("State.Redis", "V1").is_ok());
    }
}
