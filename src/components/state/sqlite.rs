//! `state.sqlite`: an embedded file database (the local default), with etags, TTL, transactions and queries.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    DeleteRequest, Feature, Query, QueryItem, QueryResponse, SetRequest, StateError, StateItem, StateStore,
    TransactionOp,
};
use crate::components::{ComponentError, Metadata, sqlite};

/// Typed `state.sqlite` metadata (Dapr's names).
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// A file path, a `file:` URI or `:memory:`.
    pub connection_string: String,
    pub table_name: String,
    pub busy_timeout: Duration,
    /// How often expired rows are deleted; `None` disables the sweep.
    pub cleanup_interval: Option<Duration>,
    pub disable_wal: bool,
}

impl SqliteConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let connection_string = md
            .string("connectionString")
            .ok_or_else(|| ComponentError::invalid("connectionString", "is required (a file path or :memory:)"))?;
        let table_name = md.string("tableName").unwrap_or_else(|| "state".into());
        if !table_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ComponentError::invalid(
                "tableName",
                "may contain only letters, digits and '_'",
            ));
        }
        let cleanup_interval = match md.string("cleanupInterval").as_deref() {
            Some(v) if v.trim() == "0" || v.trim().starts_with('-') => None,
            _ => Some(md.duration("cleanupInterval")?.unwrap_or(Duration::from_secs(3600))),
        };
        Ok(SqliteConfig {
            connection_string,
            table_name,
            busy_timeout: md.duration("busyTimeout")?.unwrap_or(Duration::from_secs(2)),
            cleanup_interval,
            disable_wal: md.bool("disableWAL")?.unwrap_or(false),
        })
    }
}

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    table: String,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    let cfg = SqliteConfig::from_metadata(&md)?;
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&cfg).map(|s| (s, cfg)))
        .await
        .map_err(|e| ComponentError::Init(e.to_string()))?;
    let (store, cfg) = store?;
    let store = Arc::new(store);
    if let Some(every) = cfg.cleanup_interval {
        tokio::spawn(sweep_expired(Arc::downgrade(&store), every));
    }
    Ok(store)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn db_err(e: rusqlite::Error) -> StateError {
    StateError::Backend(format!("sqlite: {e}"))
}

impl SqliteStore {
    pub fn open(cfg: &SqliteConfig) -> Result<Self, ComponentError> {
        let cs = &cfg.connection_string;
        sqlite::create_parent_dir(cs)
            .map_err(|e| ComponentError::Init(format!("creating the folder of {cs:?}: {e}")))?;
        let init = || -> rusqlite::Result<Connection> {
            let conn = sqlite::connect(cs, cfg.busy_timeout, !cfg.disable_wal)?;
            if !cfg.disable_wal && !sqlite::is_in_memory(cs) {
                // With WAL, NORMAL sync keeps the database consistent and loses at most the last commits on
                // power loss (not on a process crash); it avoids an fsync per write.
                conn.execute_batch("PRAGMA synchronous=NORMAL")?;
            }
            conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    key TEXT NOT NULL PRIMARY KEY,
                    value BLOB NOT NULL,
                    etag INTEGER NOT NULL,
                    expiration_time INTEGER,
                    update_time INTEGER NOT NULL
                );
                CREATE INDEX IF NOT EXISTS {t}_expiration ON {t} (expiration_time) WHERE expiration_time IS NOT NULL;",
                t = cfg.table_name
            ))?;
            Ok(conn)
        };
        let conn = sqlite::open_with_busy_retry(&format!("sqlite {cs:?}"), Duration::from_secs(30), init);
        let conn = conn.map_err(|e| ComponentError::Init(format!("opening sqlite database {cs:?}: {e}")))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            table: cfg.table_name.clone(),
        })
    }

    /// Runs `f` on the connection off the async threads.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let conn = self.conn.clone();
        let table = self.table.clone();
        tokio::task::spawn_blocking(move || {
            // A request that panicked while holding the connection rolled its transaction back as it unwound:
            // the connection is sound, and later requests go on with it.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn, &table)
        })
        .await
        .map_err(StateError::backend)?
    }
}

