//! `secretKeyRef` resolution in Kubernetes mode: refs whose store is `kubernetes` (or unset) are read from Secrets
//! in the resource's namespace by the operator and handed to sidecars as plain values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::common::{Auth, NameValuePair};
use crate::api::http_endpoint::TlsDocument;
use crate::control_plane::kinds::DaprResource;

/// The name of Dapr's built-in Kubernetes secret store.
pub const KUBERNETES_STORE: &str = "kubernetes";

/// A `secretKeyRef` the operator resolves itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSecretRef {
    /// Where the reference sits, e.g. `spec.metadata[redisPassword]`.
    pub field: String,
    pub secret: String,
    /// The key within the Secret (the ref's `key`, else its `name`).
    pub key: String,
}

/// The Secrets a resource refers to, by name; `None` when the Secret does not exist.
pub type SecretData = BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>;

/// A reference that cannot be resolved, saying which field, Secret and key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{field}: Secret {namespace}/{secret} does not exist; create it or correct secretKeyRef.name")]
    SecretNotFound {
        field: String,
        namespace: String,
        secret: String,
    },
    #[error("{field}: Secret {namespace}/{secret} has no key {key:?} (it has: {available}); correct secretKeyRef.key")]
    KeyNotFound {
        field: String,
        namespace: String,
        secret: String,
        key: String,
        available: String,
    },
    #[error("{field}: key {key:?} of Secret {namespace}/{secret} is not UTF-8 text")]
    NotText {
        field: String,
        namespace: String,
        secret: String,
        key: String,
    },
}

/// Why resolving a resource's secrets failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading Secret {namespace}/{secret} failed: {source}")]
    Read {
        namespace: String,
        secret: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {name:?}: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Unresolvable {
        kind: &'static str,
        name: String,
        errors: Vec<SecretError>,
    },
}

/// True when the resource's `auth.secretStore` is the Kubernetes store (or unset).
pub fn uses_kubernetes_store(auth: Option<&Auth>) -> bool {
    auth.is_none_or(|a| a.secret_store.is_empty() || a.secret_store == KUBERNETES_STORE)
}

/// Every reference of `res` that the operator must resolve from a Kubernetes Secret.
pub fn kubernetes_refs(res: &DaprResource) -> Vec<KubeSecretRef> {
    let mut refs = vec![];
    match res {
        DaprResource::Component(c) if uses_kubernetes_store(c.auth.as_ref()) => {
            pairs(&c.spec.metadata, "spec.metadata", &mut refs);
        }
        DaprResource::HttpEndpoint(e) if uses_kubernetes_store(e.auth.as_ref()) => {
            pairs(&e.spec.headers, "spec.headers", &mut refs);
            if let Some(tls) = &e.spec.client_tls {
                for (field, doc) in tls_documents_ref(tls) {
                    if let Some(r) = doc.and_then(|d| d.secret_key_ref.as_ref()) {
                        refs.push(KubeSecretRef {
                            field: format!("spec.clientTLS.{field}"),
                            secret: r.name.clone(),
                            key: r.key_or_name().to_owned(),
                        });
                    }
                }
            }
        }
        _ => {}
    }
    refs
}

fn pairs(list: &[NameValuePair], at: &str, refs: &mut Vec<KubeSecretRef>) {
    for p in list {
        if let Some(r) = p.secret_key_ref.as_ref().filter(|r| !r.name.is_empty()) {
            refs.push(KubeSecretRef {
                field: format!("{at}[{}]", p.name),
                secret: r.name.clone(),
                key: r.key_or_name().to_owned(),
            });
        }
    }
}

fn tls_documents_ref(tls: &crate::api::http_endpoint::ClientTls) -> [(&'static str, Option<&TlsDocument>); 3] {
    [
        ("rootCA", tls.root_ca.as_ref()),
        ("certificate", tls.certificate.as_ref()),
        ("privateKey", tls.private_key.as_ref()),
    ]
}

/// Reads the Secrets `refs` name from `namespace` (each once).
pub async fn fetch(client: &Client, namespace: &str, refs: &[KubeSecretRef]) -> Result<SecretData, ResolveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = SecretData::new();
    for r in refs {
        if out.contains_key(&r.secret) {
            continue;
        }
        let secret = api.get_opt(&r.secret).await.map_err(|source| ResolveError::Read {
            namespace: namespace.into(),
            secret: r.secret.clone(),
            source: Box::new(source),
        })?;
        let data = secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect::<BTreeMap<_, _>>()
        });
        out.insert(r.secret.clone(), data);
    }
    Ok(out)
}

