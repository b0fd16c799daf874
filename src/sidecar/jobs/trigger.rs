//! The one task that fires jobs: it sleeps until the earliest due job in the store (or a change, or a poll that
//! notices jobs another sidecar of the app added), claims the due ones with a lease, and delivers each to the
//! app — HTTP `POST /job/<name>`, or gRPC `OnJobEvent` — under a bound on deliveries in flight. A failed delivery
//! follows the job's failure policy; a 404 / NOT_FOUND answer is final, as in daprd.

use std::sync::Arc;
use std::time::Duration;

use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1::JobEventRequest;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::store::{Finish, JobStore, Stored};
use super::timing::{self, next_tick, parse_schedule};
use super::{FailurePolicy, Job, data};
use crate::echo::echo;
use crate::sidecar::app_channel::{AppChannel, AppProtocol};

/// How long a claimed trigger is held before another sidecar may take it over.
const LEASE: Duration = Duration::from_secs(60);
/// The longest a delivery may take (within the lease).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(50);
/// How often the store is looked at for jobs other sidecars added.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// The shortest wait between retries (a zero interval would hammer the app).
const MIN_RETRY: Duration = Duration::from_millis(10);

/// Characters of a job name escaped in the `/job/<name>` path.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'"')
    .add(b'<')
    .add(b'>');

pub struct Trigger {
    store: JobStore,
    app: Arc<AppChannel>,
    wake: Arc<Notify>,
    /// This sidecar, as lease holder.
    owner: String,
    slots: Arc<Semaphore>,
}

fn now_ms() -> i64 {
    timing::millis(time::OffsetDateTime::now_utc())
}

impl Trigger {
    pub fn new(store: JobStore, app: Arc<AppChannel>, wake: Arc<Notify>) -> Self {
        Trigger {
            store,
            app,
            wake,
            owner: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let me = Arc::new(self);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let wait = me.tick().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = me.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims and starts what is due; returns how long to sleep before looking again.
    async fn tick(self: &Arc<Self>) -> Duration {
        let free = self.slots.available_permits();
        if free == 0 {
            // A finishing delivery wakes the loop.
            return POLL;
        }
        let now = now_ms();
        let claimed = match self
            .store
            .claim_due(now, &self.owner, now + LEASE.as_millis() as i64, free)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("claiming due jobs: {e}");
                return POLL;
            }
        };
        for job in claimed {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.deliver(job).await;
                drop(permit);
                me.wake.notify_one();
            });
        }
        match self.store.next_wake().await {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, POLL.as_millis() as i64) as u64),
            Ok(None) => POLL,
            Err(e) => {
                tracing::warn!("reading the next due job: {e}");
                POLL
            }
        }
    }

    async fn deliver(&self, s: Stored) {
        let result = match tokio::time::timeout(DELIVERY_TIMEOUT, self.send(&s.job)).await {
            Ok(r) => r,
            Err(_) => Err(format!("the app did not answer within {DELIVERY_TIMEOUT:?}")),
        };
        let outcome = match result {
            Ok(()) => advance(&s),
            Err(e) => {
                tracing::warn!(job = %echo(&s.job.name), attempt = s.attempts + 1, "delivering the job failed: {e}");
                match s.job.failure_policy {
                    FailurePolicy::Constant { interval, max_retries } if max_retries.is_none_or(|m| s.attempts < m) => {
                        Finish::Retry {
                            at_ms: now_ms() + interval.max(MIN_RETRY).as_millis().min(i64::MAX as u128 / 2) as i64,
                            attempts: s.attempts + 1,
                        }
                    }
                    _ => advance(&s),
                }
            }
        };
        if let Err(e) = self.store.finish(&s.job.name, s.generation, &self.owner, outcome).await {
            tracing::error!(job = %echo(&s.job.name), "recording the job's trigger: {e}");
        }
    }

    /// One delivery; `Err` is a failure the policy retries.
    async fn send(&self, job: &Job) -> Result<(), String> {
        match self.app.protocol {
            AppProtocol::Http => {
                let path = format!("/job/{}", utf8_percent_encode(&job.name, PATH));
                let body = data::http_body(job.data.as_ref());
                let (status, _) = self
                    .app
                    .call_http(
                        axum::http::Method::POST,
                        &path,
                        body.into(),
                        "application/json",
                        &[],
                        true,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match status {
                    200..=299 => Ok(()),
                    404 => {
                        tracing::error!(job = %echo(&job.name), "the app answered 404 to the job; it is not retried");
                        Ok(())
                    }
                    s => Err(format!("the app answered {s}")),
                }
            }
            AppProtocol::Grpc => {
                let req = JobEventRequest {
                    name: job.name.clone(),
                    data: job.data.as_ref().map(|d| prost_types::Any {
                        type_url: d.type_url.clone(),
                        value: d.value.clone(),
                    }),
                    method: format!("job/{}", job.name),
                    content_type: job.data.as_ref().map(|d| d.type_url.clone()).unwrap_or_default(),
                    http_extension: Some(common::HttpExtension {
                        verb: common::http_extension::Verb::Post as i32,
                        querystring: String::new(),
                    }),
                };
                match self.app.job_event(req).await.map_err(|e| e.to_string())? {
                    Ok(()) => Ok(()),
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        tracing::error!(job = %echo(&job.name), "the app answered NOT_FOUND to the job; it is not retried");
                        Ok(())
                    }
                    Err(s) => Err(format!("the app answered {:?}: {}", s.code(), echo(s.message()))),
                }
            }
        }
    }
}

/// The tick is done: count it and find the next one.
fn advance(s: &Stored) -> Finish {
    let count = s.count.saturating_add(1);
    let next = match s.job.schedule.as_deref().map(parse_schedule) {
        // A schedule that no longer reads (its time zone gone from the system) ends the job.
        Some(Err(e)) => {
            tracing::error!(job = %echo(&s.job.name), "the job's schedule no longer reads, the job ends: {e}");
            None
        }
        Some(Ok(sched)) => next_tick(Some(&sched), s.job.repeats, &s.window, count, Some(s.tick_ms)),
        None => next_tick(None, s.job.repeats, &s.window, count, Some(s.tick_ms)),
    };
    Finish::Advance {
        count,
        last_ms: s.tick_ms,
        next_ms: next,
    }
}
