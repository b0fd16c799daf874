//! HTTPEndpoint resources: non-Dapr HTTP services invoked by name. Held once, resolved (headers from values,
//! `secretKeyRef` and `envRef`; `clientTLS` into a TLS client), and swapped whole on hot reload.

use std::sync::RwLock;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::api::http_endpoint::TlsDocument;
use crate::api::{HttpEndpoint, NameValuePair};
use crate::sidecar::components::References;

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

pub use crate::components::http_client::ClientTlsPem;

/// A client with `tls` (see [`crate::components::http_client::tls_client`]).
pub fn tls_client(tls: &ClientTlsPem) -> Result<HttpsClient, String> {
    crate::components::http_client::tls_client(tls)
}

/// The shared client for URLs and HTTPEndpoints without `clientTLS`.
pub fn https_client() -> HttpsClient {
    crate::components::http_client::https_client()
}

/// A non-Dapr HTTP endpoint (HTTPEndpoint resource) with its headers resolved.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub base_url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A client with the endpoint's `clientTLS` (root CA, client certificate); `None`: the shared client.
    pub client: Option<HttpsClient>,
}

/// The HTTPEndpoints in use, by name, in the order they were declared.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_name: RwLock<Vec<(String, Endpoint)>>,
}

impl Endpoints {
    pub fn get(&self, name: &str) -> Option<Endpoint> {
        let all = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        all.iter().find(|(n, _)| n == name).map(|(_, e)| e.clone())
    }

    pub fn names(&self) -> Vec<String> {
        let all = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        all.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Replaces every endpoint at once.
    pub fn set(&self, endpoints: Vec<(String, Endpoint)>) {
        *self.by_name.write().unwrap_or_else(|p| p.into_inner()) = endpoints;
    }

    /// Resolves `resources` and, when every one resolves, puts them in place of the current ones.
    pub async fn load(&self, references: &References, resources: &[HttpEndpoint]) -> Result<(), String> {
        let resolved = resolve(references, resources).await?;
        self.set(resolved);
        Ok(())
    }
}

/// HTTPEndpoint resources with their headers and TLS resolved, by name.
pub async fn resolve(references: &References, endpoints: &[HttpEndpoint]) -> Result<Vec<(String, Endpoint)>, String> {
    let mut out: Vec<(String, Endpoint)> = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let name = e.metadata.name.clone().unwrap_or_default();
        let base = e.spec.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "HTTPEndpoint {name}: baseUrl {base:?} must start with http:// or https://"
            ));
        }
        let pairs = references
            .resolve_pairs(&e.spec.headers, e.auth.as_ref(), &name)
            .await?;
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
                    d.as_ref().map(|d| NameValuePair {
                        name: field.to_owned(),
                        value: d.value.as_deref().map(Into::into),
                        secret_key_ref: d.secret_key_ref.clone(),
                        env_ref: None,
                    })
                };
                let pairs: Vec<NameValuePair> = [
                    doc(&tls.root_ca, "rootCA"),
                    doc(&tls.certificate, "certificate"),
                    doc(&tls.private_key, "privateKey"),
                ]
                .into_iter()
                .flatten()
                .collect();
                let resolved = references.resolve_pairs(&pairs, e.auth.as_ref(), &name).await?;
                let take = |field: &str| resolved.iter().find(|(k, _)| k == field).map(|(_, v)| v.clone());
                let pem = ClientTlsPem {
                    root_ca: take("rootCA"),
                    certificate: take("certificate"),
                    private_key: take("privateKey"),
                };
                Some(tls_client(&pem).map_err(|err| format!("HTTPEndpoint {name}: {err}"))?)
            }
        };
        let endpoint = Endpoint {
            base_url: base.trim_end_matches('/').to_owned(),
            headers,
            client,
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = endpoint,
            None => out.push((name, endpoint)),
        }
    }
    Ok(out)
}
