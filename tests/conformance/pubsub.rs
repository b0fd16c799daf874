//! Pub/sub conformance: every backend through the `PubSub` trait, as the runtime uses it. Durable brokers (SQLite,
//! Redis Streams on 127.0.0.1:6379, NATS JetStream on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672) must also keep
//! what a subscriber did not take — a retried message comes
//! again, a stopped subscriber's messages go to the next one, competing consumers of one group share a topic and
//! separate groups each get everything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tandem::components::pubsub::{BulkEntry, Handler, Message, Nack, PubSub, SubscribeRequest};
use tandem::components::{Metadata, Registry};
use tokio_util::sync::CancellationToken;

struct Broker {
    backend: &'static str,
    dir: tempfile::TempDir,
    /// JetStream: the streams made for the test's topics.
    streams: Arc<super::jetstream::Streams>,
}

impl Broker {
    fn new(backend: &'static str) -> Broker {
        Broker {
            backend,
            dir: tempfile::tempdir().unwrap(),
            streams: Arc::default(),
        }
    }

    /// A component instance of the backend for consumer group `group` (several instances of one group
    /// compete, as sidecars of one app id do).
    async fn instance(&self, group: &str) -> Arc<dyn PubSub> {
        let db = self.dir.path().join("pubsub.db");
        let (type_, props): (&str, Vec<(&str, String)>) = match self.backend {
            "memory" => ("pubsub.in-memory", vec![("redeliverInterval", "100ms".into())]),
            "sqlite" => (
                "pubsub.sqlite",
                vec![
                    ("connectionString", db.to_str().unwrap().into()),
                    ("processingTimeout", "1s".into()),
                    ("redeliverInterval", "200ms".into()),
                ],
            ),
            "redis" => (
                "pubsub.redis",
                vec![
                    ("redisHost", "127.0.0.1:6379".into()),
                    ("processingTimeout", "1s".into()),
                    ("redeliverInterval", "200ms".into()),
                ],
            ),
            // Dapr's component expects the topic's stream to exist: the wrapper below makes it.
            "jetstream" => (
                "pubsub.jetstream",
                vec![("natsURL", super::jetstream::NATS.into()), ("ackWait", "2s".into())],
            ),
            "rabbitmq" => ("pubsub.rabbitmq", rabbitmq_props()),
            other => panic!("unknown backend {other}"),
        };
        let md = Metadata::new("ps", group, "", props.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let ps = Registry::builtin()
            .build(type_, "v1", md)
            .await
            .unwrap_or_else(|e| panic!("{} failed to start (is the server running?): {e}", self.backend))
            .get::<dyn PubSub>()
            .unwrap();
        match self.backend {
            "jetstream" => super::jetstream::with_streams(ps, self.streams.clone()),
            _ => ps,
        }
    }

    /// Deletes what a test left on the broker: RabbitMQ keeps the queues of `groups` (the tests turn
    /// `deletedWhenUnused` off) and the topic's exchange.
    async fn cleanup(&self, topic: &str, groups: &[&str]) {
        if self.backend == "rabbitmq" {
            let queues: Vec<String> = groups.iter().map(|g| format!("{g}-{topic}")).collect();
            rabbitmq_delete(&queues, &[topic]).await;
        }
    }
}

/// The RabbitMQ settings of the durable-broker suite: queues that outlive their subscribers, persistent messages.
fn rabbitmq_props() -> Vec<(&'static str, String)> {
    vec![
        ("connectionString", "amqp://guest:guest@127.0.0.1:5672".into()),
        ("durable", "true".into()),
        ("deletedWhenUnused", "false".into()),
        ("deliveryMode", "2".into()),
        ("redeliverInterval", "200ms".into()),
    ]
}

/// Deletes RabbitMQ queues and exchanges with a client of its own.
async fn rabbitmq_delete(queues: &[String], exchanges: &[&str]) {
    use amqprs::channel::{ExchangeDeleteArguments, QueueDeleteArguments};
    let conn = rabbitmq_admin().await;
    let ch = conn.open_channel(None).await.unwrap();
    for q in queues {
        ch.queue_delete(QueueDeleteArguments::new(q)).await.unwrap();
    }
    for e in exchanges {
        ch.exchange_delete(ExchangeDeleteArguments::new(e)).await.unwrap();
    }
    let _ = ch.close().await;
    let _ = conn.close().await;
}

async fn rabbitmq_admin() -> amqprs::connection::Connection {
    let args = amqprs::connection::OpenConnectionArguments::new("127.0.0.1", 5672, "guest", "guest");
    amqprs::connection::Connection::open(&args).await.unwrap()
}

fn topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn message(topic: &str, body: String) -> Message {
    Message {
        topic: topic.to_owned(),
        data: Bytes::from(body),
        content_type: None,
        metadata: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
    }
}

/// Counts what a handler took, by body; `answer` decides each delivery (given how often the body came).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, usize>>>);

impl Seen {
    fn handler(&self, answer: impl Fn(&str, usize) -> Result<(), Nack> + Send + Sync + 'static) -> Handler {
        let seen = self.clone();
        let answer = Arc::new(answer);
        Arc::new(move |m: Message| {
            let body = String::from_utf8_lossy(&m.data).into_owned();
            assert_eq!(m.metadata.get("k").map(String::as_str), Some("v"), "metadata travels");
            let n = {
                let mut s = seen.0.lock().unwrap();
                let n = s.entry(body.clone()).or_default();
                *n += 1;
                *n
            };
            let verdict = answer(&body, n);
            Box::pin(async move { verdict })
        })
    }

    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn count(&self, body: &str) -> usize {
        self.0.lock().unwrap().get(body).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn subscribe(ps: &Arc<dyn PubSub>, topic: &str, handler: Handler) -> CancellationToken {
    let stop = CancellationToken::new();
    ps.subscribe(
        SubscribeRequest {
            topic: topic.to_owned(),
            metadata: BTreeMap::new(),
        },
        handler,
        stop.clone(),
    )
    .await
    .unwrap();
    stop
}

async fn every_message_arrives(b: Broker) {
    let ps = b.instance("app").await;
    let t = topic("all");
    let seen = Seen::default();
    let stop = subscribe(&ps, &t, seen.handler(|_, _| Ok(()))).await;
    for i in 0..500 {
        ps.publish(&message(&t, format!("m{i}"))).await.unwrap();
    }
    let bulk: Vec<BulkEntry> = (500..1000)
        .map(|i| BulkEntry {
            entry_id: i.to_string(),
            message: message(&t, format!("m{i}")),
        })
        .collect();
    assert!(ps.bulk_publish(&bulk).await.is_empty());
    until("every message arrived", || seen.distinct() == 1000).await;
    stop.cancel();
    ps.close().await;
    b.cleanup(&t, &["app"]).await;
}

async fn a_retried_message_comes_again(b: Broker) {
    let ps = b.instance("app").await;
    let t = topic("retry");
    let seen = Seen::default();
    let stop = subscribe(
        &ps,
        &t,
        seen.handler(|_, n| {
            if n < 3 {
                Err(Nack::Retry("not yet".into()))
            } else {
                Ok(())
            }
        }),
    )
    .await;
    ps.publish(&message(&t, "again".into())).await.unwrap();
    until("the message came a third time", || seen.count("again") >= 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(seen.count("again"), 3, "a taken message does not come back");
    stop.cancel();
    ps.close().await;
    b.cleanup(&t, &["app"]).await;
}

async fn a_stopped_subscribers_messages_go_to_the_next(b: Broker) {
    let t = topic("handover");
    let first = b.instance("app").await;
    let seen = Seen::default();
    // The first subscriber takes nothing: it is stopping.
    let stop = subscribe(&first, &t, seen.handler(|_, _| Err(Nack::Closing))).await;
    for i in 0..20 {
        first.publish(&message(&t, format!("h{i}"))).await.unwrap();
    }
    until("the first subscriber saw messages", || seen.total() > 0).await;
    stop.cancel();
    first.close().await;
    let second = b.instance("app").await;
    let taken = Seen::default();
    let stop = subscribe(&second, &t, taken.handler(|_, _| Ok(()))).await;
    until("the next subscriber took every message", || taken.distinct() == 20).await;
    stop.cancel();
    second.close().await;
    b.cleanup(&t, &["app"]).await;
}

async fn competing_consumers_share_and_groups_fan_out(b: Broker) {
    let t = topic("compete");
    let (a, c) = (b.instance("workers").await, b.instance("workers").await);
    let other = b.instance("auditors").await;
    let (seen_a, seen_c, seen_other) = (Seen::default(), Seen::default(), Seen::default());
    let stops = [
        subscribe(&a, &t, seen_a.handler(|_, _| Ok(()))).await,
        subscribe(&c, &t, seen_c.handler(|_, _| Ok(()))).await,
        subscribe(&other, &t, seen_other.handler(|_, _| Ok(()))).await,
    ];
    for i in 0..400 {
        a.publish(&message(&t, format!("c{i}"))).await.unwrap();
    }
    until("the group took every message", || {
        let (x, y) = (seen_a.0.lock().unwrap(), seen_c.0.lock().unwrap());
        x.keys().chain(y.keys()).collect::<std::collections::HashSet<_>>().len() == 400
    })
    .await;
    until("the other group took every message", || seen_other.distinct() == 400).await;
    assert_eq!(
        seen_a.total() + seen_c.total(),
        400,
        "each message handled once in the group"
    );
    for s in stops {
        s.cancel();
    }
    for p in [a, c, other] {
        p.close().await;
    }
    b.cleanup(&t, &["workers", "auditors"]).await;
}

macro_rules! pubsub_suite {
    ($backend:ident: $($case:ident),*) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Broker::new(stringify!($backend))).await
                }
            )*
        }
    };
}

