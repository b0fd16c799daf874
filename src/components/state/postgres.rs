//! `state.postgresql` (alias `state.postgres`) in Dapr's two table layouts, over the shared PostgreSQL pool:
//! v1 keeps values in a `jsonb` column (binary values as base64 with `isbinary`) and uses the row's `xmin` as
//! its etag; v2 keeps raw bytes in a `bytea` column with a random UUID etag. Both have TTLs swept every
//! `cleanupInterval`, transactions, and Dapr's migration bookkeeping in `metadataTableName`, so a table written
//! by Dapr reads back here and the other way round. v1 also answers the query API.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, NoTls, Row};

use super::sqlvalue::{self, valid_identifier};
use super::{
    DeleteRequest, EtagConflict, Feature, Query, QueryItem, QueryResponse, SetRequest, StateError, StateItem,
    StateStore, TransactionOp,
};
use crate::components::postgres::{PgConfig, PgPool};
use crate::components::{ComponentError, Metadata};
use crate::echo::echo;

/// Dapr's two table layouts (the component's `version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `key, value jsonb, isbinary, insertdate, updatedate, expiredate, row_id`; etag = `xmin`.
    V1,
    /// `key, value bytea, etag uuid, created_at, updated_at, expires_at, row_id`.
    V2,
}

/// Typed `state.postgresql` metadata (Dapr's names).
#[derive(Clone, Debug)]
pub struct PgStateConfig {
    pub pg: PgConfig,
    pub layout: Layout,
    /// The state table (v1 `tableName`, v2 `tablePrefix` + `state`), optionally `schema.table`.
    pub table: String,
    pub metadata_table: String,
    /// How often expired rows are deleted; `None` disables the sweep.
    pub cleanup_interval: Option<Duration>,
}

impl PgStateConfig {
    pub fn from_metadata(md: &Metadata, layout: Layout) -> Result<Self, ComponentError> {
        let pg = PgConfig::from_metadata(md)?;
        let table = match layout {
            Layout::V1 => md.string("tableName").unwrap_or_else(|| "state".into()),
            Layout::V2 => format!("{}state", md.string("tablePrefix").unwrap_or_default()),
        };
        let field = if layout == Layout::V1 {
            "tableName"
        } else {
            "tablePrefix"
        };
        if !valid_identifier(&table, true) {
            return Err(ComponentError::invalid(
                field,
                "may contain only letters, digits and '_' (and one '.' after a schema name)",
            ));
        }
        let metadata_table = md.string("metadataTableName").unwrap_or_else(|| "dapr_metadata".into());
        if !valid_identifier(&metadata_table, true) {
            return Err(ComponentError::invalid(
                "metadataTableName",
                "may contain only letters, digits and '_' (and one '.' after a schema name)",
            ));
        }
        Ok(PgStateConfig {
            pg,
            layout,
            table,
            metadata_table,
            cleanup_interval: cleanup_interval(md, "cleanupInterval", "cleanupIntervalInSeconds")?,
        })
    }

    /// The key under which Dapr records this table's migration level, and the level this layout reaches.
    fn migration(&self, md_prefix: &str) -> (String, i64) {
        match self.layout {
            Layout::V1 => ("migrations".into(), 3),
            Layout::V2 => (format!("migrations-state-v2-{md_prefix}"), 2),
        }
    }
}

/// Dapr's cleanup interval: a duration or seconds; absent or empty is an hour, `0` or negative disables it.
pub fn cleanup_interval(md: &Metadata, name: &str, alias: &str) -> Result<Option<Duration>, ComponentError> {
    let key = if md.string(name).is_some() { name } else { alias };
    match md.string(key) {
        None => Ok(Some(Duration::from_secs(3600))),
        Some(v) if v.trim().starts_with('-') => Ok(None),
        Some(_) => Ok(md.duration(key)?.filter(|d| !d.is_zero())),
    }
}

