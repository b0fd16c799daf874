//! The bindings building block: invoking output bindings (`POST|PUT /v1.0/bindings/<name>`, gRPC
//! `InvokeBinding`) with Dapr's checks and errors, and — in [`input`] — delivering input bindings' events to the
//! app.

pub mod input;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::components::bindings::{Binding, InvokeRequest, InvokeResponse};
use crate::sidecar::components::ComponentTable;
use crate::sidecar::error::ApiError;
use crate::sidecar::metrics::Metrics;

/// A failed invocation: the API error, and the metadata the binding still answered (sent as `metadata.*`
/// headers, as Dapr does).
#[derive(Debug)]
pub struct InvokeFailure {
    pub error: ApiError,
    pub metadata: BTreeMap<String, String>,
}

impl From<ApiError> for InvokeFailure {
    fn from(error: ApiError) -> Self {
        InvokeFailure {
            error,
            metadata: BTreeMap::new(),
        }
    }
}

#[derive(Clone)]
pub struct BindingsApi {
    table: Arc<ComponentTable>,
    metrics: Arc<Metrics>,
}

impl BindingsApi {
    pub fn new(table: Arc<ComponentTable>, metrics: Arc<Metrics>) -> Self {
        BindingsApi { table, metrics }
    }

    /// Invokes `operation` on output binding `name`, with Dapr's checks in Dapr's order: an operation is given,
    /// the binding exists and is an output, it supports the operation.
    pub async fn invoke(&self, name: &str, req: InvokeRequest) -> Result<Option<InvokeResponse>, InvokeFailure> {
        let started = Instant::now();
        let fail = |detail: String| ApiError::invoke_output_binding(name, &detail);
        if req.operation.is_empty() {
            return Err(fail("operation field is missing from request".into()).into());
        }
        let handle = self
            .table
            .get::<dyn Binding>(name)
            .filter(|h| h.directions().output)
            .ok_or_else(|| fail(format!("couldn't find output binding {}", crate::echo::echo(name))))?;
        // Metric labels come from the binding's own list, never from the caller.
        let Some(operation) = handle.operations().iter().find(|o| **o == req.operation).copied() else {
            let supported = handle.operations().join(" ");
            return Err(fail(format!(
                "binding {} does not support operation {}. supported operations:{supported}",
                crate::echo::echo(name),
                crate::echo::echo(&req.operation)
            ))
            .into());
        };
        let result = handle.invoke(req).await;
        self.metrics
            .output_binding(handle.name(), operation, result.is_ok(), started.elapsed());
        result.map_err(|e| InvokeFailure {
            error: fail(e.message),
            metadata: e.metadata,
        })
    }
}
