//! `sqlite` name resolution: sidecars on one host register in a shared SQLite file, heartbeat, and read each other's rows.
//!
//! The schema, the `nr-migrations` level and the `nr-last-cleanup` key are Dapr's, so daprd and tandem can share a file.
//! `last_update` holds Unix seconds with a fraction, which lets tandem accept sub-second intervals.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::task::JoinHandle;

use super::{AddressCache, Configuration, Instance, NameResolver, ResolveError, ResolveRequest};

const KNOWN_KEYS: &[&str] = &[
    "connectionString",
    "updateInterval",
    "timeout",
    "tableName",
    "metadataTableName",
    "cleanupInterval",
    "busyTimeout",
    "disableWAL",
];

/// How long opening and migrating the database may take (another sidecar may hold its lock meanwhile).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Typed `sqlite` configuration (Dapr's names and defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct SqliteConfig {
    /// A file path or a `file:` URI.
    pub connection_string: String,
    /// A registration not renewed for this long is ignored.
    pub update_interval: Duration,
    /// How long one query may take.
    pub timeout: Duration,
    pub table_name: String,
    pub metadata_table_name: String,
    /// How often stale rows are deleted; `None` (`0`) disables the sweep.
    pub cleanup_interval: Option<Duration>,
    pub busy_timeout: Duration,
    pub disable_wal: bool,
}

impl SqliteConfig {
    pub fn from_configuration(c: &Configuration) -> Result<Self, ResolveError> {
        c.warn_unknown("sqlite", KNOWN_KEYS);
        let connection_string = c.string("connectionString")?.ok_or_else(|| {
            ResolveError::config(
                "connectionString",
                "is required: the path of a database file every sidecar on this host shares",
            )
        })?;
        let identifier = |field: &str, default: &str| -> Result<String, ResolveError> {
            let name = c.string(field)?.unwrap_or_else(|| default.into());
            let valid = name.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
                && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if valid {
                Ok(name)
            } else {
                Err(ResolveError::config(
                    field,
                    format!("{name:?} is not a table name; use letters, digits and '_'"),
                ))
            }
        };
        let cfg = SqliteConfig {
            update_interval: c.duration("updateInterval")?.unwrap_or(Duration::from_secs(5)),
            timeout: c.duration("timeout")?.unwrap_or(Duration::from_secs(1)),
            table_name: identifier("tableName", "hosts")?,
            metadata_table_name: identifier("metadataTableName", "metadata")?,
            cleanup_interval: match c.duration("cleanupInterval")? {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => Some(Duration::from_secs(3600)),
            },
            busy_timeout: c.duration("busyTimeout")?.unwrap_or(Duration::from_millis(800)),
            disable_wal: c.bool("disableWAL")?.unwrap_or(false),
            connection_string,
        };
        if cfg.timeout.is_zero() {
            return Err(ResolveError::config("timeout", "must be longer than 0s"));
        }
        if cfg.update_interval <= cfg.timeout {
            return Err(ResolveError::config(
                "updateInterval",
                format!(
                    "{:?} must be longer than timeout ({:?}): registrations are renewed every updateInterval - timeout",
                    cfg.update_interval, cfg.timeout
                ),
            ));
        }
        if cfg.table_name == cfg.metadata_table_name {
            return Err(ResolveError::config("metadataTableName", "must differ from tableName"));
        }
        Ok(cfg)
    }

    fn is_in_memory(&self) -> bool {
        crate::components::sqlite::is_in_memory(&self.connection_string)
    }
}

/// This sidecar's row.
#[derive(Clone, Debug)]
struct Registration {
    id: String,
    address: String,
    app_id: String,
    namespace: String,
}

struct Shared {
    cfg: SqliteConfig,
    conn: Mutex<Connection>,
    registration: Mutex<Option<Registration>>,
    /// Set by `close`; checked under the connection lock before (re-)registering.
    closed: AtomicBool,
}

/// Registers this sidecar in a SQLite table and resolves app ids from the rows of the others.
/// How long resolved addresses are reused before the table is read again.
const RESOLVE_CACHE_TTL: Duration = Duration::from_secs(1);

