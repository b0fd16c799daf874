//! Turns Component resources into running backends: resolves metadata (values, `envRef`, `secretKeyRef`),
//! initialises secret stores first, honours `initTimeout` and `ignoreErrors`, and registers each with the runtime.

use std::time::Duration;

use std::collections::HashMap;

use axum::http::{HeaderName, HeaderValue};

use crate::api::http_endpoint::TlsDocument;
use crate::api::{Auth, Component, HttpEndpoint, NameValuePair};
use crate::components::metadata::{parse_bool, parse_duration};
use crate::components::{Instance, Metadata, Registry};
use crate::sidecar::invoke::{ClientTlsPem, Endpoint, tls_client};

use super::args::Mode;
use super::runtime::{ComponentInfo, Runtime, state_capabilities};

const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);
const KINDS: &[&str] = &[
    "bindings",
    "configuration",
    "crypto",
    "lock",
    "middleware",
    "pubsub",
    "secretstores",
    "state",
    "conversation",
    "nameresolution",
];

/// Initialises `components` in Dapr's order (secret stores first). Fails on the first component that cannot
/// start unless it sets `spec.ignoreErrors`.
pub async fn load_components(
    rt: &Runtime,
    registry: &Registry,
    components: &[Component],
    mode: Mode,
) -> Result<(), String> {
    let (secret_stores, others): (Vec<&Component>, Vec<&Component>) = components
        .iter()
        .partition(|c| c.spec.type_.starts_with("secretstores."));
    let mut actor_store: Option<String> = None;
    for c in secret_stores.into_iter().chain(others) {
        match init_one(rt, registry, c, mode, &mut actor_store).await {
            Ok(()) => {
                tracing::info!(component = c.name(), type_ = %c.spec.type_, "component loaded")
            }
            Err(e) if c.spec.ignore_errors => {
                tracing::warn!(component = c.name(), "ignoring error processing component: {e}");
            }
            Err(e) => return Err(format!("process component {} error: {e}", c.name())),
        }
    }
    Ok(())
}

/// Initialises one component (again), as hot reload does; an actor state store replacing itself is fine.
pub async fn load_component(rt: &Runtime, registry: &Registry, c: &Component, mode: Mode) -> Result<(), String> {
    let mut actor_store = None;
    init_one(rt, registry, c, mode, &mut actor_store).await
}

async fn init_one(
    rt: &Runtime,
    registry: &Registry,
    c: &Component,
    mode: Mode,
    actor_store: &mut Option<String>,
) -> Result<(), String> {
    let type_ = c.spec.type_.as_str();
    let log_name = format!("{} ({type_}/{})", c.name(), c.version());
    if !KINDS.iter().any(|k| type_.starts_with(&format!("{k}."))) {
        return Err(format!("incorrect type {type_}"));
    }
    registry
        .factory(type_, c.version())
        .map_err(|e| format!("[CREATE_COMPONENT_FAILURE]: initialization error occurred for {log_name}: {e}"))?;
    let md = resolve_metadata(rt, c, mode).await?;
    let timeout = c
        .spec
        .init_timeout
        .as_deref()
        .and_then(|t| parse_duration(t).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INIT_TIMEOUT);
    let instance = tokio::time::timeout(timeout, registry.build(type_, c.version(), md.clone()))
        .await
        .map_err(|_| format!("[INIT_COMPONENT_FAILURE]: init timeout for component {log_name} after {timeout:?}"))?
        .map_err(|e| format!("[INIT_COMPONENT_FAILURE]: initialization error occurred for {log_name}: {e}"))?;
    let info = |capabilities| ComponentInfo {
        name: c.name().into(),
        type_: type_.into(),
        version: c.spec.version.clone(),
        capabilities,
    };
    match instance {
        Instance::State(store) => {
            if md.get("actorStateStore").and_then(parse_bool) == Some(true) {
                if let Some(other) = actor_store.replace(c.name().into()) {
                    return Err(format!(
                        "detected duplicate actor state store: {other} and {}",
                        c.name()
                    ));
                }
            }
            let caps = state_capabilities(store.features());
            rt.add_state_store(info(caps), store, md.get("keyPrefix"))?;
        }
        Instance::Secret(store) => {
            let caps = store.features().iter().map(|f| f.to_string()).collect();
            rt.add_secret_store(info(caps), store);
        }
    }
    Ok(())
}

