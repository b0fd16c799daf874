//! The jobs building block with an embedded scheduler: Dapr's Jobs API (`/v1.0(-alpha1)/jobs/<name>`, gRPC
//! `ScheduleJob`/`GetJob`/`DeleteJob`/`DeleteJobsByPrefix`/`ListJobs` and their Alpha1 twins) over a
//! [`store::JobStore`], with Dapr's checks and error codes, and one [`trigger`] task that delivers due jobs to the
//! app. Jobs belong to the app id and namespace of the sidecar.

pub mod data;
pub mod store;
pub mod timing;
pub mod trigger;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tonic::Code;

use crate::echo::echo;
use crate::sidecar::error::{ApiError, ApiResult};
use store::{JobStore, StoreError};
use timing::TimingSpec;

/// The largest job payload kept (Dapr's scheduler stores jobs in etcd, whose requests stop at 1.5 MiB).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// A job's payload: a protobuf `Any`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobData {
    pub type_url: String,
    pub value: Vec<u8>,
}

/// What happens when the app fails a trigger.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FailurePolicy {
    /// The trigger is not retried.
    Drop,
    /// Retried every `interval`, at most `max_retries` times (forever when unset).
    Constant {
        interval: Duration,
        max_retries: Option<u32>,
    },
}

impl Default for FailurePolicy {
    /// Dapr's default: retried every second, three times.
    fn default() -> Self {
        FailurePolicy::Constant {
            interval: Duration::from_secs(1),
            max_retries: Some(3),
        }
    }
}

/// A job as the user scheduled it.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub name: String,
    pub schedule: Option<String>,
    pub repeats: Option<u32>,
    pub due_time: Option<String>,
    pub ttl: Option<String>,
    pub data: Option<JobData>,
    pub failure_policy: FailurePolicy,
}

impl Job {
    fn timing(&self) -> TimingSpec<'_> {
        TimingSpec {
            schedule: self.schedule.as_deref(),
            repeats: self.repeats,
            due_time: self.due_time.as_deref(),
            ttl: self.ttl.as_deref(),
        }
    }
}

/// The Jobs API of one sidecar.
pub struct JobsApi {
    store: Result<JobStore, String>,
    app_id: String,
    /// Wakes the trigger task when a job is added or removed.
    wake: Arc<Notify>,
}

impl JobsApi {
    /// Jobs kept in the SQLite file at `path`, or in memory.
    pub fn new(path: Option<&Path>, namespace: &str, app_id: &str) -> Self {
        let store = JobStore::open(path, namespace, app_id).map_err(|e| {
            tracing::error!("the jobs store could not be opened, the Jobs API will fail: {e}");
            e.to_string()
        });
        JobsApi {
            store,
            app_id: app_id.to_owned(),
            wake: Arc::new(Notify::new()),
        }
    }

    fn store(&self, fail: fn(&str, String) -> ApiError) -> ApiResult<&JobStore> {
        self.store.as_ref().map_err(|e| fail(&self.app_id, e.clone()))
    }

    /// Starts delivering due jobs to the app over `app`.
    pub fn start(
        &self,
        app: Arc<crate::sidecar::app_channel::AppChannel>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if let Ok(store) = &self.store {
            let trigger = trigger::Trigger::new(store.clone(), app, self.wake.clone());
            tokio::spawn(tracing::Instrument::instrument(
                trigger.run(shutdown),
                tracing::info_span!("jobs", app_id = %self.app_id),
            ));
        }
    }

