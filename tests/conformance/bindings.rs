//! Bindings conformance: every output backend through the runtime's bindings API (so Dapr's checks and error
//! messages are exercised too), each operation Dapr documents for it, against the real server where there is
//! one (Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432, RabbitMQ on 127.0.0.1:5672, Kafka on
//! 127.0.0.1:9092, an HTTP server the test runs); the input bindings (cron, RabbitMQ, Kafka) through the trait.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem::api::Component;
use tandem::components::Registry;
use tandem::components::bindings::{Binding, Event, Handler, InvokeRequest, InvokeResponse};
use tandem::sidecar::Mode;
use tandem::sidecar::bindings::{BindingsApi, InvokeFailure};
use tandem::sidecar::components::{ComponentLoader, ComponentTable, Handle, References};
use tandem::sidecar::metrics::Metrics;
use tokio_util::sync::CancellationToken;

struct Ctx {
    api: BindingsApi,
    table: Arc<ComponentTable>,
    dir: tempfile::TempDir,
}

async fn ctx(components: &[Component]) -> Ctx {
    let table = Arc::new(ComponentTable::default());
    let references = References::new(table.clone(), "conf", "", Mode::Standalone);
    ComponentLoader::new(
        Registry::builtin(),
        table.clone(),
        references,
        Arc::default(),
        "conf",
        "",
    )
    .load_all(components)
    .await
    .unwrap_or_else(|e| panic!("the binding failed to start (is the server running?): {e}"));
    Ctx {
        api: BindingsApi::new(table.clone(), Arc::new(Metrics::new("conf"))),
        table,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn req(operation: &str, data: &str, md: &[(&str, &str)]) -> InvokeRequest {
    InvokeRequest {
        operation: operation.into(),
        data: Bytes::from(data.to_owned()),
        metadata: md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

impl Ctx {
    async fn ok(&self, name: &str, r: InvokeRequest) -> Option<InvokeResponse> {
        let op = r.operation.clone();
        self.api
            .invoke(name, r)
            .await
            .unwrap_or_else(|f| panic!("{name} {op}: {}", f.error.message))
    }
    async fn fail(&self, name: &str, r: InvokeRequest) -> InvokeFailure {
        match self.api.invoke(name, r).await {
            Ok(answer) => panic!("{name}: expected a failure, got {answer:?}"),
            Err(f) => {
                assert_eq!((f.error.status, f.error.code), (500, "ERR_INVOKE_OUTPUT_BINDING"));
                f
            }
        }
    }
}

fn text(answer: &Option<InvokeResponse>) -> String {
    String::from_utf8_lossy(&answer.as_ref().expect("an answer").data).into_owned()
}

/// Dapr's checks, in Dapr's order and words, whatever the backend.
async fn runtime_checks(c: &Ctx, name: &str, supported: &str) {
    let f = c.fail(name, req("", "", &[])).await;
    assert_eq!(
        f.error.message,
        format!("error invoking output binding {name}: operation field is missing from request")
    );
    let f = c.fail("nope", req("create", "", &[])).await;
    assert_eq!(
        f.error.message,
        "error invoking output binding nope: couldn't find output binding nope"
    );
    let f = c.fail(name, req("explode", "", &[])).await;
    assert_eq!(
        f.error.message,
        format!(
            "error invoking output binding {name}: binding {name} does not support operation explode. supported operations:{supported}"
        )
    );
    let caps = c.table.loaded(tandem::components::Kind::Bindings, name).unwrap();
    assert_eq!(caps.instance.capabilities(), ["OUTPUT_BINDING"]);
}

#[tokio::test]
async fn localstorage_creates_gets_lists_and_deletes_files() {
    let root = tempfile::tempdir().unwrap();
    let c = ctx(&[Component::new(
        "files",
        "bindings.localstorage",
        &[("rootPath", root.path().to_str().unwrap())],
    )])
    .await;
    runtime_checks(&c, "files", "create get list delete").await;
    let created = c
        .ok("files", req("create", r#""hello""#, &[("fileName", "a/b.txt")]))
        .await;
    assert_eq!(text(&created), r#"{"fileName":"a/b.txt"}"#);
    assert_eq!(
        text(&c.ok("files", req("get", "", &[("fileName", "a/b.txt")])).await),
        "hello"
    );
    // A JSON object is stored as its text; a name is made up when none is given.
    let made = c.ok("files", req("create", r#"{"k":1}"#, &[])).await;
    let name: serde_json::Value = serde_json::from_str(&text(&made)).unwrap();
    let name = name["fileName"].as_str().unwrap().to_owned();
    assert_eq!(
        text(&c.ok("files", req("get", "", &[("fileName", &name)])).await),
        r#"{"k":1}"#
    );
    let listed: Vec<String> = serde_json::from_str(&text(&c.ok("files", req("list", "", &[])).await)).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().all(|p| p.starts_with('/')),
        "absolute paths, as Dapr lists them"
    );
    assert_eq!(c.ok("files", req("delete", "", &[("fileName", "a/b.txt")])).await, None);
    let f = c.fail("files", req("get", "", &[("fileName", "a/b.txt")])).await;
    assert!(f.error.message.contains("file not found: "), "{}", f.error.message);
    let empty = tempfile::tempdir().unwrap();
    drop(c);
    let c = ctx(&[Component::new(
        "empty",
        "bindings.localstorage",
        &[("rootPath", empty.path().to_str().unwrap())],
    )])
    .await;
    assert_eq!(text(&c.ok("empty", req("list", "", &[])).await), "null");
}

#[tokio::test]
async fn redis_sets_gets_increments_expires_and_deletes_keys() {
    let c = ctx(&[Component::new(
        "cache",
        "bindings.redis",
        &[("redisHost", "127.0.0.1:6379")],
    )])
    .await;
    runtime_checks(&c, "cache", "create delete get increment").await;
    let key = format!("conf-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(c.ok("cache", req("create", r#""v1""#, &[("key", &key)])).await, None);
    assert_eq!(text(&c.ok("cache", req("get", "", &[("key", &key)])).await), r#""v1""#);
    // A missing key answers an empty body, not an error, as in Dapr.
    assert_eq!(
        text(&c.ok("cache", req("get", "", &[("key", "conf-missing-key")])).await),
        ""
    );
    let n = format!("{key}-n");
    c.ok("cache", req("increment", "", &[("key", &n)])).await;
    c.ok("cache", req("increment", "", &[("key", &n), ("ttlInSeconds", "1")]))
        .await;
    assert_eq!(text(&c.ok("cache", req("get", "", &[("key", &n)])).await), "2");
    let mut expired = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if text(&c.ok("cache", req("get", "", &[("key", &n)])).await).is_empty() {
            expired = true;
            break;
        }
    }
    assert!(expired, "ttlInSeconds=1 must expire the key");
    assert_eq!(
        text(
            &c.ok("cache", req("get", "", &[("key", &key), ("delete", "true")]))
                .await
        ),
        r#""v1""#
    );
    assert_eq!(text(&c.ok("cache", req("get", "", &[("key", &key)])).await), "");
    c.ok("cache", req("create", "x", &[("key", &key)])).await;
    assert_eq!(c.ok("cache", req("delete", "", &[("key", &key)])).await, None);
    let f = c.fail("cache", req("create", "x", &[])).await;
    assert!(
        f.error
            .message
            .ends_with("redis binding: missing key in request metadata"),
        "{}",
        f.error.message
    );
    let f = c
        .fail("cache", req("create", "x", &[("key", &key), ("ttlInSeconds", "0")]))
        .await;
    assert!(f.error.message.contains("higher than zero"), "{}", f.error.message);
}

#[tokio::test]
async fn postgresql_execs_and_queries_with_params() {
    let c = ctx(&[Component::new(
        "sqldb",
        "bindings.postgres",
        // The connection string of Dapr's bindings quickstart, pgx pool settings included.
        &[(
            "url",
            "user=postgres host=127.0.0.1 port=5432 dbname=test pool_min_conns=1 pool_max_conns=10",
        )],
    )])
    .await;
    runtime_checks(&c, "sqldb", "exec query close").await;
    let table = format!("conf_{}", uuid::Uuid::new_v4().simple());
    let sql = |s: &str| s.replace("TBL", &table);
    c.ok(
        "sqldb",
        req(
            "exec",
            "",
            &[(
                "sql",
                &sql("create table TBL (orderid int, customer text, price float, total numeric(10,2), at timestamptz, id uuid, note text)"),
            )],
        ),
    )
    .await;
    let insert = c
        .ok(
            "sqldb",
            req(
                "exec",
                "",
                &[(
                    "sql",
                    &sql("insert into TBL (orderid, customer, price, total, at, id) values (1, 'John Smith', 100.32, 12345.60, '2024-05-01T12:00:10.5Z', '5f0c0c51-1f5b-4a3c-9d7e-0123456789ab')"),
                )],
            ),
        )
        .await
        .unwrap();
    for key in ["operation", "sql", "start-time", "end-time", "duration"] {
        assert!(insert.metadata.contains_key(key), "{key} in {:?}", insert.metadata);
    }
    assert_eq!(insert.metadata["rows-affected"], "1");
    assert_eq!(insert.metadata["operation"], "exec");
    assert!(insert.data.is_empty());
    c.ok(
        "sqldb",
        req(
            "exec",
            "",
            &[
                (
                    "sql",
                    &sql("insert into TBL (orderid, customer, price) values ($1, $2, $3)"),
                ),
                ("params", r#"[2, "Jane Bond", 15.4]"#),
            ],
        ),
    )
    .await;
    let rows = c
        .ok(
            "sqldb",
            req(
                "query",
                "",
                &[(
                    "sql",
                    &sql("select orderid, customer, price, total, at, id, note from TBL order by orderid"),
                )],
            ),
        )
        .await;
    let id: Vec<u8> = uuid::Uuid::parse_str("5f0c0c51-1f5b-4a3c-9d7e-0123456789ab")
        .unwrap()
        .as_bytes()
        .to_vec();
    let expected = format!(
        r#"[[1,"John Smith",100.32,12345.6,"2024-05-01T12:00:10.5Z",{},null],[2,"Jane Bond",15.4,null,null,null,null]]"#,
        serde_json::to_string(&id).unwrap()
    );
    assert_eq!(text(&rows), expected);
    let f = c
        .fail(
            "sqldb",
            req("query", "", &[("sql", "select * from conf_missing_table")]),
        )
        .await;
    assert!(
        f.error
            .message
            .contains(r#"relation "conf_missing_table" does not exist (SQLSTATE 42P01)"#),
        "{}",
        f.error.message
    );
    let f = c.fail("sqldb", req("exec", "", &[])).await;
    assert!(
        f.error.message.ends_with("required metadata not set: sql"),
        "{}",
        f.error.message
    );
    let f = c
        .fail(
            "sqldb",
            req("exec", "", &[("sql", &sql("select 1 from TBL")), ("params", "{")]),
        )
        .await;
    assert!(
        f.error.message.contains("invalid metadata property params"),
        "{}",
        f.error.message
    );
    c.ok("sqldb", req("exec", "", &[("sql", &sql("drop table TBL"))])).await;
    assert_eq!(c.ok("sqldb", req("close", "", &[])).await, None);
    let f = c.fail("sqldb", req("exec", "", &[("sql", "select 1")])).await;
    assert!(f.error.message.ends_with("component is closed"), "{}", f.error.message);
}

/// A small HTTP server: echoes method, path, a header and the body; `/status/N` answers N.
async fn echo_server() -> String {
    use axum::extract::Path;
    use axum::http::{HeaderMap, Method, StatusCode};
    let app = axum::Router::new()
        .route(
            "/base/status/{code}",
            axum::routing::any(|Path(code): Path<u16>| async move {
                (
                    StatusCode::from_u16(code).unwrap(),
                    [("x-reason", "asked")],
                    "status body",
                )
            }),
        )
        .fallback(
            |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| async move {
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                axum::Json(serde_json::json!({
                    "method": method.as_str(), "path": uri.to_string(), "x-user": h("x-user"),
                    "content-type": h("content-type"), "body": String::from_utf8_lossy(&body),
                }))
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_sends_each_method_and_answers_status_and_headers() {
    let url = echo_server().await;
    let c = ctx(&[Component::new(
        "web",
        "bindings.http",
        &[("url", &format!("{url}/base/"))],
    )])
    .await;
    runtime_checks(&c, "web", "create get head post put patch delete options trace").await;
    let answer = c
        .ok(
            "web",
            req(
                "post",
                r#"{"a":1}"#,
                &[("path", "/orders?x=1"), ("X-User", "u1"), ("lower", "not a header")],
            ),
        )
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&answer.data).unwrap();
    assert_eq!(got["method"], "POST");
    assert_eq!(got["path"], "/base/orders?x=1");
    assert_eq!(got["x-user"], "u1");
    assert_eq!(got["content-type"], "application/json; charset=utf-8");
    assert_eq!(got["body"], r#"{"a":1}"#);
    assert_eq!(answer.metadata["statusCode"], "200");
    assert_eq!(answer.metadata["status"], "200 OK");
    assert_eq!(answer.metadata["Content-Type"], "application/json");
    let answer = c.ok("web", req("get", "ignored", &[])).await.unwrap();
    let got: serde_json::Value = serde_json::from_slice(&answer.data).unwrap();
    assert_eq!((got["method"].as_str(), got["body"].as_str()), (Some("GET"), Some("")));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&c.ok("web", req("create", "x", &[])).await.unwrap().data).unwrap()
            ["method"],
        "POST"
    );
    // A status outside 2xx is an error that still carries the answer's metadata, unless errorIfNot2XX is false.
    let f = c.fail("web", req("get", "", &[("path", "/status/404")])).await;
    assert_eq!(
        f.error.message,
        "error invoking output binding web: received status code 404"
    );
    assert_eq!(f.metadata["statusCode"], "404");
    assert_eq!(f.metadata["X-Reason"], "asked");
    let answer = c
        .ok(
            "web",
            req("get", "", &[("path", "/status/503"), ("errorIfNot2XX", "false")]),
        )
        .await
        .unwrap();
    assert_eq!(
        (answer.metadata["statusCode"].as_str(), &answer.data[..]),
        ("503", &b"status body"[..])
    );
    drop(c);
    let c = ctx(&[Component::new(
        "down",
        "bindings.http",
        &[("url", "http://127.0.0.1:9")],
    )])
    .await;
    let f = c.fail("down", req("get", "", &[])).await;
    assert!(
        f.error.message.contains("GET \"http://127.0.0.1:9/\""),
        "{}",
        f.error.message
    );
    let _ = &c.dir;
}

#[tokio::test]
async fn cron_fires_on_schedule_and_is_input_only() {
    let c = ctx(&[Component::new(
        "tick",
        "bindings.cron",
        &[("schedule", "@every 100ms"), ("direction", "input")],
    )])
    .await;
    let loaded = c.table.loaded(tandem::components::Kind::Bindings, "tick").unwrap();
    assert_eq!(loaded.instance.capabilities(), ["INPUT_BINDING"]);
    let f = c.fail("tick", req("create", "", &[])).await;
    assert_eq!(
        f.error.message,
        "error invoking output binding tick: couldn't find output binding tick"
    );
    let binding = c.table.get::<dyn Binding>("tick").unwrap();
    assert!(binding.input_declared());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BTreeMap<String, String>>();
    let handler: Handler = Arc::new(move |e: Event| {
        let _ = tx.send(e.metadata);
        Box::pin(async { Err("the app failed; the schedule goes on".to_owned()) })
    });
    let stop = CancellationToken::new();
    binding.read(handler, stop.clone()).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let md = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(md.contains_key("readTimeUTC"));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the first tick comes one interval after start"
    );
    stop.cancel();
    // A component whose schedule is wrong does not start.
    let table = Arc::new(ComponentTable::default());
    let references = References::new(table.clone(), "conf", "", Mode::Standalone);
    let err = ComponentLoader::new(Registry::builtin(), table, references, Arc::default(), "conf", "")
        .load_all(&[Component::new("bad", "bindings.cron", &[("schedule", "* * *")])])
        .await
        .unwrap_err();
    assert!(err.contains("invalid schedule format '* * *'"), "{err}");
}

#[tokio::test]
async fn rabbitmq_create_publishes_and_input_reads_back() {
    let queue = format!("conf-{}", uuid::Uuid::new_v4().simple());
    let c = ctx(&[Component::new(
        "mq",
        "bindings.rabbitmq",
        &[
            ("host", "amqp://guest:guest@127.0.0.1:5672"),
            ("queueName", &queue),
            ("durable", "true"),
            ("maxPriority", "5"),
        ],
    )])
    .await;
    let loaded = c.table.loaded(tandem::components::Kind::Bindings, "mq").unwrap();
    assert_eq!(loaded.instance.capabilities(), ["INPUT_BINDING", "OUTPUT_BINDING"]);
    let f = c.fail("mq", req("get", "", &[])).await;
    assert!(
        f.error.message.ends_with("supported operations:create"),
        "{}",
        f.error.message
    );
    // Published before anyone reads: one expires in the queue, the other waits for the reader.
    let expiring = [("ttlInSeconds", "1")];
    assert_eq!(c.ok("mq", req("create", "expiring", &expiring)).await, None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = [("k", "v"), ("priority", "3"), ("my key", "x")];
    assert_eq!(c.ok("mq", req("create", "kept", &kept)).await, None);
    let f = c.fail("mq", req("create", "x", &[("ttlInSeconds", "0")])).await;
    assert!(f.error.message.contains("higher than zero"), "{}", f.error.message);
    let f = c.fail("mq", req("create", "x", &[("priority", "high")])).await;
    assert!(f.error.message.contains("priority"), "{}", f.error.message);

    let binding = c.table.get::<dyn Binding>("mq").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    // The app fails the first delivery: the event comes again, and is then taken.
    let handler: Handler = Arc::new(move |e: Event| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = tx.send(e);
        Box::pin(async move {
            if n == 0 {
                Err("not yet".to_owned())
            } else {
                Ok(Bytes::new())
            }
        })
    });
    let stop = CancellationToken::new();
    binding.read(handler, stop.clone()).await.unwrap();
    for attempt in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event")
            .unwrap();
        assert_eq!(
            &e.data[..],
            b"kept",
            "attempt {attempt}: the expired message never arrives"
        );
        assert_eq!(e.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            e.metadata.get("my+key").map(String::as_str),
            Some("x"),
            "{:?}",
            e.metadata
        );
    }
    c.ok("mq", req("create", "later", &[])).await;
    let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event published while reading")
        .unwrap();
    assert_eq!(&e.data[..], b"later");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rx.try_recv().is_err(), "taken events do not come again");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    stop.cancel();

    // A queue declared otherwise than the existing one is refused at start, with the broker's reason.
    let table = Arc::new(ComponentTable::default());
    let references = References::new(table.clone(), "conf", "", Mode::Standalone);
    let err = ComponentLoader::new(Registry::builtin(), table, references, Arc::default(), "conf", "")
        .load_all(&[Component::new(
            "other",
            "bindings.rabbitmq",
            &[("host", "amqp://guest:guest@127.0.0.1:5672"), ("queueName", &queue)],
        )])
        .await
        .unwrap_err();
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");

    let args = amqprs::connection::OpenConnectionArguments::new("127.0.0.1", 5672, "guest", "guest");
    let admin = amqprs::connection::Connection::open(&args).await.unwrap();
    let ch = admin.open_channel(None).await.unwrap();
    ch.queue_delete(amqprs::channel::QueueDeleteArguments::new(&queue))
        .await
        .unwrap();
    let _ = ch.close().await;
    let _ = admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_create_publishes_and_the_input_reads_and_retries() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (topic, other) = (format!("conf-{run}"), format!("conf-{run}-other"));
    let url = "tcp://127.0.0.1:1883";
    let c = ctx(&[
        Component::new(
            "mq",
            "bindings.mqtt3",
            &[
                ("url", url),
                ("topic", &topic),
                ("consumerID", &format!("mq-{run}")),
                ("backOffMaxRetries", "1"),
            ],
        ),
        Component::new(
            "mq-other",
            "bindings.mqtt",
            &[
                ("url", url),
                ("topic", &other),
                ("consumerID", &format!("other-{run}")),
                ("direction", "input"),
            ],
        ),
    ])
    .await;
    let loaded = c.table.loaded(tandem::components::Kind::Bindings, "mq").unwrap();
    assert_eq!(loaded.instance.capabilities(), ["INPUT_BINDING", "OUTPUT_BINDING"]);
    let read = |name: &str| {
        let binding = c.table.get::<dyn Binding>(name).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler: Handler = Arc::new(move |e: Event| {
            let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let _ = tx.send(e);
            // The app fails the first event: with backOffMaxRetries 1 it comes once more, 5 s later.
            Box::pin(async move {
                if first {
                    Err("not yet".to_owned())
                } else {
                    Ok(Bytes::new())
                }
            })
        });
        (binding, handler, rx)
    };
    let stop = CancellationToken::new();
    let (mq, handler, mut events) = read("mq");
    mq.read(handler, stop.clone()).await.unwrap();
    let (other_binding, other_handler, mut other_events) = read("mq-other");
    other_binding.read(other_handler, stop.clone()).await.unwrap();
    assert!(
        mq.read(Arc::new(|_| Box::pin(async { Ok(Bytes::new()) })), stop.clone())
            .await
            .is_err(),
        "one reader at a time"
    );
    assert_eq!(c.ok("mq", req("create", "hello", &[])).await, None);
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("an event within 15 s")
            .expect("the reader is alive")
    }
    let first = next(&mut events).await;
    assert_eq!(&first.data[..], b"hello");
    assert_eq!(first.metadata["topic"], topic);
    let again = next(&mut events).await;
    assert_eq!(&again.data[..], b"hello", "the failed event comes again");
    // The request's topic overrides the component's.
    c.ok("mq", req("create", "elsewhere", &[("topic", &other)])).await;
    let moved = next(&mut other_events).await;
    assert_eq!(
        (&moved.data[..], moved.metadata["topic"].as_str()),
        (&b"elsewhere"[..], other.as_str())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events.try_recv().is_err(), "nothing else reached the first topic");
    let f = c.fail("mq", req("create", "x", &[("retain", "perhaps")])).await;
    assert!(f.error.message.contains("invalid retain"), "{}", f.error.message);
    let f = c.fail("mq-other", req("create", "x", &[])).await;
    assert!(
        f.error.message.contains("couldn't find output binding"),
        "{}",
        f.error.message
    );
    stop.cancel();
    // Dapr requires consumerID for this binding.
    let table = Arc::new(ComponentTable::default());
    let references = References::new(table.clone(), "conf", "", Mode::Standalone);
    let err = ComponentLoader::new(Registry::builtin(), table, references, Arc::default(), "conf", "")
        .load_all(&[Component::new("bad", "bindings.mqtt3", &[("url", url), ("topic", "t")])])
        .await
        .unwrap_err();
    assert!(err.contains("consumerID"), "{err}");
}

/// Kafka input binding events, in the order read, as (data, metadata).
type Read = tokio::sync::mpsc::UnboundedReceiver<(String, BTreeMap<String, String>)>;

/// Starts reading the Kafka input binding `name`; the handler fails every event whose data is `"bad"`.
async fn read_kafka(c: &Ctx, name: &str, stop: &CancellationToken) -> (Handle<dyn Binding>, Read) {
    let binding = c.table.get::<dyn Binding>(name).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |e: Event| {
        let data = String::from_utf8_lossy(&e.data).into_owned();
        let failed = data == r#""bad""#;
        let _ = tx.send((data, e.metadata));
        Box::pin(async move {
            if failed {
                Err("the app failed".to_owned())
            } else {
                Ok(Bytes::new())
            }
        })
    });
    binding.read(handler, stop.clone()).await.unwrap();
    (binding, rx)
}

async fn next(rx: &mut Read) -> (String, BTreeMap<String, String>) {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("an event within 15s")
        .expect("reading goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_create_publishes_and_the_input_binding_reads_and_commits() {
    let topic = format!("conf-{}", uuid::Uuid::new_v4().simple());
    let group = format!("conf-{}", uuid::Uuid::new_v4().simple());
    let common = [
        ("brokers", "127.0.0.1:9092"),
        ("authType", "none"),
        ("initialOffset", "oldest"),
    ];
    let component = |name: &str, extra: &[(&str, &str)]| {
        let props: Vec<(&str, &str)> = common.iter().chain(extra).copied().collect();
        Component::new(name, "bindings.kafka", &props)
    };
    let input = [
        ("topics", topic.as_str()),
        ("consumerGroup", group.as_str()),
        ("direction", "input"),
    ];
    let c = ctx(&[
        component("kout", &[("publishTopic", &topic), ("direction", "output")]),
        component("kin", &input),
    ])
    .await;
    runtime_checks(&c, "kout", "create").await;
    // One key, so one partition, so read in the order published.
    for body in [r#""bad""#, r#"{"n":1}"#] {
        let answer = c
            .ok("kout", req("create", body, &[("key", "k1"), ("trace", "t1")]))
            .await;
        assert_eq!(answer, None);
    }
    let f = c.fail("kout", req("create", "x", &[("partitionNumber", "-1")])).await;
    assert!(
        f.error.message.contains("partitionNumber must be non-negative"),
        "{}",
        f.error.message
    );

    let stop = CancellationToken::new();
    let (binding, mut rx) = read_kafka(&c, "kin", &stop).await;
    let (data, md) = next(&mut rx).await;
    assert_eq!(data, r#""bad""#);
    assert_eq!(md["__key"], "k1", "the key metadata keys the message");
    assert_eq!(md["__topic"], topic);
    assert_eq!(md["trace"], "t1", "request metadata travels as headers");
    assert!(
        md["__offset"].parse::<i64>().is_ok() && md["__partition"].parse::<i32>().is_ok(),
        "{md:?}"
    );
    // As in Dapr, the binding passes over an event the app failed (consumeRetryEnabled is false by default).
    let (data, _) = next(&mut rx).await;
    assert_eq!(data, r#"{"n":1}"#);
    stop.cancel();
    binding.close().await;

    // The offsets were committed: a new reader of the group starts after what the first one read.
    c.ok("kout", req("create", r#""late""#, &[("key", "k1")])).await;
    let again = ctx(&[component("kin2", &input)]).await;
    let stop = CancellationToken::new();
    let (binding, mut rx) = read_kafka(&again, "kin2", &stop).await;
    assert_eq!(next(&mut rx).await.0, r#""late""#);
    stop.cancel();
    binding.close().await;
}
