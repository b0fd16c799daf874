//! `Configuration` (dapr.io/v1alpha1): per-app runtime settings (secret scopes, access control, name resolution, ...).

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{ObjectMeta, ResourceStatus};

/// Runtime settings for the apps that name it (`dapr.io/config`): secret scopes, access control, name resolution,
/// features, tracing, metrics, middleware and more.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ConfigurationSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceStatus>,
}

/// Every field Dapr accepts; the ones tandem acts on are typed, the rest are kept as they were written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = untyped_sections)]
pub struct ConfigurationSpec {
    /// Which secrets each secret store may hand to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSpec>,
    /// Which apps may invoke which operations of the app (checked on the callee's side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control: Option<AccessControlSpec>,
    /// The name-resolution component used for service invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_resolution: Option<NameResolutionSpec>,
    /// Preview features switched on or off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureSpec>,
    /// Logging settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingSpec>,
    /// Fields tandem does not act on yet (tracing, metrics, httpPipeline, mtls, api, ...), kept verbatim.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Sections of a Dapr Configuration that tandem keeps verbatim, with their description.
const UNTYPED_SECTIONS: &[(&str, &str)] = &[
    ("api", "Dapr APIs the app may (allowed) or may not (denied) call."),
    (
        "appHttpPipeline",
        "Middleware applied to calls from the sidecar to the app.",
    ),
    ("components", "Component types the sidecar refuses to load (deny)."),
    (
        "httpPipeline",
        "Middleware applied to calls into the sidecar's HTTP API.",
    ),
    ("metric", "Metrics settings (older name of metrics)."),
    (
        "metrics",
        "Metrics settings: enabled, HTTP path matching, rules, latency buckets.",
    ),
    ("mtls", "Sidecar mTLS settings (control-plane Configuration)."),
    ("tracing", "Tracing: samplingRate, stdout, zipkin and otel exporters."),
    ("wasm", "WebAssembly runtime settings."),
    ("workflow", "Workflow engine limits and state retention."),
];

/// Lists the sections tandem does not type as schemaless objects, so `kubectl explain` shows them; any other
/// field is kept too (the spec preserves unknown fields).
fn untyped_sections(schema: &mut schemars::Schema) {
    if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for (name, description) in UNTYPED_SECTIONS {
            props.entry(*name).or_insert_with(|| {
                json!({
                    "type": "object",
                    "description": description,
                    "x-kubernetes-preserve-unknown-fields": true,
                })
            });
        }
    }
}

/// Secret scoping per secret store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    /// One entry per secret store whose secrets are restricted.
    #[serde(default)]
    pub scopes: Vec<SecretsScope>,
}

/// Which secrets of one store the app may read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsScope {
    /// Name of the secret store component.
    pub store_name: String,
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub default_access: String,
    /// Only these secrets may be read (overrides the default access).
    #[serde(default)]
    pub allowed_secrets: Vec<String>,
    /// These secrets may not be read.
    #[serde(default)]
    pub denied_secrets: Vec<String>,
}

impl SecretsScope {
    /// Dapr's rule: an allow-list, when present, decides alone; otherwise the deny-list, then the default access.
    pub fn is_allowed(&self, secret: &str) -> bool {
        if !self.allowed_secrets.is_empty() {
            return self.allowed_secrets.iter().any(|s| s == secret);
        }
        if self.denied_secrets.iter().any(|s| s == secret) {
            return false;
        }
        !self.default_access.eq_ignore_ascii_case("deny")
    }
}

/// Service-invocation access control, applied by the callee's sidecar.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessControlSpec {
    /// `allow` or `deny` for callers no policy matches.
    #[serde(default)]
    pub default_action: String,
    /// Trust domain of this app's identity (`public` when empty).
    #[serde(default)]
    pub trust_domain: String,
    /// Per-caller policies.
    #[serde(default)]
    pub policies: Vec<AppPolicy>,
}