// The in-memory broker keeps nothing for a later subscriber and has no consumer groups: only the first two apply.
pubsub_suite!(memory: every_message_arrives, a_retried_message_comes_again);
pubsub_suite!(sqlite: every_message_arrives, a_retried_message_comes_again, a_stopped_subscribers_messages_go_to_the_next, competing_consumers_share_and_groups_fan_out);
pubsub_suite!(redis: every_message_arrives, a_retried_message_comes_again, a_stopped_subscribers_messages_go_to_the_next, competing_consumers_share_and_groups_fan_out);
pubsub_suite!(jetstream: every_message_arrives, a_retried_message_comes_again, a_stopped_subscribers_messages_go_to_the_next, competing_consumers_share_and_groups_fan_out);
pubsub_suite!(rabbitmq: every_message_arrives, a_retried_message_comes_again, a_stopped_subscribers_messages_go_to_the_next, competing_consumers_share_and_groups_fan_out);

/// A `pubsub.rabbitmq` instance of group `group` with the suite's settings and `extra`.
async fn rabbitmq(group: &str, extra: &[(&'static str, &str)]) -> Arc<dyn PubSub> {
    let mut props = rabbitmq_props();
    props.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let md = Metadata::new("ps", group, "", props.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Registry::builtin()
        .build("pubsub.rabbitmq", "v1", md)
        .await
        .unwrap_or_else(|e| panic!("rabbitmq failed to start (is it running on 127.0.0.1:5672?): {e}"))
        .get::<dyn PubSub>()
        .unwrap()
}

/// The pids of the broker's connections whose client properties name them `name` (the `clientName` metadata).
fn rabbitmq_connections(name: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"{name}\"")))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The broker drops the component's connection: the subscription comes back by itself and publishing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_resubscribes_after_losing_its_connection() {
    let name = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let ps = rabbitmq("app", &[("clientName", &name), ("reconnectWaitSeconds", "1s")]).await;
    let t = topic("reconnect");
    let seen = Seen::default();
    let stop = subscribe(&ps, &t, seen.handler(|_, _| Ok(()))).await;
    ps.publish(&message(&t, "before".into())).await.unwrap();
    until("the first message arrived", || seen.count("before") == 1).await;
    let ours = rabbitmq_connections(&name);
    assert_eq!(ours.len(), 1, "one connection named {name}");
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &ours[0], "conformance test"])
        .status()
        .unwrap();
    assert!(closed.success());
    // Publishing dials again; the subscription subscribes again on the new connection.
    for i in 0..10 {
        ps.publish(&message(&t, format!("after{i}"))).await.unwrap();
    }
    until("every message after the loss arrived", || {
        (0..10).all(|i| seen.count(&format!("after{i}")) >= 1)
    })
    .await;
    let now = rabbitmq_connections(&name);
    assert_eq!(now.len(), 1, "one new connection: {now:?}");
    assert_ne!(now[0], ours[0], "a new connection");
    stop.cancel();
    ps.close().await;
    rabbitmq_delete(&[format!("app-{t}")], &[&t]).await;
}

