//! Pub/sub conformance: every backend through the `PubSub` trait, as the runtime uses it. Durable brokers (SQLite,
//! Redis Streams on 127.0.0.1:6379, NATS JetStream on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672, MQTT on the
//! Mosquitto at 127.0.0.1:1883, Kafka on 127.0.0.1:9092) must also keep what a subscriber did not take — a retried
//! message comes again, a stopped subscriber's messages go to the next one, competing consumers of one group share
//! a topic and separate groups each get everything.

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
    /// Makes this test's MQTT client ids its own (the broker allows one connection per id).
    run: String,
}

impl Broker {
    fn new(backend: &'static str) -> Broker {
        Broker {
            backend,
            dir: tempfile::tempdir().unwrap(),
            streams: Arc::default(),
            run: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Counts deliveries; MQTT 3 carries no metadata, so there the metadata is not checked.
    fn seen(&self) -> Seen {
        Seen {
            metadata_travels: self.backend != "mqtt",
            ..Seen::default()
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
            "mqtt" => (
                "pubsub.mqtt3",
                vec![
                    ("url", "tcp://127.0.0.1:1883".into()),
                    ("consumerID", format!("{group}-{}", self.run)),
                ],
            ),
            // Kafka (tansu on 127.0.0.1:9092, see scripts/kafka-broker.sh): groups are named per test run, as the
            // broker outlives the test and a group shared between concurrent tests would rebalance them all.
            // `oldest`: a group's first reader must see what was published before it joined. Lanes hold every
            // message of a test, so no partition is paused: tansu 0.6 answers a fetch that starts inside a record
            // batch (as resuming a paused partition does) from the next batch on, losing the rest of that batch.
            "kafka" => (
                "pubsub.kafka",
                vec![
                    ("brokers", "127.0.0.1:9092".into()),
                    ("authType", "none".into()),
                    (
                        "consumerGroup",
                        format!("{group}-{}", self.dir.path().display()).replace('/', "_"),
                    ),
                    ("initialOffset", "oldest".into()),
                    ("backOffDuration", "200ms".into()),
                    ("channelBufferSize", "2000".into()),
                ],
            ),
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
#[derive(Clone)]
struct Seen {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    metadata_travels: bool,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            counts: Arc::default(),
            metadata_travels: true,
        }
    }
}

impl Seen {
    fn handler(&self, answer: impl Fn(&str, usize) -> Result<(), Nack> + Send + Sync + 'static) -> Handler {
        let seen = self.clone();
        let answer = Arc::new(answer);
        Arc::new(move |m: Message| {
            let body = String::from_utf8_lossy(&m.data).into_owned();
            if seen.metadata_travels {
                assert_eq!(m.metadata.get("k").map(String::as_str), Some("v"), "metadata travels");
            }
            let n = {
                let mut s = seen.counts.lock().unwrap();
                let n = s.entry(body.clone()).or_default();
                *n += 1;
                *n
            };
            let verdict = answer(&body, n);
            Box::pin(async move { verdict })
        })
    }

    fn distinct(&self) -> usize {
        self.counts.lock().unwrap().len()
    }

    fn count(&self, body: &str) -> usize {
        self.counts.lock().unwrap().get(body).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.counts.lock().unwrap().values().sum()
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
    let seen = b.seen();
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
    let seen = b.seen();
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
    let seen = b.seen();
    // The first subscriber takes nothing: it is stopping.
    let stop = subscribe(&first, &t, seen.handler(|_, _| Err(Nack::Closing))).await;
    for i in 0..20 {
        first.publish(&message(&t, format!("h{i}"))).await.unwrap();
    }
    until("the first subscriber saw messages", || seen.total() > 0).await;
    stop.cancel();
    first.close().await;
    let second = b.instance("app").await;
    let taken = b.seen();
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
    let (seen_a, seen_c, seen_other) = (b.seen(), b.seen(), b.seen());
    let stops = [
        subscribe(&a, &t, seen_a.handler(|_, _| Ok(()))).await,
        subscribe(&c, &t, seen_c.handler(|_, _| Ok(()))).await,
        subscribe(&other, &t, seen_other.handler(|_, _| Ok(()))).await,
    ];
    for i in 0..400 {
        a.publish(&message(&t, format!("c{i}"))).await.unwrap();
    }
    until("the group took every message", || {
        let (x, y) = (seen_a.counts.lock().unwrap(), seen_c.counts.lock().unwrap());
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

/// Kafka: a subscriber slower than the publisher holds at most `channelBufferSize` messages per partition; its
/// partitions are paused and resumed at the broker, and every message still arrives once, in its partition's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_slow_subscriber_is_paused_not_flooded() {
    let b = Broker::new("kafka");
    let group = format!("slow-{}", uuid::Uuid::new_v4().simple());
    let props = [
        ("brokers", "127.0.0.1:9092"),
        ("authType", "none"),
        ("consumerGroup", group.as_str()),
        ("initialOffset", "oldest"),
        ("channelBufferSize", "2"),
    ];
    let md = Metadata::new("ps", "slow", "", props.map(|(k, v)| (k.to_owned(), v.to_owned())));
    let ps = Registry::builtin()
        .build("pubsub.kafka", "v1", md)
        .await
        .unwrap()
        .get::<dyn PubSub>()
        .unwrap();
    let t = topic("slow");
    // (partition, offset, body) in the order handled.
    let handled = Arc::new(Mutex::new(Vec::<(String, i64, String)>::new()));
    let h = handled.clone();
    let handler: Handler = Arc::new(move |m: Message| {
        let h = h.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let offset = m.metadata["__offset"].parse().unwrap();
            let body = String::from_utf8_lossy(&m.data).into_owned();
            h.lock()
                .unwrap()
                .push((m.metadata["__partition"].clone(), offset, body));
            Ok(())
        })
    });
    let stop = subscribe(&ps, &t, handler).await;
    // One at a time, so that each message is a record batch of its own (see the note on tansu above).
    for i in 0..60 {
        ps.publish(&message(&t, format!("s{i}"))).await.unwrap();
    }
    until("every message was handled", || handled.lock().unwrap().len() >= 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handled = handled.lock().unwrap().clone();
    let bodies: std::collections::HashSet<&str> = handled.iter().map(|(_, _, b)| b.as_str()).collect();
    assert_eq!((handled.len(), bodies.len()), (60, 60), "each message handled once");
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (partition, offset, _) in &handled {
        let previous = last.insert(partition, *offset);
        assert!(
            previous.is_none_or(|p| p < *offset),
            "partition {partition} out of order at {offset}"
        );
    }
    stop.cancel();
    ps.close().await;
    let _ = b.dir;
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

// MQTT 3 has no consumer groups: one connection per client id (`consumerID`), so two instances of one group would
// take the id from each other, and Dapr's component uses no shared subscriptions. Competing consumers there are
// `$share/<group>/<topic>` subscriptions of distinct client ids, tested in `mqtt_only` below.
pubsub_suite!(mqtt: every_message_arrives, a_retried_message_comes_again, a_stopped_subscribers_messages_go_to_the_next);

/// What only MQTT has: topic wildcards, shared subscriptions, retained messages, and its metadata checks.
mod mqtt_only {
    use super::*;
    use tandem::components::pubsub::Feature;

    fn broker() -> Broker {
        Broker::new("mqtt")
    }

    async fn subscribe_topics(ps: &Arc<dyn PubSub>, filter: &str) -> (CancellationToken, Arc<Mutex<Vec<Message>>>) {
        let got = Arc::new(Mutex::new(vec![]));
        let sink = got.clone();
        let handler: Handler = Arc::new(move |m: Message| {
            sink.lock().unwrap().push(m);
            Box::pin(async { Ok(()) })
        });
        (subscribe(ps, filter, handler).await, got)
    }

    fn bodies(got: &Mutex<Vec<Message>>) -> Vec<String> {
        got.lock()
            .unwrap()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wildcards_match_and_shared_subscriptions_compete() {
        let b = broker();
        let t = topic("region");
        let (a, c, all) = (
            b.instance("worker-a").await,
            b.instance("worker-b").await,
            b.instance("audit").await,
        );
        assert_eq!(all.features(), [Feature::SubscribeWildcards]);
        let shared = format!("$share/workers-{}/{t}/+", b.run);
        let (stop_a, got_a) = subscribe_topics(&a, &shared).await;
        let (stop_c, got_c) = subscribe_topics(&c, &shared).await;
        let (stop_all, got_all) = subscribe_topics(&all, &format!("{t}/#")).await;
        for i in 0..100 {
            let region = if i % 2 == 0 { "eu" } else { "us" };
            all.publish(&message(&format!("{t}/{region}"), format!("w{i}")))
                .await
                .unwrap();
        }
        // Not matched by `{t}/+`: two levels down.
        all.publish(&message(&format!("{t}/eu/paris"), "deep".into()))
            .await
            .unwrap();
        until("the plain subscriber got everything", || {
            got_all.lock().unwrap().len() == 101
        })
        .await;
        until("the shared group took every message", || {
            got_a.lock().unwrap().len() + got_c.lock().unwrap().len() >= 100
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (mut shared_bodies, in_a) = (bodies(&got_a), got_a.lock().unwrap().len());
        shared_bodies.extend(bodies(&got_c));
        assert_eq!(shared_bodies.len(), 100, "each message once in the group");
        shared_bodies.sort();
        shared_bodies.dedup();
        assert_eq!(shared_bodies.len(), 100);
        assert!(!shared_bodies.contains(&"deep".to_owned()));
        assert!(0 < in_a && in_a < 100, "both members took a share: {in_a} of 100");
        // A wildcard subscription sees each message's own topic.
        let topics: std::collections::BTreeSet<String> =
            got_all.lock().unwrap().iter().map(|m| m.topic.clone()).collect();
        assert_eq!(
            topics,
            [format!("{t}/eu"), format!("{t}/eu/paris"), format!("{t}/us")].into()
        );
        assert!(
            got_all
                .lock()
                .unwrap()
                .iter()
                .all(|m| m.metadata["retained"] == "false")
        );
        for s in [stop_a, stop_c, stop_all] {
            s.cancel();
        }
        for p in [a, c, all] {
            p.close().await;
        }
    }

    /// A TCP proxy to the broker whose connections can be cut, as a crash or a network failure cuts them (no
    /// DISCONNECT: the broker keeps the session and what it sent unacknowledged).
    struct Proxy {
        url: String,
        conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    }

    impl Proxy {
        async fn start() -> Proxy {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("tcp://{}", listener.local_addr().unwrap());
            let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
            let tracked = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:1883").await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    tracked.lock().unwrap().push(task.abort_handle());
                }
            });
            Proxy { url, conns }
        }

        fn cut(&self) {
            for c in self.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }

        async fn instance(&self, b: &Broker, group: &str) -> Arc<dyn PubSub> {
            let md = Metadata::new(
                "ps",
                group,
                "",
                [
                    ("url".to_owned(), self.url.clone()),
                    ("consumerID".to_owned(), format!("{group}-{}", b.run)),
                ],
            );
            Registry::builtin()
                .build("pubsub.mqtt3", "v1", md)
                .await
                .unwrap()
                .get::<dyn PubSub>()
                .unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_cut_mid_delivery_loses_nothing_and_repeats_nothing() {
        let (b, proxy) = (broker(), Proxy::start().await);
        let t = topic("cut");
        let (publisher, sub) = (proxy.instance(&b, "pub").await, proxy.instance(&b, "sub").await);
        // The app holds every message until released: those in flight when the connection is cut are taken while
        // it is down, or after it came back.
        let (release, gate) = tokio::sync::watch::channel(false);
        let seen = b.seen();
        let counts = seen.clone();
        let handler: Handler = Arc::new(move |m: Message| {
            let body = String::from_utf8_lossy(&m.data).into_owned();
            *counts.counts.lock().unwrap().entry(body).or_default() += 1;
            let mut gate = gate.clone();
            Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(())
            })
        });
        let stop = subscribe(&sub, &t, handler).await;
        let publishing = {
            let (publisher, t) = (publisher.clone(), t.clone());
            tokio::spawn(async move {
                let mut failed = vec![];
                for i in 0..100 {
                    if let Err(e) = publisher.publish(&message(&t, format!("c{i}"))).await {
                        failed.push(format!("c{i}: {e}"));
                    }
                }
                failed
            })
        };
        until("messages are in flight", || seen.distinct() >= 10).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(100)).await;
        release.send_replace(true);
        let failed = publishing.await.unwrap();
        assert!(failed.is_empty(), "publishes survive the cut: {failed:?}");
        until("every message was taken", || seen.distinct() == 100).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let repeated: Vec<(String, usize)> = seen
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(b, n)| (b.clone(), *n))
            .collect();
        assert!(
            repeated.is_empty(),
            "a message taken while disconnected is acknowledged when the broker sends it again, not handed over again: {repeated:?}"
        );
        stop.cancel();
        sub.close().await;
        publisher.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retained_message_reaches_a_later_subscriber() {
        let b = broker();
        let t = topic("retained");
        let ps = b.instance("app").await;
        let mut m = message(&t, "last-known".into());
        m.metadata.insert("retain".into(), "true".into());
        ps.publish(&m).await.unwrap();
        let (stop, got) = subscribe_topics(&ps, &t).await;
        until("the retained message arrived", || !got.lock().unwrap().is_empty()).await;
        {
            let got = got.lock().unwrap();
            assert_eq!(&got[0].data[..], b"last-known");
            assert_eq!(got[0].metadata["retained"], "true");
        }
        stop.cancel();
        // An empty retained message clears it on the broker.
        let mut clear = message(&t, String::new());
        clear.metadata.insert("retain".into(), "true".into());
        ps.publish(&clear).await.unwrap();
        m.metadata.insert("retain".into(), "perhaps".into());
        let err = ps.publish(&m).await.unwrap_err().to_string();
        assert!(err.contains("invalid retain"), "{err}");
        ps.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_topics_and_bad_metadata_are_refused() {
        let b = broker();
        let ps = b.instance("app").await;
        let err = ps.publish(&message("a/+/b", "x".into())).await.unwrap_err().to_string();
        assert!(err.contains("wildcard"), "{err}");
        let handler: Handler = Arc::new(|_| Box::pin(async { Ok(()) }));
        let err = ps
            .subscribe(
                SubscribeRequest {
                    topic: "a/#/b".into(),
                    metadata: BTreeMap::new(),
                },
                handler,
                CancellationToken::new(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an MQTT topic filter"), "{err}");
        ps.close().await;
        let err = ps.publish(&message("a", "x".into())).await.unwrap_err();
        assert_eq!(err, tandem::components::pubsub::PubSubError::Closed);
        async fn build(props: Vec<(&'static str, &'static str)>) -> String {
            let md = Metadata::new(
                "ps",
                "app",
                "",
                props.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
            Registry::builtin()
                .build("pubsub.mqtt", "v1", md)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        }
        let err = build(vec![("url", "tcp://127.0.0.1:1883"), ("qos", "3")]).await;
        assert!(err.contains("\"qos\""), "{err}");
        // Nothing listens on port 9: the component does not start, and says where it tried.
        let err = build(vec![("url", "tcp://127.0.0.1:9"), ("consumerID", "nobody")]).await;
        assert!(err.contains("127.0.0.1:9"), "{err}");
    }
}
pubsub_suite!(kafka: every_message_arrives, a_retried_message_comes_again, a_stopped_subscribers_messages_go_to_the_next, competing_consumers_share_and_groups_fan_out);
