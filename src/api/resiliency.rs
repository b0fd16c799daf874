//! `Resiliency` (dapr.io/v1alpha1): timeout, retry and circuit-breaker policies and the targets they apply to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::ObjectMeta;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResiliencySpec {
    #[serde(default)]
    pub policies: Policies,
    #[serde(default)]
    pub targets: Targets,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    /// Named timeouts (Go durations).
    #[serde(default)]
    pub timeouts: BTreeMap<String, String>,
    #[serde(default)]
    pub retries: BTreeMap<String, RetryPolicy>,
    #[serde(default)]
    pub circuit_breakers: BTreeMap<String, CircuitBreakerPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    #[serde(default)]
    pub policy: String,
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub max_interval: String,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<RetryMatching>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryMatching {
    #[serde(default)]
    pub http_status_codes: String,
    #[serde(default, rename = "gRPCStatusCodes")]
    pub grpc_status_codes: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerPolicy {
    #[serde(default)]
    pub max_requests: Option<u32>,
    #[serde(default)]
    pub interval: String,
    #[serde(default)]
    pub timeout: String,
    #[serde(default)]
    pub trip: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    #[serde(default)]
    pub apps: BTreeMap<String, TargetPolicy>,
    #[serde(default)]
    pub actors: BTreeMap<String, TargetPolicy>,
    #[serde(default)]
    pub components: BTreeMap<String, ComponentTargets>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker_cache_size: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentTargets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<TargetPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<TargetPolicy>,
}
