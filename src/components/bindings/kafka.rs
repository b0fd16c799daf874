//! `bindings.kafka`: an output binding whose `create` publishes the request's data to `publishTopic` (the message
//! key from `key`/`partitionKey`, the partition from `partitionNumber`, every metadata entry as a header), and an
//! input binding that reads `topics` (comma-separated) as a member of `consumerGroup`, with the metadata and
//! defaults of `pubsub.kafka` — except that, as in Dapr, an event the app failed is passed over unless
//! `consumeRetryEnabled` is true. An event under way when reading stops is left uncommitted for the next reader.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Binding, BindingError, Directions, Event, Handler, InvokeRequest, InvokeResponse};
use crate::components::kafka::consumer::{DeliveryHandler, Readers, Verdict};
use crate::components::kafka::producer::Producer;
use crate::components::kafka::{KafkaConfig, check_topic};
use crate::components::{ComponentError, Metadata};

struct KafkaBinding {
    config: Arc<KafkaConfig>,
    producer: Producer,
    publish_topic: Option<String>,
    topics: Vec<String>,
    readers: Readers,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let config = Arc::new(KafkaConfig::from_metadata(&md, false, None)?);
    let publish_topic = md.string("publishTopic").map(|t| t.trim().to_owned());
    if let Some(t) = &publish_topic {
        check_topic(t).map_err(|e| ComponentError::invalid("publishTopic", e))?;
    }
    let topics = topics(&md)?;
    if !topics.is_empty() && config.consumer_group.is_none() {
        return Err(ComponentError::invalid("consumerGroup", "required to read topics"));
    }
    let producer = Producer::connect(config.clone()).await?;
    super::directed(
        &md,
        Arc::new(KafkaBinding {
            config,
            producer,
            publish_topic,
            topics,
            readers: Readers::default(),
        }),
    )
}

/// `topics`: the comma-separated topics an input binding reads.
fn topics(md: &Metadata) -> Result<Vec<String>, ComponentError> {
    let mut out: Vec<String> = vec![];
    for t in md
        .string("topics")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        check_topic(t).map_err(|e| ComponentError::invalid("topics", e))?;
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

#[async_trait]
impl Binding for KafkaBinding {
    fn directions(&self) -> Directions {
        Directions::BOTH
    }

    fn operations(&self) -> &[&'static str] {
        &["create"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        if self.readers.closed.is_cancelled() {
            return Err(BindingError::new("kafka binding: the binding is closed"));
        }
        let topic = self.publish_topic.as_deref().ok_or_else(|| {
            BindingError::new("kafka binding: publishTopic is not set, so there is nowhere to publish")
        })?;
        // Dapr's binding takes the message key from `key` as well.
        let mut metadata = req.metadata;
        if let Some(key) = metadata.get("key").cloned() {
            metadata.entry("partitionKey".to_owned()).or_insert(key);
        }
        self.producer
            .send(topic, &req.data, &metadata)
            .await
            .map_err(BindingError::new)?;
        Ok(None)
    }

    async fn read(&self, handler: Handler, stop: CancellationToken) -> Result<(), BindingError> {
        if self.readers.closed.is_cancelled() {
            return Err(BindingError::new("error: binding is closed"));
        }
        if self.topics.is_empty() {
            tracing::warn!("kafka binding: no topic defined, input bindings will not be started");
            return Ok(());
        }
        // Checked at start: reading topics needs a consumer group.
        let group = self.config.consumer_group.clone().unwrap_or_default();
        for t in &self.topics {
            self.producer.ensure_topic(t).await.map_err(BindingError::new)?;
        }
        let (config, closed, stopping) = (self.config.clone(), self.readers.closed.clone(), stop.clone());
        let deliver: DeliveryHandler = Arc::new(move |d| {
            let event = Event {
                data: d.data(),
                metadata: d.metadata(&config),
            };
            let (taken, closed, stopping) = (handler(event), closed.clone(), stopping.clone());
            Box::pin(async move {
                match taken.await {
                    Ok(_) => Verdict::Taken,
                    Err(_) if stopping.is_cancelled() || closed.is_cancelled() => Verdict::Leave,
                    Err(why) => Verdict::Retry(why),
                }
            })
        });
        self.readers
            .start(self.config.clone(), &group, &self.topics, deliver, stop)
            .await
            .map_err(BindingError::new)
    }

    async fn close(&self) {
        self.readers.close().await;
        self.producer.flush(Duration::from_secs(5)).await;
    }
}
