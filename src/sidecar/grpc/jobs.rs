//! gRPC Jobs methods (`ScheduleJob`, `GetJob`, `DeleteJob`, `DeleteJobsByPrefix`, `ListJobs` and their Alpha1
//! twins) and the proto <-> core conversions of a job.

use std::time::Duration;

use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::DaprApi;
use crate::echo::echo;
use crate::sidecar::jobs::{FailurePolicy, Job, JobData};

type Reply<T> = Result<Response<T>, Status>;

/// A proto job as the core takes it; an unset failure policy is Dapr's default.
pub fn job_from_proto(j: rt::Job) -> Job {
    Job {
        name: j.name,
        schedule: j.schedule,
        repeats: j.repeats,
        due_time: j.due_time,
        ttl: j.ttl,
        data: j.data.map(|a| JobData {
            type_url: a.type_url,
            value: a.value,
        }),
        failure_policy: policy_from_proto(j.failure_policy),
    }
}

pub fn policy_from_proto(p: Option<common::JobFailurePolicy>) -> FailurePolicy {
    use common::job_failure_policy::Policy;
    match p.and_then(|p| p.policy) {
        Some(Policy::Drop(_)) => FailurePolicy::Drop,
        Some(Policy::Constant(c)) => FailurePolicy::Constant {
            interval: c
                .interval
                .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.clamp(0, 999_999_999) as u32))
                .unwrap_or_default(),
            max_retries: c.max_retries,
        },
        None => FailurePolicy::default(),
    }
}

pub fn job_to_proto(j: Job) -> rt::Job {
    use common::job_failure_policy::Policy;
    let policy = match j.failure_policy {
        FailurePolicy::Drop => Policy::Drop(common::JobFailurePolicyDrop {}),
        FailurePolicy::Constant { interval, max_retries } => Policy::Constant(common::JobFailurePolicyConstant {
            interval: Some(prost_types::Duration {
                seconds: interval.as_secs().min(i64::MAX as u64) as i64,
                nanos: interval.subsec_nanos() as i32,
            }),
            max_retries,
        }),
    };
    rt::Job {
        name: j.name,
        schedule: j.schedule,
        repeats: j.repeats,
        due_time: j.due_time,
        ttl: j.ttl,
        data: j.data.map(|d| prost_types::Any {
            type_url: d.type_url,
            value: d.value,
        }),
        failure_policy: Some(common::JobFailurePolicy { policy: Some(policy) }),
    }
}

#[instrument(level = "debug", name = "grpc.schedule_job", skip_all, fields(job = %echo(req.get_ref().job.as_ref().map(|j| j.name.as_str()).unwrap_or_default())))]
pub async fn schedule_job(api: &DaprApi, req: Request<rt::ScheduleJobRequest>) -> Reply<rt::ScheduleJobResponse> {
    let r = req.into_inner();
    api.rt.jobs.schedule(r.job.map(job_from_proto), r.overwrite).await?;
    Ok(Response::new(rt::ScheduleJobResponse {}))
}

pub async fn schedule_job_alpha1(
    api: &DaprApi,
    req: Request<rt::ScheduleJobRequest>,
) -> Reply<rt::ScheduleJobResponse> {
    schedule_job(api, req).await
}

#[instrument(level = "debug", name = "grpc.get_job", skip_all, fields(job = %echo(&req.get_ref().name)))]
pub async fn get_job(api: &DaprApi, req: Request<rt::GetJobRequest>) -> Reply<rt::GetJobResponse> {
    let job = api.rt.jobs.get(&req.into_inner().name).await?;
    Ok(Response::new(rt::GetJobResponse {
        job: Some(job_to_proto(job)),
    }))
}

pub async fn get_job_alpha1(api: &DaprApi, req: Request<rt::GetJobRequest>) -> Reply<rt::GetJobResponse> {
    get_job(api, req).await
}

#[instrument(level = "debug", name = "grpc.delete_job", skip_all, fields(job = %echo(&req.get_ref().name)))]
pub async fn delete_job(api: &DaprApi, req: Request<rt::DeleteJobRequest>) -> Reply<rt::DeleteJobResponse> {
    api.rt.jobs.delete(&req.into_inner().name).await?;
    Ok(Response::new(rt::DeleteJobResponse {}))
}

pub async fn delete_job_alpha1(api: &DaprApi, req: Request<rt::DeleteJobRequest>) -> Reply<rt::DeleteJobResponse> {
    delete_job(api, req).await
}

#[instrument(level = "debug", name = "grpc.delete_jobs_by_prefix", skip_all)]
pub async fn delete_jobs_by_prefix(
    api: &DaprApi,
    req: Request<rt::DeleteJobsByPrefixRequest>,
) -> Reply<rt::DeleteJobsByPrefixResponse> {
    api.rt
        .jobs
        .delete_prefix(req.get_ref().name_prefix.as_deref().unwrap_or_default())
        .await?;
    Ok(Response::new(rt::DeleteJobsByPrefixResponse {}))
}

pub async fn delete_jobs_by_prefix_alpha1(
    api: &DaprApi,
    req: Request<rt::DeleteJobsByPrefixRequestAlpha1>,
) -> Reply<rt::DeleteJobsByPrefixResponseAlpha1> {
    api.rt
        .jobs
        .delete_prefix(req.get_ref().name_prefix.as_deref().unwrap_or_default())
        .await?;
    Ok(Response::new(rt::DeleteJobsByPrefixResponseAlpha1 {}))
}

#[instrument(level = "debug", name = "grpc.list_jobs", skip_all)]
pub async fn list_jobs(api: &DaprApi, _req: Request<rt::ListJobsRequest>) -> Reply<rt::ListJobsResponse> {
    let jobs = api.rt.jobs.list().await?;
    Ok(Response::new(rt::ListJobsResponse {
        jobs: jobs.into_iter().map(job_to_proto).collect(),
    }))
}

pub async fn list_jobs_alpha1(
    api: &DaprApi,
    _req: Request<rt::ListJobsRequestAlpha1>,
) -> Reply<rt::ListJobsResponseAlpha1> {
    let jobs = api.rt.jobs.list().await?;
    Ok(Response::new(rt::ListJobsResponseAlpha1 {
        jobs: jobs.into_iter().map(job_to_proto).collect(),
    }))
}
