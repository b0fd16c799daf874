//! The bindings kind: one trait every binding backend implements. A binding is an input (it reads events from an
//! outside system and hands each to a handler, the runtime's delivery to the app), an output (the app invokes
//! operations on it: `create`, `get`, `exec`, ...), or both. The `direction` metadata narrows what a component
//! is used as, as in Dapr.

pub mod cron;
pub mod http;
pub mod kafka;
pub mod localstorage;
pub mod mqtt;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{ComponentError, ComponentKind, Kind, Metadata};

/// What a binding is used as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directions {
    pub input: bool,
    pub output: bool,
}

impl Directions {
    pub const INPUT: Directions = Directions {
        input: true,
        output: false,
    };
    pub const OUTPUT: Directions = Directions {
        input: false,
        output: true,
    };
    pub const BOTH: Directions = Directions {
        input: true,
        output: true,
    };

    /// The `direction` metadata (`input`, `output`, `input, output`; any case and spacing), `None` when unset.
    pub fn declared(md: &Metadata) -> Result<Option<Directions>, ComponentError> {
        let Some(v) = md.get("direction").filter(|v| !v.trim().is_empty()) else {
            return Ok(None);
        };
        let mut d = Directions::default();
        for part in v.split(',').map(|p| p.trim().to_ascii_lowercase()) {
            match part.as_str() {
                "input" => d.input = true,
                "output" => d.output = true,
                _ => {
                    return Err(ComponentError::invalid(
                        "direction",
                        format!("{v:?} is not a direction: write input, output or \"input, output\""),
                    ));
                }
            }
        }
        Ok(Some(d))
    }
}

/// An invocation of an output binding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InvokeRequest {
    pub operation: String,
    pub data: Bytes,
    pub metadata: BTreeMap<String, String>,
}

/// What an output binding answers (`None` from [`Binding::invoke`]: nothing, HTTP 204).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InvokeResponse {
    pub data: Bytes,
    pub metadata: BTreeMap<String, String>,
}

/// Why an invocation failed; `metadata` is what the binding still answered (the HTTP binding's status code).
#[derive(Clone, Debug, Default, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct BindingError {
    pub message: String,
    pub metadata: BTreeMap<String, String>,
}

impl BindingError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        BindingError {
            message: message.to_string(),
            metadata: BTreeMap::new(),
        }
    }
}

/// One event an input binding read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event {
    pub data: Bytes,
    pub metadata: BTreeMap<String, String>,
}

/// Takes one event; `Ok` (with the app's answer) means the app handled it, and the backend may acknowledge it.
pub type Handler = Arc<dyn Fn(Event) -> BoxFuture<'static, Result<Bytes, String>> + Send + Sync>;

/// A binding backend.
#[async_trait]
pub trait Binding: Send + Sync {
    /// What this component is used as (the backend's directions, narrowed by the `direction` metadata).
    fn directions(&self) -> Directions;

    /// Whether the `direction` metadata names `input`: then the app is not asked whether it wants the events.
    fn input_declared(&self) -> bool {
        false
    }

    /// The operations an output binding supports, in Dapr's order.
    fn operations(&self) -> &[&'static str] {
        &[]
    }

    /// Performs one operation (the runtime has checked it is among [`Binding::operations`]).
    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        let _ = req;
        Err(BindingError::new("this binding is not an output binding"))
    }

    /// Starts reading events into `handler` and returns once reading is set up; reading stops when `stop` is
    /// cancelled. What happens to an event the handler failed is the backend's (redelivered by a broker, skipped
    /// by a schedule).
    async fn read(&self, handler: Handler, stop: CancellationToken) -> Result<(), BindingError> {
        let _ = (handler, stop);
        Err(BindingError::new("this binding is not an input binding"))
    }

    async fn close(&self) {}
}

impl ComponentKind for dyn Binding {
    const KIND: Kind = Kind::Bindings;

    fn capabilities(component: &Self) -> Vec<String> {
        let d = component.directions();
        let mut caps = vec![];
        if d.input {
            caps.push("INPUT_BINDING".to_owned());
        }
        if d.output {
            caps.push("OUTPUT_BINDING".to_owned());
        }
        caps
    }

