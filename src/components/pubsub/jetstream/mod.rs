//! `pubsub.jetstream`: NATS JetStream. A topic is a subject that a stream (created beforehand, as Dapr expects)
//! stores; publishing waits until the stream has stored the message. Each consumer group (`durableName`, else
//! `consumerID`, else the app id) reads a topic through one durable pull consumer, so the subscribers of a group
//! share its messages and every group gets all of them. A message is acknowledged only once the handler took it:
//! one it asked to retry is nak'd with a delay, and one left by a closing subscriber is nak'd at once for the next
//! subscriber — never dropped.

mod config;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, PullConsumer};
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishAckFuture};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::{self, Context};
use async_nats::{HeaderMap, HeaderName, header};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::{Auth, JetStreamConfig, durable_name};

use super::{Feature, Handler, Message, Nack, PubSub, PubSubError, SubscribeRequest, subscription_stop};
use crate::components::{ComponentError, Metadata};

/// Wait before reopening a consumer after an error (the server restarting, the consumer deleted); doubled for
/// each failure in a row, up to 16 times.
const REOPEN: Duration = Duration::from_secs(1);
/// Publishes of a bulk publish sent before their acknowledgements are awaited (the client bounds those in flight).
const BULK_CHUNK: usize = 256;
/// How long `close` waits for handlers under way to finish before it closes the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The header carrying a message's content type.
const CONTENT_TYPE: &str = "Content-Type";

pub struct JetStream {
    consumers: Consumers,
    client: async_nats::Client,
    closed: CancellationToken,
    /// Each live subscription's handler permits and their number: `close` waits until they are all back.
    in_flight: Mutex<Vec<(Weak<Semaphore>, u32)>>,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn PubSub>, ComponentError> {
    let cfg = JetStreamConfig::from_metadata(&md)?;
    let mut opts = async_nats::ConnectOptions::new()
        .name(&cfg.name)
        .connection_timeout(Duration::from_secs(10));
    match &cfg.auth {
        Auth::None => {}
        Auth::Token(t) => opts = opts.token(t.clone()),
        Auth::ClientCert { cert, key } => opts = opts.add_client_certificate(cert.clone(), key.clone()),
    }
    let client = opts
        .connect(cfg.servers.as_slice())
        .await
        .map_err(|e| ComponentError::Init(format!("jetstream: connecting to NATS: {e}")))?;
    let js = match (&cfg.domain, &cfg.api_prefix) {
        (Some(domain), _) => jetstream::with_domain(client.clone(), domain),
        (None, Some(prefix)) => jetstream::with_prefix(client.clone(), prefix),
        (None, None) => jetstream::new(client.clone()),
    };
    // Fail at start-up, not at the first publish, when the server has no JetStream (or the account no access).
    // The answer is read loosely: its fields vary across server versions.
    let info: serde_json::Value = js
        .request("INFO", &())
        .await
        .map_err(|e| ComponentError::Init(format!("jetstream: the NATS server does not offer JetStream: {e}")))?;
    if let Some(e) = info.get("error") {
        return Err(ComponentError::Init(format!(
            "jetstream: the NATS server does not offer JetStream to this account: {e}"
        )));
    }
    Ok(Arc::new(JetStream {
        consumers: Consumers { cfg: Arc::new(cfg), js },
        client,
        closed: CancellationToken::new(),
        in_flight: Mutex::new(vec![]),
    }))
}

/// The headers a message travels with: its metadata (names NATS cannot carry are left out), its content type,
/// and the CloudEvent's id as `Nats-Msg-Id`, so the stream drops a publish repeated within its duplicate window.
fn headers(msg: &Message) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &msg.metadata {
        match HeaderName::try_from(k.as_str()) {
            Ok(name) if !k.is_empty() => h.insert(name, v.as_str()),
            _ => tracing::debug!(key = %k, "metadata key is not a valid NATS header name; not sent"),
        }
    }
    if let Some(ct) = &msg.content_type {
        h.insert(CONTENT_TYPE, ct.as_str());
    }
    if h.get(header::NATS_MESSAGE_ID).is_none()
        && let Some(id) = cloudevent_id(&msg.data)
    {
        h.insert(header::NATS_MESSAGE_ID, id);
    }
    h
}

