//! Tests of the kubernetes resolver against a real DNS server (hickory-server) on 127.0.0.1.

use super::*;
use std::collections::HashSet;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use serde_json::json;

use crate::components::nameresolution::pick;

/// A real DNS server on 127.0.0.1 (UDP and TCP, one random port) serving in-memory zones.
struct TestDns {
    addr: SocketAddr,
    zones: Vec<Arc<InMemoryZoneHandler>>,
    _server: Server<Catalog>,
}

fn record(name: &str, ip: &str) -> Record {
    let name = Name::from_str(name).unwrap();
    let rdata = match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, 5, rdata)
}

fn zone(origin: &str, records: &[(&str, &str)]) -> InMemoryZoneHandler {
    let origin = Name::from_str(origin).unwrap();
    let mut zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        Name::from_str("ns.test.").unwrap(),
        Name::from_str("admin.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        5,
    );
    assert!(zone.upsert_mut(Record::from_rdata(origin, 5, RData::SOA(soa)), 1));
    for (name, ip) in records {
        assert!(zone.upsert_mut(record(name, ip), 1), "{name}");
    }
    zone
}

async fn start_dns(zones: Vec<InMemoryZoneHandler>) -> TestDns {
    let zones: Vec<Arc<InMemoryZoneHandler>> = zones.into_iter().map(Arc::new).collect();
    let mut catalog = Catalog::new();
    for z in &zones {
        let handler: Arc<dyn ZoneHandler> = z.clone();
        catalog.upsert(z.origin().clone(), vec![handler]);
    }
    let mut server = Server::new(catalog);
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    TestDns {
        addr,
        zones,
        _server: server,
    }
}

/// `svc.cluster.local.` as a small cluster would serve it.
async fn cluster_dns() -> TestDns {
    start_dns(vec![zone(
        "svc.cluster.local.",
        &[
            ("orders-dapr.default.svc.cluster.local.", "127.0.0.2"),
            ("payments-dapr.default.svc.cluster.local.", "127.0.0.3"),
            ("payments-dapr.default.svc.cluster.local.", "127.0.0.4"),
            ("orders-dapr.production.svc.cluster.local.", "127.0.0.5"),
            ("ledger-dapr.default.svc.cluster.local.", "fd00::7"),
            ("stock-dapr.default.svc.cluster.local.", "127.0.0.8"),
            ("stock-dapr.default.svc.cluster.local.", "fd00::8"),
        ],
    )])
    .await
}

