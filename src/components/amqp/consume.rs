//! Consuming a queue: the topology declared on each channel, deliveries handed to a handler a bounded number at a
//! time and settled as it decides, and a new channel (and connection) after each loss, until stopped.

use std::sync::Arc;
use std::time::Duration;

use amqprs::BasicProperties;
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicNackArguments, BasicQosArguments, Channel,
    ConsumerMessage,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{FIRST_BACKOFF, Link, open_channel, short};

/// How long a stopping consumer waits for the handlers still running.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a consumer declares on each channel before consuming (exchanges, queues, bindings).
#[async_trait]
pub trait Topology: Send + Sync {
    async fn declare(&self, channel: &Channel) -> Result<(), amqprs::error::Error>;
}

/// What becomes of a delivery once its handler answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Taken: acknowledge it.
    Ack,
    /// Give it back to the queue, after the consumer's retry delay.
    Requeue,
    /// Reject it without requeueing: the queue dead-letters it, or drops it when it has no dead-letter exchange.
    Reject,
    /// Leave it unacknowledged: it returns to the queue when the channel closes.
    Leave,
}

/// A delivered message.
pub struct Delivery {
    pub body: Bytes,
    pub properties: BasicProperties,
}

pub type OnDelivery = Arc<dyn Fn(Delivery) -> BoxFuture<'static, Settle> + Send + Sync>;

/// How to consume a queue.
#[derive(Clone, Debug)]
pub struct ConsumeSpec {
    pub queue: String,
    /// Unacknowledged messages the broker hands this consumer at once.
    pub prefetch: u16,
    /// Handlers running at once.
    pub in_flight: usize,
    /// How long a message to requeue waits first, so a failing message does not loop hot.
    pub retry_delay: Duration,
    /// Acknowledge each message as it arrives, before its handler runs (at most once: `autoAck`).
    pub ack_on_receipt: bool,
}

/// A channel consuming a queue.
struct Session {
    channel: Arc<Channel>,
    tag: String,
    rx: tokio::sync::mpsc::UnboundedReceiver<ConsumerMessage>,
}

/// Starts consuming: declares the topology and subscribes once (an error here is the caller's), then keeps
/// delivering until `stop` is cancelled or the link closes, subscribing again after each loss.
pub async fn consume(
    link: Arc<Link>,
    spec: ConsumeSpec,
    topology: Arc<dyn Topology>,
    on_delivery: OnDelivery,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut spec = spec;
    spec.in_flight = spec.in_flight.clamp(1, Semaphore::MAX_PERMITS);
    short("queue name", &spec.queue)?;
    let first = start(&link, &spec, topology.as_ref()).await?;
    let stop = {
        let either = link.closed.child_token();
        let cancel = either.clone();
        tokio::spawn(async move {
            tokio::select! { _ = stop.cancelled() => cancel.cancel(), _ = cancel.cancelled() => {} }
        });
        either
    };
    let permits = Arc::new(Semaphore::new(spec.in_flight));
    let consumer = Consumer {
        link,
        spec,
        topology,
        on_delivery,
        permits,
        stop,
    };
    tokio::spawn(consumer.run(first));
    Ok(())
}

async fn start(link: &Link, spec: &ConsumeSpec, topology: &dyn Topology) -> Result<Session, String> {
    let conn = link.connection().await?;
    let (channel, watch) = open_channel(&conn).await?;
    topology
        .declare(&channel)
        .await
        .map_err(|e| format!("declaring queue {:?}: {}", spec.queue, watch.explain(e)))?;
    channel
        .basic_qos(BasicQosArguments::new(0, spec.prefetch, false))
        .await
        .map_err(|e| format!("setting the prefetch count: {}", watch.explain(e)))?;
    let args = BasicConsumeArguments::new(&spec.queue, "").manual_ack(true).finish();
    let (tag, rx) = channel
        .basic_consume_rx(args)
        .await
        .map_err(|e| format!("consuming queue {:?}: {}", spec.queue, watch.explain(e)))?;
    Ok(Session {
        channel: Arc::new(channel),
        tag,
        rx,
    })
}

