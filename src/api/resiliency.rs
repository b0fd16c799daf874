//! `Resiliency` (dapr.io/v1alpha1): timeout, retry and circuit-breaker policies and the targets they apply to.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ObjectMeta, ResourceStatus};

/// Named timeout, retry and circuit-breaker policies and the apps, actors and components they protect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resiliency {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ResiliencySpec,
    /// App ids this resiliency applies to; every app in the namespace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceStatus>,
}

/// Policies and the targets they apply to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResiliencySpec {
    /// Named policies.
    #[serde(default)]
    pub policies: Policies,
    /// Which policies protect which apps, actors and components.
    #[serde(default)]
    pub targets: Targets,
}

/// Named policies, referred to by name from the targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    /// Named timeouts (Go durations).
    #[serde(default)]
    pub timeouts: BTreeMap<String, String>,
    /// Named retry policies.
    #[serde(default)]
    pub retries: BTreeMap<String, RetryPolicy>,
    /// Named circuit breakers.
    #[serde(default)]
    pub circuit_breakers: BTreeMap<String, CircuitBreakerPolicy>,
}

/// How failed calls are retried.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// `constant` (default) or `exponential`.
    #[serde(default)]
    pub policy: String,
    /// Delay between constant retries (Go duration, default `5s`).
    #[serde(default)]
    pub duration: String,
    /// Longest delay between exponential retries (Go duration, default `60s`).
    #[serde(default)]
    pub max_interval: String,
    /// Most retries; `-1` (default) retries forever.
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Retry only on these status codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<RetryMatching>,
}

/// Status codes that are retried; others fail at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryMatching {
    /// HTTP status codes and ranges, e.g. `500,502-504`.
    #[serde(default)]
    pub http_status_codes: String,
    /// gRPC status codes and ranges, e.g. `1-4,8-11,13,14`.
    #[serde(default, rename = "gRPCStatusCodes")]
    pub grpc_status_codes: String,
}

/// When a target is cut off and how it recovers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerPolicy {
    /// Requests let through while half-open (default 1).
    #[serde(default)]
    #[schemars(with = "Option<i64>")]
    pub max_requests: Option<u32>,
    /// Period after which closed-state counts reset (Go duration; `0s` never).
    #[serde(default)]
    pub interval: String,
    /// How long the breaker stays open before half-opening (Go duration, default `60s`).
    #[serde(default)]
    pub timeout: String,
    /// CEL expression that opens the breaker, e.g. `consecutiveFailures > 5`.
    #[serde(default)]
    pub trip: String,
}

/// What the policies protect, by app id, actor type and component name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// Service invocation to these app ids.
    #[serde(default)]
    pub apps: BTreeMap<String, TargetPolicy>,
    /// Calls to these actor types.
    #[serde(default)]
    pub actors: BTreeMap<String, TargetPolicy>,
    /// Calls to (outbound) and from (inbound) these components.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentTargets>,
}

/// The policies, by name, that protect one target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetPolicy {
    /// Name of a timeout policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Name of a retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// Name of a circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<String>,
    /// Actors only: `type`, `id` or `both` — what one breaker instance covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker_scope: Option<String>,
    /// Most breakers kept per target (per-id breakers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker_cache_size: Option<i64>,
}

/// Policies for one component, per direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentTargets {
    /// Calls from the component into the app (pub/sub deliveries, input bindings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<TargetPolicy>,
    /// Calls from the app to the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<TargetPolicy>,
}