    fn close(component: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { component.close().await })
    }
}

/// A backend seen through its `direction` metadata.
struct Directed {
    inner: Arc<dyn Binding>,
    directions: Directions,
    input_declared: bool,
}

#[async_trait]
impl Binding for Directed {
    fn directions(&self) -> Directions {
        self.directions
    }
    fn input_declared(&self) -> bool {
        self.input_declared
    }
    fn operations(&self) -> &[&'static str] {
        if self.directions.output {
            self.inner.operations()
        } else {
            &[]
        }
    }
    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        if !self.directions.output {
            return Err(BindingError::new("this binding is not an output binding"));
        }
        self.inner.invoke(req).await
    }
    async fn read(&self, handler: Handler, stop: CancellationToken) -> Result<(), BindingError> {
        if !self.directions.input {
            return Err(BindingError::new("this binding is not an input binding"));
        }
        self.inner.read(handler, stop).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// `backend` narrowed to the directions its `direction` metadata names (all it supports when unset).
pub fn directed(md: &Metadata, backend: Arc<dyn Binding>) -> Result<Arc<dyn Binding>, ComponentError> {
    let supported = backend.directions();
    let Some(declared) = Directions::declared(md)? else {
        return Ok(backend);
    };
    if (declared.input && !supported.input) || (declared.output && !supported.output) {
        let kind = if declared.input && !supported.input {
            "input"
        } else {
            "output"
        };
        return Err(ComponentError::invalid(
            "direction",
            format!("this binding type cannot be used as an {kind} binding"),
        ));
    }
    Ok(Arc::new(Directed {
        inner: backend,
        directions: declared,
        input_declared: declared.input,
    }))
}

/// A request metadata value that must be set.
pub fn required<'a>(req: &'a InvokeRequest, key: &str) -> Result<&'a str, BindingError> {
    req.metadata
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| BindingError::new(format!("required metadata not set: {key}")))
}

/// `ttlInSeconds` (or `ttl`) of a request, in whole seconds, as Dapr's bindings read it: a Go duration or seconds,
/// above zero.
pub fn request_ttl(req: &InvokeRequest) -> Result<Option<u64>, BindingError> {
    let value = req
        .metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("ttlInSeconds") || k.eq_ignore_ascii_case("ttl"))
        .map(|(_, v)| v.trim());
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let secs = match v.parse::<i64>() {
        Ok(s) => s,
        Err(_) => match humantime::parse_duration(v) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => {
                return Err(BindingError::new(format!(
                    "ttl value must be a valid integer: actual is '{v}'"
                )));
            }
        },
    };
    if secs <= 0 {
        return Err(BindingError::new(format!(
            "ttl value must be higher than zero: actual is '{v}'"
        )));
    }
    Ok(Some(secs as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(direction: &str) -> Metadata {
        Metadata::new("b", "app", "", [("Direction".to_owned(), direction.to_owned())])
    }

    #[test]
    fn direction_is_read_as_dapr_reads_it() {
        assert_eq!(Directions::declared(&md("input")).unwrap(), Some(Directions::INPUT));
        assert_eq!(
            Directions::declared(&md("Output ,INPUT")).unwrap(),
            Some(Directions::BOTH)
        );
        assert_eq!(Directions::declared(&md("")).unwrap(), None);
        let err = Directions::declared(&md("in")).unwrap_err().to_string();
        assert!(err.contains("direction"), "{err}");
    }

    #[test]
    fn ttl_accepts_seconds_and_durations() {
        let req = |v: &str| InvokeRequest {
            metadata: [("ttlInSeconds".to_owned(), v.to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(request_ttl(&req("60")).unwrap(), Some(60));
        assert_eq!(request_ttl(&req("1m")).unwrap(), Some(60));
        assert!(request_ttl(&req("0")).unwrap_err().message.contains("higher than zero"));
        assert!(request_ttl(&req("x")).unwrap_err().message.contains("valid integer"));
        assert_eq!(request_ttl(&InvokeRequest::default()).unwrap(), None);
    }
}
