//! `pubsub.redis`: Redis Streams laid out as Dapr lays them out (a stream per topic, entries with a `data` field
//! and a JSON `metadata` field, a consumer group named by `consumerID`), so Dapr and tandem sidecars can share a
//! topic. Unlike Dapr's, a message the handler did not take is never acknowledged: it stays pending and is
//! claimed again once idle for `processingTimeout`, checked every `redeliverInterval` — also after a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Feature, Handler, Message, Nack, PubSub, PubSubError, SubscribeRequest, consumer_id, subscription_stop};
use crate::components::state::redis::RedisConfig;
use crate::components::{ComponentError, Metadata};

/// How long one blocking read waits for new entries before it looks at `stop` again.
const BLOCK: Duration = Duration::from_secs(2);

/// Typed `pubsub.redis` metadata beyond the connection (Dapr's names and defaults).
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub consumer: String,
    /// An entry pending this long is claimed again (0 turns reclaiming off, as in Dapr).
    pub processing_timeout: Duration,
    /// How often pending entries are checked (0 turns reclaiming off).
    pub redeliver_interval: Duration,
    /// Entries read at once.
    pub queue_depth: usize,
    /// Entries handled at once per subscription.
    pub concurrency: usize,
    /// `MAXLEN ~` on publish; 0 keeps every entry.
    pub max_len_approx: u64,
}

impl StreamSettings {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let positive = |field: &str, v: Option<u64>, default: u64| -> Result<u64, ComponentError> {
            match v {
                None => Ok(default),
                Some(0) => Err(ComponentError::invalid(field, "must be greater than 0")),
                Some(n) if n > 10_000 => Err(ComponentError::invalid(field, "must be at most 10000")),
                Some(n) => Ok(n),
            }
        };
        Ok(StreamSettings {
            consumer: consumer_id(md),
            processing_timeout: md.duration("processingTimeout")?.unwrap_or(Duration::from_secs(60)),
            redeliver_interval: md.duration("redeliverInterval")?.unwrap_or(Duration::from_secs(15)),
            queue_depth: positive("queueDepth", md.parse("queueDepth")?, 100)? as usize,
            concurrency: positive("concurrency", md.parse("concurrency")?, 10)? as usize,
            max_len_approx: md.parse("maxLenApprox")?.unwrap_or(0),
        })
    }
}

pub struct RedisStreams {
    config: RedisConfig,
    settings: StreamSettings,
    conn: ConnectionManager,
    closed: CancellationToken,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn PubSub>, ComponentError> {
    let config = RedisConfig::from_metadata(&md)?;
    let settings = StreamSettings::from_metadata(&md)?;
    let conn = config.connect(Some(Duration::from_secs(10))).await?;
    Ok(Arc::new(RedisStreams {
        config,
        settings,
        conn,
        closed: CancellationToken::new(),
    }))
}

/// One stream entry as read: its id and fields.
struct Entry {
    id: String,
    data: Bytes,
    metadata: BTreeMap<String, String>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// `[id, [field, value, ...]]` entries, as XREADGROUP (per stream) and XCLAIM answer them. Entries deleted
/// from the stream (trimmed) come back with no fields; they are skipped.
fn entries(v: &Value) -> Vec<Entry> {
    let mut out = vec![];
    for e in items(v) {
        let [id, fields] = items(e) else { continue };
        let Some(id) = text(id) else { continue };
        let mut data = Bytes::new();
        let mut metadata = BTreeMap::new();
        let mut present = false;
        let pairs: Vec<&Value> = match fields {
            Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
            other => items(other).iter().collect(),
        };
        for kv in pairs.chunks(2) {
            let [k, v] = kv else { continue };
            match text(k).as_deref() {
                Some("data") => {
                    present = true;
                    if let Value::BulkString(b) = v {
                        data = Bytes::copy_from_slice(b);
                    } else if let Some(t) = text(v) {
                        data = Bytes::from(t);
                    }
                }
                Some("metadata") => {
                    if let Some(t) = text(v) {
                        metadata = serde_json::from_str(&t).unwrap_or_default();
                    }
                }
                _ => {}
            }
        }
        if present {
            out.push(Entry { id, data, metadata });
        }
    }
    out
}

/// The entries of an XREADGROUP reply (RESP2 array or RESP3 map of streams; nil when the block timed out).
fn read_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        other => items(other)
            .iter()
            .flat_map(|s| match items(s) {
                [_, e] => entries(e),
                _ => vec![],
            })
            .collect(),
    }
}

impl RedisStreams {
    async fn create_group(&self, stream: &str) -> Result<(), PubSubError> {
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.settings.consumer)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(PubSubError::backend(format!(
                "redis streams: creating consumer group: {e}"
            ))),
        }
    }
}

