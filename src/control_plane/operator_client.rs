//! The client sidecars in Kubernetes mode use to load their resources from the operator and follow changes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem::control_plane::operator_client::ClientError> {
//! use futures::StreamExt;
//! use tandem::control_plane::operator_client::OperatorClient;
//!
//! let client = OperatorClient::builder("https://tandem-api.tandem-system.svc:443")
//!     .root_ca_file("/var/run/secrets/tandem.io/ca.crt")?
//!     .build()?;
//! let loaded = client.resources("checkout").await?;
//! let mut changes = Box::pin(client.watch_from("checkout", loaded.clone()));
//! while let Some(change) = changes.next().await {
//!     // Ok(event): apply it; Err(e): log it, the stream reconnects by itself.
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::wire::{CertificateRequest, CertificateResponse, ErrorBody};
use crate::api::Configuration;

pub use super::kinds::{DaprKind, DaprResource};
pub use super::wire::{EventType, ResourceEvent, SidecarResources, TOKEN_AUDIENCE};

/// Where the projected ServiceAccount token (audience `tandem-api`) is mounted by default.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tandem.io/token";
/// A watch stream silent for this long (no event, no heartbeat) is considered dead.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot read the ServiceAccount token from {path}: {message}; mount a projected token with audience \
         tandem-api there"
    )]
    Token { path: PathBuf, message: String },
    #[error("invalid operator address {address:?}: {message}; use http(s)://host:port")]
    Address { address: String, message: String },
    #[error("TLS setup for the operator connection failed: {0}")]
    Tls(String),
    #[error("cannot reach the operator at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the operator answered {status} to {url}: {code}: {message}")]
    Status {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the operator at {url}: {message}")]
    Decode { url: String, message: String },
    #[error("the watch stream from {url} ended ({message}); reconnecting")]
    StreamLost { url: String, message: String },
}

impl ClientError {
    /// The HTTP status the operator answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

type Http = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Talks to the operator's sidecar API. Cheap to clone.
#[derive(Clone)]
pub struct OperatorClient {
    base: Arc<str>,
    token_path: Arc<Path>,
    namespace: Option<Arc<str>>,
    configuration: Option<Arc<str>>,
    idle_timeout: Duration,
    http: Http,
}

/// Settings of an [`OperatorClient`].
pub struct OperatorClientBuilder {
    address: String,
    token_path: PathBuf,
    namespace: Option<String>,
    configuration: Option<String>,
    idle_timeout: Duration,
    roots: rustls::RootCertStore,
}

impl OperatorClientBuilder {
    /// The token file, re-read on every connection since projected tokens rotate.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_path = path.into();
        self
    }

    /// The caller's namespace, sent along so that a token for another namespace is refused (403) early.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The Configuration the sidecar uses: watched streams re-fetch it after a reconnect.
    pub fn configuration(mut self, name: impl Into<String>) -> Self {
        self.configuration = Some(name.into());
        self
    }

    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Trusts the PEM CA certificate(s) in `pem` (for an operator certificate from a private CA).
    pub fn root_ca_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("cannot parse the CA certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Tls("the CA PEM holds no certificate".into()));
        }
        for c in certs {
            self.roots
                .add(c)
                .map_err(|e| ClientError::Tls(format!("unusable CA certificate: {e}")))?;
        }
        Ok(self)
    }

    pub fn root_ca_file(self, path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
        self.root_ca_pem(&pem)
    }

    pub fn build(self) -> Result<OperatorClient, ClientError> {
        let address = self.address.trim_end_matches('/');
        let uri: http::Uri = address
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::Address {
                address: address.into(),
                message: e.to_string(),
            })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ClientError::Address {
                address: address.into(),
                message: "scheme must be http or https, with a host".into(),
            });
        }
        let mut roots = self.roots;
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(OperatorClient {
            base: address.into(),
            token_path: self.token_path.into(),
            namespace: self.namespace.map(Into::into),
            configuration: self.configuration.map(Into::into),
            idle_timeout: self.idle_timeout,
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
        })
    }
}

