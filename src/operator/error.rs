//! Errors of the reconcilers; each names the object and what to do.

use super::secrets::ResolveError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name:?} has no namespace; dapr resources and workloads are namespaced")]
    NoNamespace { kind: String, name: String },
    #[error(
        "{kind} {namespace}/{name}: app id {app_id:?} cannot name a Service ({problem}); set annotation dapr.io/app-id \
         to a lowercase RFC 1123 label of at most 58 characters"
    )]
    InvalidAppId {
        kind: String,
        namespace: String,
        name: String,
        app_id: String,
        problem: String,
    },
    #[error("applying Service {namespace}/{name} failed: {source}")]
    ApplyService {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("deleting Service {namespace}/{name} failed: {source}")]
    DeleteService {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("the watched object has no apiVersion/kind of a dapr.io kind ({found:?})")]
    UnknownKind { found: String },
    #[error(transparent)]
    Secrets(#[from] ResolveError),
    #[error("writing the status of {kind} {namespace}/{name} failed: {source}")]
    Status {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}
