//! `pubsub.in-memory`: a broker inside the sidecar process. Every subscription of a topic gets every message
//! (through a bounded queue: a full queue slows publishers down rather than dropping); a message the handler does
//! not take is delivered again after `redeliverInterval` (1s) until it is taken or the subscription stops.
//! Nothing survives the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Feature, Handler, Message, Nack, PubSub, PubSubError, SubscribeRequest};
use crate::components::{ComponentError, Metadata};

/// Messages a subscription may have queued before publishers wait.
const QUEUE: usize = 4096;
/// Messages a subscription hands to its handler at once.
const IN_FLIGHT: usize = 256;

pub struct MemoryPubSub {
    topics: Mutex<HashMap<String, Vec<mpsc::Sender<Message>>>>,
    redeliver: Duration,
    closed: CancellationToken,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn PubSub>, ComponentError> {
    Ok(Arc::new(MemoryPubSub::new(
        md.duration("redeliverInterval")?.unwrap_or(Duration::from_secs(1)),
    )))
}

impl MemoryPubSub {
    pub fn new(redeliver: Duration) -> Self {
        MemoryPubSub {
            topics: Mutex::default(),
            redeliver: redeliver.max(Duration::from_millis(10)),
            closed: CancellationToken::new(),
        }
    }

    fn subscribers(&self, topic: &str) -> Vec<mpsc::Sender<Message>> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let subs = topics.entry(topic.to_owned()).or_default();
        subs.retain(|s| !s.is_closed());
        subs.clone()
    }
}

#[async_trait]
impl PubSub for MemoryPubSub {
    fn features(&self) -> &'static [Feature] {
        &[Feature::BulkPublish]
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        if self.closed.is_cancelled() {
            return Err(PubSubError::Closed);
        }
        for sub in self.subscribers(&msg.topic) {
            // A subscription that stopped meanwhile is skipped.
            let _ = sub.send(msg.clone()).await;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Handler,
        stop: CancellationToken,
    ) -> Result<(), PubSubError> {
        if self.closed.is_cancelled() {
            return Err(PubSubError::Closed);
        }
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(req.topic.clone())
            .or_default()
            .push(tx.clone());
        let (closed, redeliver) = (self.closed.clone(), self.redeliver);
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = closed.cancelled() => break,
                    m = rx.recv() => match m { Some(m) => m, None => break },
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (handler, stop, closed) = (handler.clone(), stop.clone(), closed.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    loop {
                        match handler(msg.clone()).await {
                            Ok(()) | Err(Nack::Closing) => return,
                            Err(Nack::Retry(why)) => {
                                tracing::debug!(topic = %msg.topic, %why, "redelivering an in-memory message");
                            }
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = closed.cancelled() => return,
                            _ = tokio::time::sleep(redeliver) => {}
                        }
                    }
                });
            }
            drop(tx);
        });
        Ok(())
    }

    async fn close(&self) {
        self.closed.cancel();
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