/// What a subscription's loops share.
struct Subscription {
    stream: String,
    group: String,
    conn: ConnectionManager,
    handler: Handler,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Subscription {
    /// Hands `entry` to the handler under a concurrency permit; acknowledges it once taken.
    async fn dispatch(self: &Arc<Self>, entry: Entry) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let sub = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let msg = Message {
                topic: sub.stream.clone(),
                data: entry.data,
                content_type: None,
                metadata: entry.metadata,
            };
            match (sub.handler)(msg).await {
                Ok(()) => {
                    let mut conn = sub.conn.clone();
                    let acked: redis::RedisResult<i64> = redis::cmd("XACK")
                        .arg(&sub.stream)
                        .arg(&sub.group)
                        .arg(&entry.id)
                        .query_async(&mut conn)
                        .await;
                    if let Err(e) = acked {
                        tracing::warn!(stream = %sub.stream, id = %entry.id, "acknowledging failed; the entry will be delivered again: {e}");
                    }
                }
                Err(Nack::Retry(why)) => {
                    tracing::debug!(stream = %sub.stream, id = %entry.id, %why, "left pending for redelivery")
                }
                Err(Nack::Closing) => {}
            }
        });
    }

    /// New entries for the group, `count` at a time, until stopped.
    async fn poll(self: Arc<Self>, mut reader: ConnectionManager, count: usize) {
        while !self.stop.is_cancelled() {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.group)
                .arg(&self.group)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">");
            let read = cmd.query_async::<Value>(&mut reader);
            let reply = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = read => r,
            };
            match reply {
                Ok(v) => {
                    for e in read_reply(&v) {
                        if self.stop.is_cancelled() {
                            return;
                        }
                        self.dispatch(e).await;
                    }
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        tracing::warn!(stream = %self.stream, "consumer group missing (data loss on the server?); recreating it");
                        let _: redis::RedisResult<Value> = redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(&self.stream)
                            .arg(&self.group)
                            .arg("0")
                            .arg("MKSTREAM")
                            .query_async(&mut reader)
                            .await;
                    } else {
                        tracing::warn!(stream = %self.stream, "reading from redis failed: {e}");
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Every `interval`, claims entries pending longer than `idle` (their reader died or did not take them) and
    /// hands them over again.
    async fn reclaim(self: Arc<Self>, idle: Duration, interval: Duration, count: usize) {
        loop {
            let mut conn = self.conn.clone();
            let claimed: redis::RedisResult<Value> = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.group)
                .arg(idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await;
            match claimed {
                Ok(v) => {
                    // [next-cursor, entries, deleted-ids]
                    if let Some(list) = items(&v).get(1) {
                        for e in entries(list) {
                            if self.stop.is_cancelled() {
                                return;
                            }
                            self.dispatch(e).await;
                        }
                    }
                    // Entries trimmed away while pending can never be delivered: XAUTOCLAIM drops them itself.
                }
                Err(e) => tracing::warn!(stream = %self.stream, "claiming pending entries failed: {e}"),
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[async_trait]
impl PubSub for RedisStreams {
    fn features(&self) -> &'static [Feature] {
        &[]
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        if self.closed.is_cancelled() {
            return Err(PubSubError::Closed);
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&msg.topic);
        if self.settings.max_len_approx > 0 {
            cmd.arg("MAXLEN").arg("~").arg(self.settings.max_len_approx);
        }
        cmd.arg("*").arg("data").arg(msg.data.as_ref());
        if !msg.metadata.is_empty() {
            let md = serde_json::to_string(&msg.metadata).map_err(PubSubError::backend)?;
            cmd.arg("metadata").arg(md);
        }
        let mut conn = self.conn.clone();
        cmd.query_async::<Value>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| PubSubError::backend(format!("redis streams: error from publish: {e}")))
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
        self.create_group(&req.topic).await?;
        // Blocking reads get a connection of their own: on a shared one they would hold up every other command.
        let reader = self
            .config
            .connect(Some(BLOCK + Duration::from_secs(10)))
            .await
            .map_err(|e| PubSubError::backend(e.to_string()))?;
        let stop = subscription_stop(stop, &self.closed);
        let s = &self.settings;
        let sub = Arc::new(Subscription {
            stream: req.topic,
            group: s.consumer.clone(),
            conn: self.conn.clone(),
            handler,
            permits: Arc::new(Semaphore::new(s.concurrency)),
            stop,
        });
        tokio::spawn(sub.clone().poll(reader, s.queue_depth));
        if !s.processing_timeout.is_zero() && !s.redeliver_interval.is_zero() {
            tokio::spawn(sub.reclaim(s.processing_timeout, s.redeliver_interval, s.queue_depth));
        }
        Ok(())
    }

    async fn close(&self) {
        self.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_dapr_layout_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("orders"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("data"), bulk("{}"), bulk("metadata"), bulk(r#"{"a":"b"}"#)]),
                ]),
                // A trimmed entry: no fields.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let got = read_reply(&reply);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "1-0");
        assert_eq!(&got[0].data[..], b"{}");
        assert_eq!(got[0].metadata.get("a").map(String::as_str), Some("b"));
        assert!(read_reply(&Value::Nil).is_empty());
    }

    #[test]
    fn settings_follow_dapr_names_and_bounds() {
        let md = Metadata::new(
            "p",
            "app",
            "",
            [
                ("redisHost".into(), "localhost:6379".into()),
                ("processingTimeout".into(), "2s".into()),
                ("concurrency".into(), "3".into()),
            ],
        );
        let s = StreamSettings::from_metadata(&md).unwrap();
        assert_eq!(s.consumer, "app");
        assert_eq!(s.processing_timeout, Duration::from_secs(2));
        assert_eq!(s.redeliver_interval, Duration::from_secs(15));
        assert_eq!(s.concurrency, 3);
        let bad = Metadata::new("p", "app", "", [("queueDepth".into(), "0".into())]);
        assert!(StreamSettings::from_metadata(&bad).is_err());
    }
}
