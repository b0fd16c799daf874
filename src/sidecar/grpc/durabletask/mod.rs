//! The durabletask worker protocol (`TaskHubSidecarService`, what the workflow SDKs speak) on the gRPC API port:
//! the generated server, thin handlers over the workflow engine, and the one place its errors become a `Status`.

mod handlers;
pub mod service;

use crate::sidecar::workflow::{WorkflowError, Workflows};

/// The `TaskHubSidecarService` over the workflow engine.
pub struct WorkflowGrpc {
    pub workflows: Workflows,
}

impl From<WorkflowError> for tonic::Status {
    fn from(e: WorkflowError) -> Self {
        let code = match &e {
            WorkflowError::NotFound(_) => tonic::Code::NotFound,
            WorkflowError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            WorkflowError::Invalid(_) => tonic::Code::InvalidArgument,
            WorkflowError::NotTerminal(_) | WorkflowError::NoStore => tonic::Code::FailedPrecondition,
            WorkflowError::Busy(_) => tonic::Code::ResourceExhausted,
            WorkflowError::Store(_) => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
