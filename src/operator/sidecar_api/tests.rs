//! The real sidecar API server and the real client, against a mocked Kubernetes API server that answers
//! TokenReviews, Pod and Secret reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::control_plane::kinds::{DaprKind, DaprResource};
use crate::control_plane::operator_client::{ClientError, OperatorClient};
use crate::control_plane::wire::{EventType, ResourceEvent};
use crate::operator::fixtures::json_response;
use crate::operator::health::Readiness;

/// Answers like an API server: TokenReviews by token, the `checkout-abc` pod, the `redis` Secret of `shop`.
async fn fake_apiserver(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    reviews: Arc<AtomicUsize>,
) {
    while let Some((req, send)) = handle.next_request().await {
        let (method, uri) = (req.method().clone(), req.uri().to_string());
        let body = req.into_body().collect_bytes().await.unwrap();
        let response = match (method, uri.as_str()) {
            (Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews?") => {
                reviews.fetch_add(1, Ordering::SeqCst);
                let review: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(review["spec"]["audiences"], json!(["tandem-api"]));
                let status = match review["spec"]["token"].as_str().unwrap() {
                    "token-shop" => json!({"authenticated": true,
                        "user": {"username": "system:serviceaccount:shop:default"}}),
                    "token-pod" => json!({"authenticated": true,
                        "user": {"username": "system:serviceaccount:shop:checkout",
                            "extra": {"authentication.kubernetes.io/pod-name": ["checkout-abc"]}}}),
                    "token-payments" => json!({"authenticated": true,
                        "user": {"username": "system:serviceaccount:shop:default",
                            "extra": {"authentication.kubernetes.io/pod-name": ["payments-1"]}}}),
                    "token-user" => json!({"authenticated": true, "user": {"username": "alice"}}),
                    _ => json!({"authenticated": false, "error": "invalid bearer token"}),
                };
                let answer = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": review["spec"], "status": status});
                json_response(StatusCode::CREATED, &answer)
            }
            (Method::GET, "/api/v1/namespaces/shop/pods/checkout-abc") => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "checkout-abc", "namespace": "shop",
                        "annotations": {"dapr.io/app-id": "checkout"}}}),
            ),
            // No dapr.io/app-id: the app id is the pod's name, as Dapr's Sentry decides.
            (Method::GET, "/api/v1/namespaces/shop/pods/payments-1") => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "payments-1", "namespace": "shop",
                        "annotations": {"dapr.io/app-id": "payments", "dapr.io/config": "appconfig"}}}),
            ),
            (Method::GET, "/api/v1/namespaces/shop/secrets/redis") => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "shop"},
                    "data": {"password": "aHVudGVyMg=="}}),
            ),
            (_, other) => crate::operator::fixtures::not_found(other),
        };
        send.send_response(response);
    }
}

fn res(kind: DaprKind, doc: Value) -> DaprResource {
    DaprResource::from_json(kind, doc).unwrap()
}

fn store(namespace: &str, scopes: &[&str], host: &str) -> DaprResource {
    res(
        DaprKind::Component,
        json!({"metadata": {"name": "store", "namespace": namespace}, "scopes": scopes,
            "spec": {"type": "state.redis", "version": "v1", "metadata": [
                {"name": "redisHost", "value": host},
                {"name": "redisPassword", "secretKeyRef": {"name": "redis", "key": "password"}}]}}),
    )
}

/// The objects every test starts with, by kind.
fn initial() -> Vec<DaprResource> {
    vec![
        store("shop", &[], "redis:6379"),
        res(
            DaprKind::Component,
            json!({"metadata": {"name": "private", "namespace": "shop"}, "scopes": ["payments"],
                "spec": {"type": "state.in-memory", "version": "v1"}}),
        ),
        res(
            DaprKind::Component,
            json!({"metadata": {"name": "foreign", "namespace": "other"},
                "spec": {"type": "state.in-memory", "version": "v1"}}),
        ),
        res(
            DaprKind::Subscription,
            json!({"metadata": {"name": "orders", "namespace": "shop"}, "scopes": ["checkout"],
                "spec": {"pubsubname": "pubsub", "topic": "orders", "routes": {"default": "/orders"}}}),
        ),
        res(
            DaprKind::HttpEndpoint,
            json!({"metadata": {"name": "billing", "namespace": "shop"}, "spec": {"baseUrl": "https://billing"}}),
        ),
        res(
            DaprKind::Resiliency,
            json!({"metadata": {"name": "retries", "namespace": "shop"}, "spec": {}}),
        ),
        res(
            DaprKind::Configuration,
            json!({"metadata": {"name": "appconfig", "namespace": "shop"}, "spec": {"features": [{"name": "x", "enabled": true}]}}),
        ),
    ]
}