/// What one calling app may do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPolicy {
    /// App id of the caller.
    pub app_id: String,
    /// `allow` or `deny` for this caller's operations no entry matches.
    #[serde(default)]
    pub default_action: String,
    /// Trust domain of the caller.
    #[serde(default)]
    pub trust_domain: String,
    /// Namespace of the caller.
    #[serde(default)]
    pub namespace: String,
    /// Per-operation rules.
    #[serde(default)]
    pub operations: Vec<AppOperation>,
}

/// A rule for one operation (method path, `*` wildcards allowed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppOperation {
    /// Operation path, e.g. `/orders/*`.
    pub name: String,
    /// HTTP verbs the rule covers (`*` for all).
    #[serde(default)]
    pub http_verb: Vec<String>,
    /// `allow` or `deny`.
    pub action: String,
}

/// The name resolver and its settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameResolutionSpec {
    /// Resolver type, e.g. `kubernetes`, `mdns` or `sqlite`.
    #[serde(default)]
    pub component: String,
    /// Resolver version, e.g. `v1`.
    #[serde(default)]
    pub version: String,
    /// Resolver-specific settings (free-form).
    #[serde(default)]
    pub configuration: serde_json::Value,
}

/// A preview feature switch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureSpec {
    /// Feature name, e.g. `HotReload`.
    pub name: String,
    /// Whether the feature is on.
    #[serde(default)]
    pub enabled: bool,
}

/// Logging settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// Logging of API calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_logging: Option<ApiLoggingSpec>,
}

/// API-call logging.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiLoggingSpec {
    /// Log every API call by default.
    #[serde(default)]
    pub enabled: bool,
    /// Log URL templates instead of URLs (Dapr spells the field `obfuscateURLs`).
    #[serde(default, rename = "obfuscateURLs", alias = "obfuscateUrls")]
    pub obfuscate_urls: bool,
    /// Leave health checks out of the log.
    #[serde(default)]
    pub omit_health_checks: bool,
}

impl Configuration {
    /// Dapr's load-time checks (secret scopes); the sidecar and the operator's validation both run them.
    pub fn validate(&self) -> Result<(), String> {
        let scopes = self
            .spec
            .secrets
            .as_ref()
            .map(|s| s.scopes.as_slice())
            .unwrap_or_default();
        for (i, s) in scopes.iter().enumerate() {
            if !(s.default_access.is_empty()
                || s.default_access.eq_ignore_ascii_case("allow")
                || s.default_access.eq_ignore_ascii_case("deny"))
            {
                return Err(format!(
                    "defaultAccess {} can be either allow or deny",
                    s.default_access
                ));
            }
            if scopes[..i].iter().any(|o| o.store_name == s.store_name) {
                return Err(format!(
                    "{} storeName is repeated in secrets configuration",
                    s.store_name
                ));
            }
        }
        Ok(())
    }

    /// The secret scope for `store`, if the configuration names one.
    pub fn secret_scope(&self, store: &str) -> Option<&SecretsScope> {
        self.spec
            .secrets
            .as_ref()?
            .scopes
            .iter()
            .find(|s| s.store_name == store)
    }

