//! `mdns` name resolution (Dapr's default outside Kubernetes): sidecars announce themselves on the local network
//! as `_dapr._tcp.local.` services and browse for each other.
//!
//! Each sidecar registers one instance `<app-id>-<random>` with TXT `app_id=<app-id>`, `namespace=<ns>` and the
//! internal gRPC port as the SRV port. A background browse keeps a view of every instance seen; it is restarted
//! every `refreshInterval` (30 s) and entries not seen again within `cacheTTL` (60 s) are dropped. A resolve
//! that finds nothing waits up to `browseTimeout` (1 s) for an announcement.
//! daprd announces the app id itself as the service type, which `mdns-sd` cannot browse, so daprd and
//! tandem sidecars do not find each other over mDNS.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mdns_sd::{ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Configuration, Instance, NameResolver, ResolveError, ResolveRequest, parse_ip};

/// The DNS-SD service type every tandem sidecar announces.
pub const SERVICE_TYPE: &str = "_dapr._tcp.local.";

const KNOWN_KEYS: &[&str] = &["mdnsPort", "browseTimeout", "cacheTTL", "refreshInterval"];

/// Typed `mdns` configuration; every key is a tandem extension (Dapr's resolver takes none).
#[derive(Clone, Debug, PartialEq)]
pub struct MdnsConfig {
    /// The UDP port of the mDNS group; every sidecar must use the same one.
    pub port: u16,
    /// How long a resolve that finds nothing waits for an announcement.
    pub browse_timeout: Duration,
    /// An instance not seen again for this long is forgotten.
    pub cache_ttl: Duration,
    /// How often the browse restarts, re-reporting every live instance.
    pub refresh_interval: Duration,
}

impl MdnsConfig {
    pub fn from_configuration(c: &Configuration) -> Result<Self, ResolveError> {
        c.warn_unknown("mdns", KNOWN_KEYS);
        let nonzero = |key: &str, default: Duration| -> Result<Duration, ResolveError> {
            match c.duration(key)? {
                Some(d) if d.is_zero() => Err(ResolveError::config(key, "must be longer than 0s")),
                Some(d) => Ok(d),
                None => Ok(default),
            }
        };
        let cfg = MdnsConfig {
            port: match c.port("mdnsPort")? {
                Some(0) => return Err(ResolveError::config("mdnsPort", "must not be 0")),
                Some(p) => p,
                None => mdns_sd::MDNS_PORT,
            },
            browse_timeout: nonzero("browseTimeout", Duration::from_secs(1))?,
            cache_ttl: nonzero("cacheTTL", Duration::from_secs(60))?,
            refresh_interval: nonzero("refreshInterval", Duration::from_secs(30))?,
        };
        if cfg.refresh_interval >= cfg.cache_ttl {
            return Err(ResolveError::config(
                "refreshInterval",
                format!(
                    "{:?} must be shorter than cacheTTL ({:?}), or live instances expire between refreshes",
                    cfg.refresh_interval, cfg.cache_ttl
                ),
            ));
        }
        Ok(cfg)
    }
}

/// One announced sidecar.
#[derive(Clone, Debug)]
struct Seen {
    app_id: String,
    addrs: Vec<SocketAddr>,
    at: Instant,
}

/// Every instance the browse has reported, by full service name.
#[derive(Default)]
struct View {
    instances: Mutex<HashMap<String, Seen>>,
    changed: Notify,
}

impl View {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn upsert(&self, service: &ResolvedService) {
        let Some(app_id) = service.get_property_val_str("app_id") else {
            return;
        };
        let addrs = socket_addrs(service.get_addresses().iter(), service.get_port());
        if addrs.is_empty() {
            return;
        }
        let seen = Seen {
            app_id: app_id.to_owned(),
            addrs,
            at: Instant::now(),
        };
        self.lock().insert(service.get_fullname().to_owned(), seen);
        self.changed.notify_waiters();
    }

    fn remove(&self, fullname: &str) {
        self.lock().remove(fullname);
    }