/// The SQL of one layout, built once.
struct Statements {
    get: String,
    bulk_get: String,
    query: String,
    upsert: String,
    create: String,
    update_etag: String,
    delete: String,
    delete_etag: String,
    sweep: String,
}

impl Statements {
    fn new(layout: Layout, t: &str) -> Self {
        let (cols, exp, etag) = match layout {
            Layout::V1 => (
                "key, convert_to(value::text, 'UTF8'), isbinary, xmin::text, (extract(epoch FROM expiredate) * 1000)::bigint",
                "expiredate",
                "xmin::text",
            ),
            Layout::V2 => (
                "key, value, false, etag::text, (extract(epoch FROM expires_at) * 1000)::bigint",
                "expires_at",
                "etag::text",
            ),
        };
        let live = format!("({exp} IS NULL OR {exp} > now())");
        // Parameters: v1 ($1 key, $2 JSON text, $3 isbinary, $4 ttl, $5 etag); v2 ($1 key, $2 bytes, $3 ttl, $4 etag).
        let (insert, set, from_excluded, etag_param) = match layout {
            Layout::V1 => (
                "(key, value, isbinary, expiredate) VALUES ($1, $2::text::jsonb, $3, now() + $4::bigint * interval '1 second')",
                "value = $2::text::jsonb, isbinary = $3, updatedate = now(), expiredate = now() + $4::bigint * interval '1 second'",
                "excluded.value, isbinary = excluded.isbinary, updatedate = now(), expiredate = excluded.expiredate",
                "$5",
            ),
            Layout::V2 => (
                "(key, value, etag, expires_at) VALUES ($1, $2, gen_random_uuid(), now() + $3::bigint * interval '1 second')",
                "value = $2, updated_at = now(), etag = gen_random_uuid(), expires_at = now() + $3::bigint * interval '1 second'",
                "excluded.value, updated_at = now(), etag = gen_random_uuid(), expires_at = excluded.expires_at",
                "$4",
            ),
        };
        let upsert = format!("INSERT INTO {t} AS t {insert} ON CONFLICT (key) DO UPDATE SET value = {from_excluded}");
        Statements {
            get: format!("SELECT {cols} FROM {t} WHERE key = $1 AND {live}"),
            bulk_get: format!("SELECT {cols} FROM {t} WHERE key = ANY($1) AND {live}"),
            query: format!("SELECT {cols} FROM {t} WHERE starts_with(key, $1) AND {live}"),
            // First-write without an etag may only create, or replace a row that has expired but not been swept.
            create: format!("{upsert} WHERE t.{exp} IS NOT NULL AND t.{exp} <= now()"),
            upsert,
            update_etag: format!("UPDATE {t} SET {set} WHERE key = $1 AND {etag} = {etag_param} AND {live}"),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            delete_etag: format!("DELETE FROM {t} WHERE key = $1 AND {etag} = $2"),
            sweep: format!("DELETE FROM {t} WHERE {exp} IS NOT NULL AND {exp} < now()"),
        }
    }
}

pub struct PgStateStore {
    pool: PgPool,
    /// Connections a transaction has to itself (the pool's are shared by pipelining).
    dedicated: Dedicated,
    layout: Layout,
    sql: Statements,
    timeout: Duration,
}

pub async fn build_v1(md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    build(md, Layout::V1).await
}

pub async fn build_v2(md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    build(md, Layout::V2).await
}

