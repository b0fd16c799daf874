//! `configuration.redis`: Dapr's Redis layout — a string per key holding `value||version` — watched through
//! keyspace notifications (`__keyspace@<db>__:<key>`). As Dapr does, each subscription first sets
//! `notify-keyspace-events` to `Kg$xe` (generic and string commands, expiry, eviction).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::{ChangeHandler, ConfigurationError, ConfigurationStore, Item, Items, SubscribeRequest, Watches};
use crate::components::state::redis::RedisConfig;
use crate::components::{ComponentError, Metadata};

/// The events Dapr turns on: keyspace channel, generic commands (DEL, RENAME, ...), string commands, expired,
/// evicted.
const KEYSPACE_EVENTS: &str = "Kg$xe";
/// Keys read with one MGET.
const BATCH: usize = 500;
/// The most items a get of every key returns; past it the caller must name the keys.
const MAX_ALL_KEYS: usize = 100_000;
/// Wait before reconnecting a watch whose connection broke.
const RECONNECT: Duration = Duration::from_secs(1);

pub struct RedisConfigurationStore {
    client: redis::Client,
    conn: ConnectionManager,
    db: i64,
    watches: Watches,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn ConfigurationStore>, ComponentError> {
    let cfg = RedisConfig::from_metadata(&md)?;
    let client = cfg.client()?;
    let mut conn = cfg.connect(None).await?;
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| ComponentError::Init(format!("error connecting to redis at {}:{}: {e}", cfg.host, cfg.port)))?;
    Ok(Arc::new(RedisConfigurationStore {
        client,
        conn,
        db: cfg.db,
        watches: Watches::default(),
    }))
}

/// `value||version` split as Dapr splits it: the text before the first `||`, and the text after it up to the
/// next one.
pub fn value_and_version(raw: &str) -> (String, String) {
    let mut parts = raw.split("||");
    let value = parts.next().unwrap_or_default().to_owned();
    let version = parts.next().unwrap_or_default().to_owned();
    (value, version)
}

fn failed(what: &str, e: redis::RedisError) -> ConfigurationError {
    ConfigurationError::new(format!("{what}: {e}"))
}

/// The items of `keys` (every key when empty) that hold a non-empty string value; keys of other types are
/// skipped, as Dapr skips them.
async fn read(mut conn: ConnectionManager, keys: &[String]) -> Result<Items, ConfigurationError> {
    let keys: Vec<String> = if keys.is_empty() {
        all_keys(&mut conn).await?
    } else {
        keys.to_vec()
    };
    let mut items = Items::new();
    for chunk in keys.chunks(BATCH) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .map_err(|e| failed("fail to get configuration from redis", e))?;
        for (key, raw) in chunk.iter().zip(values) {
            let Some(raw) = raw else { continue };
            let (value, version) = value_and_version(&String::from_utf8_lossy(&raw));
            if !value.is_empty() {
                items.insert(
                    key.clone(),
                    Item {
                        value,
                        version,
                        metadata: BTreeMap::new(),
                    },
                );
            }
        }
    }
    Ok(items)
}

async fn all_keys(conn: &mut ConnectionManager) -> Result<Vec<String>, ConfigurationError> {
    let mut keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| failed("failed to list the keys", e))?;
        keys.extend(batch.into_iter().map(|k| String::from_utf8_lossy(&k).into_owned()));
        if keys.len() > MAX_ALL_KEYS {
            return Err(ConfigurationError::new(format!(
                "the database holds more than {MAX_ALL_KEYS} keys: name the keys to get"
            )));
        }
        if next == 0 {
            return Ok(keys.into_iter().collect());
        }
        cursor = next;
    }
}

/// A pub/sub connection subscribed to the keyspace channels of `keys` (a pattern for every key when empty).
async fn listen(client: &redis::Client, prefix: &str, keys: &[String]) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    if keys.is_empty() {
        pubsub.psubscribe(format!("{prefix}*")).await?;
    } else {
        let channels: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
        pubsub.subscribe(channels).await?;
    }
    Ok(pubsub)
}

#[async_trait]
impl ConfigurationStore for RedisConfigurationStore {
    async fn get(&self, keys: &[String], _metadata: &BTreeMap<String, String>) -> Result<Items, ConfigurationError> {
        read(self.conn.clone(), keys).await
    }

    async fn subscribe(
        &self,
        req: &SubscribeRequest,
        handler: ChangeHandler,
        stop: CancellationToken,
    ) -> Result<(), ConfigurationError> {
        self.watches.ensure_open()?;
        // Dapr ignores a refusal here too (a managed Redis may forbid CONFIG): then the server's own setting counts.
        let mut conn = self.conn.clone();
        if let Err(e) = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(KEYSPACE_EVENTS)
            .query_async::<()>(&mut conn)
            .await
        {
            tracing::debug!("could not set notify-keyspace-events: {e}");
        }
        let prefix = format!("__keyspace@{}__:", self.db);
        let keys = req.keys.clone();
        let first = listen(&self.client, &prefix, &keys)
            .await
            .map_err(|e| failed("failed to subscribe to keyspace notifications", e))?;
        let client = self.client.clone();
        let watch = async move {
            let mut pubsub = Some(first);
            loop {
                let current = match pubsub.take() {
                    Some(p) => p,
                    None => match listen(&client, &prefix, &keys).await {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!("configuration watch could not reconnect to redis: {e}");
                            tokio::time::sleep(RECONNECT).await;
                            continue;
                        }
                    },
                };
                let mut messages = current.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(key) = msg.get_channel_name().strip_prefix(&prefix) else {
                        continue;
                    };
                    let mut items = match read(conn.clone(), &[key.to_owned()]).await {
                        Ok(items) => items,
                        Err(e) => {
                            tracing::warn!(key, "reading a changed configuration item failed: {e}");
                            continue;
                        }
                    };
                    if items.is_empty() {
                        items.insert(key.to_owned(), Item::default());
                    }
                    handler(items).await;
                }
                tracing::warn!("configuration watch lost its redis connection; reconnecting");
                tokio::time::sleep(RECONNECT).await;
            }
        };
        self.watches.spawn(stop, watch);
        Ok(())
    }

    async fn close(&self) {
        self.watches.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_on_the_first_two_bars() {
        assert_eq!(value_and_version("v||1"), ("v".into(), "1".into()));
        assert_eq!(value_and_version("v"), ("v".into(), "".into()));
        assert_eq!(value_and_version("a||b||c"), ("a".into(), "b".into()));
        assert_eq!(value_and_version("||1"), ("".into(), "1".into()));
    }
}
