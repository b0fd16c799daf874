//! Reading topics as a member of a consumer group. Each assigned partition has a lane: a task that hands its
//! messages to the handler one at a time, in order, and stores the offset of a message only once the handler took
//! it; stored offsets are committed every second and when the member leaves or loses the partition. A message the
//! handler wants again is retried in place under the back-off policy, holding up its partition (Kafka's order),
//! not the others. A lane reads ahead at most `channelBufferSize` messages; beyond that its partition is paused at
//! the broker until the lane catches up. A handler that says the subscription is closing leaves the message, and
//! everything after it in the partition, uncommitted for the next member.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::KafkaConfig;

/// How often lanes that fell behind are topped up from what was read ahead for them.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How long stopping waits for handlers under way before closing the consumer anyway.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// One message as read, owned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    /// `None` for a tombstone.
    pub payload: Option<Bytes>,
    /// Milliseconds since the epoch, when the message has a timestamp.
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Bytes)>,
}

impl Delivered {
    fn read(m: &BorrowedMessage<'_>) -> Delivered {
        Delivered {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(Bytes::copy_from_slice),
            payload: m.payload().map(Bytes::copy_from_slice),
            timestamp: m.timestamp().to_millis(),
            headers: headers(m),
        }
    }

    /// The value as handed over: a tombstone reads as `null`, as in Dapr.
    pub fn data(&self) -> Bytes {
        self.payload.clone().unwrap_or_else(|| Bytes::from_static(b"null"))
    }

    /// Dapr's metadata for a read message: `__key`, `__offset`, `__topic`, `__timestamp`, `__partition`, then the
    /// headers (not UTF-8: replaced characters), URL-escaped with `escapeHeaders`.
    pub fn metadata(&self, config: &KafkaConfig) -> BTreeMap<String, String> {
        let text = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            if config.escape_headers {
                percent_encoding::utf8_percent_encode(&s, QUERY_ESCAPE).to_string()
            } else {
                s.into_owned()
            }
        };
        let mut md = BTreeMap::new();
        if let Some(k) = &self.key {
            md.insert("__key".to_owned(), text(k));
        }
        md.insert("__offset".to_owned(), self.offset.to_string());
        md.insert("__topic".to_owned(), self.topic.clone());
        md.insert("__timestamp".to_owned(), self.timestamp.unwrap_or(0).to_string());
        md.insert("__partition".to_owned(), self.partition.to_string());
        for (name, value) in &self.headers {
            if !config.excluded(name) {
                md.insert(name.clone(), text(value));
            }
        }
        md
    }
}

/// The headers of `m`, names read leniently: rdkafka's own reader panics on a header name that is not UTF-8, and
/// header names come from whoever produced the message.
fn headers(m: &BorrowedMessage<'_>) -> Vec<(String, Bytes)> {
    use rdkafka::bindings as rd;
    let ok = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    let mut out = vec![];
    // SAFETY: `m.ptr()` is a live message for as long as `m` is borrowed; librdkafka owns its headers and the name
    // (NUL-terminated) and value (`size` bytes) it points to for the message's lifetime; they are only read, and
    // copied, here.
    unsafe {
        let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        if rd::rd_kafka_message_headers(m.ptr(), &mut hdrs) != ok || hdrs.is_null() {
            return out;
        }
        for i in 0..rd::rd_kafka_header_cnt(hdrs) {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            if rd::rd_kafka_header_get_all(hdrs, i, &mut name, &mut value, &mut size) != ok || name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned();
            let value = if value.is_null() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(std::slice::from_raw_parts(value.cast::<u8>(), size))
            };
            out.push((name, value));
        }
    }
    out
}

/// What Go's `url.QueryEscape` escapes: all but letters, digits and `-_.~` (a space becomes `%20` here, `+`
/// there).
const QUERY_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What the handler made of a message.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Taken: its offset may be committed.
    Taken,
    /// Not taken; deliver it again (under the back-off policy, if retrying is on).
    Retry(String),
    /// The subscription is closing: leave it, and the rest of its partition, uncommitted.
    Leave,
}

pub type DeliveryHandler = Arc<dyn Fn(Delivered) -> BoxFuture<'static, Verdict> + Send + Sync>;

type Key = (String, i32);

