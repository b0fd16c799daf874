//! `Configuration` (dapr.io/v1alpha1): per-app runtime settings (secret scopes, access control, name resolution, ...).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::ObjectMeta;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
}

/// Every field Dapr accepts; the ones tandem acts on are typed, the rest are kept as they were written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control: Option<AccessControlSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_resolution: Option<NameResolutionSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingSpec>,
    /// Fields tandem does not act on yet (tracing, metrics, httpPipeline, mtls, api, ...), kept verbatim.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    #[serde(default)]
    pub scopes: Vec<SecretsScope>,
}

/// Which secrets of one store the app may read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsScope {
    pub store_name: String,
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub default_access: String,
    #[serde(default)]
    pub allowed_secrets: Vec<String>,
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

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessControlSpec {
    #[serde(default)]
    pub default_action: String,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub policies: Vec<AppPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppPolicy {
    pub app_id: String,
    #[serde(default)]
    pub default_action: String,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub operations: Vec<AppOperation>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOperation {
    pub name: String,
    #[serde(default)]
    pub http_verb: Vec<String>,
    pub action: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameResolutionSpec {
    #[serde(default)]
    pub component: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub configuration: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_logging: Option<ApiLoggingSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiLoggingSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub obfuscate_urls: bool,
    #[serde(default)]
    pub omit_health_checks: bool,
}

impl Configuration {
    /// The secret scope for `store`, if the configuration names one.
    pub fn secret_scope(&self, store: &str) -> Option<&SecretsScope> {
        self.spec
            .secrets
            .as_ref()?
            .scopes
            .iter()
            .find(|s| s.store_name == store)
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
}
