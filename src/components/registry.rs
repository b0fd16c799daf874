//! The registry: every backend tandem ships, by lowercased Dapr type and version (`state.redis`, `v1`). Built once
//! per process and shared by the sidecar (start-up and hot reload) and the operator's validation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;

use super::bindings::{self, Binding};
use super::configuration::{self, ConfigurationStore};
use super::conversation::{self, Conversation};
use super::crypto::{self, CryptoProvider};
use super::instance::Instance;
use super::kind::{ComponentKind, Kind};
use super::lock::{self, LockStore};
use super::nameresolution::{self, NameResolver};
use super::pubsub::{self, PubSub};
use super::secretstores::{self, SecretStore};
use super::state::{self, StateStore};
use super::{ComponentError, Metadata};

type Factory = Arc<dyn Fn(Metadata) -> BoxFuture<'static, Result<Instance, ComponentError>> + Send + Sync>;

#[derive(Clone)]
struct Entry {
    kind: Kind,
    build: Factory,
}

/// Maps a lowercased Dapr component type and version to the function that builds and initialises it.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<(String, String), Entry>,
}

impl Registry {
    /// The registry of every built-in backend, built on first use and shared afterwards.
    pub fn builtin() -> Arc<Registry> {
        static BUILTIN: OnceLock<Arc<Registry>> = OnceLock::new();
        BUILTIN.get_or_init(|| Arc::new(Registry::with_builtins())).clone()
    }

    /// A new registry holding every built-in backend, to add more to (tests register their own).
    pub fn with_builtins() -> Registry {
        let mut r = Registry::default();
        r.register::<dyn StateStore, _, _>("state.in-memory", "v1", state::memory::build);
        r.register::<dyn StateStore, _, _>("state.sqlite", "v1", state::sqlite::build);
        r.register::<dyn StateStore, _, _>("state.redis", "v1", state::redis::build);
        for pg in ["state.postgresql", "state.postgres"] {
            r.register::<dyn StateStore, _, _>(pg, "v1", state::postgres::build_v1);
            r.register::<dyn StateStore, _, _>(pg, "v2", state::postgres::build_v2);
        }
        r.register::<dyn StateStore, _, _>("state.mysql", "v1", state::mysql::build);
        r.register::<dyn PubSub, _, _>("pubsub.in-memory", "v1", pubsub::memory::build);
        r.register::<dyn PubSub, _, _>("pubsub.jetstream", "v1", pubsub::jetstream::build);
        r.register::<dyn PubSub, _, _>("pubsub.rabbitmq", "v1", pubsub::rabbitmq::build);
        r.register::<dyn PubSub, _, _>("pubsub.kafka", "v1", pubsub::kafka::build);
        r.register::<dyn PubSub, _, _>("pubsub.redis", "v1", pubsub::redis::build);
        r.register::<dyn PubSub, _, _>("pubsub.sqlite", "v1", pubsub::sqlite::build);
        r.register::<dyn PubSub, _, _>("pubsub.mqtt3", "v1", pubsub::mqtt::build);
        r.register::<dyn PubSub, _, _>("pubsub.mqtt", "v1", pubsub::mqtt::build);
        r.register::<dyn Binding, _, _>("bindings.cron", "v1", bindings::cron::build);
        r.register::<dyn Binding, _, _>("bindings.http", "v1", bindings::http::build);
        r.register::<dyn Binding, _, _>("bindings.kafka", "v1", bindings::kafka::build);
        r.register::<dyn Binding, _, _>("bindings.localstorage", "v1", bindings::localstorage::build);
        r.register::<dyn Binding, _, _>("bindings.rabbitmq", "v1", bindings::rabbitmq::build);
        r.register::<dyn Binding, _, _>("bindings.redis", "v1", bindings::redis::build);
        r.register::<dyn Binding, _, _>("bindings.mqtt3", "v1", bindings::mqtt::build);
        r.register::<dyn Binding, _, _>("bindings.mqtt", "v1", bindings::mqtt::build);
        r.register::<dyn Binding, _, _>("bindings.postgresql", "v1", bindings::postgres::build);
        r.register::<dyn Binding, _, _>("bindings.postgres", "v1", bindings::postgres::build);
        r.register::<dyn ConfigurationStore, _, _>("configuration.redis", "v1", configuration::redis::build);
        r.register::<dyn ConfigurationStore, _, _>("configuration.postgresql", "v1", configuration::postgres::build);
        r.register::<dyn ConfigurationStore, _, _>("configuration.postgres", "v1", configuration::postgres::build);
        r.register::<dyn Conversation, _, _>("conversation.echo", "v1", conversation::echo::build);
        r.register::<dyn Conversation, _, _>("conversation.openai", "v1", conversation::openai::build);
        r.register::<dyn Conversation, _, _>("conversation.ollama", "v1", conversation::openai::build_ollama);
        r.register::<dyn SecretStore, _, _>("secretstores.local.file", "v1", secretstores::local_file::build);
        r.register::<dyn SecretStore, _, _>("secretstores.local.env", "v1", secretstores::local_env::build);
        r.register::<dyn SecretStore, _, _>("secretstores.kubernetes", "v1", secretstores::kubernetes::build);
        r.register::<dyn LockStore, _, _>("lock.redis", "v1", lock::redis::build);
        r.register::<dyn LockStore, _, _>("lock.in-memory", "v1", lock::memory::build);
        r.register::<dyn CryptoProvider, _, _>("crypto.dapr.localstorage", "v1", crypto::localstorage::build);
        r.register::<dyn CryptoProvider, _, _>("crypto.dapr.jwks", "v1", crypto::jwks::build);
        r.register::<dyn NameResolver, _, _>("nameresolution.kubernetes", "v1", nameresolution::kubernetes::build);
        r.register::<dyn NameResolver, _, _>("nameresolution.mdns", "v1", nameresolution::mdns::build);
        r.register::<dyn NameResolver, _, _>("nameresolution.sqlite", "v1", nameresolution::sqlite::build);
        r
    }