/// HTTPEndpoint resources by name, with their headers resolved (values, `secretKeyRef`, `envRef`).
pub async fn resolve_endpoints(
    rt: &Runtime,
    endpoints: &[HttpEndpoint],
    mode: Mode,
) -> Result<HashMap<String, Endpoint>, String> {
    let mut out = HashMap::new();
    for e in endpoints {
        let name = e.metadata.name.clone().unwrap_or_default();
        let base = e.spec.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "HTTPEndpoint {name}: baseUrl {base:?} must start with http:// or https://"
            ));
        }
        let pairs = resolve_pairs(rt, &e.spec.headers, e.auth.as_ref(), &name, mode).await?;
        let mut headers = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let k =
                HeaderName::try_from(k.as_str()).map_err(|err| format!("HTTPEndpoint {name}: header {k:?}: {err}"))?;
            let v = HeaderValue::from_str(&v).map_err(|err| format!("HTTPEndpoint {name}: header {k}: {err}"))?;
            headers.push((k, v));
        }
        let client = match &e.spec.client_tls {
            None => None,
            Some(tls) => {
                let doc = |d: &Option<TlsDocument>, field: &str| {
                    d.as_ref()
                        .map(|d| NameValuePair {
                            name: field.to_owned(),
                            value: d.value.as_deref().map(Into::into),
                            secret_key_ref: d.secret_key_ref.clone(),
                            env_ref: None,
                        })
                        .into_iter()
                        .collect::<Vec<_>>()
                };
                let mut pairs = doc(&tls.root_ca, "rootCA");
                pairs.extend(doc(&tls.certificate, "certificate"));
                pairs.extend(doc(&tls.private_key, "privateKey"));
                let resolved: HashMap<String, String> = resolve_pairs(rt, &pairs, e.auth.as_ref(), &name, mode)
                    .await?
                    .into_iter()
                    .collect();
                let pem = ClientTlsPem {
                    root_ca: resolved.get("rootCA").cloned(),
                    certificate: resolved.get("certificate").cloned(),
                    private_key: resolved.get("privateKey").cloned(),
                };
                Some(tls_client(&pem).map_err(|err| format!("HTTPEndpoint {name}: {err}"))?)
            }
        };
        out.insert(
            name,
            Endpoint {
                base_url: base.trim_end_matches('/').to_owned(),
                headers,
                client,
            },
        );
    }
    Ok(out)
}

/// Environment variables components may not read (as in Dapr).
fn env_allowed(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper != "APP_API_TOKEN" && !upper.starts_with("DAPR_") && !name.contains(' ')
}

/// Substitutes Dapr's metadata placeholders.
fn placeholders(v: String, rt: &Runtime) -> String {
    if !v.contains('{') {
        return v;
    }
    let ns = if rt.namespace.is_empty() {
        rt.app_id.clone()
    } else {
        format!("{}.{}", rt.namespace, rt.app_id)
    };
    v.replace("{uuid}", &uuid::Uuid::new_v4().to_string())
        .replace("{appID}", &rt.app_id)
        .replace("{namespace}", &ns)
}

async fn resolve_metadata(rt: &Runtime, c: &Component, mode: Mode) -> Result<Metadata, String> {
    let props = resolve_pairs(rt, &c.spec.metadata, c.auth.as_ref(), c.name(), mode).await?;
    Ok(Metadata::new(c.name(), &rt.app_id, &rt.namespace, props))
}

