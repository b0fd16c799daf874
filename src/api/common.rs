//! Types shared by several Dapr resources: name/value metadata, secret references, auth, status.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A name/value pair; the value is given inline, read from a secret store or read from an environment variable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameValuePair {
    /// Name of the property.
    pub name: String,
    /// Inline value of the property (any JSON type; non-strings reach components as JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<DynamicValue>,
    /// Reads the value from a secret held by the resource's secret store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// Name of an environment variable of the sidecar to read the value from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<String>,
}

/// A value of any JSON type; Dapr accepts strings, numbers, booleans and even objects here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DynamicValue(pub serde_json::Value);

impl DynamicValue {
    /// The value as the string a component sees: strings as they are, anything else as JSON text.
    pub fn as_string(&self) -> String {
        match &self.0 {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

impl From<&str> for DynamicValue {
    fn from(s: &str) -> Self {
        DynamicValue(serde_json::Value::String(s.to_owned()))
    }
}

impl JsonSchema for DynamicValue {
    fn schema_name() -> Cow<'static, str> {
        "DynamicValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    // Schemaless, as in Dapr: a string, number, boolean, list or object.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
    }
}

/// Reference to a key of a secret held by a secret store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the secret.
    pub name: String,
    /// Key within the secret; defaults to the secret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key to read within the secret: `key` when set, else the secret's `name` (Dapr's rule).
    pub fn key_or_name(&self) -> &str {
        self.key.as_deref().filter(|k| !k.is_empty()).unwrap_or(&self.name)
    }
}

/// Which secret store resolves the `secretKeyRef`s of a resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Name of the secret store component (`kubernetes` when empty on Kubernetes).
    #[serde(default)]
    pub secret_store: String,
}

/// What the operator last observed about a resource; written through the `status` subresource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Latest observations of the resource's state, e.g. `Ready` or `Valid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