    /// Dapr's `ScheduleJob`: `job` is `None` when the request carried none.
    pub async fn schedule(&self, job: Option<Job>, overwrite: bool) -> ApiResult<()> {
        let Some(job) = job else {
            return Err(empty(&self.app_id, "Job", "DAPR_SCHEDULER_EMPTY"));
        };
        if job.name.is_empty() {
            return Err(empty(&self.app_id, "Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY"));
        }
        if job.schedule.is_none() && job.due_time.is_none() {
            return Err(empty(&self.app_id, "Schedule", "DAPR_SCHEDULER_SCHEDULE_EMPTY"));
        }
        let invalid = |detail: String| schedule_failed(&self.app_id, Code::InvalidArgument, &detail);
        validate_name(&job.name).map_err(invalid)?;
        if let Some(d) = &job.data
            && d.value.len() + d.type_url.len() > MAX_DATA_BYTES
        {
            return Err(invalid(format!(
                "job failed validation: the job's data is larger than {MAX_DATA_BYTES} bytes"
            )));
        }
        let now = time::OffsetDateTime::now_utc();
        let window = timing::window(&job.timing(), now).map_err(|e| invalid(format!("job failed validation: {e}")))?;
        let schedule = job
            .schedule
            .as_deref()
            .map(timing::parse_schedule)
            .transpose()
            .map_err(invalid)?;
        let Some(first) = timing::next_tick(schedule.as_ref(), job.repeats, &window, 0, None) else {
            // Expired before its first tick: nothing will ever fire.
            tracing::info!(job = %echo(&job.name), "the job's ttl ends before its first tick; it is not kept");
            return Ok(());
        };
        let store = self.store(|app, e| schedule_failed(app, Code::Internal, &e))?;
        store.put(job, window, first, overwrite).await.map_err(|e| match e {
            StoreError::AlreadyExists(_) => schedule_failed(&self.app_id, Code::AlreadyExists, &e.to_string()),
            StoreError::TooMany => schedule_failed(&self.app_id, Code::ResourceExhausted, &e.to_string()),
            e => schedule_failed(&self.app_id, Code::Internal, &e.to_string()),
        })?;
        self.wake.notify_one();
        Ok(())
    }

    /// Dapr's `GetJob`.
    pub async fn get(&self, name: &str) -> ApiResult<Job> {
        if name.is_empty() {
            return Err(empty(&self.app_id, "Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY"));
        }
        validate_name(name).map_err(|e| get_failed(&self.app_id, Code::InvalidArgument, &e))?;
        let store = self.store(|app, e| get_failed(app, Code::Internal, &e))?;
        match store.get(name).await {
            Ok(Some(job)) => Ok(job),
            Ok(None) => Err(get_failed(
                &self.app_id,
                Code::NotFound,
                &format!("job not found: {}", echo(name)),
            )),
            Err(e) => Err(get_failed(&self.app_id, Code::Internal, &e.to_string())),
        }
    }

    /// Dapr's `DeleteJob`: deleting a job that does not exist succeeds.
    pub async fn delete(&self, name: &str) -> ApiResult<()> {
        if name.is_empty() {
            return Err(empty(&self.app_id, "Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY"));
        }
        validate_name(name).map_err(|e| delete_failed(&self.app_id, Code::InvalidArgument, &e))?;
        let store = self.store(|app, e| delete_failed(app, Code::Internal, &e))?;
        store
            .delete(name)
            .await
            .map_err(|e| delete_failed(&self.app_id, Code::Internal, &e.to_string()))?;
        self.wake.notify_one();
        Ok(())
    }

    /// Dapr's `DeleteJobsByPrefix`: every job whose name starts with `prefix` (all of them when empty).
    pub async fn delete_prefix(&self, prefix: &str) -> ApiResult<()> {
        if !prefix.is_empty() {
            // As the scheduler checks it: the prefix with a character after it must be a valid name.
            validate_name(&format!("{prefix}a")).map_err(|e| delete_failed(&self.app_id, Code::InvalidArgument, &e))?;
        }
        let store = self.store(|app, e| delete_failed(app, Code::Internal, &e))?;
        store
            .delete_prefix(prefix)
            .await
            .map_err(|e| delete_failed(&self.app_id, Code::Internal, &e.to_string()))?;
        self.wake.notify_one();
        Ok(())
    }