fn resolver(dns: &TestDns, extra: serde_json::Value) -> KubernetesResolver {
    let mut cfg = json!({ "nameservers": [dns.addr.to_string()] });
    cfg.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    KubernetesResolver::new(&Configuration::from_value(&cfg).unwrap()).unwrap()
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<String> {
    v.sort();
    v.into_iter().map(|a| a.to_string()).collect()
}

fn req(app: &str, ns: &str) -> ResolveRequest {
    ResolveRequest::new(app, ns, 50002)
}

#[tokio::test]
async fn resolves_the_headless_service_on_the_callers_port() {
    let dns = cluster_dns().await;
    let r = resolver(&dns, json!({}));
    let addrs = r.resolve(&req("orders", "default")).await.unwrap();
    assert_eq!(sorted(addrs), ["127.0.0.2:50002"]);
    let addrs = r
        .resolve(&ResolveRequest::new("orders", "default", 6000))
        .await
        .unwrap();
    assert_eq!(sorted(addrs), ["127.0.0.2:6000"]);
}

#[tokio::test]
async fn returns_every_replica_and_pick_spreads_over_them() {
    let dns = cluster_dns().await;
    let r = resolver(&dns, json!({}));
    let addrs = r.resolve(&req("payments", "default")).await.unwrap();
    assert_eq!(sorted(addrs.clone()), ["127.0.0.3:50002", "127.0.0.4:50002"]);
    let picked: HashSet<SocketAddr> = (0..200).filter_map(|_| pick(&addrs)).collect();
    assert_eq!(picked.len(), 2, "pick used only {picked:?}");
}

#[tokio::test]
async fn namespace_selects_the_service() {
    let dns = cluster_dns().await;
    let r = resolver(&dns, json!({}));
    let prod = r.resolve(&req("orders", "production")).await.unwrap();
    assert_eq!(sorted(prod), ["127.0.0.5:50002"]);
    let err = r.resolve(&req("payments", "production")).await.unwrap_err();
    assert!(matches!(err, ResolveError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn returns_aaaa_records_alone_and_alongside_a() {
    let dns = cluster_dns().await;
    let r = resolver(&dns, json!({}));
    let v6 = r.resolve(&req("ledger", "default")).await.unwrap();
    assert_eq!(sorted(v6), ["[fd00::7]:50002"]);
    let both = r.resolve(&req("stock", "default")).await.unwrap();
    assert_eq!(sorted(both), ["127.0.0.8:50002", "[fd00::8]:50002"]);
}

#[tokio::test]
async fn missing_name_is_not_found_naming_the_dns_name() {
    let dns = cluster_dns().await;
    let r = resolver(&dns, json!({}));
    let err = r.resolve(&req("ghost", "default")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ResolveError::NotFound { app_id, .. } if app_id == "ghost"),
        "{msg}"
    );
    assert!(msg.contains("ghost-dapr.default.svc.cluster.local."), "{msg}");
}

#[tokio::test]
async fn custom_cluster_domain() {
    let dns = start_dns(vec![
        zone(
            "svc.cluster.local.",
            &[("orders-dapr.default.svc.cluster.local.", "127.0.0.2")],
        ),
        zone(
            "svc.corp.example.",
            &[("orders-dapr.default.svc.corp.example.", "127.0.0.9")],
        ),
    ])
    .await;
    let r = resolver(&dns, json!({ "clusterDomain": "corp.example" }));
    let addrs = r.resolve(&req("orders", "default")).await.unwrap();
    assert_eq!(sorted(addrs), ["127.0.0.9:50002"]);
}

#[tokio::test]
async fn template_names_the_host_and_port() {
    let dns = cluster_dns().await;
    let r = resolver(
        &dns,
        json!({ "template": "{{.ID}}-dapr.{{ .Namespace }}.svc.cluster.local:7000" }),
    );
    let addrs = r.resolve(&req("payments", "default")).await.unwrap();
    assert_eq!(sorted(addrs), ["127.0.0.3:7000", "127.0.0.4:7000"]);
}

#[tokio::test]
async fn answers_are_cached_until_cache_ttl_expires() {
    let dns = cluster_dns().await;
    let long = resolver(&dns, json!({ "cacheTTL": "1h" }));
    let short = resolver(&dns, json!({ "cacheTTL": "200ms" }));
    let orders = req("orders", "default");
    assert_eq!(long.resolve(&orders).await.unwrap().len(), 1);
    assert_eq!(short.resolve(&orders).await.unwrap().len(), 1);

    // The Service scales to two replicas.
    let zone = &dns.zones[0];
    assert!(
        zone.upsert(record("orders-dapr.default.svc.cluster.local.", "127.0.0.6"), 2)
            .await
    );

    // Within the TTL the old answer is reused...
    assert_eq!(long.resolve(&orders).await.unwrap().len(), 1);
    // ...after it, the new replica is seen.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let addrs = short.resolve(&orders).await.unwrap();
        if addrs.len() == 2 {
            assert_eq!(sorted(addrs), ["127.0.0.2:50002", "127.0.0.6:50002"]);
            break;
        }
        assert!(Instant::now() < deadline, "cache never expired: {addrs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Invalidating drops the cached answer at once.
    long.invalidate(&orders);
    assert_eq!(long.resolve(&orders).await.unwrap().len(), 2);
}

#[test]
fn default_target_is_the_fully_qualified_service_name() {
    let c = Configuration::from_value(&json!({ "nameservers": "127.0.0.1" })).unwrap();
    let r = KubernetesResolver::new(&c).unwrap();
    assert_eq!(
        r.target(&req("orders", "prod")).unwrap(),
        Target {
            host: "orders-dapr.prod.svc.cluster.local.".into(),
            port: 50002
        }
    );
}

#[test]
fn template_substitutes_placeholders_literally() {
    let t = Template::parse("{{.ID}}.{{.Namespace}}.mesh:{{.Port}}").unwrap();
    assert_eq!(t.render(&req("a", "b")), "a.b.mesh:50002");
    let t = Template::parse("static-host").unwrap();
    assert_eq!(t.render(&req("a", "b")), "static-host");
}

#[test]
fn template_renders_ip_literals_without_dns() {
    let c = Configuration::from_value(&json!({
        "nameservers": ["127.0.0.1:1"],
        "template": "[::1]:{{.Port}}"
    }))
    .unwrap();
    let r = KubernetesResolver::new(&c).unwrap();
    assert_eq!(
        r.target(&req("a", "b")).unwrap(),
        Target {
            host: "::1".into(),
            port: 50002
        }
    );
}

#[test]
fn bad_configuration_names_the_field() {
    let cases = [
        (json!({ "template": "{{.Data.zone}}" }), "template", "{{.Data.zone}}"),
        (json!({ "template": "{{.ID" }), "template", "without"),
        (json!({ "cacheTTL": "soon" }), "cacheTTL", "soon"),
        (
            json!({ "nameservers": ["dns.local:53"] }),
            "nameservers",
            "dns.local:53",
        ),
        (json!({ "nameservers": [] }), "nameservers", "empty"),
        (json!({ "clusterDomain": ["a"] }), "clusterDomain", "a list"),
    ];
    for (cfg, field, needle) in cases {
        let err = KubernetesConfig::from_configuration(&Configuration::from_value(&cfg).unwrap());
        match err {
            Err(ResolveError::Config { field: f, message }) => {
                assert_eq!(f, field, "{cfg}");
                assert!(message.contains(needle), "{cfg}: {message}");
            }
            other => panic!("{cfg}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn template_port_that_is_not_a_number_is_a_config_error() {
    let c = Configuration::from_value(&json!({
        "nameservers": ["127.0.0.1:1"],
        "template": "{{.ID}}.mesh:http"
    }))
    .unwrap();
    let r = KubernetesResolver::new(&c).unwrap();
    let err = r.target(&req("a", "b")).unwrap_err().to_string();
    assert!(err.contains("template") && err.contains("\"http\""), "{err}");
}