struct Harness {
    cache: Arc<ResourceCache>,
    reviews: Arc<AtomicUsize>,
    state: ApiState,
    addr: SocketAddr,
    stop: CancellationToken,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let reviews = Arc::new(AtomicUsize::new(0));
        tokio::spawn(fake_apiserver(handle, reviews.clone()));
        let cache = ResourceCache::new(&Readiness::default());
        for kind in DaprKind::ALL {
            let listed = initial()
                .into_iter()
                .filter(|r| r.kind() == kind)
                .map(|r| ((r.namespace().to_owned(), r.name().to_owned()), r))
                .collect::<BTreeMap<_, _>>();
            cache.replace_kind(kind, listed);
        }
        let stop = CancellationToken::new();
        let mut state = ApiState::new(cache.clone(), client, "tandem-api", stop.clone());
        state.heartbeat = Duration::from_millis(50);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router(state.clone()), None, stop.clone()));
        Harness {
            cache,
            reviews,
            state,
            addr,
            stop,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn client(&self, token: &str) -> OperatorClient {
        self.client_with(token, |b| b)
    }

    fn client_with(
        &self,
        token: &str,
        f: impl FnOnce(
            crate::control_plane::operator_client::OperatorClientBuilder,
        ) -> crate::control_plane::operator_client::OperatorClientBuilder,
    ) -> OperatorClient {
        let path = self.dir.path().join(token);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        let builder = OperatorClient::builder(&format!("http://{}", self.addr))
            .token_file(path)
            .idle_timeout(Duration::from_secs(2));
        f(builder).build().unwrap()
    }

    /// Waits until `n` watch streams are subscribed to the cache.
    async fn watchers(&self, n: usize) {
        while self.cache.watchers() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn names<T>(items: &[T], name: impl Fn(&T) -> Option<&String>) -> Vec<String> {
    items.iter().filter_map(|i| name(i).cloned()).collect()
}

#[tokio::test]
async fn resources_are_namespaced_scoped_and_have_secrets_resolved() {
    let h = Harness::start().await;
    let loaded = h.client("token-pod").resources("checkout").await.unwrap();
    assert_eq!(names(&loaded.components, |c| c.metadata.name.as_ref()), ["store"]);
    let md = &loaded.components[0].spec.metadata;
    assert_eq!(md[1].name, "redisPassword");
    assert_eq!(md[1].value.as_ref().map(|v| v.as_string()).as_deref(), Some("hunter2"));
    assert_eq!(md[1].secret_key_ref, None);
    assert_eq!(names(&loaded.subscriptions, |s| s.metadata.name.as_ref()), ["orders"]);
    assert_eq!(names(&loaded.http_endpoints, |e| e.metadata.name.as_ref()), ["billing"]);
    assert_eq!(names(&loaded.resiliencies, |r| r.metadata.name.as_ref()), ["retries"]);

    let payments = h.client("token-payments").resources("payments").await.unwrap();
    assert_eq!(
        names(&payments.components, |c| c.metadata.name.as_ref()),
        ["private", "store"]
    );
    assert!(payments.subscriptions.is_empty(), "orders is scoped to checkout");
    assert_eq!(h.reviews.load(Ordering::SeqCst), 2);
    h.client("token-pod").resources("checkout").await.unwrap();
    assert_eq!(h.reviews.load(Ordering::SeqCst), 2, "the token review is reused");
}

#[tokio::test]
async fn configurations_are_read_by_name_in_the_callers_namespace() {
    let h = Harness::start().await;
    let client = h.client("token-shop");
    let config = client.configuration("appconfig").await.unwrap();
    assert_eq!(config.enabled_features(), ["x"]);
    let err = client.configuration("missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let ClientError::Status { code, message, .. } = err else {
        unreachable!()
    };
    assert_eq!(code, "ERR_CONFIGURATION_NOT_FOUND");
    assert!(message.contains("missing") && message.contains("shop"), "{message}");
}

#[tokio::test]
async fn callers_must_authenticate_and_stay_in_their_namespace_and_app() {
    let h = Harness::start().await;
    let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(b"GET /v1/resources?appId=checkout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.contains(r#""errorCode":"ERR_UNAUTHENTICATED""#) && raw.contains("Bearer"),
        "{raw}"
    );

    let err = h.client("bad").resources("checkout").await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.to_string().contains("invalid bearer token"), "{err}");
    let err = h.client("token-user").resources("checkout").await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.to_string().contains("not a ServiceAccount"), "{err}");

    let other_ns = h.client_with("token-shop", |b| b.namespace("other"));
    let err = other_ns.resources("checkout").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("namespace \"other\""), "{err}");
    let err = other_ns.configuration("appconfig").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");

    // A token bound to no pod proves no app id: it may read its namespace's Configurations, no app's resources.
    let err = h.client("token-shop").resources("checkout").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("not bound to a pod"), "{err}");

    let pod = h.client("token-pod");
    let err = pod.resources("payments").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("runs app \"checkout\""), "{err}");
    assert_eq!(pod.resources("checkout").await.unwrap().components.len(), 1);
}

