//! `Component` (dapr.io/v1alpha1): a configured building-block backend such as `state.redis`.

use serde::{Deserialize, Serialize};

use super::common::{Auth, NameValuePair, ObjectMeta};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ComponentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

fn api_version() -> String {
    "dapr.io/v1alpha1".into()
}
fn kind() -> String {
    "Component".into()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Dapr component type, e.g. `state.redis`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Component version, e.g. `v1`.
    #[serde(default)]
    pub version: String,
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
