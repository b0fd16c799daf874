//! The name resolution kind: how a sidecar finds the sidecars of another app (Kubernetes DNS, mDNS, SQLite).

pub mod config;
pub mod kubernetes;
pub mod mdns;
pub mod sqlite;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use rand::seq::IndexedRandom;

pub use config::Configuration;

use super::{ComponentError, ComponentKind, Kind, Metadata, Registry};

/// What a sidecar asks: the sidecars of `app_id` in `namespace`, reached on `port` (the caller's own internal gRPC port, as Dapr does).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResolveRequest {
    pub app_id: String,
    pub namespace: String,
    pub port: u16,
}

impl ResolveRequest {
    pub fn new(app_id: impl Into<String>, namespace: impl Into<String>, port: u16) -> Self {
        ResolveRequest {
            app_id: app_id.into(),
            namespace: namespace.into(),
            port,
        }
    }
}

/// This sidecar, as registered with resolvers that keep a registry (sqlite, mdns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    pub app_id: String,
    pub namespace: String,
    /// The host or IP other sidecars reach this one on.
    pub address: String,
    pub internal_port: u16,
    pub http_port: u16,
    pub app_port: Option<u16>,
}

impl Instance {
    /// `address:internal_port`, with brackets around an IPv6 address: what other sidecars dial.
    pub fn internal_address(&self) -> String {
        join_host_port(&self.address, self.internal_port)
    }

    /// Checks the fields a registering resolver needs, naming the one that is missing.
    fn require_registrable(&self, component: &str) -> Result<(), ResolveError> {
        let missing = if self.app_id.trim().is_empty() {
            Some("app id (--app-id)")
        } else if self.address.trim().is_empty() {
            Some("host address (the IP other sidecars reach this one on)")
        } else if self.internal_port == 0 {
            Some("internal gRPC port (--dapr-internal-grpc-port)")
        } else {
            None
        };
        match missing {
            Some(what) => Err(ResolveError::Backend(format!(
                "name resolution {component}: cannot register this sidecar without its {what}"
            ))),
            None => Ok(()),
        }
    }
}

/// `host:port`, bracketing IPv6 literals as Go's `net.JoinHostPort` does.
pub fn join_host_port(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why a name could not be resolved, or a resolver not built.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no sidecar found for app {app_id:?} in namespace {namespace:?}: {detail}")]
    NotFound {
        app_id: String,
        namespace: String,
        detail: String,
    },
    #[error("invalid name resolution configuration {field:?}: {message}")]
    Config { field: String, message: String },
    #[error(
        "unknown name resolution component {component:?} version {version:?}; set spec.nameResolution.component to one of: {known} (version v1)"
    )]
    UnknownComponent {
        component: String,
        version: String,
        known: String,
    },
    #[error("{0}")]
    Backend(String),
}

impl ResolveError {
    pub fn config(field: &str, message: impl Into<String>) -> Self {
        ResolveError::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(req: &ResolveRequest, detail: impl Into<String>) -> Self {
        ResolveError::NotFound {
            app_id: req.app_id.clone(),
            namespace: req.namespace.clone(),
            detail: detail.into(),
        }
    }
}

/// One name resolution backend, shared as `Arc<dyn NameResolver>`.
#[async_trait]
pub trait NameResolver: Send + Sync {
    /// Every address currently serving the app; never an empty `Vec` (that is `ResolveError::NotFound`).
    async fn resolve(&self, req: &ResolveRequest) -> Result<Vec<SocketAddr>, ResolveError>;

    /// Advertises this sidecar, for resolvers that keep a registry; call once the internal gRPC server listens.
    async fn register(&self, _me: &Instance) -> Result<(), ResolveError> {
        Ok(())
    }

    /// Forgets cached addresses for `req`, e.g. after a call to one of them failed as unavailable.
    fn invalidate(&self, _req: &ResolveRequest) {}