pub struct SqliteResolver {
    shared: Arc<Shared>,
    /// Answers are kept for a second so a busy caller does not query the file on every call; a call that
    /// cannot reach an address invalidates its entry.
    cache: AddressCache,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    cleanup: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for SqliteResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteResolver")
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the database and brings its schema to Dapr's migration level 1, retrying while other sidecars hold
/// the new file's lock.
fn open(cfg: &SqliteConfig) -> rusqlite::Result<Connection> {
    crate::components::sqlite::open_with_busy_retry("name resolution sqlite", OPEN_TIMEOUT / 2, || open_once(cfg))
}

fn open_once(cfg: &SqliteConfig) -> rusqlite::Result<Connection> {
    let mut conn = crate::components::sqlite::connect(&cfg.connection_string, cfg.busy_timeout, !cfg.disable_wal)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let (hosts, meta) = (&cfg.table_name, &cfg.metadata_table_name);
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {meta} (key text NOT NULL PRIMARY KEY, value text NOT NULL)"
    ))?;
    let level: Option<String> = tx
        .query_row(
            &format!("SELECT value FROM {meta} WHERE key = 'nr-migrations'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    let level: u32 = level.and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    if level < 1 {
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {hosts} (
                registration_id TEXT NOT NULL PRIMARY KEY,
                address TEXT NOT NULL,
                app_id TEXT NOT NULL,
                namespace TEXT NOT NULL,
                last_update INTEGER NOT NULL
            );
            CREATE UNIQUE INDEX IF NOT EXISTS {hosts}_address_idx ON {hosts} (address);
            CREATE INDEX IF NOT EXISTS {hosts}_last_update_idx ON {hosts} (last_update);"
        ))?;
        tx.execute(
            &format!("REPLACE INTO {meta} (key, value) VALUES ('nr-migrations', '1')"),
            [],
        )?;
    }
    tx.commit()?;
    Ok(conn)
}

/// `nameresolution.sqlite`: registrations in a SQLite file shared by the sidecars of one host.
pub async fn build(
    md: crate::components::Metadata,
) -> Result<Arc<dyn NameResolver>, crate::components::ComponentError> {
    let cfg = Configuration::from_value(&md.configuration)?;
    Ok(Arc::new(SqliteResolver::build(&cfg, super::sidecar_of(&md)?).await?))
}

impl SqliteResolver {
    /// Opens (creating if needed) the database and starts the stale-row sweep; `local` must be registrable.
    pub async fn build(c: &Configuration, local: &Instance) -> Result<Self, ResolveError> {
        let cfg = SqliteConfig::from_configuration(c)?;
        local.require_registrable("sqlite")?;
        Self::open(cfg).await
    }