/// The `id` of a CloudEvent (JSON with `specversion`); anything else has none.
fn cloudevent_id(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        id: Option<serde_json::Value>,
        specversion: Option<serde_json::Value>,
    }
    if data.first().is_none_or(|&b| b != b'{') {
        return None;
    }
    let e: Envelope = serde_json::from_slice(data).ok()?;
    e.specversion?;
    match e.id? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The message a subscriber gets: the payload, the content type, and the headers as metadata (less NATS's own)
/// plus `Topic`, the subject it was published to, as Dapr adds.
fn delivered(topic: &str, m: &async_nats::Message) -> Message {
    let mut metadata = BTreeMap::new();
    let mut content_type = None;
    for (name, values) in m.headers.iter().flat_map(|h| h.iter()) {
        let (name, Some(value)) = (name.as_ref() as &str, values.last()) else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.as_str().to_owned());
        } else if !name.to_ascii_lowercase().starts_with("nats-") {
            metadata.insert(name.to_owned(), value.as_str().to_owned());
        }
    }
    metadata.insert("Topic".to_owned(), m.subject.as_str().to_owned());
    Message {
        topic: topic.to_owned(),
        data: m.payload.clone(),
        content_type,
        metadata,
    }
}

impl JetStream {
    /// Sends `msg`; the future answers once the stream stored it.
    async fn send(&self, msg: &Message) -> Result<PublishAckFuture, PubSubError> {
        if self.closed.is_cancelled() {
            return Err(PubSubError::Closed);
        }
        let publish = PublishMessage::build().payload(msg.data.clone()).headers(headers(msg));
        self.consumers
            .js
            .send_publish(msg.topic.clone(), publish)
            .await
            .map_err(|e| publish_failed(msg, e))
    }
}

fn publish_failed(msg: &Message, e: impl std::fmt::Display) -> PubSubError {
    PubSubError::backend(format!("jetstream: publishing to {:?}: {e}", msg.topic))
}

/// Finds streams and opens the durable consumers of a group.
#[derive(Clone)]
struct Consumers {
    cfg: Arc<JetStreamConfig>,
    js: Context,
}

impl Consumers {
    /// The stream holding `topic`: `streamName`, else the one whose subjects cover it.
    async fn stream_of(&self, topic: &str) -> Result<String, PubSubError> {
        if let Some(s) = &self.cfg.stream_name {
            return Ok(s.clone());
        }
        self.js.stream_by_subject(topic).await.map_err(|e| match e.kind() {
            GetStreamByNameErrorKind::InvalidSubject => {
                PubSubError::backend(format!("jetstream: topic {topic:?} is not a valid NATS subject"))
            }
            GetStreamByNameErrorKind::NotFound => PubSubError::backend(format!(
                "jetstream: no stream holds subject {topic:?}; create one covering it or set streamName"
            )),
            _ => PubSubError::backend(format!("jetstream: finding the stream of subject {topic:?}: {e}")),
        })
    }

    /// Creates the group's durable consumer of `topic`, or takes the existing one (updated to this config).
    async fn open(&self, topic: &str) -> Result<PullConsumer, PubSubError> {
        let stream = self.stream_of(topic).await?;
        let c = &self.cfg;
        let name = durable_name(&c.group, topic);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("tandem pubsub.jetstream: group {:?}, topic {topic:?}", c.group)),
            filter_subject: topic.to_owned(),
            deliver_policy: c.deliver_policy,
            ack_policy: c.ack_policy,
            ack_wait: c.ack_wait.unwrap_or_default(),
            max_deliver: c.max_deliver.unwrap_or_default(),
            backoff: c.backoff.clone(),
            max_ack_pending: c.max_ack_pending.unwrap_or_default(),
            num_replicas: c.replicas,
            memory_storage: c.memory_storage,
            rate_limit: c.rate_limit,
            ..Default::default()
        };
        self.js.create_consumer_on_stream(config, &stream).await.map_err(|e| {
            PubSubError::backend(format!(
                "jetstream: creating consumer {name:?} of subject {topic:?} on stream {stream:?}: {e}"
            ))
        })
    }
}

/// Messages pulled per request at least, whatever the handler concurrency (one per request took a round trip each:
/// about 90 messages a second under `single`).
const PULL_AHEAD: usize = 32;

/// What a subscription's reading loop and its handlers share.
struct Subscription {
    topic: String,
    handler: Handler,
    permits: Arc<Semaphore>,
    batch: usize,
    consumers: Consumers,
    /// Cancelled when the subscription stops, the component closes, or a handler says it is closing.
    stop: CancellationToken,
}