async fn build(md: Metadata, layout: Layout) -> Result<Arc<dyn StateStore>, ComponentError> {
    let cfg = PgStateConfig::from_metadata(&md, layout)?;
    let prefix = md.string("tablePrefix").unwrap_or_default();
    let pool = PgPool::connect(cfg.pg.clone()).await?;
    let store = Arc::new(PgStateStore {
        dedicated: Dedicated::new(&cfg.pg),
        pool,
        layout,
        sql: Statements::new(layout, &cfg.table),
        timeout: cfg.pg.timeout,
    });
    store
        .migrate(&cfg, &prefix)
        .await
        .map_err(|e| ComponentError::Init(format!("failed to create the state table {}: {e}", cfg.table)))?;
    if let Some(every) = cfg.cleanup_interval {
        let cleanup_key = match layout {
            Layout::V1 => "last-cleanup".to_owned(),
            Layout::V2 => format!("last-cleanup-state-v2-{prefix}"),
        };
        let claim = format!(
            "INSERT INTO {m} (key, value) VALUES ('{cleanup_key}', now()::text) ON CONFLICT (key) DO UPDATE \
             SET value = now()::text \
             WHERE (EXTRACT('epoch' FROM now() - {m}.value::timestamp with time zone) * 1000)::bigint > $1",
            m = cfg.metadata_table
        );
        tokio::spawn(sweep_expired(Arc::downgrade(&store), every, claim));
    }
    Ok(store)
}

/// A few connections handed out one at a time, for transactions.
struct Dedicated {
    config: tokio_postgres::Config,
    idle: std::sync::Mutex<Vec<Client>>,
    permits: Semaphore,
}

impl Dedicated {
    fn new(cfg: &PgConfig) -> Self {
        Dedicated {
            config: cfg.config.clone(),
            idle: std::sync::Mutex::new(vec![]),
            permits: Semaphore::new(cfg.connections),
        }
    }

    /// Runs `f` on a connection of its own; the connection is kept for the next caller when `f` succeeded or
    /// failed cleanly (its transaction rolled back).
    async fn run<T>(
        &self,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let _permit = self.permits.acquire().await.map_err(StateError::backend)?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut client = match idle.filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => {
                let (client, connection) = tokio::time::timeout(timeout, self.config.connect(NoTls))
                    .await
                    .map_err(|_| StateError::Backend("timed out connecting to PostgreSQL".into()))?
                    .map_err(db_err)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("a PostgreSQL connection ended: {e}");
                    }
                });
                client
            }
        };
        let out = tokio::time::timeout(timeout, f(&mut client)).await;
        let Ok(out) = out else {
            // A timed-out connection may be mid-transaction: it is dropped, not reused.
            return Err(StateError::Backend(format!(
                "PostgreSQL did not answer within {timeout:?}"
            )));
        };
        if !client.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(client);
        }
        out
    }
}

fn db_err(e: tokio_postgres::Error) -> StateError {
    match e.as_db_error() {
        Some(db) => StateError::Backend(format!("postgresql: {}", db.message())),
        None => StateError::Backend(format!("postgresql: {e}")),
    }
}

fn millis_to_time(ms: Option<i64>) -> Option<SystemTime> {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
}

/// A row as every select returns it: key, value, isbinary, etag, expiry in epoch milliseconds.
fn read_row(row: &Row) -> Result<(String, StateItem), StateError> {
    let key: String = row.try_get(0).map_err(db_err)?;
    let data: Vec<u8> = row.try_get(1).map_err(db_err)?;
    let binary: bool = row.try_get(2).map_err(db_err)?;
    let etag: String = row.try_get(3).map_err(db_err)?;
    let exp: Option<i64> = row.try_get(4).map_err(db_err)?;
    Ok((
        key,
        StateItem {
            data: sqlvalue::decode(data, binary)?,
            etag: Some(etag),
            expires_at: millis_to_time(exp),
        },
    ))
}

impl PgStateStore {
    /// Bounds one call by the component's timeout.
    async fn timed<T>(&self, f: impl Future<Output = Result<T, StateError>>) -> Result<T, StateError> {
        tokio::time::timeout(self.timeout, f).await.unwrap_or_else(|_| {
            Err(StateError::Backend(format!(
                "PostgreSQL did not answer within {:?}",
                self.timeout
            )))
        })
    }

