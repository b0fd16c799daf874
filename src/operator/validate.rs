//! Pure checks of dapr.io resources: what the operator reports in a resource's `Ready` condition.

use std::collections::BTreeMap;

use super::secrets::{self, SecretData};
use crate::api::{Component, Configuration, HttpEndpoint, Resiliency, Subscription};
use crate::components::{Kind, Registry};
use crate::control_plane::kinds::{DaprKind, DaprResource};

/// The outcome of validating one resource: the `Ready` condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    /// A CamelCase reason, e.g. `UnknownType`.
    pub reason: String,
    pub message: String,
}

impl Verdict {
    pub fn valid(message: impl Into<String>) -> Self {
        Verdict {
            ready: true,
            reason: "Valid".into(),
            message: message.into(),
        }
    }

    pub fn invalid(reason: &str, message: impl Into<String>) -> Self {
        Verdict {
            ready: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Everything that can be decided without reading other objects. `Err` is the failing verdict.
pub fn check(res: &DaprResource, registry: &Registry) -> Result<Verdict, Verdict> {
    match res {
        DaprResource::Component(c) => check_component(c, registry),
        DaprResource::Subscription(s) => check_subscription(s),
        DaprResource::HttpEndpoint(e) => check_http_endpoint(e),
        DaprResource::Configuration(c) => check_configuration(c),
        DaprResource::Resiliency(r) => check_resiliency(r),
    }
}

/// The verdict once the referenced Secrets are known: `static_verdict` unless a Kubernetes `secretKeyRef` of
/// `res` does not resolve against `secrets`.
pub fn with_secrets(res: &DaprResource, secrets: &SecretData, static_verdict: Verdict) -> Verdict {
    let mut copy = res.clone();
    match secrets::resolve(&mut copy, secrets) {
        Ok(()) => static_verdict,
        Err(errors) => {
            let reason = match errors[0] {
                secrets::SecretError::SecretNotFound { .. } => "SecretNotFound",
                secrets::SecretError::KeyNotFound { .. } => "SecretKeyNotFound",
                secrets::SecretError::NotText { .. } => "SecretNotText",
            };
            let message = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
            Verdict::invalid(reason, message)
        }
    }
}

/// The verdict for an object that does not even parse as its kind.
pub fn unparsable(kind: DaprKind, error: &str) -> Verdict {
    Verdict::invalid(
        "InvalidSpec",
        format!("{error}; fix the {kind} to match the {} schema", kind.crd()),
    )
}

fn check_component(c: &Component, registry: &Registry) -> Result<Verdict, Verdict> {
    let type_ = c.spec.type_.trim();
    let Some(kind) = Kind::of_type(type_) else {
        return Err(Verdict::invalid(
            "UnknownCategory",
            format!(
                "spec.type {type_:?} does not start with a Dapr component category; expected <category>.<name> \
                 with category one of: {}",
                Kind::categories()
            ),
        ));
    };
    let category = kind.category();
    if kind == Kind::NameResolution {
        return Err(Verdict::invalid(
            "NotAComponent",
            format!(
                "{type_} is name resolution, which a Configuration chooses in spec.nameResolution; a Component of \
                 this type stops the sidecar"
            ),
        ));
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for m in &c.spec.metadata {
        if m.name.trim().is_empty() {
            return Err(Verdict::invalid(
                "InvalidMetadata",
                "spec.metadata has an entry without a name; every entry needs name and value, secretKeyRef or envRef",
            ));
        }
        if let Some(first) = seen.insert(m.name.to_ascii_lowercase(), &m.name) {
            return Err(Verdict::invalid(
                "DuplicateMetadata",
                format!(
                    "spec.metadata names {first:?} and {:?} twice (names ignore case); remove one",
                    m.name
                ),
            ));
        }
    }
    let implemented = registry.registered_of(kind);
    if implemented.is_empty() {
        return Ok(Verdict::valid(format!(
            "{type_}/{} is a Dapr {category} component; tandem has no {category} components yet, so only its \
             shape was checked",
            c.version()
        )));
    }
    match registry.lookup(type_, c.version()) {
        Ok(_) => Ok(Verdict::valid(format!("{type_}/{} is available", c.version()))),
        Err(_) => Err(Verdict::invalid(
            "UnknownType",
            format!(
                "component type {type_}/{} is not available; the {category} types tandem has are: {}",
                c.version(),
                implemented.join(", ")
            ),
        )),
    }
}

fn check_subscription(s: &Subscription) -> Result<Verdict, Verdict> {
    let spec = &s.spec;
    let missing: Vec<&str> = [
        ("spec.pubsubname", spec.pubsubname.trim().is_empty()),
        ("spec.topic", spec.topic.trim().is_empty()),
        (
            "spec.routes (a default or at least one rule)",
            spec.routes.default.trim().is_empty() && spec.routes.rules.is_empty(),
        ),
    ]
    .into_iter()
    .filter_map(|(f, missing)| missing.then_some(f))
    .collect();
    if !missing.is_empty() {
        return Err(Verdict::invalid(
            "MissingField",
            format!("required fields are empty: {}", missing.join(", ")),
        ));
    }
    for (i, rule) in spec.routes.rules.iter().enumerate() {
        if rule.path.trim().is_empty() {
            return Err(Verdict::invalid(
                "InvalidRoute",
                format!("spec.routes.rules[{i}] has no path"),
            ));
        }
        if !rule.match_.trim().is_empty()
            && let Err(e) = cel::Program::compile(&rule.match_)
        {
            return Err(Verdict::invalid(
                "InvalidRoute",
                format!(
                    "spec.routes.rules[{i}].match {:?} is not a valid CEL expression: {e}",
                    rule.match_
                ),
            ));
        }
    }
    Ok(Verdict::valid(format!(
        "subscribes to topic {:?} of pubsub {:?}",
        spec.topic, spec.pubsubname
    )))
}

fn check_http_endpoint(e: &HttpEndpoint) -> Result<Verdict, Verdict> {
    let base = e.spec.base_url.trim();
    let bad = |why: &str| {
        Verdict::invalid(
            "InvalidURL",
            format!("spec.baseUrl {base:?} {why}; write it as http(s)://host[:port][/path]"),
        )
    };
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(bad("does not start with http:// or https://"));
    }
    let uri: http::Uri = base.parse().map_err(|err| bad(&format!("is not a URL ({err})")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    for (i, h) in e.spec.headers.iter().enumerate() {
        if http::HeaderName::try_from(h.name.as_str()).is_err() {
            return Err(Verdict::invalid(
                "InvalidHeader",
                format!("spec.headers[{i}].name {:?} is not a valid HTTP header name", h.name),
            ));
        }
    }
    Ok(Verdict::valid(format!("calls go to {base}")))
}

fn check_configuration(c: &Configuration) -> Result<Verdict, Verdict> {
    c.validate().map_err(|m| Verdict::invalid("InvalidConfiguration", m))?;
    crate::api::access_control::AccessControl::new(c.spec.access_control.as_ref())
        .map_err(|m| Verdict::invalid("InvalidAccessControl", format!("spec.accessControl: {m}")))?;
    Ok(Verdict::valid("configuration is valid"))
}

fn check_resiliency(r: &Resiliency) -> Result<Verdict, Verdict> {
    crate::resiliency::Resiliency::new(std::slice::from_ref(r))
        .map_err(|e| Verdict::invalid("InvalidPolicy", e.to_string()))?;
    Ok(Verdict::valid("policies compile"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn res(kind: DaprKind, spec: Value) -> DaprResource {
        DaprResource::from_json(
            kind,
            json!({"metadata": {"name": "r", "namespace": "ns"}, "spec": spec}),
        )
        .unwrap()
    }

    fn verdict(r: &DaprResource) -> Verdict {
        check(r, &Registry::builtin()).unwrap_or_else(|v| v)
    }

    fn component(type_: &str, metadata: Value) -> DaprResource {
        res(
            DaprKind::Component,
            json!({"type": type_, "version": "v1", "metadata": metadata}),
        )
    }

    #[test]
    fn implemented_component_types_are_ready() {
        let v = verdict(&component(
            "state.redis",
            json!([{"name": "redisHost", "value": "r:6379"}]),
        ));
        assert!(v.ready, "{v:?}");
    }

    #[test]
    fn unknown_type_lists_what_exists_in_its_category() {
        let v = verdict(&component("state.nope", json!([])));
        assert_eq!((v.ready, v.reason.as_str()), (false, "UnknownType"));
        assert!(
            v.message.contains("state.nope/v1") && v.message.contains("state.redis/v1"),
            "{v:?}"
        );
        assert!(!v.message.contains("secretstores"), "{v:?}");
    }

    #[test]
    fn unknown_category_is_refused_and_categories_listed() {
        let v = verdict(&component("cache.redis", json!([])));
        assert_eq!(v.reason, "UnknownCategory");
        assert!(
            v.message.contains("pubsub") && v.message.contains("\"cache.redis\""),
            "{v:?}"
        );
        assert_eq!(verdict(&component("redis", json!([]))).reason, "UnknownCategory");
    }

    #[test]
    fn categories_tandem_lacks_are_accepted_on_shape() {
        // A registry without lock backends stands for a category tandem lacks, whatever it ships.
        let lock = component("lock.redis", json!([]));
        let v = check(&lock, &Registry::default()).unwrap_or_else(|v| v);
        assert!(v.ready && v.message.contains("no lock components yet"), "{v:?}");
        let v = verdict(&lock);
        assert!(v.ready && v.message.contains("lock.redis/v1 is available"), "{v:?}");
    }

    #[test]
    fn name_resolution_is_not_a_component() {
        let v = verdict(&component("nameresolution.mdns", json!([])));
        assert_eq!((v.ready, v.reason.as_str()), (false, "NotAComponent"));
        assert!(v.message.contains("spec.nameResolution"), "{v:?}");
    }

    #[test]
    fn metadata_names_must_be_unique_ignoring_case() {
        let v = verdict(&component(
            "state.redis",
            json!([{"name": "redisHost", "value": "a"}, {"name": "REDISHOST", "value": "b"}]),
        ));
        assert_eq!(v.reason, "DuplicateMetadata");
        assert!(v.message.contains("\"REDISHOST\""), "{v:?}");
    }

    #[test]
    fn secret_problems_turn_a_valid_component_not_ready() {
        let c = component(
            "state.redis",
            json!([{"name": "redisPassword", "secretKeyRef": {"name": "redis", "key": "pw"}}]),
        );
        let ok = verdict(&c);
        let mut data = SecretData::new();
        data.insert("redis".into(), None);
        let v = with_secrets(&c, &data, ok.clone());
        assert_eq!((v.ready, v.reason.as_str()), (false, "SecretNotFound"));
        data.insert("redis".into(), Some([("pw".to_string(), b"x".to_vec())].into()));
        assert_eq!(with_secrets(&c, &data, ok.clone()), ok);
    }

    #[test]
    fn subscriptions_need_pubsub_topic_and_routes() {
        let v = verdict(&res(
            DaprKind::Subscription,
            json!({"pubsubname": "", "topic": "t", "routes": {}}),
        ));
        assert_eq!(v.reason, "MissingField");
        assert!(
            v.message.contains("spec.pubsubname") && v.message.contains("spec.routes") && !v.message.contains("topic"),
            "{v:?}"
        );
        let bad_cel = res(
            DaprKind::Subscription,
            json!({"pubsubname": "p", "topic": "t", "routes": {"rules": [{"match": "event.type ==", "path": "/a"}]}}),
        );
        assert_eq!(verdict(&bad_cel).reason, "InvalidRoute");
        let ok = res(
            DaprKind::Subscription,
            json!({"pubsubname": "p", "topic": "t", "routes": {"rules": [{"match": "event.type == 'a'", "path": "/a"}], "default": "/d"}}),
        );
        assert!(verdict(&ok).ready);
    }

    #[test]
    fn http_endpoint_base_url_must_be_a_url() {
        for bad in ["example.com", "http://", "ftp://x", "http://exa mple.com"] {
            let v = verdict(&res(DaprKind::HttpEndpoint, json!({"baseUrl": bad})));
            assert_eq!(v.reason, "InvalidURL", "{bad}: {v:?}");
        }
        assert!(
            verdict(&res(
                DaprKind::HttpEndpoint,
                json!({"baseUrl": "https://api.example.com:8443/v1"})
            ))
            .ready
        );
    }

    #[test]
    fn configuration_uses_the_sidecar_rules() {
        let v = verdict(&res(
            DaprKind::Configuration,
            json!({"secrets": {"scopes": [{"storeName": "s", "defaultAccess": "maybe"}]}}),
        ));
        assert_eq!(v.reason, "InvalidConfiguration");
        assert!(v.message.contains("maybe"), "{v:?}");
        let acl = verdict(&res(
            DaprKind::Configuration,
            json!({"accessControl": {"defaultAction": "deny", "policies": [{"appId": "a"}]}}),
        ));
        assert_eq!(acl.reason, "InvalidAccessControl");
        assert!(verdict(&res(DaprKind::Configuration, json!({}))).ready);
    }

    #[test]
    fn resiliency_must_compile() {
        let v = verdict(&res(
            DaprKind::Resiliency,
            json!({"policies": {"timeouts": {"t": "soon"}}}),
        ));
        assert_eq!(v.reason, "InvalidPolicy");
        assert!(v.message.contains("soon"), "{v:?}");
        let ok = verdict(&res(
            DaprKind::Resiliency,
            json!({"policies": {"timeouts": {"t": "5s"}}, "targets": {"apps": {"a": {"timeout": "t"}}}}),
        ));
        assert!(ok.ready, "{ok:?}");
    }
}
