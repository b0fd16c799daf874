//! `bindings.rabbitmq`: one RabbitMQ queue (`queueName`, declared at start as Dapr declares it) as an output
//! binding, whose `create` publishes to the queue and returns once the broker confirmed the message, and as an
//! input binding, which hands the queue's messages to the app one at a time, acknowledging each once the app
//! took it and putting it back on the queue, after a one second pause, when the app failed. Request metadata
//! travels as message headers and comes back as event metadata.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use amqprs::FieldTable;
use amqprs::channel::{Channel, QueueDeclareArguments};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Binding, BindingError, Directions, Event, Handler, InvokeRequest, InvokeResponse};
use crate::components::amqp::{self, ConsumeSpec, Link, LinkSettings, Outgoing, Settle, Topology, properties};
use crate::components::{ComponentError, Metadata};

/// How long an event the app failed waits before it goes back to the queue.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Typed `bindings.rabbitmq` metadata (Dapr's names and defaults).
#[derive(Clone, Debug)]
pub struct RabbitBindingConfig {
    pub link: LinkSettings,
    pub queue: QueueSpec,
    /// 0: one at a time.
    pub prefetch: u16,
    pub content_type: Option<String>,
}

/// The queue as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub delete_when_unused: bool,
    pub exclusive: bool,
    /// `x-message-ttl`: messages expire after this long in the queue.
    pub ttl: Option<Duration>,
    /// `x-max-priority`: a priority queue.
    pub max_priority: Option<u8>,
}

impl RabbitBindingConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let host = md
            .string("host")
            .ok_or_else(|| ComponentError::invalid("host", "missing host address"))?;
        let endpoint = amqp::Endpoint::parse(&host).map_err(|e| ComponentError::invalid("host", e))?;
        let name = md
            .string("queueName")
            .ok_or_else(|| ComponentError::invalid("queueName", "missing queue Name"))?;
        amqp::short("queue name", &name).map_err(|e| ComponentError::invalid("queueName", e))?;
        let max_priority = match md.parse::<u64>("maxPriority")? {
            None => None,
            Some(n) if n <= 255 => Some(n as u8),
            Some(_) => return Err(ComponentError::invalid("maxPriority", "must be from 0 to 255")),
        };
        let content_type = md.string("contentType");
        if let Some(c) = &content_type {
            amqp::short("content type", c).map_err(|e| ComponentError::invalid("contentType", e))?;
        }
        Ok(RabbitBindingConfig {
            link: LinkSettings::from_metadata(md, endpoint, "host", "reconnectWaitInSeconds", Duration::from_secs(5))?,
            queue: QueueSpec {
                name,
                durable: md.bool("durable")?.unwrap_or(false),
                delete_when_unused: md.bool("deleteWhenUnused")?.unwrap_or(false),
                exclusive: md.bool("exclusive")?.unwrap_or(false),
                ttl: amqp::component_ttl(md)?,
                max_priority,
            },
            prefetch: md.parse::<u16>("prefetchCount")?.unwrap_or(0),
            content_type,
        })
    }
}

#[async_trait]
impl Topology for QueueSpec {
    async fn declare(&self, ch: &Channel) -> Result<(), amqprs::error::Error> {
        let mut args = FieldTable::new();
        if let Some(ttl) = self.ttl {
            amqp::number(
                &mut args,
                "x-message-ttl",
                i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            );
        }
        if let Some(p) = self.max_priority {
            amqp::number(&mut args, "x-max-priority", i64::from(p));
        }
        ch.queue_declare(
            QueueDeclareArguments::new(&self.name)
                .durable(self.durable)
                .auto_delete(self.delete_when_unused)
                .exclusive(self.exclusive)
                .arguments(args)
                .finish(),
        )
        .await
        .map(|_| ())
    }
}

struct RabbitBinding {
    cfg: RabbitBindingConfig,
    link: Arc<Link>,
    queue: Arc<QueueSpec>,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let cfg = RabbitBindingConfig::from_metadata(&md)?;
    let init = |e: String| ComponentError::Init(format!("rabbitmq binding: {e}"));
    let link = Link::open(cfg.link.clone()).await.map_err(init)?;
    let queue = Arc::new(cfg.queue.clone());
    link.with_channel(queue.as_ref())
        .await
        .map_err(|e| init(format!("declaring queue {:?}: {e}", queue.name)))?;
    super::directed(&md, Arc::new(RabbitBinding { cfg, link, queue }))
}

/// A header name as Go's `url.QueryEscape` writes it, as Dapr passes header names on as event metadata.
fn query_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[async_trait]
impl Binding for RabbitBinding {
    fn directions(&self) -> Directions {
        Directions::BOTH
    }