    /// The etag as this layout compares it: v1 a 32-bit transaction id (anything else is invalid, as in Dapr),
    /// v2 a UUID (anything else cannot match).
    fn etag_param(&self, key: &str, given: &str) -> Result<String, StateError> {
        match self.layout {
            Layout::V1 => given
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| given.parse::<u32>().ok())
                .flatten()
                .map(|n| n.to_string())
                .ok_or_else(|| {
                    StateError::EtagInvalid(format!("invalid etag {:?} for key {}", echo(given), echo(key)))
                }),
            Layout::V2 => uuid::Uuid::parse_str(given)
                .map(|u| u.hyphenated().to_string())
                .map_err(|_| EtagConflict::Mismatch.error(key)),
        }
    }

    async fn apply(&self, db: &impl GenericClient, op: &TransactionOp) -> Result<(), StateError> {
        let given = op.etag().filter(|e| !e.is_empty());
        let etag = given.map(|g| self.etag_param(op.key(), g)).transpose()?;
        match op {
            TransactionOp::Set(r) => {
                let ttl = r.ttl.filter(|t| *t > 0);
                let first_write = r.concurrency == super::Concurrency::FirstWrite;
                let sql = match (&etag, first_write) {
                    (Some(_), _) => &self.sql.update_etag,
                    (None, true) => &self.sql.create,
                    (None, false) => &self.sql.upsert,
                };
                let (json, binary) = match self.layout {
                    Layout::V1 => sqlvalue::encode(&r.value),
                    Layout::V2 => (String::new(), false),
                };
                let bytes: &[u8] = &r.value;
                let mut params: Vec<&(dyn ToSql + Sync)> = match self.layout {
                    Layout::V1 => vec![&r.key, &json, &binary, &ttl],
                    Layout::V2 => vec![&r.key, &bytes, &ttl],
                };
                if let Some(e) = &etag {
                    params.push(e);
                }
                let n = db.execute(sql.as_str(), &params).await.map_err(db_err)?;
                match (n, &etag, first_write) {
                    (0, Some(_), _) => Err(EtagConflict::Mismatch.error(&r.key)),
                    (0, None, true) => Err(EtagConflict::Exists.error(&r.key)),
                    (0, None, false) => Err(StateError::Backend("no item was updated".into())),
                    _ => Ok(()),
                }
            }
            TransactionOp::Delete(r) => {
                let n = match &etag {
                    Some(e) => db.execute(self.sql.delete_etag.as_str(), &[&r.key, e]).await,
                    None => db.execute(self.sql.delete.as_str(), &[&r.key]).await,
                }
                .map_err(db_err)?;
                if n == 0 && etag.is_some() {
                    return Err(EtagConflict::Mismatch.error(&r.key));
                }
                Ok(())
            }
        }
    }

    async fn migrate(&self, cfg: &PgStateConfig, prefix: &str) -> Result<(), StateError> {
        let meta = &cfg.metadata_table;
        let client = self.pool.client().await.map_err(db_err)?;
        // Sidecars starting together may race to create the table: PostgreSQL then reports a unique violation.
        for attempt in 0.. {
            let created = client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {meta} (key text NOT NULL PRIMARY KEY, value text NOT NULL)"
                ))
                .await;
            match created {
                Err(e) if attempt < 3 && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => {
                    other.map_err(db_err)?;
                    break;
                }
            }
        }
        client
            .execute(
                &format!("INSERT INTO {meta} (key, value) VALUES ('lock', 'lock') ON CONFLICT (key) DO NOTHING"),
                &[],
            )
            .await
            .map_err(db_err)?;
        let (level_key, level) = cfg.migration(prefix);
        let ddl = schema(cfg.layout, &cfg.table);
        let meta = meta.clone();
        // Dapr's migration lock: the `lock` row, held for update until the schema is in place.
        self.dedicated
            .run(Duration::from_secs(60).max(self.timeout), async move |c| {
                let tx = c.transaction().await.map_err(db_err)?;
                tx.query_one(&format!("SELECT value FROM {meta} WHERE key = 'lock' FOR UPDATE"), &[])
                    .await
                    .map_err(db_err)?;
                let current = tx
                    .query_opt(&format!("SELECT value FROM {meta} WHERE key = $1"), &[&level_key])
                    .await
                    .map_err(db_err)?
                    .and_then(|r| r.get::<_, String>(0).parse::<i64>().ok())
                    .unwrap_or(0);
                // Every step is idempotent, so a table Dapr created (at any level) is completed, never redone.
                tx.batch_execute(&ddl).await.map_err(db_err)?;
                if current < level {
                    tx.execute(
                        &format!(
                            "INSERT INTO {meta} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2"
                        ),
                        &[&level_key, &level.to_string()],
                    )
                    .await
                    .map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            })
            .await
    }
}

