//! The five dapr.io kinds the operator serves: their dynamic API resources and their typed forms.

use kube::api::{ApiResource, DynamicObject};
use serde::{Deserialize, Serialize};

use crate::api::{Component, Configuration, HttpEndpoint, Resiliency, Subscription};

/// A dapr.io kind, named as it appears in `kind:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DaprKind {
    Component,
    Subscription,
    #[serde(rename = "HTTPEndpoint")]
    HttpEndpoint,
    Configuration,
    Resiliency,
}

impl DaprKind {
    pub const ALL: [DaprKind; 5] = [
        DaprKind::Component,
        DaprKind::Subscription,
        DaprKind::HttpEndpoint,
        DaprKind::Configuration,
        DaprKind::Resiliency,
    ];

    /// The `kind:` of the resource.
    pub fn name(self) -> &'static str {
        match self {
            DaprKind::Component => "Component",
            DaprKind::Subscription => "Subscription",
            DaprKind::HttpEndpoint => "HTTPEndpoint",
            DaprKind::Configuration => "Configuration",
            DaprKind::Resiliency => "Resiliency",
        }
    }

    /// The version the operator reads: the storage version (v2alpha1 for Subscription, v1alpha1 otherwise).
    pub fn version(self) -> &'static str {
        match self {
            DaprKind::Subscription => "v2alpha1",
            _ => "v1alpha1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            DaprKind::Component => "components",
            DaprKind::Subscription => "subscriptions",
            DaprKind::HttpEndpoint => "httpendpoints",
            DaprKind::Configuration => "configurations",
            DaprKind::Resiliency => "resiliencies",
        }
    }

    /// What `kube::Api<DynamicObject>` needs to reach this kind.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: crate::api::GROUP.into(),
            version: self.version().into(),
            api_version: format!("{}/{}", crate::api::GROUP, self.version()),
            kind: self.name().into(),
            plural: self.plural().into(),
        }
    }

    /// `components.dapr.io/v1alpha1`, as error messages name a CRD.
    pub fn crd(self) -> String {
        format!("{}.{}/{}", self.plural(), crate::api::GROUP, self.version())
    }
}

impl std::fmt::Display for DaprKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One dapr.io resource in its typed form.
#[derive(Clone, Debug, PartialEq)]
pub enum DaprResource {
    Component(Component),
    Subscription(Subscription),
    HttpEndpoint(HttpEndpoint),
    Configuration(Configuration),
    Resiliency(Resiliency),
}

impl DaprResource {
    /// Parses a JSON document of the given kind; the error names the kind, the object and the problem.
    pub fn from_json(kind: DaprKind, value: serde_json::Value) -> Result<Self, String> {
        let name = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("<unnamed>")
            .to_owned();
        let parsed = match kind {
            DaprKind::Component => serde_json::from_value(value).map(DaprResource::Component),
            DaprKind::Subscription => serde_json::from_value(value).map(DaprResource::Subscription),
            DaprKind::HttpEndpoint => serde_json::from_value(value).map(DaprResource::HttpEndpoint),
            DaprKind::Configuration => serde_json::from_value(value).map(DaprResource::Configuration),
            DaprKind::Resiliency => serde_json::from_value(value).map(DaprResource::Resiliency),
        };
        parsed.map_err(|e| format!("invalid {kind} {name:?}: {e}"))
    }

    /// Converts a watched object, dropping the bookkeeping fields (`managedFields`, `resourceVersion`, `status`) that
    /// change without the resource changing, so that equal resources compare equal. `status` is the operator's own
    /// verdict: were it kept, every status write would reach sidecars as an update and reload the component.
    pub fn from_dynamic(kind: DaprKind, obj: &DynamicObject) -> Result<Self, String> {
        let mut value = serde_json::to_value(obj).map_err(|e| format!("cannot encode {kind}: {e}"))?;
        if let Some(fields) = value.as_object_mut() {
            fields.remove("status");
        }
        let mut res = DaprResource::from_json(kind, value)?;
        let meta = res.meta_mut();
        meta.managed_fields = None;
        meta.resource_version = None;
        Ok(res)
    }

