//! Where jobs live: one SQLite table keyed by (namespace, app id, name), in a file that survives restarts and
//! that every sidecar of an app on the machine shares (`tandem run`), or in memory (`tandem sidecar`). A trigger
//! is claimed with a conditional UPDATE of a lease, so of several sidecars of one app exactly one delivers it;
//! its outcome is written only if the job was not replaced meanwhile (the `generation` it was claimed at).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::timing::Window;
use super::{FailurePolicy, Job, JobData};

/// Jobs one app may have at once.
pub const MAX_JOBS_PER_APP: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job already exists: '{0}'")]
    AlreadyExists(String),
    #[error("the app has {MAX_JOBS_PER_APP} jobs, the most tandem keeps for one app: delete some first")]
    TooMany,
    #[error("jobs database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("jobs database: a stored job is unreadable: {0}")]
    Corrupt(String),
    #[error("jobs database: {0}")]
    Task(String),
}

/// A job as stored, with where its schedule stands.
#[derive(Clone, Debug)]
pub struct Stored {
    pub job: Job,
    pub window: Window,
    /// Ticks delivered (or given up on).
    pub count: u32,
    /// Unix milliseconds of the last tick delivered.
    pub last_ms: Option<i64>,
    /// The tick the next attempt serves.
    pub tick_ms: i64,
    /// Failed attempts at `tick_ms` so far.
    pub attempts: u32,
    pub generation: i64,
}

/// What became of a claimed trigger.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finish {
    /// The tick is done; the next one is at `next_ms`, or the job is over (`None`).
    Advance {
        count: u32,
        last_ms: i64,
        next_ms: Option<i64>,
    },
    /// Try the same tick again at `at_ms`.
    Retry { at_ms: i64, attempts: u32 },
}

/// The timing and policy fields kept as JSON beside the data.
#[derive(serde::Serialize, serde::Deserialize)]
struct Spec {
    schedule: Option<String>,
    repeats: Option<u32>,
    due_time: Option<String>,
    ttl: Option<String>,
    failure_policy: FailurePolicy,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS jobs (
    namespace TEXT NOT NULL, app_id TEXT NOT NULL, name TEXT NOT NULL,
    spec TEXT NOT NULL, data_type TEXT, data BLOB,
    begin_ms INTEGER NOT NULL, begin_is_due INTEGER NOT NULL, expiration_ms INTEGER,
    count INTEGER NOT NULL DEFAULT 0, last_ms INTEGER,
    tick_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL, lease_owner TEXT, lease_until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, app_id, name));
CREATE INDEX IF NOT EXISTS jobs_next ON jobs (namespace, app_id, next_ms);";

const COLUMNS: &str =
    "name, spec, data_type, data, begin_ms, begin_is_due, expiration_ms, count, last_ms, tick_ms, attempts, generation";

/// The jobs of one app.
#[derive(Clone)]
pub struct JobStore {
    conn: Arc<Mutex<Connection>>,
    namespace: String,
    app_id: String,
}

