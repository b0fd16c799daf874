//! `pubsub.sqlite` (tandem's own type): a broker in a SQLite file, so local apps each with their own sidecar
//! (`tandem run`'s embedded default) exchange messages with nothing else installed. Messages are rows; a
//! consumer group (the `consumerID`, the app id by default) has a cursor and leases: a message handed to a
//! subscriber is leased for `processingTimeout` and deleted from the group's pending list only when the handler
//! took it, so a message outlives a crashed or killed sidecar and goes to whichever sidecar of the group asks
//! next. Messages are kept for `retentionPeriod` (24h); a group created later starts with what is kept, as a
//! Redis Streams group created at `0` does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, params};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Feature, Handler, Message, Nack, PubSub, PubSubError, SubscribeRequest, consumer_id};
use crate::components::{ComponentError, Metadata, sqlite};

/// Most messages one poll leases.
const BATCH: usize = 64;
/// Longest wait between polls when the topic is idle (other processes' publishes are seen this late at most).
const IDLE_POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct SqlitePubSubConfig {
    pub connection_string: String,
    pub busy_timeout: Duration,
    pub consumer: String,
    pub processing_timeout: Duration,
    pub redeliver_interval: Duration,
    pub retention: Duration,
    pub concurrency: usize,
}

impl SqlitePubSubConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let connection_string = md
            .string("connectionString")
            .ok_or_else(|| ComponentError::invalid("connectionString", "is required (a file path)"))?;
        let concurrency = md.parse::<usize>("concurrency")?.unwrap_or(10);
        if !(1..=10_000).contains(&concurrency) {
            return Err(ComponentError::invalid("concurrency", "must be from 1 to 10000"));
        }
        let positive = |field: &str, d: Option<Duration>, default: Duration| match d {
            Some(d) if d.is_zero() => Err(ComponentError::invalid(field, "must be greater than 0")),
            d => Ok(d.unwrap_or(default)),
        };
        Ok(SqlitePubSubConfig {
            connection_string,
            busy_timeout: md.duration("busyTimeout")?.unwrap_or(Duration::from_secs(5)),
            consumer: consumer_id(md),
            processing_timeout: positive(
                "processingTimeout",
                md.duration("processingTimeout")?,
                Duration::from_secs(60),
            )?,
            redeliver_interval: positive(
                "redeliverInterval",
                md.duration("redeliverInterval")?,
                Duration::from_secs(2),
            )?,
            retention: positive(
                "retentionPeriod",
                md.duration("retentionPeriod")?,
                Duration::from_secs(24 * 3600),
            )?,
            concurrency,
        })
    }
}

pub struct SqlitePubSub {
    conn: Arc<Mutex<Connection>>,
    cfg: SqlitePubSubConfig,
    /// Woken by this process's publishes, so local subscribers do not wait for their next poll.
    published: Arc<Notify>,
    closed: CancellationToken,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn PubSub>, ComponentError> {
    let cfg = SqlitePubSubConfig::from_metadata(&md)?;
    let open_cfg = cfg.clone();
    let conn = tokio::task::spawn_blocking(move || open(&open_cfg))
        .await
        .map_err(|e| ComponentError::Init(e.to_string()))??;
    let ps = Arc::new(SqlitePubSub {
        conn: Arc::new(Mutex::new(conn)),
        cfg,
        published: Arc::new(Notify::new()),
        closed: CancellationToken::new(),
    });
    tokio::spawn(sweep(ps.conn.clone(), ps.cfg.retention, ps.closed.clone()));
    Ok(ps)
}

fn open(cfg: &SqlitePubSubConfig) -> Result<Connection, ComponentError> {
    let cs = &cfg.connection_string;
    sqlite::create_parent_dir(cs).map_err(|e| ComponentError::Init(format!("creating the folder of {cs:?}: {e}")))?;
    let init = || -> rusqlite::Result<Connection> {
        let conn = sqlite::connect(cs, cfg.busy_timeout, true)?;
        if !sqlite::is_in_memory(cs) {
            conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS pubsub_messages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL,
                data BLOB NOT NULL,
                metadata TEXT,
                created INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS pubsub_messages_topic ON pubsub_messages (topic, seq);
            CREATE INDEX IF NOT EXISTS pubsub_messages_created ON pubsub_messages (created);
            CREATE TABLE IF NOT EXISTS pubsub_groups (
                topic TEXT NOT NULL,
                grp TEXT NOT NULL,
                cursor INTEGER NOT NULL,
                PRIMARY KEY (topic, grp)
            );
            CREATE TABLE IF NOT EXISTS pubsub_pending (
                topic TEXT NOT NULL,
                grp TEXT NOT NULL,
                seq INTEGER NOT NULL,
                lease_until INTEGER NOT NULL,
                PRIMARY KEY (topic, grp, seq)
            );
            CREATE INDEX IF NOT EXISTS pubsub_pending_lease ON pubsub_pending (topic, grp, lease_until);",
        )?;
        Ok(conn)
    };
    sqlite::open_with_busy_retry(&format!("sqlite pubsub {cs:?}"), Duration::from_secs(30), init)
        .map_err(|e| ComponentError::Init(format!("opening sqlite database {cs:?}: {e}")))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn db_err(e: rusqlite::Error) -> PubSubError {
    PubSubError::Backend(format!("sqlite: {e}"))
}

async fn with_conn<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, PubSubError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    })
    .await
    .map_err(PubSubError::backend)?
    .map_err(db_err)
}

