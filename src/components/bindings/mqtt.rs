//! `bindings.mqtt3` (and its old name `bindings.mqtt`): input and output over one MQTT `topic`, as Dapr's binding
//! does it — `consumerID` is required, the output publishes as client `<consumerID>-producer` (connected on first
//! use), the input reads as `<consumerID>-consumer` with a persistent session by default, QoS 1 always (Dapr
//! ignores the deprecated `qos`). `create` publishes the body to the request's `topic` (the component's by
//! default) with its `retain` (tandem reads it per request too). An event reaches the app with the metadata
//! `topic`; one the app failed is handed to it again every 5 s, `backOffMaxRetries` times (0, Dapr's default:
//! not at all; -1: until taken), and otherwise stays unacknowledged, for the broker to send again on the next
//! connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{Binding, BindingError, Directions, Event, Handler, InvokeRequest, InvokeResponse};
use crate::components::metadata::parse_bool;
use crate::components::mqtt::connection::{Deliver, Settings};
use crate::components::mqtt::{self, Common, Connection, Filter, QoS, Received, Redelivery, Route};
use crate::components::pubsub::Nack;
use crate::components::{ComponentError, Metadata};

/// Typed `bindings.mqtt3` metadata (Dapr's names and defaults).
#[derive(Clone, Debug)]
pub struct MqttBindingConfig {
    pub common: Common,
    pub client_id: String,
    pub topic: String,
    pub redelivery: Redelivery,
}

impl MqttBindingConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let common = Common::from_metadata(md)?;
        let topic = md
            .string("topic")
            .ok_or_else(|| ComponentError::invalid("topic", "is required"))?;
        Filter::parse(&topic).map_err(|e| ComponentError::invalid("topic", e))?;
        let client_id = mqtt::client_id("consumerID", md.get("consumerID").unwrap_or("").trim())?;
        if md.string("qos").is_some() {
            tracing::warn!(component = %md.name, "metadata qos is deprecated and ignored, as in Dapr: the binding uses QoS 1");
        }
        Ok(MqttBindingConfig {
            common,
            client_id,
            topic,
            redelivery: Redelivery {
                max_retries: mqtt::back_off_max_retries(md, Some(0))?,
                first: Duration::from_secs(5),
                max: Duration::from_secs(5),
            },
        })
    }

    fn settings(&self, role: &str) -> Settings {
        Settings {
            url: self.common.url.clone(),
            client_id: format!("{}-{role}", self.client_id),
            clean_session: self.common.clean_session,
            subscribe_qos: QoS::AtLeastOnce,
        }
    }
}

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let cfg = MqttBindingConfig::from_metadata(&md)?;
    super::directed(
        &md,
        Arc::new(MqttBinding {
            cfg,
            producer: OnceCell::new(),
            consumer: Arc::default(),
            closed: CancellationToken::new(),
        }),
    )
}

struct MqttBinding {
    cfg: MqttBindingConfig,
    producer: OnceCell<Connection>,
    /// The reading connection, while `read` is active.
    consumer: Arc<Mutex<Option<Consumer>>>,
    closed: CancellationToken,
}

enum Consumer {
    Starting,
    Reading(Arc<Connection>),
}

impl MqttBinding {
    /// Connects as the consumer and subscribes to the topic.
    async fn start_reading(&self, handler: Handler, stop: CancellationToken) -> Result<Arc<Connection>, BindingError> {
        let conn = Arc::new(
            Connection::open(self.cfg.settings("consumer"))
                .await
                .map_err(BindingError::new)?,
        );
        let deliver: Deliver = Arc::new(move |r: Received| {
            let answer = handler(Event {
                data: r.payload,
                metadata: [("topic".to_owned(), r.topic)].into(),
            });
            Box::pin(async move { answer.await.map(|_: Bytes| ()).map_err(Nack::Retry) })
        });
        let route = Route {
            filter: Filter::parse(&self.cfg.topic).map_err(BindingError::new)?,
            deliver,
            redelivery: self.cfg.redelivery,
            stop,
        };
        if let Err(e) = conn.subscribe(route, false).await {
            conn.close().await;
            return Err(BindingError::new(e));
        }
        Ok(conn)
    }
}

#[async_trait]
impl Binding for MqttBinding {
    fn directions(&self) -> Directions {
        Directions::BOTH
    }