/// A message with `ttlInSeconds` expires on the broker while nobody consumes it; one without stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_expires_messages_by_ttl() {
    let ps = rabbitmq("app", &[]).await;
    assert_eq!(
        ps.features(),
        [tandem::components::pubsub::Feature::MessageTtl],
        "the broker expires messages itself"
    );
    let t = topic("ttl");
    // The first subscription declares the group's queue, which stays after it stops.
    let stop = subscribe(&ps, &t, Seen::default().handler(|_, _| Ok(()))).await;
    stop.cancel();
    let mut short = message(&t, "short".into());
    short.metadata.insert("ttlInSeconds".into(), "1".into());
    ps.publish(&short).await.unwrap();
    ps.publish(&message(&t, "kept".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = Seen::default();
    let stop = subscribe(&ps, &t, seen.handler(|_, _| Ok(()))).await;
    until("the message without a ttl arrived", || seen.count("kept") == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.count("short"), 0, "the expired message is gone");
    stop.cancel();
    ps.close().await;
    rabbitmq_delete(&[format!("app-{t}")], &[&t]).await;
}

/// With `enableDeadLetter` (and `requeueInFailure` off) a message the app failed goes to `dlq-<queue>` through
/// `dlx-<queue>`, named as Dapr names them, instead of coming again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_dead_letters_failed_messages() {
    use amqprs::channel::BasicGetArguments;
    let ps = rabbitmq("app", &[("enableDeadLetter", "true")]).await;
    let t = topic("dlx");
    let seen = Seen::default();
    let stop = subscribe(&ps, &t, seen.handler(|_, _| Err(Nack::Retry("failed".into())))).await;
    ps.publish(&message(&t, "poison".into())).await.unwrap();
    until("the message was handled", || seen.count("poison") == 1).await;
    let (queue, dlq, dlx) = (format!("app-{t}"), format!("dlq-app-{t}"), format!("dlx-app-{t}"));
    let admin = rabbitmq_admin().await;
    let ch = admin.open_channel(None).await.unwrap();
    let mut dead = None;
    for _ in 0..100 {
        if let Some((_, _, body)) = ch
            .basic_get(BasicGetArguments::new(&dlq).no_ack(true).finish())
            .await
            .unwrap()
        {
            dead = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.as_deref(), Some(&b"poison"[..]), "the failed message is in {dlq}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.count("poison"), 1, "a dead-lettered message does not come again");
    stop.cancel();
    ps.close().await;
    let _ = ch.close().await;
    let _ = admin.close().await;
    rabbitmq_delete(&[queue, dlq], &[&t, &dlx]).await;
}
