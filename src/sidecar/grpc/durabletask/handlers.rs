//! `TaskHubSidecarService` handlers: decode, call the workflow engine, encode.

use std::sync::Arc;

use dapr_durabletask_proto as pb;
use tonic::{Request, Response, Status};

use super::WorkflowGrpc;
use super::service::BoxStream;
use crate::sidecar::workflow::{Instance, Status as WfStatus, WorkflowError};

type Answer<T> = Result<Response<T>, Status>;

pub async fn hello(_: &Arc<WorkflowGrpc>, _: Request<()>) -> Answer<()> {
    Ok(Response::new(()))
}

pub async fn start_instance(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::CreateInstanceRequest>,
) -> Answer<pb::CreateInstanceResponse> {
    let r = req.into_inner();
    let id = g.workflows.start(Some(r.instance_id), &r.name, r.input).await?;
    Ok(Response::new(pb::CreateInstanceResponse { instance_id: id }))
}

fn instance_response(inst: Option<Instance>, with_payloads: bool) -> pb::GetInstanceResponse {
    pb::GetInstanceResponse {
        exists: inst.is_some(),
        workflow_state: inst.map(|i| i.state(with_payloads)),
    }
}

pub async fn get_instance(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::GetInstanceRequest>,
) -> Answer<pb::GetInstanceResponse> {
    let r = req.into_inner();
    let inst = g.workflows.get(&r.instance_id).await?;
    Ok(Response::new(instance_response(inst, r.get_inputs_and_outputs)))
}

pub async fn wait_for_instance_start(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::GetInstanceRequest>,
) -> Answer<pb::GetInstanceResponse> {
    let r = req.into_inner();
    let inst = g
        .workflows
        .wait(&r.instance_id, |i| i.status() != WfStatus::Pending)
        .await?;
    Ok(Response::new(instance_response(inst, r.get_inputs_and_outputs)))
}

pub async fn wait_for_instance_completion(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::GetInstanceRequest>,
) -> Answer<pb::GetInstanceResponse> {
    let r = req.into_inner();
    let inst = g.workflows.wait(&r.instance_id, Instance::is_terminal).await?;
    Ok(Response::new(instance_response(inst, r.get_inputs_and_outputs)))
}

pub async fn raise_event(g: &Arc<WorkflowGrpc>, req: Request<pb::RaiseEventRequest>) -> Answer<pb::RaiseEventResponse> {
    let r = req.into_inner();
    g.workflows.raise_event(&r.instance_id, &r.name, r.input).await?;
    Ok(Response::new(pb::RaiseEventResponse {}))
}

pub async fn terminate_instance(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::TerminateRequest>,
) -> Answer<pb::TerminateResponse> {
    let r = req.into_inner();
    g.workflows.terminate(&r.instance_id, r.output, r.recursive).await?;
    Ok(Response::new(pb::TerminateResponse {}))
}

pub async fn suspend_instance(g: &Arc<WorkflowGrpc>, req: Request<pb::SuspendRequest>) -> Answer<pb::SuspendResponse> {
    let r = req.into_inner();
    g.workflows.suspend(&r.instance_id, r.reason).await?;
    Ok(Response::new(pb::SuspendResponse {}))
}

pub async fn resume_instance(g: &Arc<WorkflowGrpc>, req: Request<pb::ResumeRequest>) -> Answer<pb::ResumeResponse> {
    let r = req.into_inner();
    g.workflows.resume(&r.instance_id, r.reason).await?;
    Ok(Response::new(pb::ResumeResponse {}))
}

pub async fn purge_instances(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::PurgeInstancesRequest>,
) -> Answer<pb::PurgeInstancesResponse> {
    let r = req.into_inner();
    let Some(pb::purge_instances_request::Request::InstanceId(id)) = r.request else {
        return Err(Status::unimplemented(
            "purging by filter is not implemented by tandem yet: purge by instance ID",
        ));
    };
    let deleted = g.workflows.purge(&id, r.recursive).await?;
    Ok(Response::new(pb::PurgeInstancesResponse {
        deleted_instance_count: deleted,
        is_complete: Some(true),
    }))
}

pub async fn get_work_items(
    g: &Arc<WorkflowGrpc>,
    _: Request<pb::GetWorkItemsRequest>,
) -> Answer<BoxStream<pb::WorkItem>> {
    let rx = g.workflows.work_items();
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

pub async fn complete_activity_task(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::ActivityResponse>,
) -> Answer<pb::CompleteTaskResponse> {
    g.workflows.complete_activity(req.into_inner()).await?;
    Ok(Response::new(pb::CompleteTaskResponse {}))
}

pub async fn complete_orchestrator_task(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::WorkflowResponse>,
) -> Answer<pb::CompleteTaskResponse> {
    g.workflows.complete_step(req.into_inner()).await?;
    Ok(Response::new(pb::CompleteTaskResponse {}))
}

pub async fn complete_workflow_task(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::WorkflowResponse>,
) -> Answer<pb::CompleteTaskResponse> {
    complete_orchestrator_task(g, req).await
}

pub async fn get_instance_history(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::GetInstanceHistoryRequest>,
) -> Answer<pb::GetInstanceHistoryResponse> {
    let events = g.workflows.history(&req.into_inner().instance_id).await?;
    Ok(Response::new(pb::GetInstanceHistoryResponse { events }))
}

pub async fn list_instance_i_ds(
    g: &Arc<WorkflowGrpc>,
    req: Request<pb::ListInstanceIDsRequest>,
) -> Answer<pb::ListInstanceIDsResponse> {
    let r = req.into_inner();
    let mut ids = g.workflows.running_ids().await?;
    let start = match r.continuation_token {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| Status::from(WorkflowError::Invalid("bad continuation token".into())))?,
        None => 0,
    };
    let size = r.page_size.map(|s| s.clamp(1, 1000) as usize).unwrap_or(1000);
    let total = ids.len();
    let page: Vec<String> = ids.drain(start.min(total)..).take(size).collect();
    let next = (start + page.len() < total).then(|| (start + page.len()).to_string());
    Ok(Response::new(pb::ListInstanceIDsResponse {
        instance_ids: page,
        continuation_token: next,
    }))
}
