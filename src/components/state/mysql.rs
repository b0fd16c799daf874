//! `state.mysql` (MySQL and MariaDB) in Dapr's table layout: `id, value JSON, isbinary, insertDate, updateDate,
//! eTag (a random UUID), expiredate, row_id` in `schemaName`.`tableName`, with etags, TTLs swept every
//! `cleanupInterval`, and transactions. The connection string is Go's DSN (`user:pass@tcp(host:port)/?params`).

use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts, Value};

use super::postgres::cleanup_interval;
use super::sqlvalue::{self, valid_identifier};
use super::{DeleteRequest, EtagConflict, Feature, SetRequest, StateError, StateItem, StateStore, TransactionOp};
use crate::components::{ComponentError, Metadata};

const MAX_CONNECTIONS: usize = 8;
/// Keys one bulk-get statement looks up at most.
const BULK_CHUNK: usize = 500;

/// A parsed Go MySQL DSN.
#[derive(Clone, PartialEq)]
pub struct Dsn {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub socket: Option<String>,
    pub database: Option<String>,
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dsn")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("socket", &self.socket)
            .field("database", &self.database)
            .finish()
    }
}

impl Dsn {
    /// Parses `[user[:password]@][net[(address)]]/dbname[?param=value&...]` (parameters are accepted and ignored).
    pub fn parse(dsn: &str) -> Result<Dsn, String> {
        let slash = dsn
            .rfind('/')
            .ok_or("the connection string has no '/' (expected user:password@tcp(host:port)/)")?;
        let (head, tail) = (&dsn[..slash], &dsn[slash + 1..]);
        let database = tail.split('?').next().filter(|d| !d.is_empty()).map(str::to_owned);
        let (auth, net) = match head.rfind('@') {
            Some(at) => (Some(&head[..at]), &head[at + 1..]),
            None => (None, head),
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned()).filter(|p| !p.is_empty())),
                None => (Some(a.to_owned()), None),
            },
        };
        let (proto, addr) = match net.split_once('(') {
            Some((p, rest)) => (
                p,
                rest.strip_suffix(')')
                    .ok_or("the address in the connection string is missing its ')'")?,
            ),
            None => (net, ""),
        };
        let mut out = Dsn {
            user: user.filter(|u| !u.is_empty()),
            password,
            host: "127.0.0.1".into(),
            port: 3306,
            socket: None,
            database,
        };
        match proto {
            "" | "tcp" | "tcp6" => {
                if !addr.is_empty() {
                    let (host, port) = match addr.rsplit_once(':') {
                        Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => (h, Some(p)),
                        _ => (addr, None),
                    };
                    out.host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                    if let Some(p) = port {
                        out.port = p.parse().map_err(|_| format!("port {p:?} is not a number"))?;
                    }
                }
            }
            "unix" => {
                out.socket = Some(if addr.is_empty() {
                    "/tmp/mysql.sock".into()
                } else {
                    addr.into()
                })
            }
            other => return Err(format!("network {other:?} is not supported (tcp or unix)")),
        }
        Ok(out)
    }

    fn opts(&self, database: Option<&str>, connections: usize) -> OptsBuilder {
        let constraints = PoolConstraints::new(0, connections.max(1)).unwrap_or_default();
        let mut b = OptsBuilder::default()
            .user(self.user.clone())
            .pass(self.password.clone())
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .prefer_socket(false)
            .db_name(database.map(str::to_owned))
            .pool_opts(PoolOpts::default().with_constraints(constraints));
        if let Some(s) = &self.socket {
            b = b.socket(Some(s.clone()));
        }
        b
    }
}

/// Typed `state.mysql` metadata (Dapr's names).
#[derive(Clone, Debug)]
pub struct MysqlConfig {
    pub dsn: Dsn,
    pub schema: String,
    pub table: String,
    pub metadata_table: String,
    pub timeout: Duration,
    pub cleanup_interval: Option<Duration>,
}

impl MysqlConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let raw = md
            .string("connectionString")
            .ok_or_else(|| ComponentError::invalid("connectionString", "missing connection string"))?;
        let dsn = Dsn::parse(&raw).map_err(|e| ComponentError::invalid("connectionString", e))?;
        let ident = |name: &str, default: &str| -> Result<String, ComponentError> {
            let v = md.string(name).unwrap_or_else(|| default.to_owned());
            if valid_identifier(&v, false) {
                Ok(v)
            } else {
                Err(ComponentError::invalid(
                    name,
                    format!("{v:?} is not valid: use letters, digits and '_'"),
                ))
            }
        };
        // Dapr creates `schemaName` (default dapr_state_store); a database named in the DSN serves when no
        // schemaName is given.
        let default_schema = dsn.database.clone().unwrap_or_else(|| "dapr_state_store".into());
        let timeout = match md.parse::<i64>("timeoutInSeconds")? {
            Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs()),
            _ => Duration::from_secs(20),
        };
        Ok(MysqlConfig {
            schema: ident("schemaName", &default_schema)?,
            table: ident("tableName", "state")?,
            metadata_table: ident("metadataTableName", "dapr_metadata")?,
            dsn,
            timeout,
            cleanup_interval: cleanup_interval(md, "cleanupInterval", "cleanupIntervalInSeconds")?,
        })
    }
}