    /// Dapr's `ListJobs`: the app's jobs by name.
    pub async fn list(&self) -> ApiResult<Vec<Job>> {
        let fail = |app: &str, e: String| {
            ApiError::new(
                500,
                Code::Internal,
                "DAPR_SCHEDULER_LIST_JOBS",
                format!("failed to list jobs due to: {e}"),
            )
            .with_reason("DAPR_SCHEDULER_LIST_JOBS")
            .for_app(app)
        };
        let store = self.store(fail)?;
        store.list().await.map_err(|e| fail(&self.app_id, e.to_string()))
    }
}

/// A job name as Dapr's scheduler takes it: with `_`, `:`, `-` and spaces removed and lower-cased, each
/// `||`-separated part an RFC 1123 subdomain (at most 253 characters).
pub fn validate_name(name: &str) -> Result<(), String> {
    let sanitized: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | ':' | '-' | ' '))
        .collect::<String>()
        .to_lowercase();
    for part in sanitized.split("||") {
        if let Some(problem) = dns1123_subdomain(part) {
            return Err(format!("job name is invalid {:?}: {problem}", echo(&sanitized)));
        }
    }
    Ok(())
}

fn dns1123_subdomain(s: &str) -> Option<&'static str> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    if s.split('.').all(label_ok) {
        None
    } else {
        Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and \
             must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )
    }
}

/// Dapr's `apierrors.Empty`: `<what> is empty`, 400 / INVALID_ARGUMENT.
fn empty(app_id: &str, what: &str, code: &'static str) -> ApiError {
    ApiError::new(400, Code::InvalidArgument, code, format!("{what} is empty"))
        .with_reason(code)
        .for_app(app_id)
}

/// The scheduler's error as daprd words it: `rpc error: code = <code> desc = <detail>`.
fn rpc_text(code: Code, detail: &str) -> String {
    let name = match code {
        Code::InvalidArgument => "Unknown", // the scheduler answers its validation errors as plain errors
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::ResourceExhausted => "ResourceExhausted",
        _ => "Internal",
    };
    format!("rpc error: code = {name} desc = {detail}")
}

/// HTTP status for the gRPC code of a scheduler failure. Dapr answers a job that fails validation 500 (the
/// scheduler's plain error); tandem answers it 400, as every client mistake.
fn http_status(code: Code) -> u16 {
    match code {
        Code::InvalidArgument => 400,
        Code::AlreadyExists => 409,
        Code::ResourceExhausted => 429,
        _ => 500,
    }
}

fn schedule_failed(app_id: &str, code: Code, detail: &str) -> ApiError {
    ApiError::new(
        http_status(code),
        code,
        "DAPR_SCHEDULER_SCHEDULE_JOB",
        format!("failed to schedule job due to: {}", rpc_text(code, detail)),
    )
    .with_reason("DAPR_SCHEDULER_SCHEDULE_JOB")
    .for_app(app_id)
}

/// Dapr answers every GetJob failure, a missing job included, 500 / INTERNAL; tandem keeps that except for an
/// invalid name (400).
fn get_failed(app_id: &str, code: Code, detail: &str) -> ApiError {
    let (status, grpc) = if code == Code::InvalidArgument {
        (400, Code::InvalidArgument)
    } else {
        (500, Code::Internal)
    };
    ApiError::new(
        status,
        grpc,
        "DAPR_SCHEDULER_GET_JOB",
        format!("failed to get job due to: {}", rpc_text(code, detail)),
    )
    .with_reason("DAPR_SCHEDULER_GET_JOB")
    .for_app(app_id)
}

fn delete_failed(app_id: &str, code: Code, detail: &str) -> ApiError {
    let (status, grpc) = if code == Code::InvalidArgument {
        (400, Code::InvalidArgument)
    } else {
        (500, Code::Internal)
    };
    ApiError::new(
        status,
        grpc,
        "DAPR_SCHEDULER_DELETE_JOB",
        format!("failed to delete job due to: {}", rpc_text(code, detail)),
    )
    .with_reason("DAPR_SCHEDULER_DELETE_JOB")
    .for_app(app_id)
}

#[cfg(test)]
mod tests;
