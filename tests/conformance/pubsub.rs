//! Pub/sub conformance: every backend through the `PubSub` trait, as the runtime uses it. Durable brokers (SQLite,
//! Redis Streams on 127.0.0.1:6379, Kafka on 127.0.0.1:9092) must also keep what a subscriber did not take — a
//! retried message comes again, a stopped subscriber's messages go to the next one, competing consumers of one
//! group share a topic and separate groups each get everything.

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
}

impl Broker {
    fn new(backend: &'static str) -> Broker {
        Broker {
            backend,
            dir: tempfile::tempdir().unwrap(),
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
        Registry::builtin()
            .build(type_, "v1", md)
            .await
            .unwrap_or_else(|e| panic!("{} failed to start (is the server running?): {e}", self.backend))
            .get::<dyn PubSub>()
            .unwrap()
    }
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
pubsub_suite!(kafka: every_message_arrives, a_retried_message_comes_again, a_stopped_subscribers_messages_go_to_the_next, competing_consumers_share_and_groups_fan_out);