pub struct MysqlStore {
    pool: Pool,
    table: String,
    metadata_table: String,
    timeout: Duration,
}

fn db_err(e: mysql_async::Error) -> StateError {
    StateError::Backend(format!("mysql: {e}"))
}

/// MySQL's "duplicate entry" error.
fn is_duplicate(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1062)
}

pub async fn build(md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    let cfg = MysqlConfig::from_metadata(&md)?;
    let init = |e: StateError| ComponentError::Init(e.to_string());
    // The schema first, over a connection to no database.
    let bootstrap = Pool::new(cfg.dsn.opts(None, 1));
    let created = async {
        let mut c = bootstrap.get_conn().await.map_err(db_err)?;
        c.query_drop(format!("CREATE DATABASE IF NOT EXISTS {}", cfg.schema))
            .await
            .map_err(db_err)
    };
    let created = tokio::time::timeout(cfg.timeout, created).await;
    let _ = bootstrap.disconnect().await;
    created
        .map_err(|_| ComponentError::Init("timed out connecting to MySQL".into()))?
        .map_err(init)?;
    let store = Arc::new(MysqlStore {
        pool: Pool::new(cfg.dsn.opts(Some(&cfg.schema), MAX_CONNECTIONS)),
        table: cfg.table.clone(),
        metadata_table: cfg.metadata_table.clone(),
        timeout: cfg.timeout,
    });
    store.timed(store.migrate(&cfg.schema)).await.map_err(init)?;
    if let Some(every) = cfg.cleanup_interval {
        tokio::spawn(sweep_expired(Arc::downgrade(&store), every));
    }
    Ok(store)
}

type Row = (String, Vec<u8>, String, bool, Option<i64>);

fn item(row: Row) -> Result<(String, StateItem), StateError> {
    let (key, value, etag, binary, exp) = row;
    Ok((
        key,
        StateItem {
            data: sqlvalue::decode(value, binary)?,
            etag: Some(etag),
            expires_at: exp
                .and_then(|s| u64::try_from(s).ok())
                .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
        },
    ))
}

const LIVE: &str = "(expiredate IS NULL OR expiredate > CURRENT_TIMESTAMP)";
const COLS: &str = "id, value, eTag, isbinary, CAST(UNIX_TIMESTAMP(expiredate) AS SIGNED)";
/// Now plus the TTL, rounded up to the column's whole second, so an item lives at least its TTL.
const EXPIRY: &str = "FROM_UNIXTIME(CEIL(UNIX_TIMESTAMP(NOW(6)) + ?))";

impl MysqlStore {
    async fn timed<T>(&self, f: impl Future<Output = Result<T, StateError>>) -> Result<T, StateError> {
        tokio::time::timeout(self.timeout, f).await.unwrap_or_else(|_| {
            Err(StateError::Backend(format!(
                "MySQL did not answer within {:?}",
                self.timeout
            )))
        })
    }

    async fn conn(&self) -> Result<Conn, StateError> {
        self.pool.get_conn().await.map_err(db_err)
    }

