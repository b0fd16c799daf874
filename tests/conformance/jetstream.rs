//! `pubsub.jetstream` against NATS with JetStream on 127.0.0.1:4222: the streams the pub/sub suite's topics need
//! (Dapr's component expects them to exist), and what only JetStream does — a missing stream, a group keeping
//! its place, messages from plain NATS publishers, duplicate CloudEvents, the server restarting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use tandem::components::pubsub::{
    BulkEntry, FailedEntry, Feature, Handler, Message, Nack, PubSub, PubSubError, SubscribeRequest,
};
use tandem::components::{Metadata, Registry};
use tokio_util::sync::CancellationToken;

pub const NATS: &str = "nats://127.0.0.1:4222";

/// Streams made for one test, one per topic, deleted when the test ends.
#[derive(Default)]
pub struct Streams {
    /// The server, if not the shared one; and file storage rather than memory.
    own: Option<(String, stream::StorageType)>,
    made: Mutex<BTreeSet<String>>,
}

impl Streams {
    /// Streams on the server at `url`, kept in files.
    fn on(url: &str) -> Streams {
        Streams {
            own: Some((url.to_owned(), stream::StorageType::File)),
            made: Mutex::default(),
        }
    }

    fn url(&self) -> String {
        self.own.as_ref().map_or(NATS, |(u, _)| u.as_str()).to_owned()
    }

