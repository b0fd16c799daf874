//! `pubsub.mqtt3` (and its old name `pubsub.mqtt`): an MQTT 3.1.1 broker, as Dapr's component uses it — one
//! connection whose client id is `consumerID` (the app id by default), QoS 1 by default, a persistent session
//! (`cleanSession: false`) so what a subscriber did not acknowledge is sent again when it reconnects, topic
//! wildcards (`+`, `#`) and shared subscriptions (`$share/<group>/<topic>`) as subscription topics.
//!
//! At least once: a publish succeeds once the broker confirmed it (PUBACK), and a received message is
//! acknowledged only once the app took it. MQTT 3 has no negative acknowledgement, so a message the app asks to
//! retry is handed to it again in-process (100 ms doubling to 5 s, `backOffMaxRetries` times, without end by
//! default) while the subscription lives; otherwise it stays unacknowledged with the broker, which sends it again
//! on the next connection of the same client id. MQTT 3 carries no metadata: a delivered message has only
//! `retained`. Subscriptions ask for QoS 1 at most (rumqttc forgets a QoS 2 receipt across reconnections).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Feature, Handler, Message, PubSub, PubSubError, SubscribeRequest, consumer_id};
use crate::components::metadata::parse_bool;
use crate::components::mqtt::connection::Settings;
use crate::components::mqtt::{self, Common, Connection, Filter, QoS, Received, Redelivery, Route};
use crate::components::{ComponentError, Metadata};

/// Typed `pubsub.mqtt3` metadata (Dapr's names and defaults).
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub common: Common,
    pub client_id: String,
    pub qos: QoS,
    pub redelivery: Redelivery,
}

impl MqttConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        Ok(MqttConfig {
            common: Common::from_metadata(md)?,
            client_id: mqtt::client_id("consumerID", &consumer_id(md))?,
            qos: mqtt::qos(md, QoS::AtLeastOnce)?,
            redelivery: Redelivery {
                max_retries: mqtt::back_off_max_retries(md, None)?,
                first: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
        })
    }

    /// What subscriptions ask for: the configured QoS, but 1 at most.
    pub fn subscribe_qos(&self) -> QoS {
        match self.qos {
            QoS::AtMostOnce => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        }
    }
}

pub struct MqttPubSub {
    cfg: MqttConfig,
    conn: Connection,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn PubSub>, ComponentError> {
    let cfg = MqttConfig::from_metadata(&md)?;
    let conn = Connection::open(Settings {
        url: cfg.common.url.clone(),
        client_id: cfg.client_id.clone(),
        clean_session: cfg.common.clean_session,
        subscribe_qos: cfg.subscribe_qos(),
    })
    .await
    .map_err(|e| ComponentError::Init(format!("mqtt: {e}")))?;
    Ok(Arc::new(MqttPubSub { cfg, conn }))
}

#[async_trait]
impl PubSub for MqttPubSub {
    fn features(&self) -> &'static [Feature] {
        &[Feature::SubscribeWildcards]
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        if self.conn.is_closed() {
            return Err(PubSubError::Closed);
        }
        let retain = match msg.metadata.get("retain").map(String::as_str).filter(|v| !v.is_empty()) {
            None => self.cfg.common.retain,
            Some(v) => parse_bool(v)
                .ok_or_else(|| PubSubError::Backend(format!("mqtt: invalid retain {v:?}: write true or false")))?,
        };
        self.conn
            .publish(&msg.topic, msg.data.clone(), self.cfg.qos, retain)
            .await
            .map_err(|e| PubSubError::Backend(format!("mqtt: failed to publish to {:?}: {e}", msg.topic)))
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Handler,
        stop: CancellationToken,
    ) -> Result<(), PubSubError> {
        if self.conn.is_closed() {
            return Err(PubSubError::Closed);
        }
        let filter = Filter::parse(&req.topic).map_err(|e| PubSubError::Backend(format!("mqtt: {e}")))?;
        // Unsubscribing makes the broker forget what it keeps for us: only on request, or when the session
        // dies with the connection anyway (as Dapr does).
        let unsubscribe = self.cfg.common.clean_session
            || req
                .metadata
                .get("unsubscribeOnClose")
                .and_then(|v| parse_bool(v))
                .unwrap_or(false);
        let deliver: mqtt::connection::Deliver = Arc::new(move |r: Received| {
            handler(Message {
                topic: r.topic,
                data: r.payload,
                content_type: None,
                metadata: BTreeMap::from([("retained".to_owned(), r.retained.to_string())]),
            })
        });
        let route = Route {
            filter,
            deliver,
            redelivery: self.cfg.redelivery,
            stop,
        };
        self.conn
            .subscribe(route, unsubscribe)
            .await
            .map_err(|e| PubSubError::Backend(format!("mqtt: {e}")))
    }

    async fn close(&self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(props: &[(&str, &str)]) -> Metadata {
        Metadata::new(
            "p",
            "orders",
            "ns",
            props.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn dapr_names_and_defaults() {
        let c = MqttConfig::from_metadata(&md(&[("url", "tcp://127.0.0.1:1883")])).unwrap();
        assert_eq!(c.client_id, "orders", "the client id defaults to the app id");
        assert_eq!(c.qos, QoS::AtLeastOnce);
        assert!(!c.common.retain);
        assert!(!c.common.clean_session, "persistent sessions by default, as in Dapr");
        assert_eq!(c.redelivery.max_retries, None);
        let c = MqttConfig::from_metadata(&md(&[
            ("url", "mqtt://u:p@broker:1884"),
            ("consumerID", "{namespace}-{appID}"),
            ("qos", "2"),
            ("retain", "true"),
            ("cleanSession", "true"),
            ("backOffMaxRetries", "4"),
        ]))
        .unwrap();
        assert_eq!(c.client_id, "ns-orders");
        assert_eq!((c.common.url.host.as_str(), c.common.url.port), ("broker", 1884));
        assert_eq!(c.qos, QoS::ExactlyOnce);
        assert_eq!(c.subscribe_qos(), QoS::AtLeastOnce);
        assert!(c.common.retain && c.common.clean_session);
        assert_eq!(c.redelivery.max_retries, Some(4));
    }

    #[test]
    fn bad_metadata_names_the_field() {
        for (props, field) in [
            (vec![], "url"),
            (vec![("url", "tcp://h:1"), ("qos", "7")], "qos"),
            (vec![("url", "tcp://h:1"), ("retain", "maybe")], "retain"),
            (vec![("url", "tcp://h:1"), ("cleanSession", "2")], "cleanSession"),
            (
                vec![("url", "tcp://h:1"), ("backOffMaxRetries", "-5")],
                "backOffMaxRetries",
            ),
            (vec![("url", "ssl://h:8883")], "url"),
        ] {
            let err = MqttConfig::from_metadata(&md(&props)).unwrap_err().to_string();
            assert!(err.contains(&format!("{field:?}")), "{props:?}: {err}");
        }
    }
}