    async fn migrate(&self, schema: &str) -> Result<(), StateError> {
        let t = &self.table;
        let mut c = self.conn().await?;
        c.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id VARCHAR(255) NOT NULL PRIMARY KEY,
                value JSON NOT NULL,
                isbinary BOOLEAN NOT NULL,
                insertDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                updateDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
                eTag VARCHAR(36) NOT NULL,
                expiredate TIMESTAMP NULL,
                INDEX expiredate_idx(expiredate)
            )"
        ))
        .await
        .map_err(db_err)?;
        // Tables from older Dapr releases lack the later columns.
        let has = async |c: &mut Conn, column: &str| -> Result<bool, StateError> {
            let n: Option<i64> = c
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? AND column_name = ?",
                    (schema, t.as_str(), column),
                )
                .await
                .map_err(db_err)?;
            Ok(n.unwrap_or(0) > 0)
        };
        if !has(&mut c, "expiredate").await? {
            c.query_drop(format!(
                "ALTER TABLE {t} ADD COLUMN expiredate TIMESTAMP NULL, ADD INDEX expiredate_idx (expiredate)"
            ))
            .await
            .map_err(db_err)?;
        }
        if !has(&mut c, "row_id").await? {
            let added = c
                .query_drop(format!(
                    "ALTER TABLE {t} ADD COLUMN row_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, ADD UNIQUE KEY row_id_uidx (row_id)"
                ))
                .await;
            // Another sidecar may have added it meanwhile (duplicate column 1060 / key 1061).
            if let Err(e) = added
                && !matches!(&e, mysql_async::Error::Server(s) if s.code == 1060 || s.code == 1061)
            {
                return Err(db_err(e));
            }
        }
        c.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (id VARCHAR(255) NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
            self.metadata_table
        ))
        .await
        .map_err(db_err)
    }

    async fn apply(&self, c: &mut Conn, op: &TransactionOp) -> Result<(), StateError> {
        let t = &self.table;
        let etag = op.etag().filter(|e| !e.is_empty());
        match op {
            TransactionOp::Set(r) => {
                let (json, binary) = sqlvalue::encode(&r.value);
                let new_etag = uuid::Uuid::new_v4().to_string();
                let ttl = Value::from(r.ttl.filter(|t| *t > 0));
                if let Some(given) = etag {
                    c.exec_drop(
                        format!(
                            "UPDATE {t} SET value = ?, eTag = ?, isbinary = ?, expiredate = {EXPIRY} WHERE id = ? AND eTag = ? AND {LIVE}"
                        ),
                        vec![json.into(), new_etag.into(), binary.into(), ttl, r.key.clone().into(), given.into()],
                    )
                    .await
                    .map_err(db_err)?;
                    if c.affected_rows() == 0 {
                        return Err(EtagConflict::Mismatch.error(&r.key));
                    }
                    return Ok(());
                }
                let params = vec![r.key.clone().into(), json.into(), new_etag.into(), binary.into(), ttl];
                if r.concurrency == super::Concurrency::FirstWrite {
                    // Only creates: an expired row not yet swept is removed first.
                    c.exec_drop(
                        format!("DELETE FROM {t} WHERE id = ? AND expiredate IS NOT NULL AND expiredate <= CURRENT_TIMESTAMP"),
                        (r.key.as_str(),),
                    )
                    .await
                    .map_err(db_err)?;
                    let inserted = c
                        .exec_drop(
                            format!(
                                "INSERT INTO {t} (id, value, eTag, isbinary, expiredate) VALUES (?, ?, ?, ?, {EXPIRY})"
                            ),
                            params,
                        )
                        .await;
                    return match inserted {
                        Err(e) if is_duplicate(&e) => Err(EtagConflict::Exists.error(&r.key)),
                        other => other.map_err(db_err),
                    };
                }
                c.exec_drop(
                    format!(
                        "INSERT INTO {t} (id, value, eTag, isbinary, expiredate) VALUES (?, ?, ?, ?, {EXPIRY})
                         ON DUPLICATE KEY UPDATE value = VALUES(value), eTag = VALUES(eTag), isbinary = VALUES(isbinary),
                         expiredate = VALUES(expiredate)"
                    ),
                    params,
                )
                .await
                .map_err(db_err)
            }
            TransactionOp::Delete(r) => {
                match etag {
                    Some(given) => {
                        c.exec_drop(
                            format!("DELETE FROM {t} WHERE id = ? AND eTag = ?"),
                            (r.key.as_str(), given),
                        )
                        .await
                    }
                    None => {
                        c.exec_drop(format!("DELETE FROM {t} WHERE id = ?"), (r.key.as_str(),))
                            .await
                    }
                }
                .map_err(db_err)?;
                if etag.is_some() && c.affected_rows() == 0 {
                    return Err(EtagConflict::Mismatch.error(&r.key));
                }
                Ok(())
            }
        }
    }

    async fn read_many(&self, keys: &[String]) -> Result<Vec<(String, StateItem)>, StateError> {
        let mut c = self.conn().await?;
        let mut out = vec![];
        for chunk in keys.chunks(BULK_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(",");
            let rows: Vec<Row> = c
                .exec(
                    format!("SELECT {COLS} FROM {} WHERE id IN ({marks}) AND {LIVE}", self.table),
                    chunk.iter().map(|k| Value::from(k.as_str())).collect::<Vec<_>>(),
                )
                .await
                .map_err(db_err)?;
            for r in rows {
                out.push(item(r)?);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for MysqlStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Etag, Feature::Transactional, Feature::Ttl]
    }

    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        self.timed(async {
            let mut c = self.conn().await?;
            let row: Option<Row> = c
                .exec_first(
                    format!("SELECT {COLS} FROM {} WHERE id = ? AND {LIVE}", self.table),
                    (key,),
                )
                .await
                .map_err(db_err)?;
            row.map(|r| item(r).map(|(_, i)| i)).transpose()
        })
        .await
    }

    async fn bulk_get(&self, keys: &[String], _parallelism: usize) -> Vec<Result<Option<StateItem>, StateError>> {
        match self.timed(self.read_many(keys)).await {
            Err(e) => keys.iter().map(|_| Err(StateError::Backend(e.to_string()))).collect(),
            Ok(rows) => {
                let by_key: std::collections::HashMap<String, StateItem> = rows.into_iter().collect();
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
        if ops.is_empty() {
            return Ok(());
        }
        self.timed(async {
            let mut c = self.conn().await?;
            if let [op] = ops {
                return self.apply(&mut c, op).await;
            }
            // A connection dropped mid-transaction (on a timeout) is reset by the pool before reuse, which
            // rolls the transaction back.
            c.query_drop("START TRANSACTION").await.map_err(db_err)?;
            for op in ops {
                if let Err(e) = self.apply(&mut c, op).await {
                    c.query_drop("ROLLBACK").await.map_err(db_err)?;
                    return Err(e);
                }
            }
            c.query_drop("COMMIT").await.map_err(db_err)
        })
        .await
    }

    async fn close(&self) {
        let _ = self.pool.clone().disconnect().await;
    }
}

/// Every `every`, deletes expired rows, once across all sidecars sharing the metadata table (a sidecar sweeps
/// only when it moves the last-cleanup time forward), as Dapr's do.
async fn sweep_expired(store: Weak<MysqlStore>, every: Duration) {
    let interval_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).saturating_sub(100);
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let swept = store
            .timed(async {
                let mut c = store.conn().await?;
                c.exec_drop(
                    format!(
                        "INSERT INTO {} (id, value) VALUES ('last-cleanup', CURRENT_TIMESTAMP) ON DUPLICATE KEY UPDATE \
                         value = IF(CURRENT_TIMESTAMP > DATE_ADD(value, INTERVAL ?*1000 MICROSECOND), CURRENT_TIMESTAMP, value)",
                        store.metadata_table
                    ),
                    (interval_ms,),
                )
                .await
                .map_err(db_err)?;
                if c.affected_rows() == 0 {
                    return Ok(0);
                }
                c.query_drop(format!(
                    "DELETE FROM {} WHERE expiredate IS NOT NULL AND expiredate <= CURRENT_TIMESTAMP",
                    store.table
                ))
                .await
                .map_err(db_err)?;
                Ok(c.affected_rows())
            })
            .await;
        match swept {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "mysql: deleted expired state"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "mysql: deleting expired state failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_dsns() {
        let d = Dsn::parse("root:@tcp(127.0.0.1:3306)/test?parseTime=true").unwrap();
        assert_eq!(
            (
                d.user.as_deref(),
                d.password.as_deref(),
                d.host.as_str(),
                d.port,
                d.database.as_deref()
            ),
            (Some("root"), None, "127.0.0.1", 3306, Some("test"))
        );
        let d = Dsn::parse("dapr:p@ss:w/rd@tcp(db.local:3307)/?allowNativePasswords=true").unwrap();
        assert_eq!(
            (d.user.as_deref(), d.password.as_deref()),
            (Some("dapr"), Some("p@ss:w/rd"))
        );
        assert_eq!((d.host.as_str(), d.port, d.database), ("db.local", 3307, None));
        let d = Dsn::parse("u:pw@unix(/run/mysqld/mysqld.sock)/db").unwrap();
        assert_eq!(d.socket.as_deref(), Some("/run/mysqld/mysqld.sock"));
        let d = Dsn::parse("u@tcp([::1]:3306)/").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("::1", 3306));
        assert!(Dsn::parse("no slash here").is_err());
        assert!(Dsn::parse("u@tcp(h:port)/").is_err());
        assert!(Dsn::parse("u@udp(h:1)/").is_err());
        assert!(!format!("{:?}", Dsn::parse("u:secret@tcp(h)/").unwrap()).contains("secret"));
    }

    #[test]
    fn metadata() {
        let md = |props: &[(&str, &str)]| {
            Metadata::new(
                "s",
                "app",
                "",
                props.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
        };
        let cs = ("connectionString", "root:@tcp(127.0.0.1:3306)/?parseTime=true");
        let c = MysqlConfig::from_metadata(&md(&[cs])).unwrap();
        assert_eq!((c.schema.as_str(), c.table.as_str()), ("dapr_state_store", "state"));
        assert_eq!(c.timeout, Duration::from_secs(20));
        let c = MysqlConfig::from_metadata(&md(&[("connectionString", "root:@tcp(h)/test")])).unwrap();
        assert_eq!(c.schema, "test");
        let c = MysqlConfig::from_metadata(&md(&[cs, ("schemaName", "s1"), ("timeoutInSeconds", "5")])).unwrap();
        assert_eq!((c.schema.as_str(), c.timeout), ("s1", Duration::from_secs(5)));
        assert!(MysqlConfig::from_metadata(&md(&[cs, ("tableName", "a.b")])).is_err());
        assert!(MysqlConfig::from_metadata(&md(&[])).is_err());
    }
}