/// The state table as Dapr's migrations leave it, as idempotent statements.
fn schema(layout: Layout, t: &str) -> String {
    let base = t.rsplit('.').next().unwrap_or(t);
    let row_id = format!(
        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS row_id BIGINT GENERATED BY DEFAULT AS IDENTITY;
         CREATE UNIQUE INDEX IF NOT EXISTS \"{base}_row_id_uidx\" ON {t} (row_id);"
    );
    match layout {
        Layout::V1 => format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                key text NOT NULL PRIMARY KEY,
                value jsonb NOT NULL,
                isbinary boolean NOT NULL,
                insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
                updatedate TIMESTAMP WITH TIME ZONE NULL
             );
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS expiredate TIMESTAMP WITH TIME ZONE;
             {row_id}"
        ),
        Layout::V2 => format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                key text NOT NULL PRIMARY KEY,
                value bytea NOT NULL,
                etag uuid NOT NULL DEFAULT gen_random_uuid(),
                created_at timestamp with time zone NOT NULL DEFAULT now(),
                updated_at timestamp with time zone,
                expires_at timestamp with time zone
             );
             CREATE INDEX IF NOT EXISTS \"{base}_expires_at_idx\" ON {t} (expires_at);
             {row_id}"
        ),
    }
}

#[async_trait]
impl StateStore for PgStateStore {
    fn features(&self) -> &'static [Feature] {
        match self.layout {
            Layout::V1 => &[Feature::Etag, Feature::Transactional, Feature::QueryApi, Feature::Ttl],
            Layout::V2 => &[Feature::Etag, Feature::Transactional, Feature::Ttl],
        }
    }

    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        self.timed(async {
            let client = self.pool.client().await.map_err(db_err)?;
            let row = client.query_opt(self.sql.get.as_str(), &[&key]).await.map_err(db_err)?;
            row.map(|r| read_row(&r).map(|(_, item)| item)).transpose()
        })
        .await
    }

    async fn bulk_get(&self, keys: &[String], _parallelism: usize) -> Vec<Result<Option<StateItem>, StateError>> {
        let found = self
            .timed(async {
                let client = self.pool.client().await.map_err(db_err)?;
                let rows = client
                    .query(self.sql.bulk_get.as_str(), &[&keys])
                    .await
                    .map_err(db_err)?;
                Ok(rows.iter().map(read_row).collect::<Vec<_>>())
            })
            .await;
        match found {
            Err(e) => keys.iter().map(|_| Err(StateError::Backend(e.to_string()))).collect(),
            Ok(rows) => {
                let mut by_key = std::collections::HashMap::new();
                let mut errors = vec![];
                for r in rows {
                    match r {
                        Ok((k, item)) => {
                            by_key.insert(k, item);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                if let Some(e) = errors.first() {
                    return keys.iter().map(|_| Err(StateError::Backend(e.to_string()))).collect();
                }
                keys.iter().map(|k| Ok(by_key.get(k).cloned())).collect()
            }
        }
    }

    async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
        self.transact(&[TransactionOp::Set(req.clone())]).await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
        self.transact(&[TransactionOp::Delete(req.clone())]).await
    }

    async fn transact(&self, ops: &[TransactionOp]) -> Result<(), StateError> {
        match ops {
            [] => Ok(()),
            // One statement is atomic by itself: no transaction, and the shared pipelined connections serve it.
            [op] => {
                self.timed(async {
                    let client = self.pool.client().await.map_err(db_err)?;
                    self.apply(&*client, op).await
                })
                .await
            }
            ops => {
                self.dedicated
                    .run(self.timeout, async |c| {
                        let tx = c.transaction().await.map_err(db_err)?;
                        for op in ops {
                            if let Err(e) = self.apply(&tx, op).await {
                                tx.rollback().await.map_err(db_err)?;
                                return Err(e);
                            }
                        }
                        tx.commit().await.map_err(db_err)
                    })
                    .await
            }
        }
    }

    async fn query(&self, prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        if self.layout == Layout::V2 {
            return Err(StateError::NotSupported("query"));
        }
        let rows = self
            .timed(async {
                let client = self.pool.client().await.map_err(db_err)?;
                let rows = client
                    .query(self.sql.query.as_str(), &[&prefix])
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        read_row(r).map(|(key, item)| QueryItem {
                            key: key[prefix.len()..].to_owned(),
                            data: item.data,
                            etag: item.etag,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        query.run(rows).map_err(StateError::Backend)
    }

    async fn close(&self) {
        self.pool.close().await;
        self.dedicated.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Every `every`, deletes expired rows, once across all sidecars sharing the metadata table: a sidecar sweeps
/// only when it moves the table's last-cleanup time forward, as Dapr's do.
async fn sweep_expired(store: Weak<PgStateStore>, every: Duration, claim: String) {
    let interval_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).saturating_sub(100);
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let swept = store
            .timed(async {
                let client = store.pool.client().await.map_err(db_err)?;
                if client.execute(claim.as_str(), &[&interval_ms]).await.map_err(db_err)? == 0 {
                    return Ok(0);
                }
                client.execute(store.sql.sweep.as_str(), &[]).await.map_err(db_err)
            })
            .await;
        match swept {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "postgresql: deleted expired state"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "postgresql: deleting expired state failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(props: &[(&str, &str)]) -> Metadata {
        let mut all = vec![("connectionString".to_owned(), "host=localhost user=postgres".to_owned())];
        all.extend(props.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        Metadata::new("s", "app", "", all)
    }

    #[test]
    fn metadata_names_and_defaults() {
        let v1 = PgStateConfig::from_metadata(&md(&[]), Layout::V1).unwrap();
        assert_eq!(
            (v1.table.as_str(), v1.metadata_table.as_str()),
            ("state", "dapr_metadata")
        );
        assert_eq!(v1.cleanup_interval, Some(Duration::from_secs(3600)));
        let v2 = PgStateConfig::from_metadata(&md(&[("tablePrefix", "app1_")]), Layout::V2).unwrap();
        assert_eq!(v2.table, "app1_state");
        assert_eq!(v2.migration("app1_").0, "migrations-state-v2-app1_");
        let off = PgStateConfig::from_metadata(&md(&[("cleanupIntervalInSeconds", "0")]), Layout::V1).unwrap();
        assert_eq!(off.cleanup_interval, None);
        let neg = PgStateConfig::from_metadata(&md(&[("cleanupInterval", "-1")]), Layout::V1).unwrap();
        assert_eq!(neg.cleanup_interval, None);
        let s = PgStateConfig::from_metadata(&md(&[("cleanupInterval", "30s")]), Layout::V1).unwrap();
        assert_eq!(s.cleanup_interval, Some(Duration::from_secs(30)));
        assert!(PgStateConfig::from_metadata(&md(&[("tableName", "s; DROP TABLE x")]), Layout::V1).is_err());
        assert!(PgStateConfig::from_metadata(&md(&[("timeout", "500ms")]), Layout::V1).is_err());
        assert!(PgStateConfig::from_metadata(&md(&[("tableName", "myschema.mytable")]), Layout::V1).is_ok());
    }
}
