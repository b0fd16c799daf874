//! Resolving the name/value pairs of resources (component metadata, HTTPEndpoint headers): plain values with
//! Dapr's placeholders, `secretKeyRef` through the loaded secret stores, and `envRef`.

use std::sync::Arc;

use super::ComponentTable;
use crate::api::{Auth, NameValuePair};
use crate::components::Kind;
use crate::components::secretstores::SecretStore;
use crate::sidecar::args::Mode;

/// Resolves the references of resources for one app.
#[derive(Clone)]
pub struct References {
    table: Arc<ComponentTable>,
    app_id: String,
    namespace: String,
    mode: Mode,
}

impl References {
    pub fn new(table: Arc<ComponentTable>, app_id: &str, namespace: &str, mode: Mode) -> Self {
        References {
            table,
            app_id: app_id.to_owned(),
            namespace: namespace.to_owned(),
            mode,
        }
    }

    /// Resolves name/value pairs (component metadata, HTTPEndpoint headers): plain values with Dapr's
    /// placeholders, `secretKeyRef` through `auth.secretStore` (`kubernetes` by default in Kubernetes mode), and
    /// `envRef`.
    pub async fn resolve_pairs(
        &self,
        pairs: &[NameValuePair],
        auth: Option<&Auth>,
        owner: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let mut props = Vec::with_capacity(pairs.len());
        for item in pairs {
            let mut value = item
                .value
                .as_ref()
                .map(|v| self.placeholders(v.as_string()))
                .unwrap_or_default();
            if let Some(r) = &item.secret_key_ref {
                let store_name = match auth.map(|a| a.secret_store.as_str()).filter(|s| !s.is_empty()) {
                    Some(s) => s.to_owned(),
                    None if self.mode == Mode::Kubernetes => "kubernetes".to_owned(),
                    None => {
                        return Err(format!(
                            "metadata {:?} uses secretKeyRef but the resource sets no auth.secretStore",
                            item.name
                        ));
                    }
                };
                // Straight to the backend, without its resiliency layers (as Dapr resolves references): a retry
                // policy must not hold up loading a component.
                let loaded = self.table.loaded(Kind::SecretStore, &store_name);
                let store = loaded
                    .as_ref()
                    .and_then(|l| l.direct.get::<dyn SecretStore>())
                    .ok_or_else(|| {
                        format!(
                            "metadata {:?} refers to secret store {store_name:?}, which is not loaded",
                            item.name
                        )
                    })?;
                let secret = store
                    .get(&r.name, &Default::default())
                    .await
                    .map_err(|e| format!("resolving secretKeyRef {:?} for metadata {:?}: {e}", r.name, item.name))?;
                let key = r.key_or_name();
                value = secret
                    .get(key)
                    .cloned()
                    .ok_or_else(|| format!("secret {:?} in store {store_name:?} has no key {key:?}", r.name))?;
            } else if let Some(var) = item.env_ref.as_deref().filter(|_| value.is_empty()) {
                if env_allowed(var) {
                    value = std::env::var(var).unwrap_or_default();
                } else {
                    tracing::warn!(resource = owner, var, "envRef to a protected variable is refused");
                }
            }
            props.push((item.name.clone(), value));
        }
        Ok(props)
    }

    /// Substitutes Dapr's metadata placeholders.
    fn placeholders(&self, v: String) -> String {
        if !v.contains('{') {
            return v;
        }
        let ns = if self.namespace.is_empty() {
            self.app_id.clone()
        } else {
            format!("{}.{}", self.namespace, self.app_id)
        };
        v.replace("{uuid}", &uuid::Uuid::new_v4().to_string())
            .replace("{appID}", &self.app_id)
            .replace("{namespace}", &ns)
    }
}

/// Environment variables components may not read (as in Dapr).
fn env_allowed(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper != "APP_API_TOKEN" && !upper.starts_with("DAPR_") && !name.contains(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn env_refs_read_the_environment_but_not_tokens() {
        let refs = References::new(Arc::new(ComponentTable::default()), "app", "", Mode::Standalone);
        // PATH is always set; APP_API_TOKEN must never be readable.
        let pairs = [
            NameValuePair {
                name: "a".into(),
                env_ref: Some("PATH".into()),
                ..Default::default()
            },
            NameValuePair {
                name: "b".into(),
                env_ref: Some("APP_API_TOKEN".into()),
                ..Default::default()
            },
        ];
        let resolved = refs.resolve_pairs(&pairs, None, "s").await.unwrap();
        assert_eq!(resolved[0], ("a".to_owned(), std::env::var("PATH").unwrap()));
        assert_eq!(resolved[1], ("b".to_owned(), String::new()));
    }
}
