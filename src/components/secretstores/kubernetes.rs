//! `secretstores.kubernetes`: Kubernetes Secrets of the app's namespace (or the `namespace` request metadata),
//! read with the pod's own credentials. Built in and named `kubernetes` in kubernetes mode.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::Api;
use kube::api::ListParams;

use super::{Secret, SecretError, SecretStore};
use crate::components::{ComponentError, Metadata};

pub struct KubernetesStore {
    client: kube::Client,
    namespace: String,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn SecretStore>, ComponentError> {
    let client = kube::Client::try_default().await.map_err(|e| {
        ComponentError::Init(format!(
            "no Kubernetes API access (in-cluster config or kubeconfig): {e}"
        ))
    })?;
    Ok(Arc::new(KubernetesStore::new(client, &md.namespace)))
}

fn decode(secret: K8sSecret) -> Secret {
    let mut out: Secret = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        out.insert(k, v);
    }
    out
}

impl KubernetesStore {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        let namespace = if namespace.is_empty() { "default" } else { namespace };
        KubernetesStore {
            client,
            namespace: namespace.to_owned(),
        }
    }

    fn api(&self, metadata: &BTreeMap<String, String>) -> Api<K8sSecret> {
        let ns = metadata
            .get("namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.namespace);
        Api::namespaced(self.client.clone(), ns)
    }
}

#[async_trait]
impl SecretStore for KubernetesStore {
    fn features(&self) -> &'static [&'static str] {
        &["MULTIPLE_KEY_VALUES_PER_SECRET"]
    }

    async fn get(&self, name: &str, metadata: &BTreeMap<String, String>) -> Result<Secret, SecretError> {
        match self.api(metadata).get_opt(name).await {
            Ok(Some(secret)) => Ok(decode(secret)),
            Ok(None) => Err(SecretError::NotFound(name.to_owned())),
            Err(e) => Err(SecretError::Backend(format!("reading Kubernetes Secret {name}: {e}"))),
        }
    }

    async fn bulk_get(&self, metadata: &BTreeMap<String, String>) -> Result<BTreeMap<String, Secret>, SecretError> {
        let list = self
            .api(metadata)
            .list(&ListParams::default())
            .await
            .map_err(|e| SecretError::Backend(format!("listing Kubernetes Secrets: {e}")))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|s| Some((s.metadata.name.clone()?, decode(s))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    /// A kube Client whose API server answers every request from `answer` (method and path in, status and JSON out).
    fn client_answering(answer: fn(&str, &str) -> (u16, serde_json::Value)) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (status, body) = answer(req.method().as_str(), req.uri().path());
                let resp = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        kube::Client::new(svc, "default")
    }

    fn secret(name: &str, key: &str, value: &str) -> serde_json::Value {
        use base64::Engine;
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"},
            "data": {key: base64::engine::general_purpose::STANDARD.encode(value)}
        })
    }

    #[tokio::test]
    async fn reads_secrets_of_the_apps_namespace_or_the_requested_one() {
        let client = client_answering(|method, path| match (method, path) {
            ("GET", "/api/v1/namespaces/shop/secrets/db") => (200, secret("db", "password", "hunter2")),
            ("GET", "/api/v1/namespaces/other/secrets/db") => (200, secret("db", "password", "other")),
            ("GET", "/api/v1/namespaces/shop/secrets") => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": [secret("db", "password", "hunter2"), secret("api", "token", "t")]}),
            ),
            _ => (
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
        });
        let store = KubernetesStore::new(client, "shop");
        let none = BTreeMap::new();
        assert_eq!(
            store.get("db", &none).await.unwrap(),
            BTreeMap::from([("password".into(), "hunter2".into())])
        );
        let other = BTreeMap::from([("namespace".to_owned(), "other".to_owned())]);
        assert_eq!(store.get("db", &other).await.unwrap()["password"], "other");
        assert_eq!(
            store.get("missing", &none).await,
            Err(SecretError::NotFound("missing".into()))
        );
        let all = store.bulk_get(&none).await.unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["api", "db"]);
    }
}