    fn operations(&self) -> &[&'static str] {
        &["create"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        if self.closed.is_cancelled() {
            return Err(BindingError::new("mqtt binding: the component is closed"));
        }
        let topic = req
            .metadata
            .get("topic")
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.cfg.topic);
        let retain = match req.metadata.get("retain").filter(|v| !v.is_empty()) {
            None => self.cfg.common.retain,
            Some(v) => parse_bool(v)
                .ok_or_else(|| BindingError::new(format!("mqtt binding: invalid retain {v:?}: write true or false")))?,
        };
        let producer = self
            .producer
            .get_or_try_init(|| Connection::open(self.cfg.settings("producer")))
            .await
            .map_err(|e| BindingError::new(format!("failed to create producer connection: {e}")))?;
        producer
            .publish(topic, req.data, QoS::AtLeastOnce, retain)
            .await
            .map_err(|e| BindingError::new(format!("failed to publish: {e}")))?;
        Ok(None)
    }

    async fn read(&self, handler: Handler, stop: CancellationToken) -> Result<(), BindingError> {
        if self.closed.is_cancelled() {
            return Err(BindingError::new("error: binding is closed"));
        }
        {
            let mut slot = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return Err(BindingError::new("the subscription is already active"));
            }
            *slot = Some(Consumer::Starting);
        }
        let started = self.start_reading(handler, stop.clone()).await;
        let mut slot = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match started {
            Ok(conn) => conn,
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        };
        *slot = Some(Consumer::Reading(conn.clone()));
        let (consumer, closed) = (self.consumer.clone(), self.closed.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = closed.cancelled() => {}
            }
            // Disconnect without unsubscribing: the broker keeps the session's messages for the next read.
            conn.close().await;
            let mut slot = consumer.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(&*slot, Some(Consumer::Reading(c)) if Arc::ptr_eq(c, &conn)) {
                *slot = None;
            }
        });
        Ok(())
    }

    async fn close(&self) {
        self.closed.cancel();
        let consumer = self.consumer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Consumer::Reading(conn)) = consumer {
            conn.close().await;
        }
        if let Some(producer) = self.producer.get() {
            producer.close().await;
        }
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
    fn dapr_names_and_defaults() {
        let c = MqttBindingConfig::from_metadata(&md(&[
            ("url", "tcp://127.0.0.1:1883"),
            ("topic", "orders"),
            ("consumerID", "myapp"),
            ("qos", "2"),
        ]))
        .unwrap();
        assert_eq!(c.topic, "orders");
        assert!(!c.common.retain && !c.common.clean_session);
        assert_eq!(c.redelivery.max_retries, Some(0), "Dapr's default: no retries");
        assert_eq!(
            c.redelivery.delay(3),
            Duration::from_secs(5),
            "Dapr waits 5 s between retries"
        );
        assert_eq!(c.settings("producer").client_id, "myapp-producer");
        assert_eq!(c.settings("consumer").client_id, "myapp-consumer");
        assert_eq!(
            c.settings("consumer").subscribe_qos,
            QoS::AtLeastOnce,
            "qos is ignored, as in Dapr"
        );
        let c = MqttBindingConfig::from_metadata(&md(&[
            ("url", "tcp://h:1"),
            ("topic", "sensors/+/temp"),
            ("consumerID", "c"),
            ("retain", "true"),
            ("cleanSession", "true"),
            ("backOffMaxRetries", "-1"),
        ]))
        .unwrap();
        assert!(c.common.retain && c.common.clean_session);
        assert_eq!(c.redelivery.max_retries, None);
    }

    #[test]
    fn required_and_bad_metadata_name_the_field() {
        let base = [("url", "tcp://h:1"), ("topic", "t"), ("consumerID", "c")];
        for (drop, field) in [("url", "url"), ("topic", "topic"), ("consumerID", "consumerID")] {
            let props: Vec<_> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
            let err = MqttBindingConfig::from_metadata(&md(&props)).unwrap_err().to_string();
            assert!(err.contains(&format!("{field:?}")), "{err}");
        }
        for (k, v) in [
            ("topic", "a/#/b"),
            ("backOffMaxRetries", "x"),
            ("retain", "2"),
            ("url", "ws://h"),
        ] {
            let mut props = base.to_vec();
            props.retain(|(key, _)| *key != k);
            props.push((k, v));
            let err = MqttBindingConfig::from_metadata(&md(&props)).unwrap_err().to_string();
            assert!(err.contains(&format!("{k:?}")), "{k}={v}: {err}");
        }
    }
}