/// The value `r` points to in `secrets`, or why there is none.
pub fn lookup(r: &KubeSecretRef, namespace: &str, secrets: &SecretData) -> Result<String, SecretError> {
    let Some(Some(data)) = secrets.get(&r.secret) else {
        return Err(SecretError::SecretNotFound {
            field: r.field.clone(),
            namespace: namespace.into(),
            secret: r.secret.clone(),
        });
    };
    let Some(bytes) = data.get(&r.key) else {
        return Err(SecretError::KeyNotFound {
            field: r.field.clone(),
            namespace: namespace.into(),
            secret: r.secret.clone(),
            key: r.key.clone(),
            available: data.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    String::from_utf8(bytes.clone()).map_err(|_| SecretError::NotText {
        field: r.field.clone(),
        namespace: namespace.into(),
        secret: r.secret.clone(),
        key: r.key.clone(),
    })
}

/// Replaces every Kubernetes `secretKeyRef` of `res` by the plain `value` it points to (the ref is removed, so
/// the sidecar sees an ordinary value). All problems are reported, not just the first.
pub fn resolve(res: &mut DaprResource, secrets: &SecretData) -> Result<(), Vec<SecretError>> {
    let namespace = res.namespace().to_owned();
    let mut errors = vec![];
    let fill_pairs = |list: &mut [NameValuePair], at: &str, errors: &mut Vec<SecretError>| {
        let mut refs = vec![];
        pairs(list, at, &mut refs);
        let mut refs = refs.into_iter();
        for p in list
            .iter_mut()
            .filter(|p| p.secret_key_ref.as_ref().is_some_and(|r| !r.name.is_empty()))
        {
            let r = refs.next().expect("one ref per pair with a secretKeyRef");
            match lookup(&r, &namespace, secrets) {
                Ok(v) => {
                    p.value = Some(v.as_str().into());
                    p.secret_key_ref = None;
                }
                Err(e) => errors.push(e),
            }
        }
    };
    match res {
        DaprResource::Component(c) if uses_kubernetes_store(c.auth.as_ref()) => {
            fill_pairs(&mut c.spec.metadata, "spec.metadata", &mut errors);
        }
        DaprResource::HttpEndpoint(e) if uses_kubernetes_store(e.auth.as_ref()) => {
            fill_pairs(&mut e.spec.headers, "spec.headers", &mut errors);
            if let Some(tls) = &mut e.spec.client_tls {
                let docs = [
                    ("rootCA", tls.root_ca.as_mut()),
                    ("certificate", tls.certificate.as_mut()),
                    ("privateKey", tls.private_key.as_mut()),
                ];
                for (field, doc) in docs {
                    let Some(doc) = doc else { continue };
                    let Some(sr) = doc.secret_key_ref.as_ref() else {
                        continue;
                    };
                    let r = KubeSecretRef {
                        field: format!("spec.clientTLS.{field}"),
                        secret: sr.name.clone(),
                        key: sr
                            .key
                            .clone()
                            .filter(|k| !k.is_empty())
                            .unwrap_or_else(|| sr.name.clone()),
                    };
                    match lookup(&r, &namespace, secrets) {
                        Ok(v) => {
                            doc.value = Some(v);
                            doc.secret_key_ref = None;
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        _ => {}
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Fetches the Secrets `res` refers to and resolves them into plain values.
pub async fn resolve_with(client: &Client, mut res: DaprResource) -> Result<DaprResource, ResolveError> {
    let refs = kubernetes_refs(&res);
    if refs.is_empty() {
        return Ok(res);
    }
    let secrets = fetch(client, res.namespace(), &refs).await?;
    resolve(&mut res, &secrets).map_err(|errors| ResolveError::Unresolvable {
        kind: res.kind().name(),
        name: res.name().to_owned(),
        errors,
    })?;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::kinds::DaprKind;
    use serde_json::json;

    fn component(auth: Option<&str>) -> DaprResource {
        let mut doc = json!({"metadata": {"name": "store", "namespace": "ns"},
            "spec": {"type": "state.redis", "version": "v1", "metadata": [
                {"name": "redisHost", "value": "redis:6379"},
                {"name": "redisPassword", "secretKeyRef": {"name": "redis", "key": "password"}},
                {"name": "token", "secretKeyRef": {"name": "token"}}]}});
        if let Some(store) = auth {
            doc["auth"] = json!({"secretStore": store});
        }
        DaprResource::from_json(DaprKind::Component, doc).unwrap()
    }

    fn secrets(entries: &[(&str, &[(&str, &str)])]) -> SecretData {
        entries
            .iter()
            .map(|(name, kv)| {
                let data = kv.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
                (name.to_string(), Some(data))
            })
            .collect()
    }

    #[test]
    fn key_defaults_to_the_ref_name() {
        let refs = kubernetes_refs(&component(None));
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[0].field.as_str(), refs[0].key.as_str()),
            ("spec.metadata[redisPassword]", "password")
        );
        assert_eq!((refs[1].secret.as_str(), refs[1].key.as_str()), ("token", "token"));
    }

    #[test]
    fn other_secret_stores_are_left_to_the_sidecar() {
        assert_eq!(kubernetes_refs(&component(Some("kubernetes"))).len(), 2);
        assert!(kubernetes_refs(&component(Some("vault"))).is_empty());
    }

    #[test]
    fn resolution_replaces_refs_by_plain_values() {
        let mut c = component(None);
        let data = secrets(&[("redis", &[("password", "hunter2")]), ("token", &[("token", "t0k")])]);
        resolve(&mut c, &data).unwrap();
        let DaprResource::Component(c) = c else { unreachable!() };
        let md = &c.spec.metadata;
        assert_eq!(md[1].value.as_ref().unwrap().as_string(), "hunter2");
        assert!(md[1].secret_key_ref.is_none());
        assert_eq!(md[2].value.as_ref().unwrap().as_string(), "t0k");
        assert_eq!(md[0].value.as_ref().unwrap().as_string(), "redis:6379");
    }

    #[test]
    fn every_problem_is_reported_with_field_secret_and_key() {
        let mut c = component(None);
        let mut data = secrets(&[("redis", &[("pass", "x")])]);
        data.insert("token".into(), None);
        let errors = resolve(&mut c, &data).unwrap_err();
        assert_eq!(errors.len(), 2);
        let (a, b) = (errors[0].to_string(), errors[1].to_string());
        assert!(
            a.contains("spec.metadata[redisPassword]")
                && a.contains("ns/redis")
                && a.contains("\"password\"")
                && a.contains("pass"),
            "{a}"
        );
        assert!(b.contains("Secret ns/token does not exist"), "{b}");
    }

    #[test]
    fn http_endpoint_headers_and_tls_are_resolved() {
        let mut e = DaprResource::from_json(
            DaprKind::HttpEndpoint,
            json!({"metadata": {"name": "e", "namespace": "ns"}, "spec": {"baseUrl": "https://x",
                "headers": [{"name": "Authorization", "secretKeyRef": {"name": "api", "key": "auth"}}],
                "clientTLS": {"rootCA": {"secretKeyRef": {"name": "api", "key": "ca"}}}}}),
        )
        .unwrap();
        assert_eq!(kubernetes_refs(&e).len(), 2);
        resolve(&mut e, &secrets(&[("api", &[("auth", "Bearer z"), ("ca", "PEM")])])).unwrap();
        let DaprResource::HttpEndpoint(e) = e else {
            unreachable!()
        };
        assert_eq!(e.spec.headers[0].value.as_ref().unwrap().as_string(), "Bearer z");
        let ca = e.spec.client_tls.unwrap().root_ca.unwrap();
        assert_eq!((ca.value.as_deref(), ca.secret_key_ref), (Some("PEM"), None));
    }
}