/// A leased message.
struct Leased {
    seq: i64,
    data: Vec<u8>,
    metadata: Option<String>,
}

/// Leases up to `limit` messages for `grp`: first those whose lease ran out (their subscriber died or asked for
/// a retry), then new ones past the group's cursor.
fn lease(
    conn: &mut Connection,
    topic: &str,
    grp: &str,
    lease: Duration,
    limit: usize,
) -> rusqlite::Result<Vec<Leased>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_ms();
    let until = now.saturating_add(ms(lease));
    let mut out = Vec::new();
    {
        let mut expired = tx.prepare_cached(
            "SELECT p.seq, m.data, m.metadata FROM pubsub_pending p LEFT JOIN pubsub_messages m ON m.seq = p.seq
             WHERE p.topic = ?1 AND p.grp = ?2 AND p.lease_until <= ?3 ORDER BY p.seq LIMIT ?4",
        )?;
        let rows = expired.query_map(params![topic, grp, now, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        let mut gone = vec![];
        for row in rows {
            let (seq, data, metadata) = row?;
            match data {
                Some(data) => out.push(Leased { seq, data, metadata }),
                None => gone.push(seq),
            }
        }
        let mut renew =
            tx.prepare_cached("UPDATE pubsub_pending SET lease_until = ?4 WHERE topic = ?1 AND grp = ?2 AND seq = ?3")?;
        for l in &out {
            renew.execute(params![topic, grp, l.seq, until])?;
        }
        // A pending message the retention sweep removed can never be delivered.
        let mut forget = tx.prepare_cached("DELETE FROM pubsub_pending WHERE topic = ?1 AND grp = ?2 AND seq = ?3")?;
        for seq in gone {
            forget.execute(params![topic, grp, seq])?;
        }
    }
    if out.len() < limit {
        let cursor: i64 = tx.query_row(
            "SELECT cursor FROM pubsub_groups WHERE topic = ?1 AND grp = ?2",
            params![topic, grp],
            |r| r.get(0),
        )?;
        let mut fresh = tx.prepare_cached(
            "SELECT seq, data, metadata FROM pubsub_messages WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = fresh.query_map(params![topic, cursor, (limit - out.len()) as i64], |r| {
            Ok(Leased {
                seq: r.get(0)?,
                data: r.get(1)?,
                metadata: r.get(2)?,
            })
        })?;
        let fresh: Vec<Leased> = rows.collect::<rusqlite::Result<_>>()?;
        if let Some(last) = fresh.last() {
            tx.execute(
                "UPDATE pubsub_groups SET cursor = ?3 WHERE topic = ?1 AND grp = ?2",
                params![topic, grp, last.seq],
            )?;
            let mut pend = tx.prepare_cached(
                "INSERT OR REPLACE INTO pubsub_pending (topic, grp, seq, lease_until) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for l in &fresh {
                pend.execute(params![topic, grp, l.seq, until])?;
            }
        }
        out.extend(fresh);
    }
    tx.commit()?;
    Ok(out)
}

/// Deletes messages older than `retention` (and what is pending for them), now and then.
async fn sweep(conn: Arc<Mutex<Connection>>, retention: Duration, closed: CancellationToken) {
    loop {
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let before = now_ms().saturating_sub(ms(retention));
        let swept = with_conn(&conn, move |c| {
            c.execute("DELETE FROM pubsub_messages WHERE created < ?1", params![before])
        })
        .await;
        if let Err(e) = swept {
            tracing::warn!("sqlite pubsub: removing old messages failed: {e}");
        }
    }
}

/// What a subscription's loop and its deliveries share.
struct Subscription {
    conn: Arc<Mutex<Connection>>,
    topic: String,
    grp: String,
    handler: Handler,
    redeliver: Duration,
}

