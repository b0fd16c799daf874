//! `configuration.postgresql`: items in a table the user creates (`key`, `value`, `version`, `metadata` JSON, in
//! that column order, as Dapr reads `SELECT *`), watched with `LISTEN <notifyChannel>`: a trigger the user
//! installs sends `pg_notify(channel, json_build_object('data', row_to_json(...)))` on every change, as Dapr
//! documents it. A key with several rows reads as the row of highest numeric version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::LazyLock;

use async_trait::async_trait;
use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{ChangeHandler, ConfigurationError, ConfigurationStore, Item, Items, SubscribeRequest, Watches};
use crate::components::postgres::{PgConfig, PgPool};
use crate::components::{ComponentError, Metadata};

/// PostgreSQL's identifier limit, as Dapr checks it.
const MAX_IDENTIFIER: usize = 64;

static KEY_CHARS: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-zA-Z0-9./_]*$").expect("a valid pattern"));
static NAME_CHARS: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z0-9./_]*$").expect("a valid pattern"));

pub struct PostgresConfigurationStore {
    pool: PgPool,
    config: PgConfig,
    table: String,
    /// The component's `notifyChannel` (alias `pgNotifyChannel`); a subscription may name one when unset.
    channel: Option<String>,
    watches: Watches,
}

/// `table` and `notifyChannel` checked as Dapr checks them.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_IDENTIFIER {
        return Err(format!(
            "{what} name is too long - {name:?}. max allowed length is {MAX_IDENTIFIER}"
        ));
    }
    if !NAME_CHARS.is_match(name) {
        return Err(format!(
            "invalid {what} name {name:?}. non-alphanumerics or upper cased names are not supported"
        ));
    }
    Ok(())
}

pub async fn build(md: Metadata) -> Result<Arc<dyn ConfigurationStore>, ComponentError> {
    let table = md
        .string("table")
        .ok_or_else(|| ComponentError::invalid("table", "missing postgreSQL configuration table name"))?;
    check_name("table", &table).map_err(|e| ComponentError::invalid("table", e))?;
    let channel = md.string("notifyChannel").or_else(|| md.string("pgNotifyChannel"));
    if let Some(c) = &channel {
        check_name("notifyChannel", c).map_err(|e| ComponentError::invalid("notifyChannel", e))?;
    }
    let config = PgConfig::from_metadata(&md)?;
    let pool = PgPool::connect(config.clone()).await?;
    let client = pool
        .client()
        .await
        .map_err(|e| ComponentError::Init(format!("PostgreSQL configuration store connection error: {e}")))?;
    let exists: bool = client
        .query_one("SELECT EXISTS (SELECT FROM pg_tables WHERE tablename = $1)", &[&table])
        .await
        .map_err(|e| ComponentError::Init(format!("error in checking if configtable '{table}' exists: '{e}'")))?
        .get(0);
    if !exists {
        return Err(ComponentError::Init(format!(
            "postgreSQL configuration table '{table}' does not exist"
        )));
    }
    Ok(Arc::new(PostgresConfigurationStore {
        pool,
        config,
        table,
        channel,
        watches: Watches::default(),
    }))
}

/// A version as a number, -1 when it is not one (Dapr's `getNumericVersion`).
fn numeric_version(v: &str) -> i64 {
    v.parse().unwrap_or(-1)
}

/// A JSON metadata value as Dapr's string map: strings as they are, anything else as its JSON text.
fn metadata_of(value: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    let Some(serde_json::Value::Object(map)) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// The item a change notification carries (`{"data": {key, value, version, metadata}}`, field names in any
/// case), or `None` when the payload is not that.
pub fn parse_notification(payload: &str) -> Option<(String, Item)> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let row = v.get("data")?.as_object()?;
    let mut key = None;
    let mut item = Item::default();
    for (k, v) in row {
        match k.to_ascii_lowercase().as_str() {
            "key" => key = v.as_str().map(str::to_owned),
            "value" => item.value = v.as_str().unwrap_or_default().to_owned(),
            "version" => item.version = v.as_str().unwrap_or_default().to_owned(),
            "metadata" => item.metadata = metadata_of(Some(v)),
            _ => {}
        }
    }
    Some((key?, item))
}

impl PostgresConfigurationStore {
    /// The channel a subscription listens on: the component's, else the request's `pgNotifyChannel`.
    fn channel_for(&self, req: &SubscribeRequest) -> Result<String, ConfigurationError> {
        let channel = self.channel.clone().or_else(|| {
            req.metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("pgNotifyChannel"))
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        });
        let Some(channel) = channel else {
            return Err(ConfigurationError::new(format!(
                "unable to subscribe to {:?}. notifyChannel must be set in component metadata or request metadata",
                self.table
            )));
        };
        check_name("notifyChannel", &channel).map_err(ConfigurationError)?;
        Ok(channel)
    }
}

