//! The Kubernetes face of the Dapr kinds: `kube::Resource` impls and the CustomResourceDefinitions, whose
//! openAPIV3Schemas are generated from the Rust types (doc comments become descriptions).
//!
//! Dapr's kinds carry `auth` and `scopes` beside `spec`, which `#[derive(CustomResource)]` cannot express, so the
//! impls are written here by hand (one macro) and each CRD is assembled from `schemars` output made structural.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use kube::core::schema::{OptionalEnum, StructuralSchemaRewriter};
use schemars::generate::SchemaSettings;
use schemars::transform::{AddNullable, Transform, transform_subschemas};
use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};

use super::common::{ObjectMeta, ResourceStatus};
use super::subscription::SubscriptionV1Alpha1;
use super::{Component, Configuration, GROUP, HttpEndpoint, Resiliency, Subscription};

/// Implements `kube::Resource` (namespaced, static type information), `HasStatus` and, for a storage version,
/// `CustomResourceExt` for one Dapr kind.
macro_rules! dapr_resource {
    ($ty:ty, kind = $kind:literal, version = $version:literal, plural = $plural:literal $(, crd = $crd:path)?) => {
        impl kube::core::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl kube::core::object::HasStatus for $ty {
            type Status = ResourceStatus;

            fn status(&self) -> Option<&ResourceStatus> {
                self.status.as_ref()
            }
            fn status_mut(&mut self) -> &mut Option<ResourceStatus> {
                &mut self.status
            }
        }

        $(
            impl kube::core::CustomResourceExt for $ty {
                fn crd() -> CustomResourceDefinition {
                    $crd()
                }
                fn crd_name() -> &'static str {
                    concat!($plural, ".dapr.io")
                }
                fn api_resource() -> kube::core::ApiResource {
                    kube::core::ApiResource::erase::<Self>(&())
                }
                fn shortnames() -> &'static [&'static str] {
                    &[]
                }
            }
        )?
    };
}

dapr_resource!(
    Component,
    kind = "Component",
    version = "v1alpha1",
    plural = "components",
    crd = component_crd
);
dapr_resource!(
    Subscription,
    kind = "Subscription",
    version = "v2alpha1",
    plural = "subscriptions",
    crd = subscription_crd
);
dapr_resource!(
    SubscriptionV1Alpha1,
    kind = "Subscription",
    version = "v1alpha1",
    plural = "subscriptions"
);
dapr_resource!(
    HttpEndpoint,
    kind = "HTTPEndpoint",
    version = "v1alpha1",
    plural = "httpendpoints",
    crd = http_endpoint_crd
);
dapr_resource!(
    Configuration,
    kind = "Configuration",
    version = "v1alpha1",
    plural = "configurations",
    crd = configuration_crd
);
dapr_resource!(
    Resiliency,
    kind = "Resiliency",
    version = "v1alpha1",
    plural = "resiliencies",
    crd = resiliency_crd
);

/// Every CRD tandem serves, in a stable order (the order `tandem crds` prints them).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        component_crd(),
        configuration_crd(),
        http_endpoint_crd(),
        resiliency_crd(),
        subscription_crd(),
    ]
}

/// `components.dapr.io`.
pub fn component_crd() -> CustomResourceDefinition {
    crd("Component", "components", vec![version::<Component>("v1alpha1", true)])
}

/// `subscriptions.dapr.io`: v1alpha1 and v2alpha1 served, v2alpha1 stored, no conversion webhook (the API server
/// only rewrites `apiVersion`; [`Subscription`] reads a v1alpha1 `spec.route` as `routes.default`).
pub fn subscription_crd() -> CustomResourceDefinition {
    let mut crd = crd(
        "Subscription",
        "subscriptions",
        vec![
            version::<SubscriptionV1Alpha1>("v1alpha1", false),
            version::<Subscription>("v2alpha1", true),
        ],
    );
    crd.spec.conversion = Some(CustomResourceConversion {
        strategy: "None".into(),
        webhook: None,
    });
    crd
}