/// Follows the group's assignment: revoked partitions stop their lanes; a new assignment is resumed (a partition
/// paused before it was revoked would otherwise stay paused) and wakes whoever waits for the first one.
struct GroupContext {
    lanes: Mutex<HashMap<Key, CancellationToken>>,
    assigned: watch::Sender<bool>,
    group: String,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                if let Some(lane) = lanes.remove(&(e.topic().to_owned(), e.partition())) {
                    lane.cancel();
                }
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::debug!(group = %self.group, partitions = tpl.count(), "kafka: partitions assigned");
                if tpl.count() > 0 {
                    let _ = consumer.resume(tpl);
                }
                self.assigned.send_replace(true);
            }
            Rebalance::Revoke(tpl) => {
                tracing::debug!(group = %self.group, partitions = tpl.count(), "kafka: partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(group = %self.group, "kafka: rebalancing failed: {e}"),
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// Joins `group`, subscribes to `topics` (which must exist) and hands their messages to `handler` until `stop`
/// or `closed` (the component's) is cancelled. Returns once the group assigned this member its partitions (or,
/// if that takes longer than the session timeout and some, while it still waits), with the task that reads; the
/// task ends after the consumer left the group.
pub async fn start(
    config: Arc<KafkaConfig>,
    group: &str,
    topics: &[String],
    handler: DeliveryHandler,
    stop: CancellationToken,
    closed: &CancellationToken,
) -> Result<JoinHandle<()>, String> {
    let (assigned, mut on_assigned) = watch::channel(false);
    let context = GroupContext {
        lanes: Mutex::default(),
        assigned,
        group: group.to_owned(),
    };
    let consumer: GroupConsumer = config
        .consumer_config(group)
        .create_with_context(context)
        .map_err(|e| format!("kafka: creating the consumer: {e}"))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| format!("kafka: subscribing to {}: {e}", topics.join(",")))?;
    let stop = either(stop, closed);
    let reader = Reader {
        consumer: Arc::new(consumer),
        config: config.clone(),
        handler,
        stop,
        lanes: HashMap::new(),
        retired: HashMap::new(),
    };
    let span = tracing::info_span!("kafka_consumer", %group, topics = %topics.join(","));
    let task = tokio::spawn(tracing::Instrument::instrument(reader.run(), span));
    let wait = config.session_timeout + Duration::from_secs(5);
    if tokio::time::timeout(wait, on_assigned.wait_for(|a| *a)).await.is_err() {
        tracing::warn!(%group, "kafka: no partitions assigned within {wait:?}; reading starts once the group assigns them");
    }
    Ok(task)
}

/// The readers a component started; closing stops them all and waits until they left their groups.
#[derive(Default)]
pub struct Readers {
    pub closed: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Readers {
    /// How long closing waits for the readers to leave their groups.
    const CLOSE_WAIT: Duration = Duration::from_secs(75);

    /// Starts a reader (see [`start`]) that stops with `stop` or when the component closes.
    pub async fn start(
        &self,
        config: Arc<KafkaConfig>,
        group: &str,
        topics: &[String],
        handler: DeliveryHandler,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let task = start(config, group, topics, handler, stop, &self.closed).await?;
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok(())
    }

    pub async fn close(&self) {
        self.closed.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        if tokio::time::timeout(Self::CLOSE_WAIT, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                "kafka: readers did not leave their consumer groups within {:?}",
                Self::CLOSE_WAIT
            );
        }
    }
}

/// A token cancelled as soon as `a` or `b` is.
fn either(a: CancellationToken, b: &CancellationToken) -> CancellationToken {
    let both = b.child_token();
    let watch = both.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = a.cancelled() => watch.cancel(),
            _ = watch.cancelled() => {}
        }
    });
    both
}

/// A partition's lane, as the reader sees it.
struct Lane {
    key: Key,
    tx: mpsc::Sender<Delivered>,
    /// Read for the lane while it was full, in order; the partition is paused meanwhile.
    overflow: VecDeque<Delivered>,
    paused: bool,
    cancel: CancellationToken,
    worker: JoinHandle<()>,
}

struct Reader {
    consumer: Arc<GroupConsumer>,
    config: Arc<KafkaConfig>,
    handler: DeliveryHandler,
    stop: CancellationToken,
    lanes: HashMap<Key, Lane>,
    /// Workers of revoked lanes still finishing a message; a new lane for the partition waits for its old one.
    retired: HashMap<Key, JoinHandle<()>>,
}