async fn next_event(stream: &mut (impl Stream<Item = Result<ResourceEvent, ClientError>> + Unpin)) -> ResourceEvent {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10s")
            .expect("the stream goes on");
        match item {
            Ok(ev) => return ev,
            Err(e) => eprintln!("watch reported (and carries on): {e}"),
        }
    }
}

#[tokio::test]
async fn watch_streams_changes_the_app_sees() {
    let h = Harness::start().await;
    let client = h.client("token-pod");
    let loaded = client.resources("checkout").await.unwrap();
    let mut events = Box::pin(client.watch_from("checkout", loaded));
    h.watchers(1).await;

    h.cache.apply(store("other", &[], "elsewhere:1"));
    h.cache.apply(store("shop", &[], "redis-2:6379"));
    let ev = next_event(&mut events).await;
    assert_eq!(ev.event_type, EventType::Updated);
    let DaprResource::Component(c) = &ev.resource else {
        panic!("{ev:?}")
    };
    assert_eq!(
        c.metadata.namespace.as_deref(),
        Some("shop"),
        "other namespaces are not seen"
    );
    assert_eq!(c.spec.metadata[0].value.as_ref().unwrap().as_string(), "redis-2:6379");
    assert_eq!(
        c.spec.metadata[1].value.as_ref().unwrap().as_string(),
        "hunter2",
        "secrets resolved"
    );

    h.cache.apply(store("shop", &["payments"], "redis-2:6379"));
    let ev = next_event(&mut events).await;
    assert_eq!(
        (ev.event_type, ev.resource.name()),
        (EventType::Deleted, "store"),
        "left the scope"
    );
    h.cache.apply(store("shop", &["checkout"], "redis-2:6379"));
    let ev = next_event(&mut events).await;
    assert_eq!(
        (ev.event_type, ev.resource.name()),
        (EventType::Created, "store"),
        "entered the scope"
    );

    let config = res(
        DaprKind::Configuration,
        json!({"metadata": {"name": "appconfig", "namespace": "shop"}, "spec": {}}),
    );
    h.cache.apply(config);
    let ev = next_event(&mut events).await;
    assert_eq!(
        (ev.event_type, ev.kind()),
        (EventType::Updated, DaprKind::Configuration)
    );
    h.cache.delete(DaprKind::HttpEndpoint, "shop", "billing");
    let ev = next_event(&mut events).await;
    assert_eq!((ev.event_type, ev.resource.name()), (EventType::Deleted, "billing"));
}