/// What a watch knows, by kind and name.
type Known = BTreeMap<(DaprKind, String), DaprResource>;

fn known_from(resources: impl IntoIterator<Item = DaprResource>) -> Known {
    resources
        .into_iter()
        .map(|r| ((r.kind(), r.name().to_owned()), r))
        .collect()
}

/// The events that turn `old` into `new`.
fn diff(old: &Known, new: &Known) -> Vec<ResourceEvent> {
    let deleted = old
        .iter()
        .filter(|(k, _)| !new.contains_key(*k))
        .map(|(_, r)| ResourceEvent {
            event_type: EventType::Deleted,
            resource: r.clone(),
        });
    let changed = new.iter().filter_map(|(k, r)| match old.get(k) {
        None => Some(ResourceEvent {
            event_type: EventType::Created,
            resource: r.clone(),
        }),
        Some(o) if o != r => Some(ResourceEvent {
            event_type: EventType::Updated,
            resource: r.clone(),
        }),
        Some(_) => None,
    });
    deleted.chain(changed).collect()
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl OperatorClient {
    /// A client for `address` (`http(s)://host:port`) with the default token path.
    pub fn new(address: &str) -> Result<Self, ClientError> {
        OperatorClient::builder(address).build()
    }

    pub fn builder(address: &str) -> OperatorClientBuilder {
        OperatorClientBuilder {
            address: address.into(),
            token_path: DEFAULT_TOKEN_PATH.into(),
            namespace: None,
            configuration: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            roots: rustls::RootCertStore::empty(),
        }
    }

    /// Everything in the caller's namespace that applies to `app_id`, secrets resolved.
    pub async fn resources(&self, app_id: &str) -> Result<SidecarResources, ClientError> {
        self.get_json(&self.url("/v1/resources", Some(app_id))).await
    }

    /// A workload certificate for the app of the pod this sidecar's token is bound to (`csr` is PEM).
    pub async fn certificate(&self, csr: &str) -> Result<CertificateResponse, ClientError> {
        let url = self.url("/v1/certificate", None);
        let body = serde_json::to_vec(&CertificateRequest { csr: csr.into() }).unwrap_or_default();
        let res = self.send(Request::post(&url), &url, body.into()).await?;
        self.decode(&url, res).await
    }

    /// The Configuration `name` of the caller's namespace; a missing one is a 404 ([`ClientError::is_not_found`]).
    pub async fn configuration(&self, name: &str) -> Result<Configuration, ClientError> {
        self.get_json(&self.url(&format!("/v1/configurations/{}", enc(name)), None))
            .await
    }

    /// The changes `app_id` sees (all five kinds; Configurations of the whole namespace, so filter by the name you
    /// use), from the first successful connection on. After every reconnect the client
    /// re-lists and reports what changed meanwhile, so nothing is missed; errors are reported as items and the
    /// stream carries on (it ends only when dropped). Prefer [`OperatorClient::watch_from`] with what
    /// [`OperatorClient::resources`] returned, which also covers changes made before the first connection.
    /// Must be called within a Tokio runtime (the stream is driven by a spawned task that ends when it is dropped).
    pub fn watch(&self, app_id: &str) -> impl Stream<Item = Result<ResourceEvent, ClientError>> + Send + 'static {
        self.spawn_watch(app_id, None)
    }

    /// Like [`OperatorClient::watch`], reporting every difference from `baseline` (what the caller loaded).
    pub fn watch_from(
        &self,
        app_id: &str,
        baseline: SidecarResources,
    ) -> impl Stream<Item = Result<ResourceEvent, ClientError>> + Send + 'static {
        self.spawn_watch(app_id, Some(known_from(baseline.into_resources())))
    }

    fn spawn_watch(
        &self,
        app_id: &str,
        known: Option<Known>,
    ) -> impl Stream<Item = Result<ResourceEvent, ClientError>> + Send + 'static {
        let (tx, rx) = mpsc::channel(64);
        let span = tracing::info_span!("operator_watch", app_id);
        tokio::spawn(self.clone().watch_loop(app_id.to_owned(), known, tx).instrument(span));
        ReceiverStream::new(rx)
    }

    async fn watch_loop(
        self,
        app_id: String,
        mut known: Option<Known>,
        tx: mpsc::Sender<Result<ResourceEvent, ClientError>>,
    ) {
        let url = self.url("/v1/watch", Some(&app_id));
        let mut delay = Duration::from_millis(500);
        loop {
            if let Err(e) = self.watch_once(&url, &app_id, &mut known, &tx, &mut delay).await
                && tx.send(Err(e)).await.is_err()
            {
                return;
            }
            if tx.is_closed() {
                return;
            }
            let jitter = rand::random_range(0.8..1.2);
            tokio::select! {
                _ = tokio::time::sleep(delay.mul_f64(jitter)) => {}
                _ = tx.closed() => return,
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection: open the stream, re-list and report the differences, then forward events until the stream
    /// ends or goes silent.
    async fn watch_once(
        &self,
        url: &str,
        app_id: &str,
        known: &mut Option<Known>,
        tx: &mpsc::Sender<Result<ResourceEvent, ClientError>>,
        delay: &mut Duration,
    ) -> Result<(), ClientError> {
        let mut body = self.get(url).await?.into_body();
        let listed = self.snapshot(app_id, known.as_ref()).await?;
        let state = match known.take() {
            None => listed,
            Some(old) => {
                for event in diff(&old, &listed) {
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
                listed
            }
        };
        let state = known.insert(state);
        *delay = Duration::from_millis(500);
        tracing::debug!("watching the operator for changes");

        let mut buf: Vec<u8> = vec![];
        loop {
            let frame = tokio::select! {
                _ = tx.closed() => return Ok(()),
                f = tokio::time::timeout(self.idle_timeout, body.frame()) => f,
            };
            let lost = |message: String| ClientError::StreamLost {
                url: url.into(),
                message,
            };
            let data = match frame {
                Err(_) => return Err(lost(format!("nothing received for {:?}", self.idle_timeout))),
                Ok(None) => return Err(lost("the operator closed it".into())),
                Ok(Some(Err(e))) => return Err(lost(e.to_string())),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let event = ResourceEvent::parse_line(&String::from_utf8_lossy(&line)).map_err(|message| {
                    ClientError::Decode {
                        url: url.into(),
                        message,
                    }
                })?;
                let Some(event) = event else { continue };
                let key = (event.kind(), event.resource.name().to_owned());
                let news = match event.event_type {
                    EventType::Deleted => state.remove(&key).is_some(),
                    _ => state.insert(key, event.resource.clone()).as_ref() != Some(&event.resource),
                };
                if news && tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// The current resources plus the Configurations of interest (the configured one and any seen before).
    async fn snapshot(&self, app_id: &str, known: Option<&Known>) -> Result<Known, ClientError> {
        let mut state = known_from(self.resources(app_id).await?.into_resources());
        let mut names: BTreeSet<String> = known
            .into_iter()
            .flat_map(|k| k.keys())
            .filter(|(kind, _)| *kind == DaprKind::Configuration)
            .map(|(_, n)| n.clone())
            .collect();
        names.extend(self.configuration.as_deref().map(str::to_owned));
        for name in names {
            match self.configuration(&name).await {
                Ok(c) => {
                    state.insert((DaprKind::Configuration, name), DaprResource::Configuration(c));
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(state)
    }

    fn url(&self, path: &str, app_id: Option<&str>) -> String {
        let mut params = vec![];
        if let Some(id) = app_id {
            params.push(format!("appId={}", enc(id)));
        }
        if let Some(ns) = &self.namespace {
            params.push(format!("namespace={}", enc(ns)));
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        format!("{}{path}{query}", self.base)
    }

    fn token(&self) -> Result<String, ClientError> {
        let token = std::fs::read_to_string(&self.token_path).map_err(|e| ClientError::Token {
            path: self.token_path.to_path_buf(),
            message: e.to_string(),
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(ClientError::Token {
                path: self.token_path.to_path_buf(),
                message: "the file is empty".into(),
            });
        }
        Ok(token.to_owned())
    }

    /// A GET with the current token; a non-2xx answer becomes [`ClientError::Status`].
    async fn get(&self, url: &str) -> Result<hyper::Response<Incoming>, ClientError> {
        self.send(Request::get(url), url, Bytes::new()).await
    }

    /// Sends a request with the current token; a non-2xx answer becomes [`ClientError::Status`].
    async fn send(
        &self,
        req: hyper::http::request::Builder,
        url: &str,
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let token = self.token()?;
        let req = req
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| ClientError::Address {
                address: url.into(),
                message: e.to_string(),
            })?;
        let connect = |message: String| ClientError::Connect {
            url: url.into(),
            message,
        };
        let res = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| connect(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| connect(format!("{e:?}")))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.error_code, e.message),
            Err(_) => (
                status.canonical_reason().unwrap_or("error").to_owned(),
                String::from_utf8_lossy(&body).into_owned(),
            ),
        };
        Err(ClientError::Status {
            url: url.into(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, ClientError> {
        let res = self.get(url).await?;
        self.decode(url, res).await
    }

    async fn decode<T: DeserializeOwned>(&self, url: &str, res: hyper::Response<Incoming>) -> Result<T, ClientError> {
        let body = tokio::time::timeout(REQUEST_TIMEOUT, res.into_body().collect())
            .await
            .map_err(|_| ClientError::Connect {
                url: url.into(),
                message: format!("the answer did not arrive within {REQUEST_TIMEOUT:?}"),
            })?
            .map_err(|e| ClientError::Connect {
                url: url.into(),
                message: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: url.into(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn component(name: &str, host: &str) -> DaprResource {
        DaprResource::from_json(
            DaprKind::Component,
            json!({"metadata": {"name": name}, "spec": {"type": "state.in-memory", "version": "v1",
                "metadata": [{"name": "h", "value": host}]}}),
        )
        .unwrap()
    }

    #[test]
    fn relist_differences_become_events() {
        let old = known_from([component("a", "1"), component("b", "1"), component("c", "1")]);
        let new = known_from([component("a", "1"), component("b", "2"), component("d", "1")]);
        let events: Vec<(EventType, String)> = diff(&old, &new)
            .into_iter()
            .map(|e| (e.event_type, e.resource.name().to_owned()))
            .collect();
        assert_eq!(
            events,
            [
                (EventType::Deleted, "c"),
                (EventType::Updated, "b"),
                (EventType::Created, "d")
            ]
            .map(|(t, n)| (t, n.to_owned()))
        );
    }

    #[test]
    fn addresses_must_be_http_urls() {
        let err = OperatorClient::new("tandem-api:6500").err().unwrap().to_string();
        assert!(err.contains("tandem-api:6500"), "{err}");
        let c = OperatorClient::builder("http://op:6500/")
            .namespace("n s")
            .build()
            .unwrap();
        assert_eq!(
            c.url("/v1/resources", Some("a/b")),
            "http://op:6500/v1/resources?appId=a%2Fb&namespace=n%20s"
        );
    }

    #[test]
    fn a_missing_token_file_says_where_it_was_looked_for() {
        let c = OperatorClient::builder("http://op:6500")
            .token_file("/nonexistent/token")
            .build()
            .unwrap();
        let err = c.token().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/token") && err.contains("tandem-api"),
            "{err}"
        );
    }
}