/// Resolves name/value pairs (component metadata, HTTPEndpoint headers): plain values with Dapr's placeholders,
/// `secretKeyRef` through `auth.secretStore` (`kubernetes` by default in Kubernetes mode), and `envRef`.
pub async fn resolve_pairs(
    rt: &Runtime,
    pairs: &[NameValuePair],
    auth: Option<&Auth>,
    owner: &str,
    mode: Mode,
) -> Result<Vec<(String, String)>, String> {
    let mut props = Vec::with_capacity(pairs.len());
    for item in pairs {
        let mut value = item
            .value
            .as_ref()
            .map(|v| placeholders(v.as_string(), rt))
            .unwrap_or_default();
        if let Some(r) = &item.secret_key_ref {
            let store_name = match auth.map(|a| a.secret_store.as_str()).filter(|s| !s.is_empty()) {
                Some(s) => s.to_owned(),
                None if mode == Mode::Kubernetes => "kubernetes".to_owned(),
                None => {
                    return Err(format!(
                        "metadata {:?} uses secretKeyRef but the resource sets no auth.secretStore",
                        item.name
                    ));
                }
            };
            let store = rt.secret_store(&store_name).ok_or_else(|| {
                format!(
                    "metadata {:?} refers to secret store {store_name:?}, which is not loaded",
                    item.name
                )
            })?;
            let secret = store
                .get(&r.name, &Default::default())
                .await
                .map_err(|e| format!("resolving secretKeyRef {:?} for metadata {:?}: {e}", r.name, item.name))?;
            let key = r.key.as_deref().filter(|k| !k.is_empty()).unwrap_or(&r.name);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Configuration, SecretKeyRef};
    use crate::sidecar::runtime::AppConnection;

    fn rt() -> Runtime {
        Runtime::new("app", "", Configuration::default(), AppConnection::default())
    }

    #[tokio::test]
    async fn unknown_types_refuse_to_start_and_name_the_type() {
        let rt = rt();
        let c = Component::new("x", "state.cassandra", &[]);
        let err = load_components(&rt, &Registry::builtin(), &[c], Mode::Standalone)
            .await
            .unwrap_err();
        assert!(
            err.contains("state.cassandra/v1") && err.contains("state.redis/v1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ignore_errors_skips_a_failing_component() {
        let rt = rt();
        let mut bad = Component::new("bad", "state.sqlite", &[]);
        bad.spec.ignore_errors = true;
        let good = Component::new("good", "state.in-memory", &[]);
        load_components(&rt, &Registry::builtin(), &[bad, good], Mode::Standalone)
            .await
            .unwrap();
        let names: Vec<_> = rt.metadata().components.into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["good"]);
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
        let rt = rt();
        load_components(&rt, &Registry::builtin(), &[state, secrets], Mode::Standalone)
            .await
            .unwrap();
        let names: Vec<_> = rt.metadata().components.into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["local", "s"]);
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
        let err = load_components(&rt(), &Registry::builtin(), &[c], Mode::Standalone)
            .await
            .unwrap_err();
        assert!(err.contains("\"vault\", which is not loaded"), "{err}");
    }

    #[tokio::test]
    async fn env_refs_read_the_environment_but_not_tokens() {
        let rt = rt();
        let mut c = Component::new("s", "state.in-memory", &[]);
        // PATH is always set; APP_API_TOKEN must never be readable.
        c.spec.metadata.push(NameValuePair {
            name: "a".into(),
            env_ref: Some("PATH".into()),
            ..Default::default()
        });
        c.spec.metadata.push(NameValuePair {
            name: "b".into(),
            env_ref: Some("APP_API_TOKEN".into()),
            ..Default::default()
        });
        let md = resolve_metadata(&rt, &c, Mode::Standalone).await.unwrap();
        assert_eq!(md.get("a").map(str::to_owned), std::env::var("PATH").ok());
        assert_eq!(md.get("b"), Some(""));
    }
}
