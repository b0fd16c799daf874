//! `pubsub.rabbitmq`: RabbitMQ laid out as Dapr lays it out, so Dapr and tandem sidecars can share a topic: an
//! exchange per topic (`fanout` unless `exchangeKind` says otherwise) and a queue per consumer group named
//! `{consumerID}-{topic}` bound to it. Publishes wait for the broker's confirm. A message is acknowledged only
//! once the handler took it; one the handler asks to retry goes back to the queue after `redeliverInterval`,
//! and one left by a stopping subscriber returns to the queue when its channel closes.
//!
//! As in Dapr, queues and exchanges are auto-deleted once unused (`deletedWhenUnused` defaults to true): then a
//! topic keeps nothing while no subscriber of the group is connected, and messages of a crashed subscriber's
//! group are lost with its queue. Set `deletedWhenUnused: "false"` (and `durable`, and `deliveryMode: "2"` for
//! messages that outlive a broker restart) for at-least-once delivery across restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use amqprs::channel::{Channel, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments};
use amqprs::{BasicProperties, FieldTable};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Feature, Handler, Message, Nack, PubSub, PubSubError, SubscribeRequest, consumer_id};
use crate::components::amqp::{
    self, ConsumeSpec, ExchangeSpec, Link, LinkSettings, Outgoing, Settle, Topology, lookup, properties,
};
use crate::components::{ComponentError, Metadata};

/// Handlers running at once per subscription with `concurrency: parallel` (Dapr sets no bound of its own).
const PARALLEL: usize = 100;
const EXCHANGE_KINDS: [&str; 4] = ["fanout", "topic", "direct", "headers"];

/// Typed `pubsub.rabbitmq` metadata (Dapr's names and defaults).
#[derive(Clone, Debug)]
pub struct RabbitConfig {
    pub link: LinkSettings,
    pub consumer: String,
    pub durable: bool,
    pub delete_when_unused: bool,
    pub auto_ack: bool,
    pub requeue_in_failure: bool,
    pub enable_dead_letter: bool,
    /// 0 (unset) or 1: transient; 2: persistent.
    pub delivery_mode: u8,
    /// 0: as many as handlers run at once.
    pub prefetch: u16,
    pub in_flight: usize,
    pub max_len: Option<i64>,
    pub max_len_bytes: Option<i64>,
    pub exchange_kind: String,
    pub default_ttl: Option<Duration>,
    pub properties_to_metadata: bool,
    /// How long a message the handler asked to retry waits before it goes back to the queue.
    pub redeliver_interval: Duration,
}

