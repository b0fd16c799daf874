//! HTTP workflow handlers, Dapr's `/v1.0[-alpha1|-beta1]/workflows/<component>/...` routes: start (the body is
//! the input, as given), get, raiseEvent (the body is the event data), pause, resume, terminate, purge; Dapr's
//! error codes (`ERR_INSTANCE_ID_INVALID`, `ERR_START_WORKFLOW`, ...).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use tonic::Code;

use super::{ApiState, DaprPath, json_response, read_body};
use crate::echo::echo;
use crate::sidecar::error::ApiError;
use crate::sidecar::workflow::{Instance, WorkflowError};

/// Dapr's longest instance id on create.
const MAX_INSTANCE_ID: usize = 64;

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::new(400, Code::InvalidArgument, code, message)
}

/// Dapr's checks of an instance id: present, and on create at most 64 letters, digits, `-` or `_`.
pub fn check_instance_id(id: &str, create: bool) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(bad(
            "ERR_INSTANCE_ID_PROVIDED_MISSING",
            "no instance ID was provided".into(),
        ));
    }
    if create {
        if id.len() > MAX_INSTANCE_ID {
            return Err(bad(
                "ERR_INSTANCE_ID_TOO_LONG",
                format!("workflow instance ID exceeds the max length of {MAX_INSTANCE_ID} characters"),
            ));
        }
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad(
                "ERR_INSTANCE_ID_INVALID",
                format!(
                    "workflow instance ID '{}' is invalid: only alphanumeric and underscore characters are allowed",
                    echo(id)
                ),
            ));
        }
    }
    Ok(())
}

/// An engine error as Dapr reports the operation's failure: a missing instance is 404
/// `ERR_INSTANCE_ID_NOT_FOUND` where Dapr says so, everything else the operation's 500 code.
pub fn op_error(code: &'static str, what: &str, id: &str, e: WorkflowError) -> ApiError {
    match e {
        WorkflowError::NotFound(_) if matches!(code, "ERR_TERMINATE_WORKFLOW" | "ERR_PURGE_WORKFLOW") => ApiError::new(
            404,
            Code::NotFound,
            "ERR_INSTANCE_ID_NOT_FOUND",
            format!("unable to find workflow with the provided instance ID: {}", echo(id)),
        ),
        e => ApiError::new(500, Code::Internal, code, format!("{what} '{}': {e}", echo(id))),
    }
}

/// Dapr's `GetWorkflowResponse` fields of an instance (or just its id when it does not exist).
pub fn describe(id: &str, inst: Option<&Instance>) -> serde_json::Value {
    let Some(inst) = inst else {
        return serde_json::json!({ "instanceID": id, "workflowName": "", "runtimeStatus": "", "properties": {} });
    };
    let mut props = serde_json::Map::new();
    if let Some(c) = &inst.custom_status {
        props.insert("dapr.workflow.custom_status".into(), c.clone().into());
    }
    if let Some(i) = &inst.input {
        props.insert("dapr.workflow.input".into(), i.clone().into());
    }
    let failure = inst.failure_details();
    if let (Some(o), None) = (&inst.output, &failure) {
        props.insert("dapr.workflow.output".into(), o.clone().into());
    }
    if let Some(f) = failure {
        props.insert("dapr.workflow.failure.error_type".into(), f.error_type.into());
        props.insert("dapr.workflow.failure.error_message".into(), f.error_message.into());
        if let Some(t) = f.stack_trace {
            props.insert("dapr.workflow.failure.stack_trace".into(), t.into());
        }
    }
    serde_json::json!({
        "instanceID": inst.id,
        "workflowName": inst.name,
        "createdAt": rfc3339(inst.created_ms),
        "lastUpdatedAt": rfc3339(inst.updated_ms),
        "runtimeStatus": status_name(inst.status()),
        "properties": props,
    })
}

/// Dapr's status names (`RUNNING`, `COMPLETED`, ...).
pub fn status_name(s: crate::sidecar::workflow::Status) -> &'static str {
    s.as_str_name().trim_start_matches("ORCHESTRATION_STATUS_")
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

async fn payload(st: &ApiState, body: Body) -> Result<Option<String>, ApiError> {
    let bytes = read_body(body, st.max_body).await.map_err(ApiError::body_read)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| ApiError::malformed_request("a workflow input must be UTF-8 text"))
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

fn param(path: &DaprPath, i: usize) -> &str {
    path.0.get(i).map(String::as_str).unwrap_or_default()
}

