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

use dapr::dapr::proto::runtime::v1 as runtime_v1;

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
        jobs_store: None,
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

/// JSON error body `(errorCode, message)` of an answer.
fn error_of(body: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["errorCode"].as_str().unwrap_or_default().to_owned(),
        v["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn numbers_and_option_names_at_their_extremes_are_answered_as_dapr_answers_them() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(&dir).await;
    let base = format!("http://127.0.0.1:{}/v1.0/state/memory", sidecar.ports.http);
    assert_eq!(
        call("POST", &base, r#"[{"key":"a","value":1},{"key":"b","value":2}]"#)
            .await
            .0,
        204
    );

    // Bulk get: any 64-bit parallelism is served (Dapr runs every key at once for 0 or less); what is not a
    // 64-bit integer is a malformed body.
    for p in ["-1", "0", "1", "9223372036854775807", "-9223372036854775808"] {
        let (status, body) = call(
            "POST",
            &format!("{base}/bulk"),
            &format!(r#"{{"keys":["b","a"],"parallelism":{p}}}"#),
        )
        .await;
        assert_eq!(status, 200, "parallelism {p}: {body}");
        let items: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let got: Vec<(&str, &serde_json::Value)> =
            items.iter().map(|i| (i["key"].as_str().unwrap(), &i["data"])).collect();
        assert_eq!(
            got,
            [("b", &serde_json::json!(2)), ("a", &serde_json::json!(1))],
            "parallelism {p}"
        );
    }
    for p in ["1.5", r#""2""#, "1e30", "9223372036854775808"] {
        let (status, body) = call(
            "POST",
            &format!("{base}/bulk"),
            &format!(r#"{{"keys":["a"],"parallelism":{p}}}"#),
        )
        .await;
        assert_eq!(
            (status, error_of(&body).0.as_str()),
            (400, "ERR_MALFORMED_REQUEST"),
            "parallelism {p}: {body}"
        );
    }

    // Concurrency and consistency names: the known ones work, an unknown one is the store's refusal, answered
    // with the operation's code and 500 as daprd does.
    for options in [
        r#"{"concurrency":"first-write","consistency":"strong"}"#,
        r#"{"concurrency":"last-write","consistency":"eventual"}"#,
        r#"{}"#,
    ] {
        let body = format!(r#"[{{"key":"o-{}","value":1,"options":{options}}}]"#, options.len());
        assert_eq!(call("POST", &base, &body).await.0, 204, "{options}");
    }
    for (options, why) in [
        (
            r#"{"concurrency":"sometimes"}"#,
            "unrecognized concurrency model 'sometimes'",
        ),
        (r#"{"consistency":"weak"}"#, "unrecognized consistency model 'weak'"),
    ] {
        let (status, body) = call(
            "POST",
            &base,
            &format!(r#"[{{"key":"o","value":1,"options":{options}}}]"#),
        )
        .await;
        let (code, message) = error_of(&body);
        assert_eq!((status, code.as_str()), (500, "ERR_STATE_SAVE"), "{options}: {body}");
        assert!(message.contains(why), "{message}");
        let tx = format!(
            r#"{{"operations":[{{"operation":"upsert","request":{{"key":"o","value":1,"options":{options}}}}}]}}"#
        );
        let (status, body) = call("POST", &format!("{base}/transaction"), &tx).await;
        assert_eq!(
            (status, error_of(&body).0.as_str()),
            (500, "ERR_STATE_TRANSACTION"),
            "{options}: {body}"
        );
    }
    // TTLs out of Dapr's range in a bulk save or a transaction (per item or for the whole transaction) refuse
    // the whole request before anything is written.
    let (status, body) = call(
        "POST",
        &base,
        r#"[{"key":"t1","value":1},{"key":"t2","value":2,"metadata":{"ttlInSeconds":"2147483648"}}]"#,
    )
    .await;
    assert_eq!((status, error_of(&body).0.as_str()), (500, "ERR_STATE_SAVE"), "{body}");
    assert_eq!(
        call("GET", &format!("{base}/t1"), "").await.0,
        204,
        "nothing of a refused bulk save is written"
    );
    for tx in [
        r#"{"operations":[{"operation":"upsert","request":{"key":"t1","value":1}},{"operation":"upsert","request":{"key":"t2","value":1,"metadata":{"ttlInSeconds":"-2"}}}]}"#,
        r#"{"operations":[{"operation":"upsert","request":{"key":"t1","value":1}}],"metadata":{"ttlInSeconds":"9223372036854775808"}}"#,
    ] {
        let (status, body) = call("POST", &format!("{base}/transaction"), tx).await;
        assert_eq!(
            (status, error_of(&body).0.as_str()),
            (500, "ERR_STATE_TRANSACTION"),
            "{tx}: {body}"
        );
        assert_eq!(call("GET", &format!("{base}/t1"), "").await.0, 204, "{tx}");
    }
    for query in ["consistency=weak", "concurrency=sometimes"] {
        let (status, body) = call("DELETE", &format!("{base}/a?{query}"), "").await;
        assert_eq!(
            (status, error_of(&body).0.as_str()),
            (500, "ERR_STATE_DELETE"),
            "{query}: {body}"
        );
    }
    assert_eq!(
        call("GET", &format!("{base}/a"), "").await,
        (200, "1".to_owned()),
        "a refused delete deletes nothing"
    );
    // Reads ignore the consistency they are given, as Dapr's stores do.
    assert_eq!(
        call("GET", &format!("{base}/a?consistency=weak"), "").await,
        (200, "1".to_owned())
    );
    assert_eq!(
        call(
            "DELETE",
            &format!("{base}/a?consistency=strong&concurrency=last-write"),
            ""
        )
        .await
        .0,
        204
    );

    // Query pages: zero and negative limits return everything, an offset past the end returns nothing, a token
    // that is no offset is the store's refusal (500 ERR_STATE_QUERY, as in Dapr).
    let query = format!("http://127.0.0.1:{}/v1.0-alpha1/state/memory/query", sidecar.ports.http);
    for limit in ["0", "-1", "-9223372036854775808"] {
        let (status, body) = call("POST", &query, &format!(r#"{{"page":{{"limit":{limit}}}}}"#)).await;
        assert_eq!(status, 200, "{limit}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["results"].as_array().unwrap().len() >= 3, "{limit}: {body}");
        assert!(v.get("token").is_none(), "{body}");
    }
    let past_the_end = r#"{"page":{"limit":9223372036854775807,"token":"18446744073709551615"}}"#;
    assert_eq!(call("POST", &query, past_the_end).await.0, 204);
    for page in [r#"{"limit":1,"token":"-1"}"#, r#"{"limit":1.5}"#] {
        let (status, body) = call("POST", &query, &format!(r#"{{"page":{page}}}"#)).await;
        assert_eq!(
            (status, error_of(&body).0.as_str()),
            (500, "ERR_STATE_QUERY"),
            "{page}: {body}"
        );
    }
    sidecar.rt.shutdown.cancel();
    sidecar.wait().await.unwrap();
}

#[tokio::test]
async fn errors_repeat_only_a_bounded_prefix_of_what_was_sent() {
    const MB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(&dir).await;
    let http = format!("http://127.0.0.1:{}", sidecar.ports.http);
    let base = format!("{http}/v1.0/state/memory");
    let huge = "x".repeat(MB);
    let huge_key = format!("k{huge}");
    let saved = call("POST", &base, &format!(r#"[{{"key":"{huge_key}","value":1}}]"#)).await;
    assert_eq!(saved.0, 204, "a long key is a valid key");
    let cases = [
        (
            "illegal key",
            "POST",
            base.clone(),
            format!(r#"[{{"key":"a||{huge}","value":1}}]"#),
            400,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "stale etag on a long key",
            "POST",
            base.clone(),
            format!(r#"[{{"key":"{huge_key}","value":2,"etag":"12345"}}]"#),
            409,
            "ERR_STATE_SAVE",
        ),
        (
            "unknown store",
            "GET",
            format!("{http}/v1.0/state/{}/k", "s".repeat(30_000)),
            String::new(),
            400,
            "ERR_STATE_STORE_NOT_FOUND",
        ),
        (
            "concurrency",
            "POST",
            base.clone(),
            format!(r#"[{{"key":"a","value":1,"options":{{"concurrency":"{huge}"}}}}]"#),
            500,
            "ERR_STATE_SAVE",
        ),
        (
            "ttl",
            "POST",
            base.clone(),
            format!(r#"[{{"key":"a","value":1,"metadata":{{"ttlInSeconds":"{huge}"}}}}]"#),
            500,
            "ERR_STATE_SAVE",
        ),
        (
            "body",
            "POST",
            format!("{base}/bulk"),
            format!(r#"{{"keys":["a"],"parallelism":"{huge}"}}"#),
            400,
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "operation",
            "POST",
            format!("{base}/transaction"),
            format!(r#"{{"operations":[{{"operation":"{huge}","request":{{"key":"a"}}}}]}}"#),
            400,
            "ERR_NOT_SUPPORTED_STATE_OPERATION",
        ),
        (
            "query token",
            "POST",
            format!("{http}/v1.0-alpha1/state/memory/query"),
            format!(r#"{{"page":{{"limit":1,"token":"{huge}"}}}}"#),
            500,
            "ERR_STATE_QUERY",
        ),
    ];
    for (what, method, url, body, status, code) in cases {
        let (got, answer) = call(method, &url, &body).await;
        assert_eq!(
            (got, error_of(&answer).0.as_str()),
            (status, code),
            "{what}: {}",
            &answer[..answer.len().min(300)]
        );
        assert!(answer.len() < 2048, "{what}: the error is {} bytes", answer.len());
        assert!(answer.contains("bytes)"), "{what}: the cut is marked: {answer}");
    }
    sidecar.rt.shutdown.cancel();
    sidecar.wait().await.unwrap();
}

#[tokio::test]
async fn grpc_numbers_at_their_extremes_and_bounded_errors() {
    use runtime_v1::dapr_client::DaprClient;
    use runtime_v1::{GetBulkStateRequest, GetStateRequest, SaveStateRequest};
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(&dir).await;
    let mut client = DaprClient::connect(format!("http://127.0.0.1:{}", sidecar.ports.grpc))
        .await
        .unwrap();
    let item = |key: &str| dapr::dapr::proto::common::v1::StateItem {
        key: key.to_owned(),
        value: b"1".to_vec(),
        ..Default::default()
    };
    client
        .save_state(SaveStateRequest {
            store_name: "memory".into(),
            states: vec![item("g1"), item("g2")],
        })
        .await
        .unwrap();
    for parallelism in [i32::MIN, -1, 0, i32::MAX] {
        let got = client
            .get_bulk_state(GetBulkStateRequest {
                store_name: "memory".into(),
                keys: vec!["g2".into(), "g1".into()],
                parallelism,
                metadata: Default::default(),
            })
            .await
            .unwrap_or_else(|e| panic!("parallelism {parallelism}: {e}"))
            .into_inner();
        let keys: Vec<&str> = got.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["g2", "g1"], "parallelism {parallelism}");
        assert!(got.items.iter().all(|i| i.data == b"1"), "parallelism {parallelism}");
    }
    // Option enums out of range are no option at all, as in Dapr (util.go maps them to "").
    let mut odd = item("g3");
    odd.options = Some(dapr::dapr::proto::common::v1::StateOptions {
        concurrency: 99,
        consistency: -5,
    });
    client
        .save_state(SaveStateRequest {
            store_name: "memory".into(),
            states: vec![odd],
        })
        .await
        .unwrap();
    let huge = "x".repeat(1 << 20);
    let unknown = client
        .get_state(GetStateRequest {
            store_name: huge.clone(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(unknown.message().len() < 2048, "{} bytes", unknown.message().len());
    assert!(
        unknown.details().len() < 4096,
        "{} bytes of details",
        unknown.details().len()
    );
    let illegal = client
        .save_state(SaveStateRequest {
            store_name: "memory".into(),
            states: vec![item(&format!("a||{huge}"))],
        })
        .await
        .unwrap_err();
    assert_eq!(illegal.code(), tonic::Code::InvalidArgument);
    assert!(illegal.message().len() < 2048, "{} bytes", illegal.message().len());
    assert!(
        illegal.details().len() < 4096,
        "{} bytes of details",
        illegal.details().len()
    );
    sidecar.rt.shutdown.cancel();
    sidecar.wait().await.unwrap();
}