struct Consumer {
    link: Arc<Link>,
    spec: ConsumeSpec,
    topology: Arc<dyn Topology>,
    on_delivery: OnDelivery,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Consumer {
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn run(self, first: Session) {
        let mut session = Some(first);
        let mut backoff = FIRST_BACKOFF;
        let cap = self.link.settings.reconnect_wait.max(FIRST_BACKOFF);
        loop {
            let s = match session.take() {
                Some(s) => s,
                None => match start(&self.link, &self.spec, self.topology.as_ref()).await {
                    Ok(s) => {
                        tracing::info!(queue = %self.spec.queue, "consuming again");
                        backoff = FIRST_BACKOFF;
                        s
                    }
                    Err(e) => {
                        tracing::warn!(queue = %self.spec.queue, "subscribing failed, trying again in {backoff:?}: {e}");
                        if !self.sleep(backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(cap);
                        continue;
                    }
                },
            };
            self.serve(s).await;
            if self.stop.is_cancelled() {
                return;
            }
            tracing::warn!(queue = %self.spec.queue, "the channel or connection was lost; subscribing again");
            if !self.sleep(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(cap);
        }
    }

    /// Hands each delivery of `s` to the handler until the stream ends (a loss) or the consumer stops; then
    /// cancels the subscription, lets the running handlers finish and closes the channel, so every message not
    /// taken returns to the queue.
    async fn serve(&self, mut s: Session) {
        loop {
            let m = tokio::select! {
                _ = self.stop.cancelled() => break,
                m = s.rx.recv() => m,
            };
            let Some(m) = m else { return };
            let (Some(deliver), Some(content)) = (m.deliver, m.content) else {
                continue;
            };
            let permit = tokio::select! {
                _ = self.stop.cancelled() => break,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let tag = deliver.delivery_tag();
            let channel = s.channel.clone();
            if self.spec.ack_on_receipt {
                settle(&channel, tag, Settle::Ack).await;
            }
            let delivery = Delivery {
                body: Bytes::from(content),
                properties: m.basic_properties.unwrap_or_default(),
            };
            let handled = (self.on_delivery)(delivery);
            let (stop, delay, ack_on_receipt) = (self.stop.clone(), self.spec.retry_delay, self.spec.ack_on_receipt);
            tokio::spawn(async move {
                let verdict = handled.await;
                drop(permit);
                if ack_on_receipt {
                    return;
                }
                if verdict == Settle::Requeue {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                settle(&channel, tag, verdict).await;
            });
        }
        if s.channel.is_open() {
            let cancel = s.channel.basic_cancel(BasicCancelArguments::new(&s.tag));
            let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
        }
        let all = u32::try_from(self.spec.in_flight).unwrap_or(u32::MAX);
        if let Ok(Ok(permits)) = tokio::time::timeout(DRAIN_TIMEOUT, self.permits.acquire_many(all)).await {
            drop(permits);
        }
        if let Ok(channel) = Arc::try_unwrap(s.channel) {
            let _ = tokio::time::timeout(Duration::from_secs(5), channel.close()).await;
        }
    }
}

/// Acknowledges, rejects or requeues delivery `tag`. On a channel that has closed meanwhile nothing is sent: the
/// broker has already put the message back.
async fn settle(channel: &Channel, tag: u64, verdict: Settle) {
    if !channel.is_open() {
        return;
    }
    let sent = match verdict {
        Settle::Ack => channel.basic_ack(BasicAckArguments::new(tag, false)).await,
        Settle::Requeue => channel.basic_nack(BasicNackArguments::new(tag, false, true)).await,
        Settle::Reject => channel.basic_nack(BasicNackArguments::new(tag, false, false)).await,
        Settle::Leave => return,
    };
    if let Err(e) = sent {
        tracing::debug!("settling a delivery failed (the broker puts it back): {e}");
    }
}
