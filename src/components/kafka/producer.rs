//! Publishing to Kafka as Dapr does: the message key from `partitionKey` (or `__key`), the partition from
//! `partitionNumber`, every metadata entry as a header, the value `null` as a tombstone; a publish returns once
//! the broker acknowledged the message. Topics the brokers do not know are created (with the broker's default
//! partition count) before the first publish or subscription, for brokers that do not create them themselves.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaRespErr;

use super::{KafkaConfig, check_schema_type, check_topic};
use crate::components::ComponentError;

/// Topics remembered as existing; past this many the memory is cleared and they are looked up again.
const KNOWN_TOPICS: usize = 10_000;

/// A producer and the admin client that looks up and creates topics.
pub struct Producer {
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    config: Arc<KafkaConfig>,
    known: Mutex<HashSet<String>>,
}

impl Producer {
    /// Creates the clients and checks that the brokers answer (a component whose brokers are unreachable fails
    /// to start, as Dapr's does).
    pub async fn connect(config: Arc<KafkaConfig>) -> Result<Producer, ComponentError> {
        let init = |what: &str, e: rdkafka::error::KafkaError| {
            ComponentError::Init(format!("kafka: creating the {what}: {e}"))
        };
        let producer: FutureProducer = config.producer_config().create().map_err(|e| init("producer", e))?;
        let admin: AdminClient<DefaultClientContext> =
            config.client_config().create().map_err(|e| init("admin client", e))?;
        let admin = Arc::new(admin);
        let (probe, timeout) = (admin.clone(), config.metadata_timeout);
        tokio::task::spawn_blocking(move || probe.inner().fetch_metadata(None, timeout).map(|_| ()))
            .await
            .map_err(|e| ComponentError::Init(format!("kafka: {e}")))?
            .map_err(|e| {
                ComponentError::Init(format!(
                    "kafka: the brokers {} did not answer within {timeout:?} (metadataTimeout): {e}",
                    config.brokers.join(",")
                ))
            })?;
        Ok(Producer {
            producer,
            admin,
            config,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// Makes sure `topic` exists, creating it when the brokers do not know it.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), String> {
        check_topic(topic)?;
        if self.known.lock().unwrap_or_else(|p| p.into_inner()).contains(topic) {
            return Ok(());
        }
        let (admin, name, timeout) = (self.admin.clone(), topic.to_owned(), self.config.metadata_timeout);
        let missing = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let md = admin
                .inner()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| format!("kafka: looking up topic {name}: {e}"))?;
            Ok(match md.topics().iter().find(|t| t.name() == name) {
                None => true,
                Some(t) => {
                    t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                        || t.partitions().is_empty()
                }
            })
        })
        .await
        .map_err(|e| e.to_string())??;
        if missing {
            self.create_topic(topic).await?;
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_TOPICS {
            known.clear();
        }
        known.insert(topic.to_owned());
        Ok(())
    }

    async fn create_topic(&self, topic: &str) -> Result<(), String> {
        // -1: the broker's default partition count and replication factor.
        let new = NewTopic::new(topic, -1, TopicReplication::Fixed(-1));
        let opts = AdminOptions::new().operation_timeout(Some(self.config.metadata_timeout));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| format!("kafka: creating topic {topic}: {e}"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(format!("kafka: creating topic {topic}: {code}")),
            }
        }
        tracing::info!(%topic, "kafka: created topic");
        Ok(())
    }

    /// Publishes one message and waits for the broker's acknowledgement.
    pub async fn send(&self, topic: &str, data: &[u8], metadata: &BTreeMap<String, String>) -> Result<(), String> {
        check_schema_type(metadata)?;
        self.ensure_topic(topic).await?;
        let mut record = FutureRecord::<str, [u8]>::to(topic);
        // `null` is a tombstone: a message without a value.
        if data != b"null" {
            record = record.payload(data);
        }
        let mut headers = OwnedHeaders::new_with_capacity(metadata.len());
        for (name, value) in metadata {
            match name.as_str() {
                "partitionKey" | "__key" => record = record.key(value.as_str()),
                "partitionNumber" => record = record.partition(partition_number(value)?),
                _ => {}
            }
            if !self.config.excluded(name) {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
        }
        record = record.headers(headers);
        match self.producer.send(record, self.config.write_timeout).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(format!("kafka: publishing to {topic}: {e}")),
        }
    }

    /// Waits (up to `timeout`) for messages still on their way to the brokers.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

/// `partitionNumber`: a partition index, 0 or more.
fn partition_number(v: &str) -> Result<i32, String> {
    match v.trim().parse::<i32>() {
        Ok(n) if n >= 0 => Ok(n),
        Ok(n) => Err(format!("partitionNumber must be non-negative, got {n}")),
        Err(e) => Err(format!("invalid partitionNumber metadata value {v:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_numbers_are_checked() {
        assert_eq!(partition_number("3"), Ok(3));
        assert!(partition_number("-1").unwrap_err().contains("non-negative"));
        assert!(partition_number("x").unwrap_err().contains("invalid partitionNumber"));
        assert!(partition_number("99999999999").is_err());
    }
}
