//! Turns Component resources into loaded components: resolves their metadata (values, `envRef`, `secretKeyRef`),
//! builds and initialises the backend within `initTimeout`, wraps it in its Resiliency layers, checks what the
//! kind's block requires, and only then puts it in the table. At start-up secret stores come first and
//! `ignoreErrors` is honoured; on hot reload the old component serves until the new one is ready, and stays
//! when the new one fails.

use std::sync::Arc;
use std::time::Duration;

use super::{ComponentTable, Loaded, References};
use crate::api::Component;
use crate::components::metadata::parse_duration;
use crate::components::{Kind, Metadata, Registry};
use crate::resiliency::Resiliency;

/// A block's check of a component of its kind before it is used: it may record what it works out on the
/// component (`Loaded::set_settings`), and an error keeps the component out.
pub type Admission = fn(&ComponentTable, &Loaded) -> Result<(), String>;

const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What applying a changed component did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Built and swapped in (or added).
    Loaded,
    /// The same resource is already loaded: nothing to do.
    Unchanged,
}

#[derive(Clone)]
pub struct ComponentLoader {
    registry: Arc<Registry>,
    table: Arc<ComponentTable>,
    references: References,
    resiliency: Arc<Resiliency>,
    admissions: Vec<(Kind, Admission)>,
    app_id: String,
    namespace: String,
}

impl ComponentLoader {
    pub fn new(
        registry: Arc<Registry>,
        table: Arc<ComponentTable>,
        references: References,
        resiliency: Arc<Resiliency>,
        app_id: &str,
        namespace: &str,
    ) -> Self {
        ComponentLoader {
            registry,
            table,
            references,
            resiliency,
            admissions: vec![],
            app_id: app_id.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// Has every component of `kind` pass `check` before it joins the table.
    pub fn with_admission(mut self, kind: Kind, check: Admission) -> Self {
        self.admissions.push((kind, check));
        self
    }

    pub fn table(&self) -> &Arc<ComponentTable> {
        &self.table
    }

    /// Loads `components` in Dapr's order (secret stores first). Fails on the first component that cannot start
    /// unless it sets `spec.ignoreErrors`.
    pub async fn load_all(&self, components: &[Component]) -> Result<(), String> {
        let (secret_stores, others): (Vec<&Component>, Vec<&Component>) = components
            .iter()
            .partition(|c| Kind::of_type(&c.spec.type_) == Some(Kind::SecretStore));
        for c in secret_stores.into_iter().chain(others) {
            match self.build(c).await {
                Ok(loaded) => {
                    self.table.insert(loaded);
                    tracing::info!(component = c.name(), type_ = %c.spec.type_, "component loaded");
                }
                Err(e) if c.spec.ignore_errors => {
                    tracing::warn!(component = c.name(), "ignoring error processing component: {e}");
                }
                Err(e) => return Err(format!("process component {} error: {e}", c.name())),
            }
        }
        Ok(())
    }

    /// Hot reload of one component: builds it beside the one it replaces and swaps it in once ready. Until then
    /// requests use the old one; when the build fails the old one stays and the error is returned.
    pub async fn apply(&self, c: &Component) -> Result<Applied, String> {
        let current = self.loaded_named(c.name());
        if current.iter().any(|l| l.resource == *c) {
            return Ok(Applied::Unchanged);
        }
        let loaded = self.build(c).await?;
        let kind = loaded.kind();
        self.table.insert(loaded);
        // A component whose type moved to another kind leaves its old kind.
        for old in current.iter().filter(|l| l.kind() != kind) {
            self.table.remove(old.kind(), &old.name);
        }
        Ok(Applied::Loaded)
    }

    /// Unloads component `name` (of whatever kind); it closes once the requests using it are done.
    pub fn remove(&self, name: &str) -> bool {
        let mut removed = false;
        for l in self.loaded_named(name) {
            removed |= self.table.remove(l.kind(), &l.name);
        }
        removed
    }

    /// The Components named `name`, of every kind (name resolution is not a Component).
    fn loaded_named(&self, name: &str) -> Vec<Arc<Loaded>> {
        Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::NameResolution)
            .filter_map(|k| self.table.loaded(k, name))
            .collect()
    }

    /// Resolves, builds and initialises `c` with its resiliency layers, and checks it may join the table.
    async fn build(&self, c: &Component) -> Result<Loaded, String> {
        let type_ = c.spec.type_.as_str();
        let log_name = format!("{} ({type_}/{})", c.name(), c.version());
        let Some(kind) = Kind::of_type(type_) else {
            return Err(format!("incorrect type {type_}"));
        };
        if kind == Kind::NameResolution {
            return Err(format!(
                "{type_} is name resolution, which is chosen in the Configuration's spec.nameResolution, not with a \
                 Component"
            ));
        }
        self.registry
            .lookup(type_, c.version())
            .map_err(|e| format!("[CREATE_COMPONENT_FAILURE]: initialization error occurred for {log_name}: {e}"))?;
        let props = self
            .references
            .resolve_pairs(&c.spec.metadata, c.auth.as_ref(), c.name())
            .await?;
        let md = Metadata::new(c.name(), &self.app_id, &self.namespace, props);
        let timeout = c
            .spec
            .init_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_INIT_TIMEOUT);
        let instance = tokio::time::timeout(timeout, self.registry.build(type_, c.version(), md.clone()))
            .await
            .map_err(|_| format!("[INIT_COMPONENT_FAILURE]: init timeout for component {log_name} after {timeout:?}"))?
            .map_err(|e| format!("[INIT_COMPONENT_FAILURE]: initialization error occurred for {log_name}: {e}"))?;
        let layered = match self.resiliency.component_outbound(c.name(), kind) {
            Some(policy) => crate::resiliency::layers::outbound(instance.clone(), policy),
            None => instance.clone(),
        };
        let loaded = Loaded::new(c.clone(), md, instance).with_layers(layered);
        if let Err(e) = self.admit(&loaded) {
            loaded.instance.close().await;
            return Err(e);
        }
        Ok(loaded)
    }

