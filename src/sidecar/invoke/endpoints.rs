//! HTTPEndpoint resources: non-Dapr HTTP services invoked by name. Held once, resolved (headers from values,
//! `secretKeyRef` and `envRef`; `clientTLS` into a TLS client), and swapped whole on hot reload.

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::http_endpoint::TlsDocument;
use crate::api::{HttpEndpoint, NameValuePair};
use crate::sidecar::components::References;

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

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

/// PEM documents of an HTTPEndpoint's `clientTLS`.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsPem {
    pub root_ca: Option<String>,
    pub certificate: Option<String>,
    pub private_key: Option<String>,
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

/// A client trusting `root_ca` (instead of the public roots) and presenting the client certificate, if given.
pub fn tls_client(tls: &ClientTlsPem) -> Result<HttpsClient, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &tls.root_ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("clientTLS.rootCA is not PEM certificates: {e}"))?;
                roots.add(cert).map_err(|e| format!("clientTLS.rootCA: {e}"))?;
            }
            if roots.is_empty() {
                return Err("clientTLS.rootCA holds no certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.certificate, &tls.private_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("clientTLS.certificate is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("clientTLS.privateKey is not a PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("clientTLS certificate/key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("clientTLS needs both certificate and privateKey, or neither".into()),
    };
    Ok(https_client_with(config))
}

/// The shared client for URLs and HTTPEndpoints without `clientTLS`: the public web roots, HTTP/1.1 and HTTP/2.
pub fn https_client() -> HttpsClient {
    tls_client(&ClientTlsPem::default()).expect("the public roots make a valid TLS configuration")
}

/// An HTTP(S) client over `config`: plain `http://` too, HTTP/1.1 and HTTP/2 by ALPN.
fn https_client_with(config: rustls::ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}
