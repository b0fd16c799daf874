//! The operator as certificate authority (Dapr's Sentry role): the trust bundle lives in the `dapr-trust-bundle`
//! Secret of the operator's namespace (`ca.crt`, `issuer.crt`, `issuer.key`, as Dapr names them) — generated on
//! first start when absent, or given by the user — and its `ca.crt` is published in the `dapr-trust-bundle`
//! ConfigMap. Sidecars ask for their workload certificate on the sidecar API (`POST /v1/certificate`), which
//! decides the identity from the pod the caller's ServiceAccount token is bound to.

pub mod authority;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

pub use authority::{Authority, Bundle, Issued};

use crate::api::{Configuration, MtlsSpec};

/// Name of the Secret (the full bundle) and the ConfigMap (`ca.crt` only).
pub const TRUST_BUNDLE: &str = "dapr-trust-bundle";
/// The control plane's Configuration, whose `spec.mtls` sets certificate lifetimes.
pub const SYSTEM_CONFIGURATION: &str = "daprsystem";
/// The trust domain the generated root is named for (workload trust domains come from each app's Configuration).
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Loads the bundle from the Secret, or generates one and stores it (another replica that stored one first
/// wins: its bundle is read back). Then publishes `ca.crt` in the ConfigMap.
pub async fn load_or_create(client: &Client, namespace: &str) -> anyhow::Result<Authority> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let bundle = match secrets.get_opt(TRUST_BUNDLE).await? {
        Some(secret) => from_secret(&secret)?,
        None => {
            let (_, bundle) = Authority::generate(DEFAULT_TRUST_DOMAIN).map_err(anyhow::Error::msg)?;
            match secrets.create(&PostParams::default(), &to_secret(&bundle)).await {
                Ok(_) => {
                    tracing::info!(namespace, "generated a new trust bundle in Secret {TRUST_BUNDLE}");
                    bundle
                }
                Err(kube::Error::Api(e)) if e.code == 409 => from_secret(&secrets.get(TRUST_BUNDLE).await?)?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let authority = Authority::from_bundle(&bundle)
        .map_err(|e| anyhow::anyhow!("Secret {namespace}/{TRUST_BUNDLE} is not a usable trust bundle: {e}"))?;
    publish_roots(client, namespace, &bundle.ca_crt).await?;
    Ok(authority)
}

fn from_secret(secret: &Secret) -> anyhow::Result<Bundle> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &str| -> anyhow::Result<String> {
        let bytes = data
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("Secret {} has no key {key}", secret.name_any()))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| anyhow::anyhow!("Secret {} key {key} is not PEM", secret.name_any()))
    };
    Ok(Bundle {
        ca_crt: get("ca.crt")?,
        issuer_crt: get("issuer.crt")?,
        issuer_key: get("issuer.key")?,
    })
}

fn to_secret(bundle: &Bundle) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        ("ca.crt", &bundle.ca_crt),
        ("issuer.crt", &bundle.issuer_crt),
        ("issuer.key", &bundle.issuer_key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(TRUST_BUNDLE.into()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "tandem".to_owned())].into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

async fn publish_roots(client: &Client, namespace: &str, ca_crt: &str) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(TRUST_BUNDLE.into()),
            ..Default::default()
        },
        data: Some([("ca.crt".to_owned(), ca_crt.to_owned())].into()),
        ..Default::default()
    };
    maps.patch(
        TRUST_BUNDLE,
        &PatchParams::apply("tandem-operator").force(),
        &Patch::Apply(&map),
    )
    .await?;
    Ok(())
}

/// The certificate lifetimes: `spec.mtls` of the `daprsystem` Configuration in the operator's namespace, Dapr's
/// defaults when there is none (an unreadable one is reported and the defaults used).
pub fn mtls_settings(system: Option<&Configuration>) -> MtlsSpec {
    match system.map(Configuration::mtls) {
        None => MtlsSpec::default(),
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            tracing::warn!("Configuration {SYSTEM_CONFIGURATION}: {e}; using the default certificate lifetimes");
            MtlsSpec::default()
        }
    }
}

/// How long a signing request may wait for the API server.
pub const SIGN_TIMEOUT: Duration = Duration::from_secs(10);