impl Reader {
    async fn run(mut self) {
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let consumer = self.consumer.clone();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                read = consumer.recv() => match read {
                    Ok(m) => {
                        let d = Delivered::read(&m);
                        drop(m);
                        self.route(d);
                    }
                    Err(e) => {
                        tracing::warn!("kafka: reading failed: {e}");
                        tokio::select! {
                            _ = self.stop.cancelled() => break,
                            _ = tokio::time::sleep(self.config.consume_retry_interval) => {}
                        }
                    }
                },
                _ = drain.tick() => self.drain(),
            }
        }
        self.shut_down().await;
    }

    /// Hands a message to its partition's lane (starting one when the partition is new or was reassigned).
    fn route(&mut self, d: Delivered) {
        let key = (d.topic.clone(), d.partition);
        if self.lanes.get(&key).is_some_and(|l| l.cancel.is_cancelled()) {
            self.retire(&key);
        }
        let lane = match self.lanes.entry(key.clone()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let previous = self.retired.remove(&key);
                v.insert(Lane::start(
                    &self.consumer,
                    &self.config,
                    &self.handler,
                    &self.stop,
                    key,
                    previous,
                ))
            }
        };
        if !lane.overflow.is_empty() {
            lane.overflow.push_back(d);
            return;
        }
        match lane.tx.try_send(d) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(d)) => {
                lane.overflow.push_back(d);
                lane.pause(&self.consumer);
            }
            // The lane left its partition (the subscription is closing): read no more of it.
            Err(mpsc::error::TrySendError::Closed(_)) => lane.pause(&self.consumer),
        }
    }

    /// Forgets a revoked lane, keeping its worker until it finished the message under way.
    fn retire(&mut self, key: &Key) {
        if let Some(lane) = self.lanes.remove(key) {
            self.retired.insert(key.clone(), lane.worker);
        }
    }

    /// Moves read-ahead messages into lanes with room, resumes partitions whose lanes caught up, and forgets
    /// revoked lanes.
    fn drain(&mut self) {
        self.retired.retain(|_, w| !w.is_finished());
        let revoked: Vec<Key> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.cancel.is_cancelled())
            .map(|(k, _)| k.clone())
            .collect();
        for key in &revoked {
            self.retire(key);
        }
        for lane in self.lanes.values_mut() {
            while let Some(d) = lane.overflow.pop_front() {
                match lane.tx.try_send(d) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(d)) => {
                        lane.overflow.push_front(d);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => lane.overflow.clear(),
                }
            }
            if lane.paused && lane.overflow.is_empty() && !lane.tx.is_closed() {
                lane.paused = false;
                if let Err(e) = self.consumer.resume(&partition_list(&lane.key)) {
                    tracing::debug!(topic = %lane.key.0, partition = lane.key.1, "kafka: resuming failed: {e}");
                }
            }
        }
    }

    /// Stops the lanes, waits for handlers under way, then closes the consumer (committing what was stored and
    /// leaving the group) off the async threads, since closing blocks.
    async fn shut_down(mut self) {
        let workers: Vec<JoinHandle<()>> = self
            .lanes
            .drain()
            .map(|(_, l)| l.worker)
            .chain(self.retired.drain().map(|(_, w)| w))
            .collect();
        let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(STOP_GRACE, futures::future::join_all(workers))
            .await
            .is_err()
        {
            tracing::warn!("kafka: handlers still under way after {STOP_GRACE:?}; closing the consumer anyway");
            aborts.iter().for_each(|a| a.abort());
        }
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

fn partition_list((topic, partition): &Key) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, *partition);
    tpl
}