    pub fn kind(&self) -> DaprKind {
        match self {
            DaprResource::Component(_) => DaprKind::Component,
            DaprResource::Subscription(_) => DaprKind::Subscription,
            DaprResource::HttpEndpoint(_) => DaprKind::HttpEndpoint,
            DaprResource::Configuration(_) => DaprKind::Configuration,
            DaprResource::Resiliency(_) => DaprKind::Resiliency,
        }
    }

    pub fn meta(&self) -> &crate::api::common::ObjectMeta {
        match self {
            DaprResource::Component(r) => &r.metadata,
            DaprResource::Subscription(r) => &r.metadata,
            DaprResource::HttpEndpoint(r) => &r.metadata,
            DaprResource::Configuration(r) => &r.metadata,
            DaprResource::Resiliency(r) => &r.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut crate::api::common::ObjectMeta {
        match self {
            DaprResource::Component(r) => &mut r.metadata,
            DaprResource::Subscription(r) => &mut r.metadata,
            DaprResource::HttpEndpoint(r) => &mut r.metadata,
            DaprResource::Configuration(r) => &mut r.metadata,
            DaprResource::Resiliency(r) => &mut r.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.meta().namespace.as_deref().unwrap_or_default()
    }

    /// The apps this resource applies to; empty means every app. Configurations have no scopes.
    pub fn scopes(&self) -> &[String] {
        match self {
            DaprResource::Component(r) => &r.scopes,
            DaprResource::Subscription(r) => &r.scopes,
            DaprResource::HttpEndpoint(r) => &r.scopes,
            DaprResource::Resiliency(r) => &r.scopes,
            DaprResource::Configuration(_) => &[],
        }
    }

    /// True when the resource applies to `app_id`.
    pub fn in_scope(&self, app_id: &str) -> bool {
        crate::api::in_scope(self.scopes(), app_id)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            DaprResource::Component(r) => serde_json::to_value(r),
            DaprResource::Subscription(r) => serde_json::to_value(r),
            DaprResource::HttpEndpoint(r) => serde_json::to_value(r),
            DaprResource::Configuration(r) => serde_json::to_value(r),
            DaprResource::Resiliency(r) => serde_json::to_value(r),
        };
        v.unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subscription_is_read_in_its_storage_version() {
        let ar = DaprKind::Subscription.api_resource();
        assert_eq!(
            (ar.api_version.as_str(), ar.plural.as_str()),
            ("dapr.io/v2alpha1", "subscriptions")
        );
        assert_eq!(DaprKind::HttpEndpoint.api_resource().kind, "HTTPEndpoint");
        assert_eq!(DaprKind::Resiliency.crd(), "resiliencies.dapr.io/v1alpha1");
    }

    #[test]
    fn bookkeeping_fields_do_not_make_resources_differ() {
        let doc = |rv: &str| {
            json!({"apiVersion": "dapr.io/v1alpha1", "kind": "Component",
                "metadata": {"name": "s", "namespace": "ns", "resourceVersion": rv,
                    "managedFields": [{"manager": "kubectl"}]},
                "spec": {"type": "state.in-memory", "version": "v1", "metadata": []}})
        };
        let a: DynamicObject = serde_json::from_value(doc("1")).unwrap();
        let mut b = doc("2");
        b["status"] = json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True",
            "reason": "Valid", "message": "ok", "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
        let b: DynamicObject = serde_json::from_value(b).unwrap();
        let (a, b) = (
            DaprResource::from_dynamic(DaprKind::Component, &a).unwrap(),
            DaprResource::from_dynamic(DaprKind::Component, &b).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!((a.name(), a.namespace()), ("s", "ns"));
    }

    #[test]
    fn parse_errors_name_kind_and_object() {
        let err = DaprResource::from_json(
            DaprKind::Subscription,
            json!({"metadata": {"name": "orders"}, "spec": {"pubsubname": "p"}}),
        )
        .unwrap_err();
        assert!(
            err.contains("Subscription \"orders\"") && err.contains("topic"),
            "{err}"
        );
    }
}