    /// What the kind's block requires of a component before it is used.
    fn admit(&self, candidate: &Loaded) -> Result<(), String> {
        self.admissions
            .iter()
            .filter(|(kind, _)| *kind == candidate.kind())
            .try_for_each(|(_, check)| check(&self.table, candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Auth, NameValuePair, SecretKeyRef};
    use crate::sidecar::args::Mode;

    fn loader() -> ComponentLoader {
        let table = Arc::new(ComponentTable::default());
        let references = References::new(table.clone(), "app", "", Mode::Standalone);
        ComponentLoader::new(Registry::builtin(), table, references, Arc::default(), "app", "")
            .with_admission(Kind::State, crate::sidecar::state::admit)
    }

    fn names(l: &ComponentLoader) -> Vec<String> {
        l.table().list().iter().map(|c| c.name.clone()).collect()
    }

    #[tokio::test]
    async fn unknown_types_refuse_to_start_and_name_the_type() {
        let c = Component::new("x", "state.cassandra", &[]);
        let err = loader().load_all(&[c]).await.unwrap_err();
        assert!(
            err.contains("state.cassandra/v1") && err.contains("state.redis/v1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ignore_errors_skips_a_failing_component() {
        let l = loader();
        let mut bad = Component::new("bad", "state.sqlite", &[]);
        bad.spec.ignore_errors = true;
        let good = Component::new("good", "state.in-memory", &[]);
        l.load_all(&[bad, good]).await.unwrap();
        assert_eq!(names(&l), ["good"]);
    }

    #[tokio::test]
    async fn secret_refs_resolve_through_the_named_store_loaded_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let file = dir.path().join("s.json");
        std::fs::write(
            &file,
            serde_json::json!({"db": {"path": db.to_str().unwrap()}}).to_string(),
        )
        .unwrap();
        let secrets = Component::new(
            "local",
            "secretstores.local.file",
            &[("secretsFile", file.to_str().unwrap())],
        );
        let mut state = Component::new("s", "state.sqlite", &[]);
        state.spec.metadata.push(NameValuePair {
            name: "connectionString".into(),
            secret_key_ref: Some(SecretKeyRef {
                name: "db:path".into(),
                key: None,
            }),
            ..Default::default()
        });
        state.auth = Some(Auth {
            secret_store: "local".into(),
        });
        // The state store is listed first; the secret store still initialises before it.
        let l = loader();
        l.load_all(&[state, secrets]).await.unwrap();
        assert_eq!(names(&l), ["local", "s"]);
        assert!(db.exists(), "sqlite opened the path read from the secret");
    }

    #[tokio::test]
    async fn missing_secret_store_is_a_clear_error() {
        let mut c = Component::new("s", "state.in-memory", &[]);
        c.spec.metadata.push(NameValuePair {
            name: "x".into(),
            secret_key_ref: Some(SecretKeyRef {
                name: "n".into(),
                key: None,
            }),
            ..Default::default()
        });
        c.auth = Some(Auth {
            secret_store: "vault".into(),
        });
        let err = loader().load_all(&[c]).await.unwrap_err();
        assert!(err.contains("\"vault\", which is not loaded"), "{err}");
    }

    #[tokio::test]
    async fn a_second_actor_state_store_is_refused() {
        let a = Component::new("a", "state.in-memory", &[("actorStateStore", "true")]);
        let b = Component::new("b", "state.in-memory", &[("actorStateStore", "true")]);
        let err = loader().load_all(&[a.clone(), b]).await.unwrap_err();
        assert!(err.contains("detected duplicate actor state store: a and b"), "{err}");
        // A store replacing itself is no duplicate.
        let l = loader();
        l.load_all(std::slice::from_ref(&a)).await.unwrap();
        let mut changed = a;
        changed.spec.metadata.push(NameValuePair {
            name: "keyPrefix".into(),
            value: Some("name".into()),
            ..Default::default()
        });
        assert_eq!(l.apply(&changed).await.unwrap(), Applied::Loaded);
    }

    #[tokio::test]
    async fn a_failed_change_leaves_the_old_component_in_place() {
        let l = loader();
        l.load_all(&[Component::new("s", "state.in-memory", &[])])
            .await
            .unwrap();
        let before = l.table().loaded(Kind::State, "s").unwrap();
        let err = l.apply(&Component::new("s", "state.nope", &[])).await.unwrap_err();
        assert!(err.contains("state.nope/v1"), "{err}");
        let bad = Component::new("s", "state.sqlite", &[("connectionString", "/proc/nope/x.db")]);
        let err = l.apply(&bad).await.unwrap_err();
        assert!(err.contains("INIT_COMPONENT_FAILURE"), "{err}");
        assert!(Arc::ptr_eq(&before, &l.table().loaded(Kind::State, "s").unwrap()));
        assert_eq!(
            l.apply(&Component::new("s", "state.in-memory", &[])).await.unwrap(),
            Applied::Unchanged
        );
    }

    #[tokio::test]
    async fn a_change_of_kind_moves_the_component() {
        let l = loader();
        l.load_all(&[Component::new("x", "state.in-memory", &[])])
            .await
            .unwrap();
        l.apply(&Component::new("x", "secretstores.local.env", &[]))
            .await
            .unwrap();
        assert!(l.table().loaded(Kind::State, "x").is_none());
        assert!(l.table().loaded(Kind::SecretStore, "x").is_some());
        assert!(l.remove("x") && !l.remove("x"));
        assert!(l.table().list().is_empty());
    }

    #[tokio::test]
    async fn name_resolution_is_not_a_component() {
        let err = loader()
            .load_all(&[Component::new("n", "nameresolution.mdns", &[])])
            .await
            .unwrap_err();
        assert!(err.contains("spec.nameResolution"), "{err}");
    }
}