impl Subscription {
    /// Hands `m` to the handler and tells the server what became of it.
    async fn handle(&self, m: jetstream::Message) {
        let attempt = m.info().map(|i| i.delivered).unwrap_or(1);
        let outcome = (self.handler)(delivered(&self.topic, &m)).await;
        if outcome == Err(Nack::Closing) {
            // Stop pulling more: every message this subscriber would get now would come back the same way.
            self.stop.cancel();
        }
        if self.consumers.cfg.ack_policy == AckPolicy::None {
            return;
        }
        let reply = match outcome {
            Ok(()) => AckKind::Ack,
            Err(Nack::Retry(why)) => {
                tracing::debug!(topic = %self.topic, attempt, %why, "handing the message back for a later retry");
                AckKind::Nak(Some(self.consumers.cfg.retry_delay(attempt)))
            }
            // Back to the stream at once, for the next subscriber.
            Err(Nack::Closing) => AckKind::Nak(None),
        };
        if let Err(e) = m.ack_with(reply).await {
            tracing::warn!(topic = %self.topic, "answering the server failed; the message comes again after ackWait: {e}");
        }
    }

    /// Pulls messages for the handlers, no more than they can take, until stopped; reopens the consumer after an
    /// error (the connection lost for good, the consumer or its stream deleted), waiting longer each time in a row.
    async fn run(self: Arc<Self>, mut consumer: Option<PullConsumer>) {
        let mut failures = 0;
        loop {
            let opened = match consumer.take() {
                Some(c) => Ok(c),
                None => self.consumers.open(&self.topic).await,
            };
            let messages = match opened {
                Ok(c) => c
                    .stream()
                    .max_messages_per_batch(self.batch)
                    .heartbeat(self.consumers.cfg.heartbeat)
                    .messages()
                    .await
                    .map_err(|e| PubSubError::backend(format!("jetstream: pulling messages: {e}"))),
                Err(e) => Err(e),
            };
            match messages {
                Ok(messages) => {
                    failures = 0;
                    if self.read(messages).await {
                        return;
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(topic = %self.topic, "{e}; trying again");
                }
            }
            if self.pause(REOPEN * 2u32.pow(failures.min(4))).await {
                return;
            }
        }
    }

    /// Hands messages to the handlers; true once stopped, false after an error.
    async fn read(self: &Arc<Self>, mut messages: consumer::pull::Stream) -> bool {
        loop {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => return self.give_back(messages).await,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return true,
                },
            };
            let next = tokio::select! {
                _ = self.stop.cancelled() => return self.give_back(messages).await,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(m)) => {
                    let sub = self.clone();
                    tokio::spawn(
                        async move {
                            let _permit = permit;
                            sub.handle(m).await;
                        }
                        .in_current_span(),
                    );
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, "jetstream: reading messages: {e}; reopening the consumer");
                    return false;
                }
                None => return false,
            }
        }
    }

    /// On stopping: naks what was pulled but not handed out, so the next subscriber gets it now rather than
    /// after ackWait. Returns true.
    async fn give_back(&self, mut messages: consumer::pull::Stream) -> bool {
        while let Some(Some(Ok(m))) = messages.next().now_or_never() {
            if self.consumers.cfg.ack_policy != AckPolicy::None {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
        }
        true
    }

    /// Waits before trying again; true if stopped meanwhile.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(wait) => false,
        }
    }
}