impl RabbitConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let endpoint = endpoint(md)?;
        let delivery_mode = md.parse::<u64>("deliveryMode")?.unwrap_or(0);
        if delivery_mode > 2 {
            return Err(ComponentError::invalid(
                "deliveryMode",
                "invalid RabbitMQ delivery mode, accepted values are between 0 and 2",
            ));
        }
        let exchange_kind = md.string("exchangeKind").unwrap_or_else(|| "fanout".into());
        if !EXCHANGE_KINDS.contains(&exchange_kind.as_str()) {
            return Err(ComponentError::invalid(
                "exchangeKind",
                format!("invalid RabbitMQ exchange kind {exchange_kind}: use fanout, topic, direct or headers"),
            ));
        }
        let in_flight = match md.string("concurrency").as_deref().map(str::trim) {
            None | Some("parallel") => PARALLEL,
            Some("single") => 1,
            Some(other) => match other.parse::<usize>() {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => {
                    return Err(ComponentError::invalid(
                        "concurrency",
                        format!("invalid concurrency {other:?}: use single, parallel or a number from 1 to 10000"),
                    ));
                }
            },
        };
        let consumer = consumer_id(md);
        let positive_len = |field: &str| -> Result<Option<i64>, ComponentError> {
            match md.parse::<i64>(field)? {
                Some(n) if n < 0 => Err(ComponentError::invalid(field, "must be 0 (no limit) or more")),
                Some(0) | None => Ok(None),
                n => Ok(n),
            }
        };
        Ok(RabbitConfig {
            link: LinkSettings::from_metadata(
                md,
                endpoint,
                "connectionString",
                "reconnectWaitSeconds",
                Duration::from_secs(3),
            )?,
            consumer,
            durable: md.bool("durable")?.unwrap_or(true),
            delete_when_unused: md.bool("deletedWhenUnused")?.unwrap_or(true),
            auto_ack: md.bool("autoAck")?.unwrap_or(false),
            requeue_in_failure: md.bool("requeueInFailure")?.unwrap_or(false),
            enable_dead_letter: md.bool("enableDeadLetter")?.unwrap_or(false),
            delivery_mode: delivery_mode as u8,
            prefetch: md.parse::<u16>("prefetchCount")?.unwrap_or(0),
            in_flight,
            max_len: positive_len("maxLen")?,
            max_len_bytes: positive_len("maxLenBytes")?,
            exchange_kind,
            default_ttl: amqp::component_ttl(md)?,
            properties_to_metadata: md.bool("publishMessagePropertiesToMetadata")?.unwrap_or(false),
            redeliver_interval: match md.duration("redeliverInterval")? {
                None => Duration::from_secs(1),
                Some(d) if d.is_zero() || d > Duration::from_secs(3600) => {
                    return Err(ComponentError::invalid(
                        "redeliverInterval",
                        "must be above 0 (a message to retry would loop hot) and at most 1h",
                    ));
                }
                Some(d) => d,
            },
        })
    }

    fn exchange(&self) -> ExchangeSpec {
        ExchangeSpec {
            kind: self.exchange_kind.clone(),
            durable: self.durable,
            auto_delete: self.delete_when_unused,
        }
    }

    /// `x-max-length`/`x-max-length-bytes` of the component, overridden by the subscription's.
    fn length_limits(&self, args: &mut FieldTable, max_len: Option<i64>, max_len_bytes: Option<i64>) {
        if let Some(n) = max_len.or(self.max_len) {
            amqp::number(args, "x-max-length", n);
        }
        if let Some(n) = max_len_bytes.or(self.max_len_bytes) {
            amqp::number(args, "x-max-length-bytes", n);
        }
    }
}

/// The broker's address: `connectionString` (or the deprecated `host`), else `protocol`, `hostname`, `username`
/// and `password`.
fn endpoint(md: &Metadata) -> Result<amqp::Endpoint, ComponentError> {
    let protocol = md.string("protocol").map(|p| p.to_ascii_lowercase());
    if let Some(p) = protocol.as_deref().filter(|p| !matches!(*p, "amqp" | "amqps")) {
        return Err(ComponentError::invalid(
            "protocol",
            format!("{p:?} is not amqp or amqps"),
        ));
    }
    let url = md.string("connectionString").or_else(|| md.string("host"));
    let endpoint = match url {
        Some(url) => {
            let e = amqp::Endpoint::parse(&url).map_err(|e| ComponentError::invalid("connectionString", e))?;
            if protocol.is_some_and(|p| (p == "amqps") != e.tls) {
                return Err(ComponentError::invalid(
                    "protocol",
                    "protocol does not match the connection string's scheme",
                ));
            }
            e
        }
        None => {
            let tls = protocol.as_deref() == Some("amqps");
            let hostname = md.string("hostname").unwrap_or_else(|| "localhost".into());
            let (host, port) = amqp::split_host_port(&hostname, if tls { 5671 } else { 5672 })
                .map_err(|e| ComponentError::invalid("hostname", e))?;
            amqp::Endpoint {
                tls,
                host,
                port,
                vhost: "/".into(),
                username: md.string("username").unwrap_or_else(|| "guest".into()),
                password: md.string("password").unwrap_or_else(|| "guest".into()),
            }
        }
    };
    Ok(endpoint)
}