    /// The addresses of every fresh instance of `app_id`, IPv4 first.
    fn addresses(&self, app_id: &str, ttl: Duration) -> Vec<SocketAddr> {
        let now = Instant::now();
        let mut instances = self.lock();
        instances.retain(|_, s| now.saturating_duration_since(s.at) < ttl);
        let mut addrs: Vec<SocketAddr> = instances
            .values()
            .filter(|s| s.app_id == app_id)
            .flat_map(|s| s.addrs.iter().copied())
            .collect();
        addrs.sort_by_key(|a| (a.is_ipv6(), *a));
        addrs.dedup();
        addrs
    }
}

/// Dialable addresses: IPv4, and IPv6 with the interface scope that link-local addresses need.
fn socket_addrs<'a>(ips: impl Iterator<Item = &'a ScopedIp>, port: u16) -> Vec<SocketAddr> {
    ips.filter(|ip| !ip.to_ip_addr().is_unspecified())
        .map(|ip| match ip {
            ScopedIp::V6(v6) if v6.addr().is_unicast_link_local() => {
                SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, v6.scope_id().index))
            }
            other => SocketAddr::new(other.to_ip_addr(), port),
        })
        .collect()
}

/// Announces this sidecar over mDNS and resolves app ids from the announcements of others.
pub struct MdnsResolver {
    cfg: MdnsConfig,
    daemon: ServiceDaemon,
    view: Arc<View>,
    browser: Mutex<Option<JoinHandle<()>>>,
    /// The full service name this sidecar registered.
    registered: Mutex<Option<String>>,
}

impl fmt::Debug for MdnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MdnsResolver")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// `nameresolution.mdns`: announces this sidecar and browses for others on the local network.
pub async fn build(
    md: crate::components::Metadata,
) -> Result<Arc<dyn NameResolver>, crate::components::ComponentError> {
    let cfg = Configuration::from_value(&md.configuration)?;
    Ok(Arc::new(MdnsResolver::new(&cfg, super::sidecar_of(&md)?)?))
}

impl MdnsResolver {
    /// Starts the mDNS daemon and the background browse; `local` must be registrable.
    pub fn new(c: &Configuration, local: &Instance) -> Result<Self, ResolveError> {
        let cfg = MdnsConfig::from_configuration(c)?;
        local.require_registrable("mdns")?;
        Self::with_config(cfg)
    }