fn read(conn: &Connection, table: &str, key: &str) -> Result<Option<StateItem>, StateError> {
    conn.prepare_cached(&format!(
        "SELECT value, etag, expiration_time FROM {table} WHERE key = ?1 AND (expiration_time IS NULL OR expiration_time > ?2)"
    ))
    .map_err(db_err)?
    .query_row(params![key, now_ms()], |row| {
        let data: Vec<u8> = row.get(0)?;
        let etag: i64 = row.get(1)?;
        let exp: Option<i64> = row.get(2)?;
        Ok(StateItem {
            data: Bytes::from(data),
            etag: Some(etag.to_string()),
            // A row's expiry is what this store wrote, but the file may come from elsewhere: no arithmetic on it
            // may overflow.
            expires_at: exp
                .and_then(|ms| u64::try_from(ms).ok())
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        })
    })
    .optional()
    .map_err(db_err)
}

/// Checks and applies one operation inside an open transaction.
fn apply(tx: &rusqlite::Transaction<'_>, table: &str, op: &TransactionOp) -> Result<(), StateError> {
    let current = read(tx, table, op.key())?.and_then(|i| i.etag);
    op.check(current.as_deref())?;
    match op {
        TransactionOp::Set(r) => {
            let now = now_ms();
            let exp = r
                .ttl
                .filter(|t| *t > 0)
                .map(|t| t.saturating_mul(1000).saturating_add(now));
            let version = (rand::random::<u64>() >> 1) as i64;
            tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO {table} (key, value, etag, expiration_time, update_time) VALUES (?1, ?2, ?3, ?4, ?5)"
            ))
            .map_err(db_err)?
            .execute(params![r.key, &r.value[..], version, exp, now])
            .map_err(db_err)?;
        }
        TransactionOp::Delete(r) => {
            tx.prepare_cached(&format!("DELETE FROM {table} WHERE key = ?1"))
                .map_err(db_err)?
                .execute(params![r.key])
                .map_err(db_err)?;
        }
    }
    Ok(())
}

fn run(conn: &mut Connection, table: &str, ops: &[TransactionOp]) -> Result<(), StateError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    for op in ops {
        apply(&tx, table, op)?; // dropping `tx` on error rolls back
    }
    tx.commit().map_err(db_err)
}

#[async_trait]
impl StateStore for SqliteStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Etag, Feature::Transactional, Feature::QueryApi, Feature::Ttl]
    }

    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        let key = key.to_owned();
        self.with_conn(move |c, t| read(c, t, &key)).await
    }

    async fn bulk_get(&self, keys: &[String], _parallelism: usize) -> Vec<Result<Option<StateItem>, StateError>> {
        let keys = keys.to_vec();
        let n = keys.len();
        match self
            .with_conn(move |c, t| Ok(keys.iter().map(|k| read(c, t, k)).collect::<Vec<_>>()))
            .await
        {
            Ok(v) => v,
            Err(e) => (0..n).map(|_| Err(StateError::Backend(e.to_string()))).collect(),
        }
    }

    async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
        let ops = [TransactionOp::Set(req.clone())];
        self.with_conn(move |c, t| run(c, t, &ops)).await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
        let ops = [TransactionOp::Delete(req.clone())];
        self.with_conn(move |c, t| run(c, t, &ops)).await
    }

    async fn transact(&self, ops: &[TransactionOp]) -> Result<(), StateError> {
        let ops = ops.to_vec();
        self.with_conn(move |c, t| run(c, t, &ops)).await
    }

    async fn query(&self, prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        let prefix = prefix.to_owned();
        let rows = self
            .with_conn(move |c, t| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT key, value, etag FROM {t} WHERE substr(key, 1, ?1) = ?2 AND (expiration_time IS NULL OR expiration_time > ?3)"
                    ))
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![prefix.len() as i64, prefix, now_ms()], |row| {
                        let key: String = row.get(0)?;
                        let data: Vec<u8> = row.get(1)?;
                        let etag: i64 = row.get(2)?;
                        Ok(QueryItem {
                            key: key[prefix.len()..].to_owned(),
                            data: Bytes::from(data),
                            etag: Some(etag.to_string()),
                        })
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
            })
            .await?;
        query.run(rows).map_err(StateError::Backend)
    }
}

/// Deletes expired rows every `every` until the store is dropped.
async fn sweep_expired(store: Weak<SqliteStore>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let swept = store
            .with_conn(|c, t| {
                c.execute(
                    &format!("DELETE FROM {t} WHERE expiration_time IS NOT NULL AND expiration_time <= ?1"),
                    [now_ms()],
                )
                .map_err(db_err)
            })
            .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "sqlite: deleting expired state failed");
        }
    }
}