    /// Stops background work and withdraws this sidecar's registration.
    async fn close(&self) {}
}

/// The resolver Dapr uses when the Configuration names none.
pub fn default_component(kubernetes_mode: bool) -> &'static str {
    if kubernetes_mode { "kubernetes" } else { "mdns" }
}

/// Builds the resolver named by `spec.nameResolution` (`component`, `version`, `configuration`) from the
/// built-in registry, where name resolution is registered as `nameresolution.<component>` like any other kind.
///
/// `local` is this sidecar; resolvers that register check it here so a bad setup fails at startup,
/// but only advertise it when `register` is called.
pub async fn build(
    component: &str,
    version: &str,
    configuration: &serde_json::Value,
    local: &Instance,
) -> Result<crate::components::Instance, ResolveError> {
    build_with(&Registry::builtin(), component, version, configuration, local).await
}

/// [`build`] from `registry`.
pub async fn build_with(
    registry: &Registry,
    component: &str,
    version: &str,
    configuration: &serde_json::Value,
    local: &Instance,
) -> Result<crate::components::Instance, ResolveError> {
    let raw = component.trim();
    let name = raw.to_ascii_lowercase();
    let name = name.strip_prefix("nameresolution.").unwrap_or(&name);
    let version = version.trim().to_ascii_lowercase();
    let type_ = format!("nameresolution.{name}");
    let lookup = if version.is_empty() { "v1" } else { version.as_str() };
    if registry.lookup(&type_, lookup).is_err() {
        let known: Vec<String> = registry
            .registered_of(Kind::NameResolution)
            .iter()
            .filter_map(|t| {
                t.strip_prefix("nameresolution.")?
                    .strip_suffix("/v1")
                    .map(str::to_owned)
            })
            .collect();
        return Err(ResolveError::UnknownComponent {
            component: raw.to_owned(),
            version,
            known: known.join(", "),
        });
    }
    let mut md = Metadata::new(raw, &local.app_id, &local.namespace, []);
    md.configuration = configuration.clone();
    md.sidecar = Some(local.clone());
    registry.build(&type_, lookup, md).await.map_err(|e| match e {
        ComponentError::InvalidMetadata { field, message } => ResolveError::Config { field, message },
        other => ResolveError::Backend(other.to_string()),
    })
}

/// The sidecar a registering resolver is built for (`Metadata::sidecar`).
fn sidecar_of(md: &Metadata) -> Result<&Instance, ResolveError> {
    md.sidecar
        .as_ref()
        .ok_or_else(|| ResolveError::Backend("name resolution needs the sidecar's own address to register".into()))
}

impl From<ResolveError> for ComponentError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Config { field, message } => ComponentError::InvalidMetadata { field, message },
            other => ComponentError::Init(other.to_string()),
        }
    }
}

impl ComponentKind for dyn NameResolver {
    const KIND: Kind = Kind::NameResolution;

    fn close(resolver: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { resolver.close().await })
    }
}

/// One address out of `addrs`, chosen at random as Dapr does, so calls spread over every instance.
pub fn pick(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs.choose(&mut rand::rng()).copied()
}

/// Resolved addresses kept for a fixed time, keyed by request.
#[derive(Debug)]
pub struct AddressCache {
    ttl: Duration,
    entries: Mutex<HashMap<ResolveRequest, (Instant, Vec<SocketAddr>)>>,
}

/// Past this many entries, inserting first drops the expired ones.
const CACHE_PRUNE_AT: usize = 1024;

