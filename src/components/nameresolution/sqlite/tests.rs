//! Tests of the sqlite resolver: several sidecars sharing one database file.

use super::*;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::components::nameresolution::build;

fn instance(app: &str, ip: &str) -> Instance {
    Instance {
        app_id: app.into(),
        namespace: "default".into(),
        address: ip.into(),
        internal_port: 50002,
        http_port: 3500,
        app_port: None,
    }
}

async fn start(cfg: &serde_json::Value, me: &Instance) -> Arc<dyn NameResolver> {
    let r = build("sqlite", "v1", cfg, me)
        .await
        .unwrap()
        .get::<dyn NameResolver>()
        .unwrap();
    r.register(me).await.unwrap();
    r
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<String> {
    v.sort();
    v.into_iter().map(|a| a.to_string()).collect()
}

fn rows(path: &Path) -> Vec<(String, String)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT app_id, address FROM hosts ORDER BY address")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Polls `f` until it returns `Some`, failing after a generous deadline.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn registered_instances_resolve_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr/hosts.db");
    let cfg = json!({ "connectionString": db.to_str().unwrap() });
    let a = start(&cfg, &instance("orders", "127.0.0.1")).await;
    let b = start(&cfg, &instance("orders", "::1")).await;
    let c = start(&cfg, &instance("payments", "127.0.0.3")).await;

    let orders = ResolveRequest::new("orders", "default", 50002);
    let found = c.resolve(&orders).await.unwrap();
    assert_eq!(sorted(found), ["127.0.0.1:50002", "[::1]:50002"]);
    let payments = a
        .resolve(&ResolveRequest::new("payments", "default", 50002))
        .await
        .unwrap();
    assert_eq!(sorted(payments), ["127.0.0.3:50002"]);
    let err = b
        .resolve(&ResolveRequest::new("ghost", "default", 50002))
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("hosts"), "{err}");

    // Dapr's schema and migration level, so daprd can share the file.
    let conn = Connection::open(&db).unwrap();
    let level: String = conn
        .query_row("SELECT value FROM metadata WHERE key = 'nr-migrations'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(level, "1");
    for r in [a, b, c] {
        r.close().await;
    }
}

#[tokio::test]
async fn stale_registrations_are_ignored_while_live_ones_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hosts.db");
    let cfg = json!({
        "connectionString": db.to_str().unwrap(),
        "updateInterval": "1s",
        "timeout": "400ms",
    });
    let live = start(&cfg, &instance("orders", "127.0.0.1")).await;
    let crashed = start(&cfg, &instance("orders", "127.0.0.2")).await;
    let req = ResolveRequest::new("orders", "default", 50002);
    assert_eq!(live.resolve(&req).await.unwrap().len(), 2);

    // A sidecar that dies without closing stops heartbeating; its row stays but is ignored.
    drop(crashed);
    let found = eventually("the crashed instance to go stale", async || {
        let found = live.resolve(&req).await.unwrap();
        (found.len() == 1).then_some(found)
    })
    .await;
    assert_eq!(sorted(found), ["127.0.0.1:50002"]);
    assert_eq!(rows(&db).len(), 2, "the stale row is ignored, not deleted");

    // The live one keeps renewing well past updateInterval.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sorted(live.resolve(&req).await.unwrap()), ["127.0.0.1:50002"]);
    live.close().await;
}

#[tokio::test]
async fn close_deregisters_and_stops_the_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hosts.db");
    let cfg = json!({
        "connectionString": db.to_str().unwrap(),
        "updateInterval": "1s",
        "timeout": "800ms",
    });
    let a = start(&cfg, &instance("orders", "127.0.0.1")).await;
    let b = start(&cfg, &instance("orders", "127.0.0.2")).await;
    b.close().await;
    let req = ResolveRequest::new("orders", "default", 50002);
    assert_eq!(sorted(a.resolve(&req).await.unwrap()), ["127.0.0.1:50002"]);
    assert_eq!(rows(&db), [("orders".into(), "127.0.0.1:50002".into())]);
    b.close().await; // closing twice is harmless
    assert!(b.register(&instance("orders", "127.0.0.2")).await.is_err());
    // Several heartbeat periods later the row has not come back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rows(&db).len(), 1);
    a.close().await;
    assert!(rows(&db).is_empty());
}

#[tokio::test]
async fn heartbeat_registers_again_when_the_row_vanished() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hosts.db");
    let cfg = json!({
        "connectionString": db.to_str().unwrap(),
        "updateInterval": "500ms",
        "timeout": "300ms",
    });
    let a = start(&cfg, &instance("orders", "127.0.0.1")).await;
    Connection::open(&db).unwrap().execute("DELETE FROM hosts", []).unwrap();
    let req = ResolveRequest::new("orders", "default", 50002);
    assert!(a.resolve(&req).await.is_err());
    let found = eventually("the registration to come back", async || a.resolve(&req).await.ok()).await;
    assert_eq!(sorted(found), ["127.0.0.1:50002"]);
    a.close().await;
}

#[tokio::test]
async fn cleanup_deletes_stale_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hosts.db");
    let cfg = json!({
        "connectionString": db.to_str().unwrap(),
        "cleanupInterval": "100ms",
    });
    let a = start(&cfg, &instance("orders", "127.0.0.1")).await;
    Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO hosts VALUES ('old', '127.0.0.9:50002', 'orders', '', 1000)",
            [],
        )
        .unwrap();
    eventually("the stale row to be deleted", async || {
        (rows(&db).len() == 1).then_some(())
    })
    .await;
    assert_eq!(rows(&db), [("orders".into(), "127.0.0.1:50002".into())]);
    a.close().await;
}

#[tokio::test]
async fn bad_configuration_names_the_field() {
    let me = instance("orders", "127.0.0.1");
    let cases = [
        (json!({}), "connectionString"),
        (
            json!({ "connectionString": "x.db", "updateInterval": "1s", "timeout": "1s" }),
            "updateInterval",
        ),
        (
            json!({ "connectionString": "x.db", "updateInterval": "often" }),
            "updateInterval",
        ),
        (
            json!({ "connectionString": "x.db", "tableName": "hosts; DROP" }),
            "tableName",
        ),
        (json!({ "connectionString": "x.db", "busyTimeout": [1] }), "busyTimeout"),
        (
            json!({ "connectionString": "x.db", "disableWAL": "maybe" }),
            "disableWAL",
        ),
    ];
    for (cfg, field) in cases {
        match build("sqlite", "v1", &cfg, &me).await {
            Err(ResolveError::Config { field: f, message }) => {
                assert_eq!(f, field, "{cfg}: {message}")
            }
            Err(other) => panic!("{cfg}: expected a config error, got {other}"),
            Ok(_) => panic!("{cfg}: expected a config error, got a resolver"),
        }
    }
    let mut no_port = me.clone();
    no_port.internal_port = 0;
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({ "connectionString": dir.path().join("h.db").to_str().unwrap() });
    let err = build("sqlite", "v1", &cfg, &no_port).await.err().unwrap();
    assert!(err.to_string().contains("internal gRPC port"), "{err}");
}