    pub fn with_config(cfg: MdnsConfig) -> Result<Self, ResolveError> {
        let daemon = ServiceDaemon::new_with_port(cfg.port).map_err(|e| {
            ResolveError::Backend(format!(
                "name resolution mdns: cannot start the mDNS daemon on UDP port {}: {e}; \
                 use another resolver (e.g. sqlite) where multicast is unavailable",
                cfg.port
            ))
        })?;
        let view = Arc::new(View::default());
        let browser = tokio::spawn(browse(daemon.clone(), Arc::downgrade(&view), cfg.refresh_interval));
        Ok(MdnsResolver {
            cfg,
            daemon,
            view,
            browser: Mutex::new(Some(browser)),
            registered: Mutex::new(None),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps `view` up to date with every `_dapr._tcp.local.` instance, restarting the browse every `refresh`.
async fn browse(daemon: ServiceDaemon, view: Weak<View>, refresh: Duration) {
    loop {
        let events = match daemon.browse(SERVICE_TYPE) {
            Ok(events) => events,
            Err(mdns_sd::Error::DaemonShutdown) => return,
            Err(e) => {
                tracing::error!("name resolution mdns: cannot browse {SERVICE_TYPE}: {e}");
                tokio::time::sleep(refresh).await;
                continue;
            }
        };
        let restart = tokio::time::sleep(refresh);
        tokio::pin!(restart);
        loop {
            let event = tokio::select! {
                _ = &mut restart => break,
                event = events.recv_async() => event,
            };
            let Some(view) = view.upgrade() else {
                return;
            };
            match event {
                Ok(ServiceEvent::ServiceResolved(service)) => view.upsert(&service),
                Ok(ServiceEvent::ServiceRemoved(_, fullname)) => view.remove(&fullname),
                Ok(_) => {}
                Err(_) => {
                    // The daemon dropped this browse (shut down, or its channel overflowed): start again.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

/// The instance label: the app id (shortened to fit a DNS label) and a random suffix, unique per sidecar.
fn instance_name(app_id: &str) -> String {
    let prefix: String = app_id.chars().take(50).collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &suffix[..8])
}

#[async_trait]
impl NameResolver for MdnsResolver {
    async fn resolve(&self, req: &ResolveRequest) -> Result<Vec<SocketAddr>, ResolveError> {
        // Like Dapr, the namespace is not part of the match and the port is the one the instance announced.
        let deadline = tokio::time::Instant::now() + self.cfg.browse_timeout;
        loop {
            let changed = self.view.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let addrs = self.view.addresses(&req.app_id, self.cfg.cache_ttl);
            if !addrs.is_empty() {
                return Ok(addrs);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ResolveError::not_found(
                    req,
                    format!(
                        "no mDNS announcement of {SERVICE_TYPE} with app_id={} within {:?}; check that the app's \
                         sidecar runs on this network and that multicast (UDP port {}) is allowed",
                        req.app_id, self.cfg.browse_timeout, self.cfg.port
                    ),
                ));
            }
        }
    }

    async fn register(&self, me: &Instance) -> Result<(), ResolveError> {
        me.require_registrable("mdns")?;
        let name = instance_name(&me.app_id);
        let host = format!("{name}.local.");
        let ip = parse_ip(&me.address);
        let ips: Vec<IpAddr> = ip.into_iter().collect();
        let properties = [
            ("app_id", me.app_id.clone()),
            ("namespace", me.namespace.clone()),
            ("http_port", me.http_port.to_string()),
        ];
        let mut info = ServiceInfo::new(SERVICE_TYPE, &name, &host, &ips[..], me.internal_port, &properties[..])
            .map_err(|e| {
                ResolveError::Backend(format!(
                    "name resolution mdns: cannot describe this sidecar as an mDNS service: {e}"
                ))
            })?;
        if ip.is_none() {
            // A host name, not an IP: announce the addresses of this machine's interfaces.
            info = info.enable_addr_auto();
        }
        let fullname = info.get_fullname().to_owned();
        self.daemon
            .register(info)
            .map_err(|e| ResolveError::Backend(format!("name resolution mdns: cannot announce this sidecar: {e}")))?;
        tracing::info!(app_id = %me.app_id, service = %fullname, port = me.internal_port, "name resolution mdns: announced this sidecar");
        if let Some(old) = Self::lock(&self.registered).replace(fullname) {
            let _ = self.daemon.unregister(&old);
        }
        Ok(())
    }

    async fn close(&self) {
        let registered = Self::lock(&self.registered).take();
        if let Some(fullname) = registered {
            // Sends goodbye packets so others forget this sidecar at once.
            if let Ok(done) = self.daemon.unregister(&fullname) {
                let _ = tokio::time::timeout(Duration::from_secs(1), done.recv_async()).await;
            }
        }
        if let Some(browser) = Self::lock(&self.browser).take() {
            browser.abort();
        }
        let _ = self.daemon.shutdown();
    }
}

impl Drop for MdnsResolver {
    fn drop(&mut self) {
        if let Some(browser) = Self::lock(&self.browser).take() {
            browser.abort();
        }
        // Stops the daemon thread; after `close` this is a harmless no-op.
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};

    use serde_json::json;

    /// Whether a multicast datagram sent here comes back to this host, as mDNS needs.
    fn multicast_loops_back(port: u16) -> Result<(), String> {
        let group = Ipv4Addr::new(224, 0, 0, 251);
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| e.to_string())?;
        sock.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)
            .map_err(|e| format!("joining 224.0.0.251: {e}"))?;
        sock.set_multicast_loop_v4(true).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        sock.send_to(b"tandem-probe", (group, port))
            .map_err(|e| format!("sending to 224.0.0.251: {e}"))?;
        let mut buf = [0u8; 64];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == b"tandem-probe" => Ok(()),
            Ok(_) => Err("received something other than the probe".into()),
            Err(e) => Err(format!("the probe never came back: {e}")),
        }
    }

    fn free_udp_port() -> u16 {
        UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn instance(app: &str, port: u16) -> Instance {
        Instance {
            app_id: app.into(),
            namespace: "default".into(),
            address: "127.0.0.1".into(),
            internal_port: port,
            http_port: 3500,
            app_port: None,
        }
    }

    #[tokio::test]
    async fn registers_and_resolves_over_multicast() {
        let port = free_udp_port();
        if let Err(why) = multicast_loops_back(port) {
            eprintln!("SKIPPED registers_and_resolves_over_multicast: multicast does not work on this host ({why})");
            return;
        }
        let cfg = Configuration::from_value(&json!({ "mdnsPort": port, "browseTimeout": "1s" })).unwrap();
        let orders = instance("orders", 50102);
        let server = MdnsResolver::new(&cfg, &orders).unwrap();
        server.register(&orders).await.unwrap();
        let client = MdnsResolver::new(&cfg, &instance("checkout", 50202)).unwrap();

        let req = ResolveRequest::new("orders", "default", 50002);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addrs = loop {
            match client.resolve(&req).await {
                Ok(addrs) => break addrs,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
        };
        // The port is the one orders announced (its internal port), not the caller's.
        assert!(addrs.contains(&"127.0.0.1:50102".parse().unwrap()), "{addrs:?}");
        let err = client
            .resolve(&ResolveRequest::new("ghost", "default", 50002))
            .await
            .unwrap_err();
        assert!(matches!(err, ResolveError::NotFound { .. }), "{err}");
        server.close().await;
        client.close().await;
    }

    #[test]
    fn view_keeps_fresh_instances_of_the_app_ipv4_first() {
        let view = View::default();
        let seen = |app: &str, addrs: &[&str], age: Duration| Seen {
            app_id: app.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            at: Instant::now() - age,
        };
        view.lock().insert(
            "a".into(),
            seen("orders", &["[fd00::1]:1", "10.0.0.1:1"], Duration::ZERO),
        );
        view.lock()
            .insert("b".into(), seen("orders", &["10.0.0.2:1"], Duration::ZERO));
        view.lock()
            .insert("c".into(), seen("orders", &["10.0.0.3:1"], Duration::from_secs(90)));
        view.lock()
            .insert("d".into(), seen("payments", &["10.0.0.4:1"], Duration::ZERO));
        let addrs: Vec<String> = view
            .addresses("orders", Duration::from_secs(60))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.0.0.1:1", "10.0.0.2:1", "[fd00::1]:1"]);
        assert!(!view.lock().contains_key("c"), "expired entries are dropped");
        view.remove("d");
        assert!(view.addresses("payments", Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn instance_names_are_unique_dns_labels() {
        let long = "x".repeat(80);
        let a = instance_name(&long);
        assert!(a.len() <= 63, "{a}");
        assert_ne!(instance_name("orders"), instance_name("orders"));
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let cases = [
            (json!({ "mdnsPort": "mdns" }), "mdnsPort"),
            (json!({ "mdnsPort": 0 }), "mdnsPort"),
            (json!({ "browseTimeout": "0s" }), "browseTimeout"),
            (
                json!({ "cacheTTL": "10s", "refreshInterval": "30s" }),
                "refreshInterval",
            ),
        ];
        for (cfg, field) in cases {
            match MdnsConfig::from_configuration(&Configuration::from_value(&cfg).unwrap()) {
                Err(ResolveError::Config { field: f, .. }) => assert_eq!(f, field, "{cfg}"),
                other => panic!("{cfg}: expected a config error, got {other:?}"),
            }
        }
        let defaults = MdnsConfig::from_configuration(&Configuration::default()).unwrap();
        assert_eq!(defaults.port, 5353);
        assert_eq!(defaults.cache_ttl, Duration::from_secs(60));
    }
}