    /// A stream holding `topic` (and only it), named after it.
    pub async fn ensure(&self, topic: &str) {
        let name = stream_name(topic);
        if self.made.lock().unwrap().contains(&name) {
            return;
        }
        let js = jetstream::new(async_nats::connect(self.url()).await.unwrap());
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![topic.to_owned()],
            storage: self.own.as_ref().map_or(stream::StorageType::Memory, |(_, s)| *s),
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("creating stream {name}: {e}"));
        self.made.lock().unwrap().insert(name);
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        if made.is_empty() {
            return;
        }
        let url = self.url();
        // Drop cannot await: a thread of its own deletes them.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(client) = async_nats::connect(url).await else {
                    return;
                };
                let js = jetstream::new(client);
                for name in made {
                    let _ = js.delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

fn stream_name(topic: &str) -> String {
    let clean: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("TANDEM_TEST_{clean}")
}

/// `ps` with a stream made for each topic before it is used.
pub fn with_streams(ps: Arc<dyn PubSub>, streams: Arc<Streams>) -> Arc<dyn PubSub> {
    Arc::new(WithStreams { inner: ps, streams })
}

struct WithStreams {
    inner: Arc<dyn PubSub>,
    streams: Arc<Streams>,
}

#[async_trait]
impl PubSub for WithStreams {
    fn features(&self) -> &'static [Feature] {
        self.inner.features()
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        self.streams.ensure(&msg.topic).await;
        self.inner.publish(msg).await
    }

    async fn bulk_publish(&self, entries: &[BulkEntry]) -> Vec<FailedEntry> {
        for topic in entries.iter().map(|e| &e.message.topic).collect::<BTreeSet<_>>() {
            self.streams.ensure(topic).await;
        }
        self.inner.bulk_publish(entries).await
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Handler,
        stop: CancellationToken,
    ) -> Result<(), PubSubError> {
        self.streams.ensure(&req.topic).await;
        self.inner.subscribe(req, handler, stop).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// The component on `url` for consumer group `group`, with `extra` metadata.
pub async fn component(url: &str, group: &str, extra: &[(&str, &str)]) -> Result<Arc<dyn PubSub>, String> {
    let mut props = vec![
        ("natsURL".to_owned(), url.to_owned()),
        ("ackWait".to_owned(), "2s".to_owned()),
    ];
    props.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let md = Metadata::new("ps", group, "", props);
    Registry::builtin()
        .build("pubsub.jetstream", "v1", md)
        .await
        .map(|i| i.get::<dyn PubSub>().unwrap())
        .map_err(|e| e.to_string())
}

fn topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn message(topic: &str, body: &str) -> Message {
    Message {
        topic: topic.to_owned(),
        data: Bytes::from(body.to_owned()),
        ..Default::default()
    }
}

/// What a handler was given, in order.
#[derive(Clone, Default)]
struct Got(Arc<Mutex<Vec<Message>>>);

impl Got {
    fn handler(&self) -> Handler {
        let got = self.clone();
        Arc::new(move |m: Message| {
            got.0.lock().unwrap().push(m);
            Box::pin(async { Ok::<(), Nack>(()) })
        })
    }

    fn bodies(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect()
    }
}

async fn subscribe(ps: &Arc<dyn PubSub>, topic: &str, handler: Handler) -> CancellationToken {
    let stop = CancellationToken::new();
    let req = SubscribeRequest {
        topic: topic.to_owned(),
        metadata: BTreeMap::new(),
    };
    ps.subscribe(req, handler, stop.clone()).await.unwrap();
    stop
}

/// Waits until the handler has been given exactly `want`, in order; a failure says what it was given.
async fn arrived(secs: u64, got: &Got, want: &[&str]) {
    for _ in 0..secs * 20 {
        if got.bodies() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {want:?}; the subscriber was given {:?}",
        got.bodies()
    );
}

async fn within(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..secs * 20 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_without_a_stream_publish_and_subscribe_fail_clearly() {
    let ps = component(NATS, "app", &[]).await.unwrap();
    let t = topic("nostream");
    let err = ps.publish(&message(&t, "x")).await.unwrap_err().to_string();
    assert!(err.contains(&t), "{err}");
    let req = SubscribeRequest {
        topic: t.clone(),
        metadata: BTreeMap::new(),
    };
    let err = ps
        .subscribe(req, Got::default().handler(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no stream holds subject"), "{err}");
    let req = SubscribeRequest {
        topic: "not a subject".into(),
        metadata: BTreeMap::new(),
    };
    let err = ps
        .subscribe(req, Got::default().handler(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a valid NATS subject"), "{err}");
    ps.close().await;
    assert_eq!(ps.publish(&message(&t, "x")).await, Err(PubSubError::Closed));

    for (url, extra, why) in [
        ("nats://127.0.0.1:1", &[][..], "connecting to NATS"),
        (NATS, &[("maxDeliver", "-3")][..], "maxDeliver"),
    ] {
        match component(url, "app", extra).await {
            Ok(_) => panic!("{url} {extra:?} started"),
            Err(e) => assert!(e.contains(why), "{e}"),
        }
    }
}

/// A durable consumer per group: a group that took messages does not get them again when it comes back, and
/// what was published while it was away waits for it; a new group starts from the stream's first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_group_keeps_its_place() {
    let streams = Streams::default();
    let t = topic("place");
    streams.ensure(&t).await;
    let ps = component(NATS, "keeper", &[]).await.unwrap();
    let got = Got::default();
    let stop = subscribe(&ps, &t, got.handler()).await;
    ps.publish(&message(&t, "one")).await.unwrap();
    within(15, "the first message arrived", || got.bodies() == ["one"]).await;
    stop.cancel();
    ps.close().await;

    let publisher = component(NATS, "someone-else", &[]).await.unwrap();
    publisher.publish(&message(&t, "two")).await.unwrap();
    let again = component(NATS, "keeper", &[]).await.unwrap();
    let later = Got::default();
    let stop = subscribe(&again, &t, later.handler()).await;
    within(15, "the message published meanwhile arrived", || {
        later.bodies() == ["two"]
    })
    .await;
    let fresh = Got::default();
    let stop_fresh = subscribe(&publisher, &t, fresh.handler()).await;
    within(15, "a new group read the stream from the start", || {
        fresh.bodies() == ["one", "two"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(later.bodies(), ["two"], "a taken message does not come back");
    for s in [stop, stop_fresh] {
        s.cancel();
    }
    again.close().await;
    publisher.close().await;
}

/// Interop with other NATS clients (and Dapr's component, which sends no headers): a plain publish reaches the
/// subscriber with `Topic` in its metadata; tandem's headers carry the metadata; a CloudEvent published twice
/// with one id is stored once. `streamName` names the stream instead of a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_plain_nats_publishers_and_duplicate_cloudevents() {
    let streams = Streams::default();
    let t = topic("interop");
    streams.ensure(&t).await;
    let ps = component(
        NATS,
        "app",
        &[("streamName", &stream_name(&t)), ("concurrencyMode", "parallel")],
    )
    .await
    .unwrap();
    let got = Got::default();
    let stop = subscribe(&ps, &t, got.handler()).await;

    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    js.publish(t.clone(), Bytes::from_static(b"plain"))
        .await
        .unwrap()
        .await
        .unwrap();
    let ce = Bytes::from_static(br#"{"specversion":"1.0","id":"same-id","type":"t","source":"s","data":1}"#);
    let mut twice = Message {
        metadata: BTreeMap::from([("traceparent".to_owned(), "00-1-2-01".to_owned())]),
        content_type: Some("application/cloudevents+json".to_owned()),
        ..message(&t, "")
    };
    twice.data = ce.clone();
    ps.publish(&twice).await.unwrap();
    ps.publish(&twice).await.unwrap();
    ps.publish(&message(&t, "last")).await.unwrap();
    within(15, "three messages arrived", || got.bodies().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = got.0.lock().unwrap().clone();
    let by_body: HashMap<String, &Message> = all
        .iter()
        .map(|m| (String::from_utf8_lossy(&m.data).into_owned(), m))
        .collect();
    assert_eq!(
        all.len(),
        3,
        "the repeated CloudEvent was stored once: {:?}",
        got.bodies()
    );
    let plain = by_body["plain"];
    assert_eq!(plain.metadata.get("Topic"), Some(&t));
    assert_eq!(plain.topic, t);
    let event = by_body[std::str::from_utf8(&ce).unwrap()];
    assert_eq!(event.metadata.get("traceparent").map(String::as_str), Some("00-1-2-01"));
    assert_eq!(event.content_type.as_deref(), Some("application/cloudevents+json"));
    stop.cancel();
    ps.close().await;
}

/// A bulk publish larger than the client lets wait for acknowledgements at once (5000) completes, and every entry
/// is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_large_bulk_publish_is_stored_whole() {
    let streams = Streams::default();
    let t = topic("bulk");
    streams.ensure(&t).await;
    let ps = component(NATS, "app", &[]).await.unwrap();
    let entries: Vec<BulkEntry> = (0..6000)
        .map(|i| BulkEntry {
            entry_id: i.to_string(),
            message: message(&t, &format!("b{i}")),
        })
        .collect();
    let failed = tokio::time::timeout(Duration::from_secs(60), ps.bulk_publish(&entries))
        .await
        .expect("the bulk publish finished");
    assert!(failed.is_empty(), "{:?}", failed.first());
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    let mut stream = js.get_stream(stream_name(&t)).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 6000);
    ps.close().await;
}

/// A NATS server of the test's own, on a free port with its own store, to stop and start again.
struct OwnServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnServer {
    async fn start() -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = OwnServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.run().await;
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
        let child = std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (Debian package nats-server): {e}"));
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not come up on port {}", self.port);
    }

    /// Stops the server the way a restart does (SIGTERM: it writes its store out first).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server restarting does not end a subscription: the client reconnects, the consumer is pulled from again
/// and publishes succeed once the server is back. Neither does the stream being deleted and made again: the
/// consumer is made again too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_delivery_resumes_after_the_server_restarts() {
    let mut server = OwnServer::start().await;
    let t = topic("restart");
    let streams = Streams::on(&server.url());
    streams.ensure(&t).await;
    let ps = component(&server.url(), "app", &[("heartbeat", "1s")]).await.unwrap();
    let got = Got::default();
    let stop = subscribe(&ps, &t, got.handler()).await;
    ps.publish(&message(&t, "before")).await.unwrap();
    arrived(15, &got, &["before"]).await;

    server.stop();
    server.run().await;
    // An attempt that timed out while the client reconnected may still have been stored once the server was
    // back; the same id on every attempt (as the runtime's CloudEvent id is) lets the stream drop the repeat.
    let mut after = message(&t, "after");
    after.metadata.insert("Nats-Msg-Id".to_owned(), format!("{t}-after"));
    let mut published = false;
    for _ in 0..60 {
        if ps.publish(&after).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(published, "publishing works again once the server is back");
    arrived(30, &got, &["before", "after"]).await;

    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.delete_stream(stream_name(&t)).await.unwrap();
    streams.made.lock().unwrap().clear();
    streams.ensure(&t).await;
    ps.publish(&message(&t, "recreated")).await.unwrap();
    arrived(30, &got, &["before", "after", "recreated"]).await;
    stop.cancel();
    ps.close().await;
}
