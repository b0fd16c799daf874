//! A sidecar in this process, over real sockets, with a component that misbehaves on purpose: no request can break,
//! stall or poison the sidecar for the requests after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use clap::Parser;
use tandem::api::Component;
use tandem::api::configuration::NameResolutionSpec;
use tandem::cli::{Cli, Command};
use tandem::components::state::memory::MemoryStore;
use tandem::components::state::{DeleteRequest, Feature, SetRequest, StateError, StateItem, StateStore};
use tandem::components::{ComponentError, Metadata, Registry};
use tandem::sidecar::{Defaults, PortPolicy, Sidecar};

/// A state store with a bug: reading key `boom` panics — the first time while it holds its own lock.
struct Buggy {
    inner: MemoryStore,
    lock: std::sync::Mutex<()>,
    panicked_once: AtomicBool,
}

#[async_trait]
impl StateStore for Buggy {
    fn features(&self) -> &'static [Feature] {
        self.inner.features()
    }
    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        if key.ends_with("boom") {
            if !self.panicked_once.swap(true, Ordering::SeqCst) {
                let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                panic!("a bug in the store");
            }
            panic!("the same bug again");
        }
        self.inner.get(key).await
    }
    async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
        self.inner.set(req).await
    }
    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
        self.inner.delete(req).await
    }
}

async fn build_buggy(_md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    Ok(Arc::new(Buggy {
        inner: MemoryStore::default(),
        lock: std::sync::Mutex::new(()),
        panicked_once: AtomicBool::new(false),
    }))
}

async fn start(dir: &tempfile::TempDir) -> Sidecar {
    let Command::Sidecar(args) = Cli::try_parse_from([
        "tandem",
        "sidecar",
        "--app-id",
        "robust",
        "--dapr-http-port",
        "0",
        "--dapr-grpc-port",
        "0",
        "--dapr-internal-grpc-port",
        "0",
        "--dapr-internal-grpc-listen-address",
        "127.0.0.1",
        "--enable-metrics=false",
    ])
    .unwrap()
    .command
    else {
        panic!("sidecar")
    };
    let mut registry = Registry::with_builtins();
    registry.register::<dyn StateStore, _, _>("state.buggy", "v1", build_buggy);
    let defaults = Defaults {
        components: vec![
            Component::new("buggy", "state.buggy", &[]),
            Component::new("memory", "state.in-memory", &[]),
        ],
        name_resolution: Some(NameResolutionSpec {
            component: "sqlite".into(),
            version: "v1".into(),
            configuration: serde_json::json!({ "connectionString": dir.path().join("nr.db").to_str().unwrap() }),
        }),
    };
    let sidecar = Sidecar::start_with(*args, PortPolicy::Defaults, defaults, Arc::new(registry))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}/v1.0/healthz/outbound", sidecar.ports.http);
    for _ in 0..200 {
        if reqwest_status(&url).await == Some(204) {
            return sidecar;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the sidecar did not load its components");
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn call(method: &str, url: &str, body: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let resp = client.request(req).await.expect("the sidecar answers");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn reqwest_status(url: &str) -> Option<u16> {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    client.get(url.parse().ok()?).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn a_panicking_request_is_a_500_and_the_next_requests_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(&dir).await;
    let base = format!("http://127.0.0.1:{}/v1.0/state", sidecar.ports.http);
    assert_eq!(
        call("POST", &format!("{base}/buggy"), r#"[{"key":"k","value":1}]"#)
            .await
            .0,
        204
    );
    for _ in 0..2 {
        let (status, body) = call("GET", &format!("{base}/buggy/boom"), "").await;
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("ERR_INTERNAL"), "{body}");
    }
    // The same store, and the others, keep working: no lock was left poisoned, no task wedged.
    assert_eq!(call("GET", &format!("{base}/buggy/k"), "").await, (200, "1".to_owned()));
    assert_eq!(
        call("POST", &format!("{base}/memory"), r#"[{"key":"m","value":2}]"#)
            .await
            .0,
        204
    );
    assert_eq!(
        call("GET", &format!("{base}/memory/m"), "").await,
        (200, "2".to_owned())
    );
    sidecar.rt.shutdown.cancel();
    sidecar.wait().await.unwrap();
}

#[tokio::test]
async fn ttls_beyond_daprs_range_are_refused_and_the_longest_one_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(&dir).await;
    let base = format!("http://127.0.0.1:{}/v1.0/state/memory", sidecar.ports.http);
    for ttl in ["9223372036854775807", "2147483648", "-2", "1e9"] {
        let body = format!(r#"[{{"key":"t","value":1,"metadata":{{"ttlInSeconds":"{ttl}"}}}}]"#);
        let (status, answer) = call("POST", &base, &body).await;
        assert_eq!(status, 500, "{ttl}: {answer}");
        assert!(
            answer.contains("ERR_STATE_SAVE") && answer.contains("ttlInSeconds"),
            "{ttl}: {answer}"
        );
    }
    // 2^31-1 seconds (year 2094) is accepted, and the key reads back with its expiry time.
    let body = r#"[{"key":"t","value":1,"metadata":{"ttlInSeconds":"2147483647"}}]"#;
    assert_eq!(call("POST", &base, body).await.0, 204);
    let (status, value) = call("GET", &format!("{base}/t"), "").await;
    assert_eq!((status, value.as_str()), (200, "1"));
    // The store still serves everyone after the refused ones.
    assert_eq!(call("POST", &base, r#"[{"key":"u","value":3}]"#).await.0, 204);
    sidecar.rt.shutdown.cancel();
    sidecar.wait().await.unwrap();
}
