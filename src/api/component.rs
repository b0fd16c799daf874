//! `Component` (dapr.io/v1alpha1): a configured building-block backend such as `state.redis`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Auth, NameValuePair, ObjectMeta, ResourceStatus};

/// A Dapr component: the type and version of a building-block backend and the metadata that configures it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ComponentSpec,
    /// The secret store that resolves this component's `secretKeyRef`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// App ids allowed to load this component; every app in the namespace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceStatus>,
}

fn api_version() -> String {
    "dapr.io/v1alpha1".into()
}
fn kind() -> String {
    "Component".into()
}

/// The backend a component configures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Dapr component type, e.g. `state.redis`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Component version, e.g. `v1`.
    #[serde(default)]
    pub version: String,
    /// The component's configuration as name/value pairs.
    #[serde(default)]
    pub metadata: Vec<NameValuePair>,
    /// How long initialisation may take (Go duration, e.g. `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_timeout: Option<String>,
    /// Keep going when this component fails to initialise.
    #[serde(default)]
    pub ignore_errors: bool,
}

impl Component {
    /// A component built in code (embedded defaults, tests).
    pub fn new(name: &str, type_: &str, metadata: &[(&str, &str)]) -> Self {
        Component {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: ComponentSpec {
                type_: type_.into(),
                version: "v1".into(),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| NameValuePair {
                        name: (*k).into(),
                        value: Some((*v).into()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            auth: None,
            scopes: vec![],
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The version, `v1` when left empty.
    pub fn version(&self) -> &str {
        if self.spec.version.is_empty() {
            "v1"
        } else {
            &self.spec.version
        }
    }
}