    /// Registers `build` for `type_`/`version`. The type's category must be kind `K`'s: a `state.*` type builds
    /// a `dyn StateStore`.
    pub fn register<K, F, Fut>(&mut self, type_: &str, version: &str, build: F)
    where
        K: ComponentKind + ?Sized,
        F: Fn(Metadata) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<K>, ComponentError>> + Send + 'static,
    {
        assert_eq!(
            Kind::of_type(type_),
            Some(K::KIND),
            "component type {type_} registered as a {} backend",
            K::KIND
        );
        let build: Factory = Arc::new(move |md| {
            let built = build(md);
            Box::pin(async move { built.await.map(Instance::new::<K>) })
        });
        self.factories.insert(
            (type_.to_ascii_lowercase(), version.to_ascii_lowercase()),
            Entry { kind: K::KIND, build },
        );
    }

    fn entry(&self, type_: &str, version: &str) -> Result<&Entry, ComponentError> {
        self.factories
            .get(&(type_.to_ascii_lowercase(), version.to_ascii_lowercase()))
            .ok_or_else(|| ComponentError::UnknownType {
                type_: type_.into(),
                version: version.into(),
                known: self.registered().join(", "),
            })
    }

    /// The kind `type_`/`version` builds, or an error listing every registered type.
    pub fn lookup(&self, type_: &str, version: &str) -> Result<Kind, ComponentError> {
        self.entry(type_, version).map(|e| e.kind)
    }

    /// `type/version` of every registered backend, sorted.
    pub fn registered(&self) -> Vec<String> {
        self.factories.keys().map(|(t, v)| format!("{t}/{v}")).collect()
    }

    /// `type/version` of every registered backend of `kind`, sorted.
    pub fn registered_of(&self, kind: Kind) -> Vec<String> {
        self.factories
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|((t, v), _)| format!("{t}/{v}"))
            .collect()
    }

    /// Builds and initialises a component.
    pub async fn build(&self, type_: &str, version: &str, md: Metadata) -> Result<Instance, ComponentError> {
        let build = self.entry(type_, version)?.build.clone();
        build(md).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_lists_registered_ones() {
        let err = Registry::builtin()
            .lookup("state.nope", "v1")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("state.nope/v1"), "{err}");
        assert!(err.contains("state.redis/v1"), "{err}");
        assert!(err.contains("secretstores.local.file/v1"), "{err}");
    }

    #[test]
    fn lookup_ignores_case() {
        assert_eq!(Registry::builtin().lookup("State.Redis", "V1").unwrap(), Kind::State);
    }

    #[test]
    fn built_once_and_shared() {
        assert!(Arc::ptr_eq(&Registry::builtin(), &Registry::builtin()));
    }

    #[test]
    fn name_resolution_is_registered_like_any_other_kind() {
        assert_eq!(
            Registry::builtin().registered_of(Kind::NameResolution),
            [
                "nameresolution.kubernetes/v1",
                "nameresolution.mdns/v1",
                "nameresolution.sqlite/v1"
            ]
        );
    }

    #[test]
    fn mqtt_answers_to_its_old_name_too() {
        let r = Registry::builtin();
        for t in ["pubsub.mqtt3", "pubsub.mqtt"] {
            assert_eq!(r.lookup(t, "v1").unwrap(), Kind::PubSub);
        }
        for t in ["bindings.mqtt3", "bindings.mqtt"] {
            assert_eq!(r.lookup(t, "v1").unwrap(), Kind::Bindings);
        }
    }

    #[test]
    fn sql_state_stores_answer_to_dapr_s_names_and_versions() {
        let r = Registry::builtin();
        for (t, v) in [
            ("state.postgresql", "v1"),
            ("state.postgresql", "v2"),
            ("state.postgres", "v1"),
            ("state.postgres", "v2"),
            ("state.mysql", "v1"),
        ] {
            assert_eq!(r.lookup(t, v).unwrap(), Kind::State, "{t}/{v}");
        }
        assert!(r.lookup("state.mysql", "v2").is_err());
    }

    #[tokio::test]
    async fn builds_an_instance_of_the_types_kind() {
        let md = Metadata::new("s", "app", "", []);
        let i = Registry::builtin().build("state.in-memory", "v1", md).await.unwrap();
        assert_eq!(i.kind(), Kind::State);
        assert!(i.get::<dyn StateStore>().is_some());
        assert!(i.capabilities().iter().any(|c| c == "ETAG"), "{:?}", i.capabilities());
    }

    #[test]
    #[should_panic(expected = "registered as a state backend")]
    fn a_type_of_another_category_cannot_be_registered() {
        let mut r = Registry::default();
        r.register::<dyn StateStore, _, _>("pubsub.redis", "v1", state::memory::build);
    }
}