    /// `spec.mtls` as Dapr reads it from the control plane's Configuration (`daprsystem`): absent fields take
    /// Dapr's defaults (enabled, 24h certificates, 15m clock skew); out-of-range durations are refused.
    pub fn mtls(&self) -> Result<MtlsSpec, String> {
        let Some(v) = self.spec.other.get("mtls") else {
            return Ok(MtlsSpec::default());
        };
        let raw: RawMtls = serde_json::from_value(v.clone()).map_err(|e| format!("spec.mtls: {e}"))?;
        let duration =
            |field: &str, v: Option<String>, default: Duration, range: std::ops::RangeInclusive<Duration>| {
                let Some(v) = v.filter(|v| !v.trim().is_empty()) else {
                    return Ok(default);
                };
                let d = humantime::parse_duration(v.trim()).map_err(|e| format!("spec.mtls.{field} {v:?}: {e}"))?;
                if !range.contains(&d) {
                    return Err(format!(
                        "spec.mtls.{field} {v:?} is out of range ({} to {})",
                        humantime::format_duration(*range.start()),
                        humantime::format_duration(*range.end())
                    ));
                }
                Ok(d)
            };
        let defaults = MtlsSpec::default();
        Ok(MtlsSpec {
            enabled: raw.enabled.unwrap_or(defaults.enabled),
            workload_cert_ttl: duration(
                "workloadCertTTL",
                raw.workload_cert_ttl,
                defaults.workload_cert_ttl,
                Duration::from_secs(10)..=Duration::from_secs(366 * 24 * 3600),
            )?,
            allowed_clock_skew: duration(
                "allowedClockSkew",
                raw.allowed_clock_skew,
                defaults.allowed_clock_skew,
                Duration::ZERO..=Duration::from_secs(24 * 3600),
            )?,
        })
    }

    /// Names of the features switched on, as the metadata API reports them.
    pub fn enabled_features(&self) -> Vec<String> {
        self.spec
            .features
            .iter()
            .filter(|f| f.enabled)
            .map(|f| f.name.clone())
            .collect()
    }
}

/// Mutual TLS between sidecars, from `spec.mtls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlsSpec {
    pub enabled: bool,
    /// How long a workload certificate is valid.
    pub workload_cert_ttl: Duration,
    /// How far back a certificate's validity starts, for clocks that disagree.
    pub allowed_clock_skew: Duration,
}

impl Default for MtlsSpec {
    fn default() -> Self {
        MtlsSpec {
            enabled: true,
            workload_cert_ttl: Duration::from_secs(24 * 3600),
            allowed_clock_skew: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMtls {
    enabled: Option<bool>,
    #[serde(rename = "workloadCertTTL")]
    workload_cert_ttl: Option<String>,
    allowed_clock_skew: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(default: &str, allowed: &[&str], denied: &[&str]) -> SecretsScope {
        SecretsScope {
            store_name: "s".into(),
            default_access: default.into(),
            allowed_secrets: allowed.iter().map(|s| s.to_string()).collect(),
            denied_secrets: denied.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn secret_scopes_follow_dapr_precedence() {
        assert!(scope("", &[], &[]).is_allowed("a"));
        assert!(!scope("deny", &[], &[]).is_allowed("a"));
        assert!(scope("deny", &["a"], &[]).is_allowed("a"));
        assert!(!scope("allow", &["a"], &[]).is_allowed("b"));
        assert!(!scope("allow", &[], &["a"]).is_allowed("a"));
        assert!(scope("allow", &[], &["a"]).is_allowed("b"));
    }

    #[test]
    fn mtls_settings_take_daprs_defaults_and_refuse_out_of_range_durations() {
        let with = |v: serde_json::Value| Configuration {
            spec: ConfigurationSpec {
                other: [("mtls".to_string(), v)].into_iter().collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(Configuration::default().mtls().unwrap(), MtlsSpec::default());
        let m = with(json!({"enabled": false, "workloadCertTTL": "1h", "allowedClockSkew": "1m"}))
            .mtls()
            .unwrap();
        assert_eq!(
            (m.enabled, m.workload_cert_ttl, m.allowed_clock_skew),
            (false, Duration::from_secs(3600), Duration::from_secs(60))
        );
        assert!(
            with(json!({"workloadCertTTL": "1s"}))
                .mtls()
                .unwrap_err()
                .contains("out of range")
        );
        assert!(with(json!({"workloadCertTTL": "99999999h"})).mtls().is_err());
        assert!(with(json!({"allowedClockSkew": "soon"})).mtls().is_err());
        assert!(with(json!({"enabled": "yes"})).mtls().is_err());
    }
}