/// `httpendpoints.dapr.io`.
pub fn http_endpoint_crd() -> CustomResourceDefinition {
    crd(
        "HTTPEndpoint",
        "httpendpoints",
        vec![version::<HttpEndpoint>("v1alpha1", true)],
    )
}

/// `configurations.dapr.io`.
pub fn configuration_crd() -> CustomResourceDefinition {
    crd(
        "Configuration",
        "configurations",
        vec![version::<Configuration>("v1alpha1", true)],
    )
}

/// `resiliencies.dapr.io`.
pub fn resiliency_crd() -> CustomResourceDefinition {
    crd(
        "Resiliency",
        "resiliencies",
        vec![version::<Resiliency>("v1alpha1", true)],
    )
}

fn crd(kind: &str, plural: &str, versions: Vec<CustomResourceDefinitionVersion>) -> CustomResourceDefinition {
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{GROUP}")),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "tandem".to_owned(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: kind.into(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.into(),
                singular: Some(kind.to_lowercase()),
                categories: Some(vec!["dapr".into()]),
                short_names: None,
            },
            scope: "Namespaced".into(),
            versions,
            conversion: None,
            preserve_unknown_fields: None,
        },
        status: None,
    }
}

fn version<T: JsonSchema>(name: &str, storage: bool) -> CustomResourceDefinitionVersion {
    CustomResourceDefinitionVersion {
        name: name.into(),
        served: true,
        storage,
        schema: Some(CustomResourceValidation {
            open_api_v3_schema: Some(schema_for::<T>()),
        }),
        subresources: Some(CustomResourceSubresources {
            status: Some(CustomResourceSubresourceStatus(json!({}))),
            scale: None,
        }),
        ..Default::default()
    }
}

/// The structural openAPIV3Schema of a whole object of kind `T`.
pub fn schema_for<T: JsonSchema>() -> JSONSchemaProps {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(AddNullable::default())
        .with_transform(StructuralSchemaRewriter)
        .with_transform(OptionalEnum)
        .with_transform(FreeFormIsPreserved)
        .with_transform(NoDefaults)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>();
    object_envelope(&mut schema);
    serde_json::from_value(schema.to_value()).expect("schemars output is a valid JSONSchemaProps")
}

/// The fields every object has, described the Kubernetes way rather than from the Rust types.
fn object_envelope(schema: &mut Schema) {
    schema.remove("title");
    schema.remove("$schema");
    let props = schema
        .ensure_object()
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("root properties is an object");
    props.insert(
        "apiVersion".into(),
        json!({"type": "string", "description": "Versioned schema of this object, e.g. `dapr.io/v1alpha1`."}),
    );
    props.insert(
        "kind".into(),
        json!({"type": "string", "description": "Kind of this object, in CamelCase."}),
    );
    props.insert("metadata".into(), json!({"type": "object"}));
    if let Some(status) = props.get_mut("status").and_then(Value::as_object_mut) {
        status.insert(
            "description".into(),
            "Observed state, written by the tandem operator through the status subresource.".into(),
        );
    }
    if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
        // Dapr's CRDs require nothing at the top level, not even `spec`; the API server must accept what they do.
        required.retain(|r| !matches!(r.as_str(), Some("apiVersion" | "kind" | "metadata" | "spec")));
        if required.is_empty() {
            schema.remove("required");
        }
    }
}

/// A schema that says nothing about its value (`serde_json::Value`) becomes schemaless the Kubernetes way:
/// `x-kubernetes-preserve-unknown-fields`, so the API server neither rejects nor prunes what it holds.
#[derive(Clone)]
struct FreeFormIsPreserved;

impl Transform for FreeFormIsPreserved {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        const CONSTRAINTS: &[&str] = &[
            "type",
            "properties",
            "additionalProperties",
            "items",
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "enum",
            "const",
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-int-or-string",
        ];
        if let Some(obj) = schema.as_object_mut()
            && !CONSTRAINTS.iter().any(|k| obj.contains_key(*k))
        {
            obj.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        }
    }
}

/// `#[serde(default)]` values are the Rust side's business; the API server must not write them into objects.
#[derive(Clone)]
struct NoDefaults;

impl Transform for NoDefaults {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        schema.remove("default");
    }
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;