impl JobStore {
    /// Opens (creating) the database at `path`, or an in-memory one.
    pub fn open(path: Option<&Path>, namespace: &str, app_id: &str) -> Result<Self, StoreError> {
        let target = match path {
            Some(p) => {
                let s = p.to_string_lossy().into_owned();
                crate::components::sqlite::create_parent_dir(&s).map_err(|e| StoreError::Task(e.to_string()))?;
                s
            }
            None => ":memory:".to_owned(),
        };
        let conn = crate::components::sqlite::open_with_busy_retry("jobs", Duration::from_secs(10), || {
            let c = crate::components::sqlite::connect(&target, Duration::from_secs(5), true)?;
            c.execute_batch(SCHEMA)?;
            Ok(c)
        })?;
        Ok(JobStore {
            conn: Arc::new(Mutex::new(conn)),
            namespace: namespace.to_owned(),
            app_id: app_id.to_owned(),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conn, ns, app) = (self.conn.clone(), self.namespace.clone(), self.app_id.clone());
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&guard, &ns, &app)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Stores `job` to fire first at `first_ms`; an existing job of that name is replaced only if `overwrite`.
    pub async fn put(&self, job: Job, window: Window, first_ms: i64, overwrite: bool) -> Result<(), StoreError> {
        self.with(move |c, ns, app| {
            let tx = c.unchecked_transaction()?;
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM jobs WHERE namespace=?1 AND app_id=?2 AND name=?3",
                    params![ns, app, job.name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if exists && !overwrite {
                return Err(StoreError::AlreadyExists(format!("app||{ns}||{app}||{}", job.name)));
            }
            if !exists {
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM jobs WHERE namespace=?1 AND app_id=?2",
                    params![ns, app],
                    |r| r.get(0),
                )?;
                if n >= MAX_JOBS_PER_APP {
                    return Err(StoreError::TooMany);
                }
            }
            let spec = serde_json::to_string(&Spec {
                schedule: job.schedule.clone(),
                repeats: job.repeats,
                due_time: job.due_time.clone(),
                ttl: job.ttl.clone(),
                failure_policy: job.failure_policy,
            })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let (data_type, data) = match &job.data {
                Some(d) => (Some(d.type_url.as_str()), Some(d.value.as_slice())),
                None => (None, None),
            };
            tx.execute(
                "INSERT OR REPLACE INTO jobs (namespace, app_id, name, spec, data_type, data, begin_ms, begin_is_due,
                 expiration_ms, count, last_ms, tick_ms, next_ms, attempts, generation, lease_owner, lease_until_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, NULL, ?10, ?10, 0, ?11, NULL, 0)",
                params![
                    ns,
                    app,
                    job.name,
                    spec,
                    data_type,
                    data,
                    window.begin_ms,
                    window.begin_is_due,
                    window.expiration_ms,
                    first_ms,
                    rand::random::<i64>()
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn get(&self, name: &str) -> Result<Option<Job>, StoreError> {
        let name = name.to_owned();
        self.with(move |c, ns, app| {
            let row = c
                .query_row(
                    &format!("SELECT {COLUMNS} FROM jobs WHERE namespace=?1 AND app_id=?2 AND name=?3"),
                    params![ns, app, name],
                    read_row,
                )
                .optional()?;
            row.map(|r| r.map(|s| s.job)).transpose()
        })
        .await
    }

    /// Deletes a job; deleting one that does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.with(move |c, ns, app| {
            c.execute(
                "DELETE FROM jobs WHERE namespace=?1 AND app_id=?2 AND name=?3",
                params![ns, app, name],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes every job whose name starts with `prefix` (all of them for an empty prefix).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let prefix = prefix.to_owned();
        self.with(move |c, ns, app| {
            Ok(c.execute(
                "DELETE FROM jobs WHERE namespace=?1 AND app_id=?2 AND substr(name, 1, length(?3)) = ?3",
                params![ns, app, prefix],
            )?)
        })
        .await
    }

    pub async fn list(&self) -> Result<Vec<Job>, StoreError> {
        self.with(move |c, ns, app| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE namespace=?1 AND app_id=?2 ORDER BY name"
            ))?;
            let rows = stmt.query_map(params![ns, app], read_row)?;
            let mut out = vec![];
            for r in rows {
                out.push(r??.job);
            }
            Ok(out)
        })
        .await
    }

    /// Claims up to `limit` jobs due at `now_ms` for `owner` until `lease_until_ms`; a job another sidecar holds
    /// (an unexpired lease) is left to it.
    pub async fn claim_due(
        &self,
        now_ms: i64,
        owner: &str,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let owner = owner.to_owned();
        self.with(move |c, ns, app| {
            let mut stmt = c.prepare_cached(
                "SELECT name, generation FROM jobs WHERE namespace=?1 AND app_id=?2 AND next_ms<=?3
                 AND lease_until_ms<=?3 ORDER BY next_ms LIMIT ?4",
            )?;
            let due: Vec<(String, i64)> = stmt
                .query_map(params![ns, app, now_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut out = vec![];
            for (name, generation) in due {
                let claimed = c.execute(
                    "UPDATE jobs SET lease_owner=?1, lease_until_ms=?2 WHERE namespace=?3 AND app_id=?4 AND name=?5
                     AND generation=?6 AND lease_until_ms<=?7",
                    params![owner, lease_until_ms, ns, app, name, generation, now_ms],
                )?;
                if claimed == 1 {
                    let row = c.query_row(
                        &format!("SELECT {COLUMNS} FROM jobs WHERE namespace=?1 AND app_id=?2 AND name=?3"),
                        params![ns, app, name],
                        read_row,
                    )?;
                    match row {
                        Ok(s) => out.push(s),
                        Err(e) => {
                            tracing::error!(job = %crate::echo::echo(&name), "dropping an unreadable job: {e}");
                            c.execute(
                                "DELETE FROM jobs WHERE namespace=?1 AND app_id=?2 AND name=?3",
                                params![ns, app, name],
                            )?;
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The earliest instant (unix ms) some job may be claimed.
    pub async fn next_wake(&self) -> Result<Option<i64>, StoreError> {
        self.with(move |c, ns, app| {
            Ok(c.query_row(
                "SELECT MIN(MAX(next_ms, lease_until_ms)) FROM jobs WHERE namespace=?1 AND app_id=?2",
                params![ns, app],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Records the outcome of a trigger `owner` claimed, unless the job was replaced or deleted meanwhile.
    pub async fn finish(&self, name: &str, generation: i64, owner: &str, outcome: Finish) -> Result<(), StoreError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.with(move |c, ns, app| {
            let key = "namespace=?1 AND app_id=?2 AND name=?3 AND generation=?4 AND lease_owner=?5";
            match outcome {
                Finish::Advance { next_ms: None, .. } => {
                    c.execute(
                        &format!("DELETE FROM jobs WHERE {key}"),
                        params![ns, app, name, generation, owner],
                    )?;
                }
                Finish::Advance {
                    count,
                    last_ms,
                    next_ms: Some(next),
                } => {
                    c.execute(
                        &format!(
                            "UPDATE jobs SET count=?6, last_ms=?7, tick_ms=?8, next_ms=?8, attempts=0,
                             lease_owner=NULL, lease_until_ms=0 WHERE {key}"
                        ),
                        params![ns, app, name, generation, owner, count, last_ms, next],
                    )?;
                }
                Finish::Retry { at_ms, attempts } => {
                    c.execute(
                        &format!(
                            "UPDATE jobs SET next_ms=?6, attempts=?7, lease_owner=NULL, lease_until_ms=0 WHERE {key}"
                        ),
                        params![ns, app, name, generation, owner, at_ms, attempts],
                    )?;
                }
            }
            Ok(())
        })
        .await
    }
}

/// A row of [`COLUMNS`]; the inner error is a row whose JSON no longer reads.
fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Stored, StoreError>> {
    let name: String = r.get(0)?;
    let spec: String = r.get(1)?;
    let data_type: Option<String> = r.get(2)?;
    let data: Option<Vec<u8>> = r.get(3)?;
    let window = Window {
        begin_ms: r.get(4)?,
        begin_is_due: r.get(5)?,
        expiration_ms: r.get(6)?,
    };
    let (count, last_ms, tick_ms, attempts, generation) = (r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?);
    Ok(serde_json::from_str::<Spec>(&spec)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
        .map(|s| Stored {
            job: Job {
                name,
                schedule: s.schedule,
                repeats: s.repeats,
                due_time: s.due_time,
                ttl: s.ttl,
                data: data_type.map(|type_url| JobData {
                    type_url,
                    value: data.unwrap_or_default(),
                }),
                failure_policy: s.failure_policy,
            },
            window,
            count,
            last_ms,
            tick_ms,
            attempts,
            generation,
        }))
}