#[async_trait]
impl ConfigurationStore for PostgresConfigurationStore {
    async fn get(&self, keys: &[String], _metadata: &BTreeMap<String, String>) -> Result<Items, ConfigurationError> {
        if let Some(bad) = keys.iter().find(|k| !KEY_CHARS.is_match(k)) {
            return Err(ConfigurationError::new(format!("invalid key : '{bad}'")));
        }
        let client = self
            .pool
            .client()
            .await
            .map_err(|e| ConfigurationError::new(format!("error in querying configuration store: '{e}'")))?;
        // The table name was checked against Dapr's pattern at start; keys go as a parameter.
        let rows = if keys.is_empty() {
            client.query(&format!("SELECT * FROM {}", self.table), &[]).await
        } else {
            client
                .query(&format!("SELECT * FROM {} WHERE key = ANY($1)", self.table), &[&keys])
                .await
        }
        .map_err(|e| ConfigurationError::new(format!("error in querying configuration store: '{e}'")))?;
        let mut items = Items::new();
        for row in rows {
            let read = |i: usize| -> Result<String, ConfigurationError> {
                row.try_get::<_, Option<String>>(i)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| {
                        ConfigurationError::new(format!("error in reading data from configuration store: '{e}'"))
                    })
            };
            let (key, value, version) = (read(0)?, read(1)?, read(2)?);
            let metadata = row.try_get::<_, Option<serde_json::Value>>(3).map_err(|e| {
                ConfigurationError::new(format!("error in reading data from configuration store: '{e}'"))
            })?;
            let item = Item {
                value,
                version,
                metadata: metadata_of(metadata.as_ref()),
            };
            match items.get(&key) {
                Some(old) if numeric_version(&item.version) <= numeric_version(&old.version) => {}
                _ => {
                    items.insert(key, item);
                }
            }
        }
        Ok(items)
    }

    async fn subscribe(
        &self,
        req: &SubscribeRequest,
        handler: ChangeHandler,
        stop: CancellationToken,
    ) -> Result<(), ConfigurationError> {
        self.watches.ensure_open()?;
        let channel = self.channel_for(req)?;
        let (client, mut connection) = self
            .config
            .config
            .connect(NoTls)
            .await
            .map_err(|e| ConfigurationError::new(format!("error acquiring connection: {e}")))?;
        // The connection must be polled for LISTEN to complete; notifications then come through it.
        let (tx, mut notifications) = tokio::sync::mpsc::channel::<String>(64);
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let pump = async move {
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("configuration watch lost its PostgreSQL connection: {e}");
                        return;
                    }
                }
            }
        };
        let pump = tokio::spawn(pump);
        if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
            pump.abort();
            return Err(ConfigurationError::new(format!("error listening to channel: {e}")));
        }
        let keys = req.keys.clone();
        let watch = async move {
            // Dropping the client and the pump closes the connection.
            let _client = client;
            let _pump = AbortOnDrop(pump);
            while let Some(payload) = notifications.recv().await {
                let Some((key, item)) = parse_notification(&payload) else {
                    tracing::info!("unknown format of data received in notify event - '{payload}'");
                    continue;
                };
                if !keys.is_empty() && !keys.contains(&key) {
                    continue;
                }
                handler(Items::from([(key, item)])).await;
            }
        };
        self.watches.spawn(stop, watch);
        Ok(())
    }

    async fn close(&self) {
        self.watches.close().await;
        self.pool.close().await;
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_read_as_dapr_reads_them() {
        let (k, item) = parse_notification(
            r#"{"table":"t","action":"UPDATE","data":{"KEY":"a","value":"1","version":"2","metadata":{"m":"x","n":3}}}"#,
        )
        .unwrap();
        assert_eq!(k, "a");
        assert_eq!(item.value, "1");
        assert_eq!(item.version, "2");
        assert_eq!(item.metadata.get("m").map(String::as_str), Some("x"));
        assert_eq!(item.metadata.get("n").map(String::as_str), Some("3"));
        assert!(parse_notification(r#"{"data":"x"}"#).is_none());
        assert!(parse_notification("nope").is_none());
        let (_, item) =
            parse_notification(r#"{"data":{"key":"a","value":"1","version":"1","metadata":null}}"#).unwrap();
        assert!(item.metadata.is_empty());
    }

    #[test]
    fn names_are_checked_as_dapr_checks_them() {
        assert!(check_name("table", "config_items").is_ok());
        assert!(check_name("table", "Config").unwrap_err().contains("upper cased"));
        assert!(check_name("table", "a;drop").is_err());
        assert!(check_name("table", &"a".repeat(65)).unwrap_err().contains("too long"));
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(numeric_version("10") > numeric_version("9"));
        assert_eq!(numeric_version("v1"), -1);
    }
}
