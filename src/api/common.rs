//! Types shared by several Dapr resources: name/value metadata, secret references, auth.

use serde::{Deserialize, Serialize};

/// A metadata entry as Dapr writes it: a plain value, a secret reference or an environment variable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameValuePair {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<DynamicValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
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

/// Reference to a key of a secret held by a secret store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Which secret store resolves the `secretKeyRef`s of a resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    #[serde(default)]
    pub secret_store: String,
}

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
