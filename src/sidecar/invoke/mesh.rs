//! Connections to other sidecars' internal ports: plain HTTP/2 (h2c) without mTLS, or mutual TLS on workload
//! certificates, where each target app gets connections that accept only a server proving that app's identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::control_plane::mtls::WorkloadIdentity;
use crate::sidecar::net::h2c_client;

type MtlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Distinct target apps with pooled mTLS connections; past this the pools start over.
const MAX_TARGETS: usize = 1024;

// One per sidecar, so the plain client's size beside the mTLS variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Mesh {
    Plain(Client<HttpConnector, Body>),
    Mtls {
        identity: Arc<WorkloadIdentity>,
        clients: Mutex<HashMap<(String, String), MtlsClient>>,
    },
}

impl Mesh {
    pub fn plain() -> Self {
        Mesh::Plain(h2c_client())
    }

    pub fn mtls(identity: Arc<WorkloadIdentity>) -> Self {
        Mesh::Mtls {
            identity,
            clients: Mutex::default(),
        }
    }

    pub fn identity(&self) -> Option<&Arc<WorkloadIdentity>> {
        match self {
            Mesh::Plain(_) => None,
            Mesh::Mtls { identity, .. } => Some(identity),
        }
    }

    /// `http` or `https`, for the request URI.
    pub fn scheme(&self) -> &'static str {
        match self {
            Mesh::Plain(_) => "http",
            Mesh::Mtls { .. } => "https",
        }
    }

    /// Sends `req` to the sidecar of `app_id` in `namespace` (its address is already in the URI).
    pub async fn request(
        &self,
        namespace: &str,
        app_id: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, MeshError> {
        match self {
            Mesh::Plain(client) => client.request(req).await.map_err(MeshError::Http),
            Mesh::Mtls { identity, clients } => {
                let client = {
                    let mut clients = clients.lock().unwrap_or_else(|p| p.into_inner());
                    let key = (namespace.to_owned(), app_id.to_owned());
                    match clients.get(&key) {
                        Some(c) => c.clone(),
                        None => {
                            let config = identity.client_config(namespace, app_id).map_err(MeshError::Tls)?;
                            let c = mtls_client(config.as_ref().clone());
                            if clients.len() >= MAX_TARGETS {
                                clients.clear();
                            }
                            clients.insert(key, c.clone());
                            c
                        }
                    }
                };
                client.request(req).await.map_err(MeshError::Http)
            }
        }
    }
}

fn mtls_client(config: rustls::ClientConfig) -> MtlsClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_adaptive_window(true)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector)
}

#[derive(Debug)]
pub enum MeshError {
    Http(hyper_util::client::legacy::Error),
    Tls(String),
}

impl MeshError {
    pub fn is_connect(&self) -> bool {
        match self {
            MeshError::Http(e) => e.is_connect(),
            MeshError::Tls(_) => false,
        }
    }
}

impl std::fmt::Display for MeshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshError::Http(e) => write!(f, "{e}: {}", crate::sidecar::net::source_chain(e)),
            MeshError::Tls(e) => write!(f, "mTLS: {e}"),
        }
    }
}
