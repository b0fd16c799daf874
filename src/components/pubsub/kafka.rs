//! `pubsub.kafka`: Kafka topics with Dapr's metadata. Publishing waits for the broker's acknowledgement (all
//! in-sync replicas unless `producerRequiredAcks` says otherwise); each subscription is a member of the component's
//! consumer group (`consumerGroup`, else `consumerID`, else the app id) and commits a message's offset only once the
//! handler took it. A message the handler wants again is retried in place under the `backOff*` policy, holding up
//! its partition as Kafka's ordering requires; one left by a closing subscription stays uncommitted for the next
//! member of the group.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Feature, Handler, Message, Nack, PubSub, PubSubError, SubscribeRequest, consumer_id};
use crate::components::kafka::consumer::{DeliveryHandler, Readers, Verdict};
use crate::components::kafka::producer::Producer;
use crate::components::kafka::{KafkaConfig, check_schema_type};
use crate::components::{ComponentError, Metadata};

pub struct KafkaPubSub {
    config: Arc<KafkaConfig>,
    group: String,
    producer: Producer,
    readers: Readers,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn PubSub>, ComponentError> {
    let config = Arc::new(KafkaConfig::from_metadata(&md, true, Some(consumer_id(&md)))?);
    let group = config.consumer_group.clone().unwrap_or_else(|| md.app_id.clone());
    if group.is_empty() {
        return Err(ComponentError::invalid(
            "consumerGroup",
            "missing, and there is no consumerID or app id to use",
        ));
    }
    let producer = Producer::connect(config.clone()).await?;
    Ok(Arc::new(KafkaPubSub {
        config,
        group,
        producer,
        readers: Readers::default(),
    }))
}

/// The runtime's handler as the consumer calls it.
fn delivery_handler(handler: Handler, config: Arc<KafkaConfig>) -> DeliveryHandler {
    Arc::new(move |d| {
        let msg = Message {
            topic: d.topic.clone(),
            data: d.data(),
            content_type: None,
            metadata: d.metadata(&config),
        };
        let taken = handler(msg);
        Box::pin(async move {
            match taken.await {
                Ok(()) => Verdict::Taken,
                Err(Nack::Retry(why)) => Verdict::Retry(why),
                Err(Nack::Closing) => Verdict::Leave,
            }
        })
    })
}

#[async_trait]
impl PubSub for KafkaPubSub {
    fn features(&self) -> &'static [Feature] {
        &[Feature::BulkPublish]
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        if self.readers.closed.is_cancelled() {
            return Err(PubSubError::Closed);
        }
        self.producer
            .send(&msg.topic, &msg.data, &msg.metadata)
            .await
            .map_err(PubSubError::Backend)
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Handler,
        stop: CancellationToken,
    ) -> Result<(), PubSubError> {
        if self.readers.closed.is_cancelled() {
            return Err(PubSubError::Closed);
        }
        check_schema_type(&req.metadata).map_err(PubSubError::Backend)?;
        self.producer
            .ensure_topic(&req.topic)
            .await
            .map_err(PubSubError::Backend)?;
        let handler = delivery_handler(handler, self.config.clone());
        self.readers
            .start(self.config.clone(), &self.group, &[req.topic], handler, stop)
            .await
            .map_err(PubSubError::Backend)
    }

    async fn close(&self) {
        self.readers.close().await;
        self.producer.flush(Duration::from_secs(5)).await;
    }
}