impl Lane {
    fn start(
        consumer: &Arc<GroupConsumer>,
        config: &KafkaConfig,
        handler: &DeliveryHandler,
        stop: &CancellationToken,
        key: Key,
        previous: Option<JoinHandle<()>>,
    ) -> Lane {
        let (tx, rx) = mpsc::channel(config.channel_buffer_size);
        let cancel = stop.child_token();
        consumer
            .context()
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), cancel.clone());
        let worker = Worker {
            consumer: Arc::downgrade(consumer),
            handler: handler.clone(),
            retry: config.retry.clone(),
            cancel: cancel.clone(),
            key: key.clone(),
        };
        Lane {
            key,
            tx,
            overflow: VecDeque::new(),
            paused: false,
            cancel,
            worker: tokio::spawn(worker.run(rx, previous)),
        }
    }

    fn pause(&mut self, consumer: &GroupConsumer) {
        if !self.paused {
            self.paused = true;
            if let Err(e) = consumer.pause(&partition_list(&self.key)) {
                tracing::debug!(topic = %self.key.0, partition = self.key.1, "kafka: pausing failed: {e}");
            }
        }
    }
}

/// Hands one partition's messages to the handler, one at a time.
struct Worker {
    /// Weak, so that the reader alone closes the consumer.
    consumer: Weak<GroupConsumer>,
    handler: DeliveryHandler,
    retry: Option<crate::resiliency::Retry>,
    cancel: CancellationToken,
    key: Key,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Delivered>, previous: Option<JoinHandle<()>>) {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        loop {
            let d = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                d = rx.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
            };
            let offset = d.offset;
            if !self.deliver(d).await {
                return;
            }
            let Some(consumer) = self.consumer.upgrade() else {
                return;
            };
            // Fails once the partition was revoked: the next member reads it again from the last commit.
            if let Err(e) = consumer.store_offset(&self.key.0, self.key.1, offset) {
                tracing::debug!(topic = %self.key.0, partition = self.key.1, offset, "kafka: storing the offset failed: {e}");
            }
        }
    }

    /// Delivers until taken (true), passed over after the retries ran out (true), or left (false).
    async fn deliver(&self, d: Delivered) -> bool {
        let mut backoff = self.retry.as_ref().map(|r| r.start());
        loop {
            let why = match (self.handler)(d.clone()).await {
                Verdict::Taken => return true,
                Verdict::Leave => return false,
                Verdict::Retry(why) => why,
            };
            if self.cancel.is_cancelled() {
                return false;
            }
            let delay = match (&self.retry, &mut backoff) {
                (Some(r), Some(state)) => r.next_delay(state, rand::random()),
                _ => None,
            };
            let (topic, partition, offset) = (&d.topic, d.partition, d.offset);
            let Some(delay) = delay else {
                if self.retry.is_some() {
                    tracing::error!(%topic, partition, offset, "kafka: too many failed attempts at processing the message; passing over it: {why}");
                } else {
                    tracing::warn!(%topic, partition, offset, "kafka: processing the message failed; passing over it (consumeRetryEnabled is false): {why}");
                }
                return true;
            };
            tracing::warn!(%topic, partition, offset, "kafka: processing the message failed; retrying in {delay:?}: {why}");
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::Metadata;

    fn config(extra: &[(&str, &str)]) -> KafkaConfig {
        let mut props = vec![
            ("brokers".to_owned(), "b:9092".to_owned()),
            ("authType".to_owned(), "none".to_owned()),
        ];
        props.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        KafkaConfig::from_metadata(&Metadata::new("k", "app", "", props), true, None).unwrap()
    }

    #[test]
    fn metadata_of_a_read_message_follows_dapr() {
        let d = Delivered {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            key: Some(Bytes::from_static(b"a b")),
            payload: None,
            timestamp: Some(1_700_000_000_000),
            headers: vec![
                ("traceparent".into(), Bytes::from_static(b"00-x")),
                ("bin".into(), Bytes::from_static(&[0xff])),
            ],
        };
        let md = d.metadata(&config(&[]));
        assert_eq!(md["__key"], "a b");
        assert_eq!(md["__offset"], "41");
        assert_eq!(md["__topic"], "orders");
        assert_eq!(md["__partition"], "2");
        assert_eq!(md["__timestamp"], "1700000000000");
        assert_eq!(md["traceparent"], "00-x");
        assert_eq!(md["bin"], "\u{fffd}");
        assert_eq!(&d.data()[..], b"null", "a tombstone reads as null");

        let escaped = d.metadata(&config(&[
            ("escapeHeaders", "true"),
            ("excludeHeaderMetaRegex", "^trace"),
        ]));
        assert_eq!(escaped["__key"], "a%20b");
        assert!(!escaped.contains_key("traceparent"));
    }
}