    fn operations(&self) -> &[&'static str] {
        &["create"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        if req.operation != "create" {
            return Err(BindingError::new(format!("invalid operation type: {}", req.operation)));
        }
        if self.link.is_closed() {
            return Err(BindingError::new("component is closed"));
        }
        let ttl = super::request_ttl(&req)?.map(Duration::from_secs);
        // A request's own `ttlInSeconds` was read above (in Dapr's words); the rest of its metadata, priority and
        // content type included, is read as the pub/sub reads publish metadata.
        let mut metadata: BTreeMap<String, String> = req.metadata.clone();
        metadata.retain(|k, _| !k.eq_ignore_ascii_case("ttlInSeconds") && !k.eq_ignore_ascii_case("ttl"));
        let mut props = properties(&metadata, self.cfg.content_type.as_deref(), 2, None)
            .map_err(|e| BindingError::new(format!("rabbitmq binding: {e}")))?;
        if let Some(ttl) = ttl {
            let ms = amqp::expiration(ttl).map_err(BindingError::new)?;
            props.with_expiration(&ms);
        }
        // Every request metadata entry, the TTL too, travels as a header, as in Dapr.
        if !req.metadata.is_empty() {
            let headers = amqp::headers(&req.metadata).map_err(BindingError::new)?;
            props.with_headers(headers);
        }
        let out = Outgoing {
            exchange: "",
            routing_key: &self.queue.name,
            declare: None,
            properties: props.finish(),
            body: &req.data,
        };
        self.link
            .publish(&out)
            .await
            .map_err(|e| BindingError::new(format!("failed to publish message: {e}")))?;
        Ok(None)
    }

    async fn read(&self, handler: Handler, stop: CancellationToken) -> Result<(), BindingError> {
        if self.link.is_closed() {
            return Err(BindingError::new("binding already closed"));
        }
        let spec = ConsumeSpec {
            queue: self.queue.name.clone(),
            prefetch: self.cfg.prefetch.max(1),
            in_flight: 1,
            retry_delay: RETRY_DELAY,
            ack_on_receipt: false,
        };
        let on_delivery: amqp::OnDelivery = Arc::new(move |d: amqp::Delivery| {
            let metadata = amqp::header_map(&d.properties)
                .into_iter()
                .map(|(k, v)| (query_escape(&k), v))
                .collect();
            let handled = handler(Event { data: d.body, metadata });
            Box::pin(async move {
                match handled.await {
                    Ok(_) => Settle::Ack,
                    Err(e) => {
                        tracing::debug!("the app did not take the event, it goes back to the queue: {e}");
                        Settle::Requeue
                    }
                }
            })
        });
        amqp::consume(self.link.clone(), spec, self.queue.clone(), on_delivery, stop)
            .await
            .map_err(|e| BindingError::new(format!("rabbitmq binding: {e}")))
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
            "b",
            "app",
            "",
            props.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn metadata_is_read_as_dapr_reads_it() {
        let c = RabbitBindingConfig::from_metadata(&md(&[
            ("host", "amqp://guest:guest@localhost:5672"),
            ("queueName", "jobs"),
            ("durable", "true"),
            ("ttlInSeconds", "60"),
            ("maxPriority", "5"),
            ("prefetchCount", "10"),
            ("reconnectWaitInSeconds", "2"),
        ]))
        .unwrap();
        assert_eq!(
            c.queue,
            QueueSpec {
                name: "jobs".into(),
                durable: true,
                delete_when_unused: false,
                exclusive: false,
                ttl: Some(Duration::from_secs(60)),
                max_priority: Some(5),
            }
        );
        assert_eq!(c.prefetch, 10);
        assert_eq!(c.link.reconnect_wait, Duration::from_secs(2));
        let ttl = RabbitBindingConfig::from_metadata(&md(&[("host", "amqp://h"), ("queueName", "q"), ("ttl", "1m")]))
            .unwrap();
        assert_eq!(ttl.queue.ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn bad_metadata_names_the_field() {
        let err = |props: &[(&str, &str)]| RabbitBindingConfig::from_metadata(&md(props)).unwrap_err().to_string();
        assert!(err(&[("queueName", "q")]).contains("missing host address"));
        assert!(err(&[("host", "amqp://h")]).contains("missing queue Name"));
        assert!(err(&[("host", "amqp://h"), ("queueName", "q"), ("maxPriority", "256")]).contains("maxPriority"));
        assert!(err(&[("host", "amqp://h"), ("queueName", "q"), ("prefetchCount", "-1")]).contains("prefetchCount"));
        assert!(err(&[("host", "tcp://h"), ("queueName", "q")]).contains("host"));
        assert!(err(&[("host", "amqps://h"), ("queueName", "q")]).contains("TLS"));
        assert!(err(&[("host", "amqp://h"), ("queueName", &"q".repeat(256))]).contains("255"));
    }

    #[test]
    fn header_names_are_query_escaped() {
        assert_eq!(query_escape("a b/c~"), "a+b%2Fc~");
        assert_eq!(query_escape("plain-Name_1.x"), "plain-Name_1.x");
    }
}
