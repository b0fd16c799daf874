//! `HTTPEndpoint` (dapr.io/v1alpha1): a non-Dapr HTTP service invocable by name.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::common::{Auth, DynamicValue, NameValuePair, ObjectMeta, ResourceStatus, SecretKeyRef};

/// An HTTP service outside Dapr that apps invoke by name through the service-invocation API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpEndpoint {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: HttpEndpointSpec,
    /// The secret store that resolves this endpoint's `secretKeyRef`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// App ids that may invoke this endpoint; every app in the namespace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceStatus>,
}

/// Where the endpoint is and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpEndpointSpec {
    /// Base URL requests are sent to, e.g. `https://api.example.com`.
    pub base_url: String,
    /// Headers added to every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValuePair>,
    /// TLS settings for connections to the endpoint.
    #[serde(default, rename = "clientTLS", skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
}

/// Client TLS: trusted roots, a client certificate and renegotiation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// PEM root certificates trusted for the endpoint.
    #[serde(default, rename = "rootCA", skip_serializing_if = "Option::is_none")]
    pub root_ca: Option<TlsDocument>,
    /// PEM client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<TlsDocument>,
    /// PEM private key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<TlsDocument>,
    /// TLS renegotiation: `Never` (default), `OnceAsClient` or `FreelyAsClient`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renegotiation: Option<String>,
}

/// A PEM document given inline or read from a secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsDocument {
    /// The document inline.
    #[serde(default, deserialize_with = "any_as_string", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DynamicValue>")]
    pub value: Option<String>,
    /// Reads the document from a secret held by the endpoint's secret store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// Dapr types `value` as any JSON; tandem reads it as text (non-strings as JSON text).
fn any_as_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<DynamicValue>::deserialize(deserializer)?;
    Ok(value.map(|v| v.as_string()))
}