#[tokio::test]
async fn watch_reconnects_and_reports_what_changed_meanwhile() {
    let h = Harness::start().await;
    let client = h.client("token-pod");
    let mut events = Box::pin(client.watch("checkout"));
    h.watchers(1).await;
    h.cache.apply(store("shop", &[], "redis-2:6379"));
    assert_eq!(next_event(&mut events).await.event_type, EventType::Updated);

    // The operator goes away; meanwhile the endpoint is deleted; another replica comes up at the same address.
    h.stop.cancel();
    while h.cache.watchers() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.cache.delete(DaprKind::HttpEndpoint, "shop", "billing");
    let listener = loop {
        match TcpListener::bind(h.addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut state = h.state.clone();
    state.shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, router(state.clone()), None, state.shutdown.clone()));

    let ev = next_event(&mut events).await;
    assert_eq!(
        (ev.event_type, ev.resource.name()),
        (EventType::Deleted, "billing"),
        "{ev:?}"
    );
    h.watchers(1).await;
    h.cache.apply(store("shop", &[], "redis-3:6379"));
    let ev = next_event(&mut events).await;
    assert_eq!(ev.event_type, EventType::Updated);
    state.shutdown.cancel();
}

#[tokio::test]
async fn https_is_served_with_the_given_certificate() {
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/operator/sidecar_api/testdata");
    let config = load_server_config(&testdata.join("tls.crt"), &testdata.join("tls.key")).unwrap();
    let h = Harness::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, router(h.state.clone()), Some(config), h.stop.clone()));
    let token = h.dir.path().join("token");
    std::fs::write(&token, "token-pod").unwrap();
    let ca = std::fs::read(testdata.join("ca.crt")).unwrap();
    let client = OperatorClient::builder(&format!("https://localhost:{}", addr.port()))
        .token_file(&token)
        .root_ca_pem(&ca)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(client.resources("checkout").await.unwrap().components.len(), 1);
    let untrusted = OperatorClient::builder(&format!("https://localhost:{}", addr.port()))
        .token_file(&token)
        .build()
        .unwrap();
    let err = untrusted.resources("checkout").await.unwrap_err().to_string();
    assert!(err.contains("cannot reach the operator"), "{err}");

    let err = load_server_config(&testdata.join("tls.key"), &testdata.join("tls.key")).unwrap_err();
    assert!(
        err.contains("--tls-cert-file") && err.contains("no PEM certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn certificates_carry_the_identity_of_the_tokens_pod_never_the_callers_claim() {
    use crate::control_plane::identity::{SpiffeId, key_and_csr};
    use crate::control_plane::mtls::{Credentials, WorkloadIdentity};
    use crate::operator::ca::Authority;

    let h = Harness::start().await;
    let (authority, _) = Authority::generate("cluster.local").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = h.state.clone().with_ca(Arc::new(authority), "tandem-system");
    tokio::spawn(serve(listener, router(state), None, h.stop.clone()));
    let client = |token: &str| {
        let path = h.dir.path().join(token);
        std::fs::write(&path, token).unwrap();
        OperatorClient::builder(&format!("http://{addr}"))
            .token_file(&path)
            .build()
            .unwrap()
    };
    // The request asks to be an admin elsewhere; the certificate names the pod's app in the pod's namespace,
    // in the trust domain of the pod's Configuration (none here: public).
    let (key, csr) = key_and_csr(&SpiffeId::new("evil", "kube-system", "admin").unwrap()).unwrap();
    let signed = client("token-pod").certificate(&csr).await.unwrap();
    assert_eq!(signed.spiffe_id, "spiffe://public/ns/shop/checkout");
    let creds = Credentials {
        chain_pem: signed.certificate_chain,
        key_pem: key.serialize_pem(),
    };
    let identity = WorkloadIdentity::new(&creds, &signed.trust_bundle).unwrap();
    assert_eq!(identity.id().to_string(), "spiffe://public/ns/shop/checkout");
    let left = signed.valid_until.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    assert!(
        (23 * 3600..=24 * 3600).contains(&left),
        "Dapr's default 24h lifetime, got {left}s"
    );

    let err = client("token-shop").certificate(&csr).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "an unbound token proves no app: {err}");
    let err = client("bad").certificate(&csr).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let err = client("token-pod").certificate("not a csr").await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    // Without a certificate authority the endpoint says so.
    let err = h.client("token-pod").certificate(&csr).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
}