    pub async fn open(cfg: SqliteConfig) -> Result<Self, ResolveError> {
        if cfg.is_in_memory() {
            tracing::warn!(
                "name resolution sqlite uses an in-memory database: only this process sees its registrations; \
                 set connectionString to a file path shared by every sidecar on the host"
            );
        } else {
            crate::components::sqlite::create_parent_dir(&cfg.connection_string).map_err(|e| {
                ResolveError::Backend(format!(
                    "name resolution sqlite: cannot create the folder of connectionString {:?}: {e}",
                    cfg.connection_string
                ))
            })?;
        }
        let opening = cfg.clone();
        let conn = tokio::time::timeout(
            OPEN_TIMEOUT,
            tokio::task::spawn_blocking(move || open(&opening)),
        )
        .await
        .map_err(|_| {
            ResolveError::Backend(format!(
                "name resolution sqlite: opening {:?} took longer than {OPEN_TIMEOUT:?}; another process holds a lock on it",
                cfg.connection_string
            ))
        })?
        .map_err(|e| ResolveError::Backend(format!("name resolution sqlite: {e}")))?
        .map_err(|e| {
            ResolveError::Backend(format!(
                "name resolution sqlite: cannot open {:?} (connectionString) and create table {}: {e}",
                cfg.connection_string, cfg.table_name
            ))
        })?;
        let cleanup_every = cfg.cleanup_interval;
        let shared = Arc::new(Shared {
            cfg,
            conn: Mutex::new(conn),
            registration: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let cleanup = cleanup_every.map(|every| tokio::spawn(sweep_stale_rows(Arc::downgrade(&shared), every)));
        Ok(SqliteResolver {
            cache: AddressCache::new(RESOLVE_CACHE_TTL),
            shared,
            heartbeat: Mutex::new(None),
            cleanup: Mutex::new(cleanup),
        })
    }
}

/// Runs `f` on the connection off the async threads, within `timeout`.
async fn with_db<T: Send + 'static>(
    shared: &Arc<Shared>,
    what: &str,
    f: impl FnOnce(&Shared, &Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ResolveError> {
    let cfg = &shared.cfg;
    let task = tokio::task::spawn_blocking({
        let shared = shared.clone();
        move || {
            let conn = lock(&shared.conn);
            f(&shared, &conn)
        }
    });
    match tokio::time::timeout(cfg.timeout, task).await {
        Err(_) => Err(ResolveError::Backend(format!(
            "name resolution sqlite: {what} took longer than timeout ({:?}); {:?} may be locked by another process, \
             raise timeout or busyTimeout if the disk is slow",
            cfg.timeout, cfg.connection_string
        ))),
        Ok(Err(e)) => Err(ResolveError::Backend(format!(
            "name resolution sqlite: {what} failed: {e}"
        ))),
        Ok(Ok(Err(e))) => Err(ResolveError::Backend(format!(
            "name resolution sqlite: {what} in {:?} failed: {e}",
            cfg.connection_string
        ))),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

/// Writes (or takes over) this sidecar's row, unless the resolver has been closed.
fn write_registration(shared: &Shared, conn: &Connection) -> rusqlite::Result<bool> {
    let Some(reg) = lock(&shared.registration).clone() else {
        return Ok(false);
    };
    if shared.closed.load(Ordering::SeqCst) {
        return Ok(false);
    }
    // The address is UNIQUE: REPLACE takes over the row of a previous run on the same address.
    conn.execute(
        &format!(
            "REPLACE INTO {} (registration_id, address, app_id, namespace, last_update) VALUES (?1, ?2, ?3, ?4, ?5)",
            shared.cfg.table_name
        ),
        params![reg.id, reg.address, reg.app_id, reg.namespace, now_secs()],
    )?;
    Ok(true)
}

/// Renews this sidecar's row; `false` when the row has vanished.
fn renew_registration(shared: &Shared, conn: &Connection) -> rusqlite::Result<bool> {
    let Some(reg) = lock(&shared.registration).clone() else {
        return Ok(true);
    };
    let n = conn.execute(
        &format!(
            "UPDATE {} SET last_update = ?1 WHERE registration_id = ?2 AND address = ?3",
            shared.cfg.table_name
        ),
        params![now_secs(), reg.id, reg.address],
    )?;
    Ok(n > 0)
}

/// Renews the registration every `updateInterval - timeout`; stops when the resolver is dropped or closed.
async fn heartbeat(shared: Weak<Shared>, every: Duration) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        match with_db(&shared, "renewing this sidecar's registration", renew_registration).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    table = %shared.cfg.table_name,
                    "name resolution sqlite: this sidecar's registration vanished from the table \
                     (deleted by another process or a cleanup); registering again"
                );
                if let Err(e) = with_db(&shared, "registering again", write_registration).await {
                    tracing::error!("{e}");
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
}

/// Deletes rows not renewed within `updateInterval`, at most once per `cleanupInterval` across all sidecars.
async fn sweep_stale_rows(shared: Weak<Shared>, every: Duration) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let result = with_db(&shared, "deleting stale registrations", move |s, conn| {
            let cfg = &s.cfg;
            // Claim this round, as Dapr's garbage collector does, so sidecars sharing the file do not all sweep.
            let claimed = conn.execute(
                &format!(
                    "INSERT INTO {} (key, value) VALUES ('nr-last-cleanup', datetime('now', 'subsec'))
                     ON CONFLICT (key) DO UPDATE SET value = datetime('now', 'subsec')
                     WHERE unixepoch('now', 'subsec') - unixepoch(value, 'subsec') > ?1",
                    cfg.metadata_table_name
                ),
                params![every.as_secs_f64() * 0.9],
            )?;
            if claimed == 0 {
                return Ok(0);
            }
            conn.execute(
                &format!("DELETE FROM {} WHERE ?1 - last_update >= ?2", cfg.table_name),
                params![now_secs(), cfg.update_interval.as_secs_f64()],
            )
        })
        .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "name resolution sqlite: removed stale registrations"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

#[async_trait]
impl NameResolver for SqliteResolver {
    async fn resolve(&self, req: &ResolveRequest) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(addrs) = self.cache.get(req) {
            return Ok(addrs);
        }
        let app_id = req.app_id.clone();
        // Like Dapr, rows of every namespace match: the file is shared by the sidecars of one host.
        let rows: Vec<String> = with_db(&self.shared, "looking up an app id", move |s, conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT address FROM {} WHERE app_id = ?1 AND ?2 - last_update < ?3",
                s.cfg.table_name
            ))?;
            let rows = stmt
                .query_map(params![app_id, now_secs(), s.cfg.update_interval.as_secs_f64()], |r| {
                    r.get(0)
                })?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await?;
        let mut addrs = Vec::with_capacity(rows.len());
        for row in rows {
            match row.parse::<SocketAddr>() {
                Ok(addr) => addrs.push(addr),
                // A registration by host name: resolve it like any other host.
                Err(_) => match tokio::net::lookup_host(row.as_str()).await {
                    Ok(found) => addrs.extend(found),
                    Err(e) => {
                        tracing::warn!(address = %row, "name resolution sqlite: skipping a registration whose address does not resolve: {e}")
                    }
                },
            }
        }
        if addrs.is_empty() {
            let cfg = &self.shared.cfg;
            return Err(ResolveError::not_found(
                req,
                format!(
                    "no sidecar registered it in table {} of {:?} within the last {:?}; check that the app's sidecar \
                     is running on this host with the same connectionString",
                    cfg.table_name, cfg.connection_string, cfg.update_interval
                ),
            ));
        }
        self.cache.insert(req.clone(), addrs.clone());
        Ok(addrs)
    }

    fn invalidate(&self, req: &ResolveRequest) {
        self.cache.invalidate(req);
    }

    async fn register(&self, me: &Instance) -> Result<(), ResolveError> {
        me.require_registrable("sqlite")?;
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(ResolveError::Backend(
                "name resolution sqlite: cannot register after close; build a new resolver".into(),
            ));
        }
        if let Some(old) = lock(&self.heartbeat).take() {
            old.abort();
        }
        *lock(&self.shared.registration) = Some(Registration {
            id: uuid::Uuid::new_v4().to_string(),
            address: me.internal_address(),
            app_id: me.app_id.clone(),
            namespace: me.namespace.clone(),
        });
        with_db(&self.shared, "registering this sidecar", write_registration).await?;
        let cfg = &self.shared.cfg;
        tracing::info!(
            app_id = %me.app_id,
            address = %me.internal_address(),
            db = %cfg.connection_string,
            "name resolution sqlite: registered this sidecar"
        );
        let every = cfg.update_interval - cfg.timeout;
        *lock(&self.heartbeat) = Some(tokio::spawn(heartbeat(Arc::downgrade(&self.shared), every)));
        Ok(())
    }

    async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for task in [&self.heartbeat, &self.cleanup] {
            if let Some(t) = lock(task).take() {
                t.abort();
            }
        }
        let result = with_db(&self.shared, "removing this sidecar's registration", |s, conn| {
            let Some(reg) = lock(&s.registration).take() else {
                return Ok(0);
            };
            conn.execute(
                &format!(
                    "DELETE FROM {} WHERE registration_id = ?1 AND address = ?2",
                    s.cfg.table_name
                ),
                params![reg.id, reg.address],
            )
        })
        .await;
        if let Err(e) = result {
            tracing::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests;
