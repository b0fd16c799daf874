//! The JSON of the operator's sidecar API, shared by the server (operator) and the client (sidecars).
//!
//! - `GET /v1/resources?appId=<id>` → [`SidecarResources`]
//! - `GET /v1/configurations/<name>` → a `Configuration`
//! - `GET /v1/watch?appId=<id>` → NDJSON, one [`ResourceEvent`] per line (`{"type","kind","object"}`), plus
//!   `{"type":"HEARTBEAT"}` lines every ~15 s
//! - `POST /v1/certificate` [`CertificateRequest`] → [`CertificateResponse`]: the caller pod's workload certificate
//! - errors → [`ErrorBody`] (`{"errorCode","message"}`)

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kinds::{DaprKind, DaprResource};
use crate::api::{Component, HttpEndpoint, Resiliency, Subscription};

/// The audience sidecars request for the token they present to the operator.
pub const TOKEN_AUDIENCE: &str = "tandem-api";

/// Everything that applies to one app in its namespace, with Kubernetes `secretKeyRef`s already resolved into
/// plain `value`s.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarResources {
    #[serde(default)]
    pub components: Vec<Component>,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    #[serde(default)]
    pub http_endpoints: Vec<HttpEndpoint>,
    #[serde(default)]
    pub resiliencies: Vec<Resiliency>,
}

impl SidecarResources {
    /// Adds a resource to the list of its kind (Configurations have no list here and are ignored).
    pub fn push(&mut self, res: DaprResource) {
        match res {
            DaprResource::Component(c) => self.components.push(c),
            DaprResource::Subscription(s) => self.subscriptions.push(s),
            DaprResource::HttpEndpoint(e) => self.http_endpoints.push(e),
            DaprResource::Resiliency(r) => self.resiliencies.push(r),
            DaprResource::Configuration(_) => {}
        }
    }

    /// Every resource, in list order.
    pub fn into_resources(self) -> impl Iterator<Item = DaprResource> {
        let c = self.components.into_iter().map(DaprResource::Component);
        let s = self.subscriptions.into_iter().map(DaprResource::Subscription);
        let e = self.http_endpoints.into_iter().map(DaprResource::HttpEndpoint);
        let r = self.resiliencies.into_iter().map(DaprResource::Resiliency);
        c.chain(s).chain(e).chain(r)
    }
}

/// What happened to a resource, as seen by one app: scope changes arrive as `Deleted`/`Created`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Created,
    Updated,
    Deleted,
}

/// One change of a resource that applies (or applied) to the watching app.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceEvent {
    pub event_type: EventType,
    pub resource: DaprResource,
}

/// One NDJSON line of the watch stream.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<DaprKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object: Option<Value>,
}

const HEARTBEAT: &str = "HEARTBEAT";

impl ResourceEvent {
    pub fn kind(&self) -> DaprKind {
        self.resource.kind()
    }

    /// The event as one NDJSON line, newline included.
    pub fn to_line(&self) -> String {
        let type_ = serde_json::to_value(self.event_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let line = Line {
            type_,
            kind: Some(self.kind()),
            object: Some(self.resource.to_json()),
        };
        let mut s = serde_json::to_string(&line).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses one line of the stream: `Ok(None)` for heartbeats and blank lines.
    pub fn parse_line(line: &str) -> Result<Option<ResourceEvent>, String> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| format!("not a watch event ({e}): {line}"))?;
        if parsed.type_ == HEARTBEAT {
            return Ok(None);
        }
        let event_type: EventType = serde_json::from_value(Value::String(parsed.type_.clone()))
            .map_err(|_| format!("unknown event type {:?}: {line}", parsed.type_))?;
        let kind = parsed.kind.ok_or_else(|| format!("watch event without kind: {line}"))?;
        let object = parsed
            .object
            .ok_or_else(|| format!("watch event without object: {line}"))?;
        let resource = DaprResource::from_json(kind, object)?;
        Ok(Some(ResourceEvent { event_type, resource }))
    }
}

/// The heartbeat line, newline included.
pub fn heartbeat_line() -> String {
    format!("{{\"type\":\"{HEARTBEAT}\"}}\n")
}

/// The body of every error the sidecar API returns, as Dapr shapes its errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_code: String,
    pub message: String,
}

/// A sidecar's request for its workload certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequest {
    /// A PEM certificate signing request; only its public key is used.
    pub csr: String,
}

/// The signed certificate, the identity it carries and the roots to verify peers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// `spiffe://<trustDomain>/ns/<namespace>/<appId>`.
    pub spiffe_id: String,
    /// PEM: the leaf first, then intermediates.
    pub certificate_chain: String,
    /// PEM: the roots (Dapr's `ca.crt`).
    pub trust_bundle: String,
    /// Seconds since the Unix epoch when the certificate expires.
    pub valid_until: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip_through_their_line() {
        let resource = DaprResource::from_json(
            DaprKind::HttpEndpoint,
            json!({"metadata": {"name": "e", "namespace": "ns"}, "spec": {"baseUrl": "https://x"}}),
        )
        .unwrap();
        let ev = ResourceEvent {
            event_type: EventType::Deleted,
            resource,
        };
        let line = ev.to_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["kind"].as_str()),
            (Some("DELETED"), Some("HTTPEndpoint"))
        );
        assert_eq!(v["object"]["spec"]["baseUrl"], "https://x");
        assert_eq!(ResourceEvent::parse_line(&line).unwrap(), Some(ev));
    }

    #[test]
    fn heartbeats_and_blank_lines_are_not_events() {
        assert_eq!(ResourceEvent::parse_line(&heartbeat_line()).unwrap(), None);
        assert_eq!(ResourceEvent::parse_line("  ").unwrap(), None);
        let err = ResourceEvent::parse_line(r#"{"type":"MOVED","kind":"Component","object":{}}"#).unwrap_err();
        assert!(err.contains("MOVED"), "{err}");
    }

    #[test]
    fn resources_use_the_documented_field_names() {
        let v = serde_json::to_value(SidecarResources::default()).unwrap();
        assert_eq!(
            v,
            json!({"components": [], "subscriptions": [], "httpEndpoints": [], "resiliencies": []})
        );
    }
}