impl AddressCache {
    pub fn new(ttl: Duration) -> Self {
        AddressCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The addresses stored for `req` less than `ttl` ago.
    pub fn get(&self, req: &ResolveRequest) -> Option<Vec<SocketAddr>> {
        self.get_at(req, Instant::now())
    }

    fn get_at(&self, req: &ResolveRequest, now: Instant) -> Option<Vec<SocketAddr>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(req) {
            Some((at, addrs)) if now.saturating_duration_since(*at) < self.ttl => Some(addrs.clone()),
            Some(_) => {
                entries.remove(req);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, req: ResolveRequest, addrs: Vec<SocketAddr>) {
        self.insert_at(req, addrs, Instant::now());
    }

    fn insert_at(&self, req: ResolveRequest, addrs: Vec<SocketAddr>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_PRUNE_AT {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        }
        entries.insert(req, (now, addrs));
    }

    pub fn invalidate(&self, req: &ResolveRequest) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(req);
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Parses `host:port` or `[v6]:port` when the host is an IP literal.
fn parse_socket_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

/// Parses an IP literal, with or without IPv6 brackets.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn me() -> Instance {
        Instance {
            app_id: "orders".into(),
            namespace: "default".into(),
            address: "127.0.0.1".into(),
            internal_port: 50002,
            http_port: 3500,
            app_port: Some(8080),
        }
    }

    #[tokio::test]
    async fn unknown_component_names_the_known_ones() {
        let err = build("consul", "v1", &json!({}), &me())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"consul\""), "{err}");
        assert!(
            err.contains("kubernetes") && err.contains("mdns") && err.contains("sqlite"),
            "{err}"
        );
        let err = build("kubernetes", "v2", &json!({}), &me())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"v2\"") && err.contains("v1"), "{err}");
    }

    #[tokio::test]
    async fn non_object_configuration_is_a_config_error() {
        let err = build("kubernetes", "v1", &json!("cluster.local"), &me())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, ResolveError::Config { field, .. } if field == "configuration"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn builds_kubernetes_by_any_spelling() {
        let cfg = json!({"nameservers": ["127.0.0.1:53"]});
        assert!(build("Kubernetes", "", &cfg, &me()).await.is_ok());
        assert!(build("nameresolution.kubernetes", "V1", &cfg, &me()).await.is_ok());
    }

    #[test]
    fn registering_needs_app_id_address_and_port() {
        let mut i = me();
        i.internal_port = 0;
        let err = i.require_registrable("sqlite").unwrap_err().to_string();
        assert!(err.contains("internal gRPC port"), "{err}");
        i = me();
        i.address.clear();
        let err = i.require_registrable("sqlite").unwrap_err().to_string();
        assert!(err.contains("host address"), "{err}");
    }

    #[test]
    fn join_host_port_brackets_ipv6() {
        assert_eq!(join_host_port("10.0.0.1", 50002), "10.0.0.1:50002");
        assert_eq!(join_host_port("::1", 50002), "[::1]:50002");
        assert_eq!(join_host_port("[::1]", 50002), "[::1]:50002");
        assert_eq!(join_host_port("node-a", 1), "node-a:1");
    }

    #[test]
    fn pick_spreads_over_every_address() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.2:50002".parse().unwrap(), "127.0.0.3:50002".parse().unwrap()];
        let picked: std::collections::HashSet<_> = (0..200).filter_map(|_| pick(&addrs)).collect();
        assert_eq!(picked.len(), 2, "{picked:?}");
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn cache_entries_expire_after_ttl() {
        let cache = AddressCache::new(Duration::from_secs(20));
        let req = ResolveRequest::new("orders", "default", 50002);
        let addrs = vec!["127.0.0.2:50002".parse().unwrap()];
        let t0 = Instant::now();
        cache.insert_at(req.clone(), addrs.clone(), t0);
        assert_eq!(cache.get_at(&req, t0 + Duration::from_secs(19)), Some(addrs.clone()));
        assert_eq!(cache.get_at(&req, t0 + Duration::from_secs(20)), None);
        cache.insert_at(req.clone(), addrs, t0);
        cache.invalidate(&req);
        assert_eq!(cache.get_at(&req, t0), None);
        let other_port = ResolveRequest::new("orders", "default", 50003);
        assert_eq!(cache.get_at(&other_port, t0), None);
    }
}