pub struct RabbitMq {
    cfg: RabbitConfig,
    link: Arc<Link>,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn PubSub>, ComponentError> {
    let cfg = RabbitConfig::from_metadata(&md)?;
    let link = Link::open(cfg.link.clone())
        .await
        .map_err(|e| ComponentError::Init(format!("rabbitmq pub/sub: {e}")))?;
    Ok(Arc::new(RabbitMq { cfg, link }))
}

/// What one subscription declares: the topic's exchange, the group's queue (and its dead-letter exchange and
/// queue), and the bindings.
#[derive(Debug)]
struct SubscriptionTopology {
    topic: String,
    exchange: ExchangeSpec,
    queue: String,
    durable: bool,
    auto_delete: bool,
    args: FieldTable,
    dead_letter: Option<(String, String, FieldTable)>,
    routing_keys: Vec<String>,
}

#[async_trait]
impl Topology for SubscriptionTopology {
    async fn declare(&self, ch: &Channel) -> Result<(), amqprs::error::Error> {
        let e = &self.exchange;
        ch.exchange_declare(
            ExchangeDeclareArguments::new(&self.topic, &e.kind)
                .durable(e.durable)
                .auto_delete(e.auto_delete)
                .finish(),
        )
        .await?;
        if let Some((dlx, dlq, args)) = &self.dead_letter {
            // The dead-letter exchange and queue are always durable, as in Dapr.
            ch.exchange_declare(
                ExchangeDeclareArguments::new(dlx, "fanout")
                    .durable(true)
                    .auto_delete(self.auto_delete)
                    .finish(),
            )
            .await?;
            ch.queue_declare(
                QueueDeclareArguments::new(dlq)
                    .durable(true)
                    .auto_delete(self.auto_delete)
                    .arguments(args.clone())
                    .finish(),
            )
            .await?;
            ch.queue_bind(QueueBindArguments::new(dlq, dlx, "")).await?;
        }
        ch.queue_declare(
            QueueDeclareArguments::new(&self.queue)
                .durable(self.durable)
                .auto_delete(self.auto_delete)
                .arguments(self.args.clone())
                .finish(),
        )
        .await?;
        for key in &self.routing_keys {
            ch.queue_bind(QueueBindArguments::new(&self.queue, &self.topic, key))
                .await?;
        }
        Ok(())
    }
}

impl RabbitConfig {
    /// The topology of a subscription to `req.topic`, with the subscription's own settings (`queueName`,
    /// `routingKey`, `maxPriority`, `queueType`, `singleActiveConsumer`, `maxLen`, `maxLenBytes`).
    fn topology(&self, req: &SubscribeRequest) -> Result<SubscriptionTopology, String> {
        let md = &req.metadata;
        let queue = match lookup(md, "queueName") {
            Some(q) => q.to_owned(),
            None if self.consumer.is_empty() => {
                return Err("consumerID is required for subscriptions that don't specify a queue name".into());
            }
            None => format!("{}-{}", self.consumer, req.topic),
        };
        amqp::short("queue name", &queue)?;
        let number = |key: &str| -> Result<Option<i64>, String> {
            lookup(md, key)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map(i64::from)
                        .map_err(|_| format!("{key} {:?} is not a number from 0 to 4294967295", crate::echo::echo(v)))
                })
                .transpose()
        };
        let mut args = FieldTable::new();
        let dead_letter = self.enable_dead_letter.then(|| {
            let (dlx, dlq) = (format!("dlx-{queue}"), format!("dlq-{queue}"));
            let mut dlq_args = FieldTable::new();
            self.length_limits(&mut dlq_args, None, None);
            // Keep dead letters on disk rather than in memory.
            amqp::text(&mut dlq_args, "x-queue-mode", "lazy");
            amqp::text(&mut args, "x-dead-letter-exchange", &dlx);
            (dlx, dlq, dlq_args)
        });
        if let Some((dlx, dlq, _)) = &dead_letter {
            amqp::short("dead-letter exchange name", dlx)?;
            amqp::short("dead-letter queue name", dlq)?;
        }
        self.length_limits(&mut args, number("maxLen")?, number("maxLenBytes")?);
        if let Some(p) = number("maxPriority")? {
            amqp::number(&mut args, "x-max-priority", p.min(255));
        }
        match lookup(md, "queueType") {
            None => amqp::text(&mut args, "x-queue-type", "classic"),
            Some(t @ ("classic" | "quorum")) => amqp::text(&mut args, "x-queue-type", t),
            Some(t) => {
                return Err(format!(
                    "invalid queue type {:?}. Valid types are classic and quorum",
                    crate::echo::echo(t)
                ));
            }
        }
        if lookup(md, "singleActiveConsumer").and_then(crate::components::metadata::parse_bool) == Some(true) {
            amqp::flag(&mut args, "x-single-active-consumer", true);
        }
        let routing_keys: Vec<String> = lookup(md, "routingKey")
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        for k in &routing_keys {
            amqp::short("routing key", k)?;
        }
        Ok(SubscriptionTopology {
            topic: req.topic.clone(),
            exchange: self.exchange(),
            queue,
            durable: self.durable,
            auto_delete: self.delete_when_unused,
            args,
            dead_letter,
            routing_keys,
        })
    }
}