impl Subscription {
    async fn deliver(self: Arc<Self>, l: Leased) {
        let msg = Message {
            topic: self.topic.clone(),
            data: Bytes::from(l.data),
            content_type: None,
            metadata: l
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or_default(),
        };
        let (topic, grp, seq) = (self.topic.clone(), self.grp.clone(), l.seq);
        let outcome = (self.handler)(msg).await;
        let done = match outcome {
            Ok(()) => {
                with_conn(&self.conn, move |c| {
                    c.execute(
                        "DELETE FROM pubsub_pending WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                        params![topic, grp, seq],
                    )
                })
                .await
            }
            Err(Nack::Retry(_)) => {
                let until = now_ms().saturating_add(ms(self.redeliver));
                with_conn(&self.conn, move |c| {
                    c.execute(
                        "UPDATE pubsub_pending SET lease_until = ?4 WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                        params![topic, grp, seq, until],
                    )
                })
                .await
            }
            // Stopping: the lease runs out and another subscriber (or this one, restarted) takes it.
            Err(Nack::Closing) => Ok(0),
        };
        if let Err(e) = done {
            tracing::warn!(topic = %self.topic, seq = l.seq, "recording a delivery failed; it will be delivered again: {e}");
        }
    }
}

#[async_trait]
impl PubSub for SqlitePubSub {
    fn features(&self) -> &'static [Feature] {
        &[Feature::BulkPublish]
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        self.bulk_insert(vec![msg.clone()]).await?;
        Ok(())
    }

    async fn bulk_publish(&self, entries: &[super::BulkEntry]) -> Vec<super::FailedEntry> {
        let msgs = entries.iter().map(|e| e.message.clone()).collect();
        match self.bulk_insert(msgs).await {
            Ok(()) => vec![],
            Err(e) => entries
                .iter()
                .map(|en| super::FailedEntry {
                    entry_id: en.entry_id.clone(),
                    error: e.to_string(),
                })
                .collect(),
        }
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
        let (topic, grp) = (req.topic.clone(), self.cfg.consumer.clone());
        {
            let (topic, grp) = (topic.clone(), grp.clone());
            with_conn(&self.conn, move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO pubsub_groups (topic, grp, cursor) VALUES (?1, ?2, 0)",
                    params![topic, grp],
                )
            })
            .await?;
        }
        let sub = Arc::new(Subscription {
            conn: self.conn.clone(),
            topic,
            grp,
            handler,
            redeliver: self.cfg.redeliver_interval,
        });
        let (published, closed) = (self.published.clone(), self.closed.clone());
        let (timeout, permits) = (
            self.cfg.processing_timeout,
            Arc::new(Semaphore::new(self.cfg.concurrency)),
        );
        tokio::spawn(async move {
            loop {
                if stop.is_cancelled() || closed.is_cancelled() {
                    return;
                }
                // Lease only what can be handled now, so leases do not run out while waiting in line.
                let mut free = permits.available_permits().min(BATCH);
                if free == 0 {
                    // Every handler is busy: wait for one to finish rather than for the next poll.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = closed.cancelled() => return,
                        p = permits.acquire() => drop(p),
                    }
                    free = permits.available_permits().min(BATCH);
                }
                let leased = if free == 0 {
                    Ok(vec![])
                } else {
                    let (topic, grp) = (sub.topic.clone(), sub.grp.clone());
                    with_conn(&sub.conn, move |c| lease(c, &topic, &grp, timeout, free)).await
                };
                let got = match leased {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::warn!(topic = %sub.topic, "sqlite pubsub: leasing messages failed: {e}");
                        vec![]
                    }
                };
                let busy = !got.is_empty();
                for l in got {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let sub = sub.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        sub.deliver(l).await;
                    });
                }
                if busy {
                    tokio::task::yield_now().await;
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = closed.cancelled() => return,
                    _ = published.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
        });
        Ok(())
    }

    async fn close(&self) {
        self.closed.cancel();
    }
}

impl SqlitePubSub {
    async fn bulk_insert(&self, msgs: Vec<Message>) -> Result<(), PubSubError> {
        if self.closed.is_cancelled() {
            return Err(PubSubError::Closed);
        }
        let rows: Vec<(String, Bytes, Option<String>)> = msgs
            .into_iter()
            .map(|m| {
                let md = (!m.metadata.is_empty()).then(|| serde_json::to_string(&m.metadata).unwrap_or_default());
                (m.topic, m.data, md)
            })
            .collect();
        with_conn(&self.conn, move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO pubsub_messages (topic, data, metadata, created) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let now = now_ms();
                for (topic, data, md) in &rows {
                    ins.execute(params![topic, data.as_ref(), md, now])?;
                }
            }
            tx.commit()
        })
        .await?;
        self.published.notify_waiters();
        Ok(())
    }
}