#[async_trait]
impl PubSub for JetStream {
    fn features(&self) -> &'static [Feature] {
        &[]
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        let ack = self.send(msg).await?;
        ack.await.map(|_| ()).map_err(|e| publish_failed(msg, e))
    }

    async fn bulk_publish(&self, entries: &[super::BulkEntry]) -> Vec<super::FailedEntry> {
        // Sends a chunk, then waits for the stream's acknowledgements of it together.
        let mut failed = vec![];
        for chunk in entries.chunks(BULK_CHUNK) {
            let mut sent = Vec::with_capacity(chunk.len());
            for e in chunk {
                sent.push((e, self.send(&e.message).await));
            }
            let acks = sent.into_iter().map(|(e, sent)| async move {
                let stored = match sent {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|err| publish_failed(&e.message, err)),
                    Err(err) => Err(err),
                };
                stored.err().map(|err| super::FailedEntry {
                    entry_id: e.entry_id.clone(),
                    error: err.to_string(),
                })
            });
            failed.extend(futures::future::join_all(acks).await.into_iter().flatten());
        }
        failed
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
        let consumer = self.consumers.open(&req.topic).await?;
        let stop = subscription_stop(stop, &self.closed);
        let n = self.consumers.cfg.concurrency;
        let permits = Arc::new(Semaphore::new(n));
        {
            let mut subs = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            // A subscription that ended (its loop and handlers gone) has nothing left to wait for.
            subs.retain(|(s, _)| s.strong_count() > 0);
            subs.push((Arc::downgrade(&permits), u32::try_from(n).unwrap_or(u32::MAX)));
        }
        let sub = Arc::new(Subscription {
            topic: req.topic,
            handler,
            permits,
            // Pulling one message per request (concurrency `single`) costs a round trip each; a few dozen are
            // pulled ahead and wait for a handler (well within ackWait at any sane handler speed).
            batch: n.clamp(PULL_AHEAD, 256),
            consumers: self.consumers.clone(),
            stop,
        });
        let span = tracing::info_span!("jetstream subscription", topic = %sub.topic, group = %self.consumers.cfg.group);
        tokio::spawn(sub.run(Some(consumer)).instrument(span));
        Ok(())
    }

    async fn close(&self) {
        self.closed.cancel();
        let subs = std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()));
        let all_back = async {
            for (permits, n) in subs {
                if let Some(permits) = permits.upgrade() {
                    let _ = permits.acquire_many(n).await;
                }
            }
        };
        if tokio::time::timeout(CLOSE_GRACE, all_back).await.is_err() {
            tracing::warn!("jetstream: handlers still running at close; their messages come again after ackWait");
        }
        if let Err(e) = self.client.drain().await {
            tracing::debug!("jetstream: closing the connection: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn metadata_travels_as_headers_and_comes_back() {
        let msg = Message {
            topic: "orders".into(),
            data: Bytes::from_static(br#"{"specversion":"1.0","id":"ce-1","data":{}}"#),
            content_type: Some("application/cloudevents+json".into()),
            metadata: BTreeMap::from([
                ("traceparent".to_owned(), "00-abc".to_owned()),
                ("bad:name".to_owned(), "x".to_owned()),
                ("".to_owned(), "x".to_owned()),
                ("crlf".to_owned(), "a\r\nb".to_owned()),
            ]),
        };
        let h = headers(&msg);
        assert_eq!(h.get(header::NATS_MESSAGE_ID).map(|v| v.as_str()), Some("ce-1"));
        let received = async_nats::Message {
            subject: "orders".to_owned().into(),
            reply: None,
            payload: msg.data.clone(),
            headers: Some(h),
            status: None,
            description: None,
            length: 0,
        };
        let got = delivered("orders", &received);
        assert_eq!(got.content_type.as_deref(), Some("application/cloudevents+json"));
        assert_eq!(got.metadata.get("traceparent").map(String::as_str), Some("00-abc"));
        assert_eq!(
            got.metadata.get("crlf").map(String::as_str),
            Some("a  b"),
            "no header injection"
        );
        assert_eq!(got.metadata.get("Topic").map(String::as_str), Some("orders"));
        assert!(
            !got.metadata
                .keys()
                .any(|k| k.starts_with("Nats-") || k.contains(':') || k.is_empty())
        );
        assert_eq!(got.data, msg.data);
    }

    #[test]
    fn only_cloudevents_set_a_message_id() {
        assert_eq!(
            cloudevent_id(br#"{"specversion":"1.0","id":"x"}"#).as_deref(),
            Some("x")
        );
        // A raw payload that happens to have an id must not be deduplicated against another with the same id.
        assert_eq!(cloudevent_id(br#"{"id":"order-42"}"#), None);
        assert_eq!(cloudevent_id(br#"{"specversion":"1.0","id":7}"#), None);
        assert_eq!(cloudevent_id(br#"{"specversion":"1.0","id":""}"#), None);
        assert_eq!(cloudevent_id(b"plain text"), None);
        assert_eq!(cloudevent_id(b"{broken"), None);
        assert_eq!(cloudevent_id(b""), None);
        let explicit = Message {
            data: Bytes::from_static(br#"{"specversion":"1.0","id":"ce"}"#),
            metadata: BTreeMap::from([("Nats-Msg-Id".to_owned(), "mine".to_owned())]),
            ..Default::default()
        };
        assert_eq!(
            headers(&explicit).get(header::NATS_MESSAGE_ID).map(|v| v.as_str()),
            Some("mine"),
            "an id the publisher chose wins"
        );
    }
}