/// Dapr's `metadata.*` entries for a delivery's AMQP properties (`publishMessagePropertiesToMetadata`).
fn property_metadata(p: &BasicProperties, headers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut md = BTreeMap::new();
    for (key, v) in [
        ("metadata.messageid", p.message_id()),
        ("metadata.correlationid", p.correlation_id()),
        ("metadata.type", p.message_type()),
        ("metadata.contenttype", p.content_type()),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            md.insert(key.to_owned(), v.clone());
        }
    }
    for (k, v) in headers {
        md.insert(format!("metadata.{k}"), v.clone());
    }
    md
}

fn topic_name(topic: &str) -> Result<&str, PubSubError> {
    if topic.is_empty() {
        return Err(PubSubError::backend("rabbitmq pub/sub: the topic is empty"));
    }
    amqp::short("topic", topic).map_err(|e| PubSubError::backend(format!("rabbitmq pub/sub: {e}")))
}

#[async_trait]
impl PubSub for RabbitMq {
    fn features(&self) -> &'static [Feature] {
        &[Feature::MessageTtl]
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        if self.link.is_closed() {
            return Err(PubSubError::Closed);
        }
        let topic = topic_name(&msg.topic)?;
        let fail = |e: String| PubSubError::backend(format!("rabbitmq pub/sub: publishing to {topic}: {e}"));
        let properties = properties(
            &msg.metadata,
            msg.content_type.as_deref(),
            self.cfg.delivery_mode,
            self.cfg.default_ttl,
        )
        .map_err(fail)?;
        let exchange = self.cfg.exchange();
        let out = Outgoing {
            exchange: topic,
            routing_key: lookup(&msg.metadata, "routingKey").unwrap_or_default(),
            declare: Some(&exchange),
            properties,
            body: &msg.data,
        };
        self.link.publish(&out).await.map_err(fail)
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Handler,
        stop: CancellationToken,
    ) -> Result<(), PubSubError> {
        if self.link.is_closed() {
            return Err(PubSubError::Closed);
        }
        let topic = topic_name(&req.topic)?.to_owned();
        let fail = |e: String| PubSubError::backend(format!("rabbitmq pub/sub: subscribing to {topic}: {e}"));
        let topology = self.cfg.topology(&req).map_err(fail)?;
        let cfg = &self.cfg;
        let spec = ConsumeSpec {
            queue: topology.queue.clone(),
            prefetch: match cfg.prefetch {
                0 => u16::try_from(cfg.in_flight).unwrap_or(u16::MAX),
                n => n,
            },
            in_flight: cfg.in_flight,
            retry_delay: cfg.redeliver_interval,
            ack_on_receipt: cfg.auto_ack,
        };
        // A message the app failed goes to the dead-letter queue when Dapr would put it there; otherwise it
        // comes again (Dapr would drop it: tandem keeps delivery at least once).
        let on_failure = if cfg.enable_dead_letter && !cfg.requeue_in_failure {
            Settle::Reject
        } else {
            Settle::Requeue
        };
        let properties_to_metadata = cfg.properties_to_metadata;
        let on_delivery: amqp::OnDelivery = Arc::new(move |d: amqp::Delivery| {
            let mut metadata = amqp::header_map(&d.properties);
            if properties_to_metadata {
                metadata.extend(property_metadata(&d.properties, &metadata.clone()));
            }
            let msg = Message {
                topic: topic.clone(),
                data: d.body,
                content_type: d.properties.content_type().cloned(),
                metadata,
            };
            let handled = handler(msg);
            Box::pin(async move {
                match handled.await {
                    Ok(()) => Settle::Ack,
                    Err(Nack::Retry(why)) => {
                        tracing::debug!(%why, "the handler did not take the message");
                        on_failure
                    }
                    Err(Nack::Closing) => Settle::Leave,
                }
            })
        });
        amqp::consume(self.link.clone(), spec, Arc::new(topology), on_delivery, stop)
            .await
            .map_err(|e| PubSubError::backend(format!("rabbitmq pub/sub: subscribing to {}: {e}", req.topic)))
    }

    async fn close(&self) {
        self.link.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(props: &[(&str, &str)]) -> Metadata {
        Metadata::new(
            "p",
            "orders",
            "",
            props.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_daprs() {
        let c = RabbitConfig::from_metadata(&md(&[("connectionString", "amqp://u:p@rabbit:5673/v")])).unwrap();
        assert_eq!(c.link.endpoint.host, "rabbit");
        assert_eq!(c.link.endpoint.port, 5673);
        assert_eq!(c.consumer, "orders");
        assert!(c.durable && c.delete_when_unused && !c.auto_ack && !c.requeue_in_failure);
        assert_eq!((c.delivery_mode, c.prefetch, c.in_flight), (0, 0, PARALLEL));
        assert_eq!(c.exchange_kind, "fanout");
        assert_eq!(c.link.reconnect_wait, Duration::from_secs(3));
        assert_eq!(c.link.heartbeat, Duration::from_secs(10));
        assert_eq!(c.default_ttl, None);
    }

    #[test]
    fn connection_from_parts_and_checks() {
        let c = RabbitConfig::from_metadata(&md(&[
            ("hostname", "mq:5680"),
            ("username", "app"),
            ("password", "pw"),
            ("protocol", "amqp"),
        ]))
        .unwrap();
        let e = &c.link.endpoint;
        assert_eq!(
            (e.host.as_str(), e.port, e.username.as_str(), e.password.as_str()),
            ("mq", 5680, "app", "pw")
        );
        let err = |props: &[(&str, &str)]| RabbitConfig::from_metadata(&md(props)).unwrap_err().to_string();
        assert!(err(&[("connectionString", "amqp://h"), ("protocol", "amqps")]).contains("protocol"));
        assert!(err(&[("connectionString", "nope")]).contains("connectionString"));
        assert!(!err(&[("connectionString", "amqp://u:secret@h:0")]).contains("secret"));
    }

    #[test]
    fn numbers_and_choices_are_range_checked() {
        let err = |k: &str, v: &str| RabbitConfig::from_metadata(&md(&[(k, v)])).unwrap_err().to_string();
        assert!(err("deliveryMode", "3").contains("deliveryMode"));
        assert!(err("prefetchCount", "70000").contains("prefetchCount"));
        assert!(err("exchangeKind", "nope").contains("exchangeKind"));
        assert!(err("concurrency", "lots").contains("concurrency"));
        assert!(err("maxLen", "-1").contains("maxLen"));
        assert!(err("ttlInSeconds", "0").contains("ttlInSeconds"));
        assert!(err("heartBeat", "0").contains("heartBeat"));
        assert!(err("durable", "maybe").contains("durable"));
        assert!(err("caCert", "pem").contains("TLS"));
        assert!(err("redeliverInterval", "0s").contains("redeliverInterval"));
        let c = RabbitConfig::from_metadata(&md(&[
            ("concurrency", "single"),
            ("prefetchCount", "7"),
            ("deliveryMode", "2"),
            ("ttlInSeconds", "60"),
            ("deletedWhenUnused", "false"),
            ("exchangeKind", "topic"),
        ]))
        .unwrap();
        assert_eq!((c.in_flight, c.prefetch, c.delivery_mode), (1, 7, 2));
        assert_eq!(c.default_ttl, Some(Duration::from_secs(60)));
        assert!(!c.delete_when_unused);
        assert_eq!(c.exchange_kind, "topic");
    }

    #[test]
    fn publish_properties_follow_metadata() {
        let meta = BTreeMap::from([
            ("ttlInSeconds".to_owned(), "5".to_owned()),
            ("priority".to_owned(), "3".to_owned()),
            ("messageID".to_owned(), "m1".to_owned()),
            ("k".to_owned(), "v".to_owned()),
        ]);
        let p = properties(&meta, Some("application/cloudevents+json"), 2, None).unwrap();
        assert_eq!(p.expiration().map(String::as_str), Some("5000"));
        assert_eq!(p.priority(), Some(3));
        assert_eq!(p.delivery_mode(), Some(2));
        assert_eq!(p.message_id().map(String::as_str), Some("m1"));
        assert_eq!(
            p.content_type().map(String::as_str),
            Some("application/cloudevents+json")
        );
        assert_eq!(amqp::header_map(&p).get("k").map(String::as_str), Some("v"));
        let p = properties(&BTreeMap::new(), None, 0, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(p.expiration().map(String::as_str), Some("1000"));
        assert_eq!(p.content_type().map(String::as_str), Some("text/plain"));
        assert_eq!(p.delivery_mode(), None);
        let bad = BTreeMap::from([("priority".to_owned(), "high".to_owned())]);
        assert!(properties(&bad, None, 0, None).unwrap_err().contains("priority"));
        let long = BTreeMap::from([("messageID".to_owned(), "x".repeat(300))]);
        assert!(properties(&long, None, 0, None).unwrap_err().contains("255"));
    }

    #[test]
    fn subscriptions_name_queues_as_dapr_does() {
        let ps = RabbitConfig::from_metadata(&md(&[("enableDeadLetter", "true"), ("maxLen", "10")])).unwrap();
        let req = |md: &[(&str, &str)]| SubscribeRequest {
            topic: "orders".into(),
            metadata: md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let t = ps.topology(&req(&[])).unwrap();
        assert_eq!(t.queue, "orders-orders");
        let (dlx, dlq, _) = t.dead_letter.as_ref().unwrap();
        assert_eq!((dlx.as_str(), dlq.as_str()), ("dlx-orders-orders", "dlq-orders-orders"));
        assert_eq!(t.routing_keys, [""]);
        let t = ps
            .topology(&req(&[
                ("queueName", "mine"),
                ("routingKey", "a,b"),
                ("queueType", "quorum"),
            ]))
            .unwrap();
        assert_eq!((t.queue.as_str(), t.routing_keys.len()), ("mine", 2));
        assert!(
            ps.topology(&req(&[("queueType", "stream")]))
                .unwrap_err()
                .contains("queue type")
        );
        assert!(
            ps.topology(&req(&[("maxPriority", "x")]))
                .unwrap_err()
                .contains("maxPriority")
        );
    }
}
