//! `HTTPEndpoint` (dapr.io/v1alpha1): a non-Dapr HTTP service invocable by name.

use serde::{Deserialize, Serialize};

use super::common::{Auth, NameValuePair, ObjectMeta, SecretKeyRef};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpEndpoint {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: HttpEndpointSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpEndpointSpec {
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValuePair>,
    #[serde(default, rename = "clientTLS", skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    #[serde(default, rename = "rootCA", skip_serializing_if = "Option::is_none")]
    pub root_ca: Option<TlsDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<TlsDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<TlsDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renegotiation: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}