pub async fn start(
    State(st): State<ApiState>,
    path: DaprPath,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let name = param(&path, 1).to_owned();
    let id = q
        .get("instanceID")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Err(e) = check_instance_id(&id, true) {
        return e.into_response();
    }
    if name.is_empty() {
        return bad("ERR_WORKFLOW_NAME_MISSING", "workflow name is not configured".into()).into_response();
    }
    let input = match payload(&st, body).await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    match st.rt.workflows.start(Some(id), &name, input).await {
        Ok(id) => json_response(StatusCode::ACCEPTED, serde_json::json!({ "instanceID": id })),
        // The id passed the check above, so what the engine refuses is the name (tandem bounds its length).
        Err(WorkflowError::Invalid(m)) => ApiError::malformed_request(m).into_response(),
        Err(e) => ApiError::new(
            500,
            Code::Internal,
            "ERR_START_WORKFLOW",
            format!("error starting workflow '{}': {e}", echo(&name)),
        )
        .into_response(),
    }
}

pub async fn get(State(st): State<ApiState>, path: DaprPath) -> Response {
    let id = param(&path, 1);
    if let Err(e) = check_instance_id(id, false) {
        return e.into_response();
    }
    match st.rt.workflows.get(id).await {
        Ok(inst) => json_response(StatusCode::OK, describe(id, inst.as_ref())),
        Err(e) => op_error(
            "ERR_GET_WORKFLOW",
            "error while getting workflow info on instance",
            id,
            e,
        )
        .into_response(),
    }
}

pub async fn raise_event(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let (id, event) = (param(&path, 1), param(&path, 2));
    if let Err(e) = check_instance_id(id, false) {
        return e.into_response();
    }
    if event.is_empty() {
        return bad("ERR_WORKFLOW_EVENT_NAME_MISSING", "missing workflow event name".into()).into_response();
    }
    let data = match payload(&st, body).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    match st.rt.workflows.raise_event(id, event, data).await {
        Ok(()) => accepted(),
        Err(e) => op_error("ERR_RAISE_EVENT_WORKFLOW", "error raising event on workflow", id, e).into_response(),
    }
}

/// What the one-instance operations without a body do.
#[derive(Clone, Copy)]
pub enum Op {
    Pause,
    Resume,
    Terminate,
    Purge,
}

async fn operate(st: ApiState, path: DaprPath, op: Op) -> Response {
    let id = param(&path, 1);
    if let Err(e) = check_instance_id(id, false) {
        return e.into_response();
    }
    let wf = &st.rt.workflows;
    let (code, what, result) = match op {
        Op::Pause => (
            "ERR_PAUSE_WORKFLOW",
            "error pausing workflow",
            wf.suspend(id, None).await,
        ),
        Op::Resume => (
            "ERR_RESUME_WORKFLOW",
            "error resuming workflow",
            wf.resume(id, None).await,
        ),
        Op::Terminate => (
            "ERR_TERMINATE_WORKFLOW",
            "error terminating workflow",
            wf.terminate(id, None, true).await,
        ),
        Op::Purge => (
            "ERR_PURGE_WORKFLOW",
            "error purging workflow",
            match wf.purge(id, true).await {
                Ok(0) => Err(WorkflowError::NotFound(id.to_owned())),
                r => r.map(|_| ()),
            },
        ),
    };
    match result {
        Ok(()) => accepted(),
        Err(e) => op_error(code, what, id, e).into_response(),
    }
}

pub async fn pause(State(st): State<ApiState>, path: DaprPath) -> Response {
    operate(st, path, Op::Pause).await
}
pub async fn resume(State(st): State<ApiState>, path: DaprPath) -> Response {
    operate(st, path, Op::Resume).await
}
pub async fn terminate(State(st): State<ApiState>, path: DaprPath) -> Response {
    operate(st, path, Op::Terminate).await
}
pub async fn purge(State(st): State<ApiState>, path: DaprPath) -> Response {
    operate(st, path, Op::Purge).await
}

#[cfg(test)]
mod tests {
    use super::check_instance_id;

    #[test]
    fn instance_ids_on_create_are_ascii_letters_digits_dash_and_underscore() {
        assert!(check_instance_id("order-1_A", true).is_ok());
        for bad in ["ß", "a b", "a:b", "", &"x".repeat(65)] {
            assert_eq!(check_instance_id(bad, true).unwrap_err().status, 400, "{bad:?}");
        }
        assert!(
            check_instance_id("ß", false).is_ok(),
            "only create checks the characters, as Dapr"
        );
    }
}
