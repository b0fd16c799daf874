//! The generated CRDs are structural and take what Dapr users write, field for field.
//!
//! `violations` checks an object against an openAPIV3Schema with the API server's semantics (types, required,
//! enum, nullable, `x-kubernetes-preserve-unknown-fields`) and also reports every field the server would prune,
//! which a plain JSON-Schema validator does not see.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{CustomResourceExt, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::configuration::ConfigurationSpec;
use crate::api::*;

const EXAMPLES: &str = include_str!("testdata/dapr-examples.yaml");

fn examples() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(EXAMPLES)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("example YAML parses"))
        .collect()
}

fn example(kind: &str, name: &str) -> Value {
    examples()
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no example {kind} {name}"))
}

/// The schema the API server applies to objects of `api_version`/`kind`.
fn schema(api_version: &str, kind: &str) -> JSONSchemaProps {
    let version = api_version.strip_prefix("dapr.io/").expect("a dapr.io object");
    let crd = all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    crd.spec
        .versions
        .into_iter()
        .find(|v| v.name == version)
        .and_then(|v| v.schema)
        .and_then(|s| s.open_api_v3_schema)
        .unwrap_or_else(|| panic!("{kind} has no schema for {version}"))
}

/// Why the API server would reject `value`, or store it other than as written.
fn violations(schema: &JSONSchemaProps, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, value, "", &mut out);
    out
}

fn check(schema: &JSONSchemaProps, value: &Value, path: &str, out: &mut Vec<String>) {
    let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    if value.is_null() {
        if schema.nullable != Some(true) {
            out.push(format!("{path}: null where the schema is not nullable (dropped)"));
        }
        return;
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        out.push(format!("{path}: {value} is not one of the enum values"));
    }
    if schema.x_kubernetes_int_or_string == Some(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{path}: expected an integer or a string, got {value}"));
        }
        return;
    }
    let type_ok = match schema.type_.as_deref() {
        None => preserve,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => {
            out.push(format!("{path}: unknown schema type {other}"));
            return;
        }
    };
    if !type_ok {
        out.push(format!("{path}: expected {:?}, got {value}", schema.type_));
        return;
    }
    if path == ".metadata" {
        return; // ObjectMeta is the API server's own; it is never pruned against the CRD schema
    }
    if let Value::Object(map) = value {
        for required in schema.required.iter().flatten() {
            if map.get(required).is_none_or(Value::is_null) {
                out.push(format!("{path}: missing required field {required}"));
            }
        }
        for (key, child) in map {
            let child_path = format!("{path}.{key}");
            if let Some(sub) = schema.properties.as_ref().and_then(|p| p.get(key)) {
                check(sub, child, &child_path, out);
            } else if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &schema.additional_properties {
                check(sub, child, &child_path, out);
            } else if !preserve {
                out.push(format!("{child_path}: unknown field (pruned)"));
            }
        }
    }
    if let (Value::Array(items), Some(JSONSchemaPropsOrArray::Schema(sub))) = (value, &schema.items) {
        for (i, item) in items.iter().enumerate() {
            check(sub, item, &format!("{path}[{i}]"), out);
        }
    }
}

/// Departures from the Kubernetes structural-schema rules (and from tandem's own: no defaults, every named
/// property described).
fn structural_problems(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    if schema.type_.is_none() && !preserve && schema.x_kubernetes_int_or_string != Some(true) {
        out.push(format!("{path}: no type"));
    }
    if schema.ref_path.is_some() || schema.definitions.is_some() {
        out.push(format!("{path}: $ref/definitions are not allowed"));
    }
    if schema.any_of.is_some() || schema.one_of.is_some() || schema.all_of.is_some() || schema.not.is_some() {
        out.push(format!("{path}: anyOf/oneOf/allOf/not left in the schema"));
    }
    if schema.default.is_some() {
        out.push(format!("{path}: default set"));
    }
    if schema.properties.is_some() && schema.additional_properties.is_some() {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    match &schema.additional_properties {
        Some(JSONSchemaPropsOrBool::Bool(b)) => out.push(format!("{path}: additionalProperties: {b}")),
        Some(JSONSchemaPropsOrBool::Schema(sub)) => structural_problems(sub, &format!("{path}.*"), out),
        None => {}
    }
    match (&schema.type_.as_deref(), &schema.items) {
        (Some("array"), Some(JSONSchemaPropsOrArray::Schema(sub))) => {
            structural_problems(sub, &format!("{path}[]"), out)
        }
        (Some("array"), _) => out.push(format!("{path}: array without a single items schema")),
        (_, Some(_)) => out.push(format!("{path}: items on a non-array")),
        _ => {}
    }
    for (name, sub) in schema.properties.iter().flatten() {
        let sub_path = format!("{path}.{name}");
        if sub.description.as_deref().is_none_or(str::is_empty) && !(path.is_empty() && name == "metadata") {
            out.push(format!("{sub_path}: no description"));
        }
        structural_problems(sub, &sub_path, out);
    }
}

fn typed<T: DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", value["metadata"]["name"]))
}

/// What tandem would write back (the operator's status updates, the sidecar's metadata API) passes too.
fn assert_round_trips<T: DeserializeOwned + Serialize>(api_version: &str, kind: &str, doc: &Value) -> T {
    let parsed: T = typed(doc);
    let mut written = serde_json::to_value(&parsed).unwrap();
    written["apiVersion"] = api_version.into();
    written["kind"] = kind.into();
    let problems = violations(&schema(api_version, kind), &written);
    assert!(problems.is_empty(), "{kind} as tandem serialises it: {problems:#?}");
    parsed
}

#[test]
fn every_crd_schema_is_structural_and_described() {
    for crd in all_crds() {
        assert_eq!(crd.spec.group, "dapr.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.versions.iter().filter(|v| v.storage).count(),
            1,
            "{}",
            crd.spec.names.kind
        );
        for version in &crd.spec.versions {
            let root = version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
            let mut problems = vec![];
            structural_problems(root, "", &mut problems);
            assert!(
                problems.is_empty(),
                "{} {}: {problems:#?}",
                crd.spec.names.kind,
                version.name
            );

            let props = root.properties.as_ref().unwrap();
            assert_eq!(props["metadata"].type_.as_deref(), Some("object"));
            assert!(
                props["metadata"].properties.is_none(),
                "metadata is left to the API server"
            );
            let status = props["status"].properties.as_ref().unwrap();
            assert_eq!(status["observedGeneration"].type_.as_deref(), Some("integer"));
            assert_eq!(status["conditions"].type_.as_deref(), Some("array"));
            assert!(version.subresources.as_ref().unwrap().status.is_some());
        }
    }
}

#[test]
fn names_match_dapr() {
    // "<crd name> <kind> <singular> <versions, * marking the storage version>"
    let names: Vec<String> = all_crds()
        .into_iter()
        .map(|c: CustomResourceDefinition| {
            let versions: Vec<String> = c
                .spec
                .versions
                .iter()
                .map(|v| format!("{}{}", v.name, if v.storage { "*" } else { "" }))
                .collect();
            format!(
                "{} {} {} {}",
                c.metadata.name.unwrap(),
                c.spec.names.kind,
                c.spec.names.singular.unwrap(),
                versions.join(",")
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "components.dapr.io Component component v1alpha1*",
            "configurations.dapr.io Configuration configuration v1alpha1*",
            "httpendpoints.dapr.io HTTPEndpoint httpendpoint v1alpha1*",
            "resiliencies.dapr.io Resiliency resiliency v1alpha1*",
            "subscriptions.dapr.io Subscription subscription v1alpha1,v2alpha1*",
        ]
    );
    assert_eq!(Subscription::crd().spec.conversion.unwrap().strategy, "None");
    assert!(
        all_crds().iter().all(|c| c.spec.names.short_names.is_none()),
        "Dapr declares no short names"
    );
}

#[test]
fn kube_resource_impls_address_the_crds() {
    assert_eq!(
        Component::url_path(&(), Some("orders")),
        "/apis/dapr.io/v1alpha1/namespaces/orders/components"
    );
    assert_eq!(Subscription::api_version(&()), "dapr.io/v2alpha1");
    assert_eq!(SubscriptionV1Alpha1::api_version(&()), "dapr.io/v1alpha1");
    assert_eq!(HttpEndpoint::kind(&()), "HTTPEndpoint");
    assert_eq!(Resiliency::plural(&()), "resiliencies");
    assert_eq!(Configuration::crd_name(), Configuration::crd().metadata.name.unwrap());
    assert_eq!(Component::crd_name(), "components.dapr.io");
    assert_eq!(Subscription::crd_name(), "subscriptions.dapr.io");
    assert_eq!(HttpEndpoint::crd_name(), "httpendpoints.dapr.io");
    assert_eq!(Resiliency::crd_name(), "resiliencies.dapr.io");
    assert_eq!(HttpEndpoint::api_resource().plural, "httpendpoints");
}

#[test]
fn every_dapr_example_passes_its_schema_without_losing_a_field() {
    let docs = examples();
    assert_eq!(docs.len(), 8);
    for doc in &docs {
        let (api_version, kind) = (doc["apiVersion"].as_str().unwrap(), doc["kind"].as_str().unwrap());
        let problems = violations(&schema(api_version, kind), doc);
        assert!(problems.is_empty(), "{kind} {}: {problems:#?}", doc["metadata"]["name"]);
    }
}

#[test]
fn components_keep_secret_refs_env_refs_and_any_json_value() {
    let c: Component = assert_round_trips("dapr.io/v1alpha1", "Component", &example("Component", "statestore"));
    assert_eq!(c.spec.type_, "state.redis");
    assert_eq!(c.spec.init_timeout.as_deref(), Some("1m"));
    assert_eq!(c.auth.unwrap().secret_store, "kubernetes");
    assert_eq!(c.scopes, ["checkout", "orders"]);
    let m = |name: &str| c.spec.metadata.iter().find(|m| m.name == name).unwrap().clone();
    assert_eq!(
        m("redisPassword").secret_key_ref,
        Some(SecretKeyRef {
            name: "redis".into(),
            key: Some("redis-password".into())
        })
    );
    assert_eq!(m("redisUsername").env_ref.as_deref(), Some("REDIS_USERNAME"));
    assert_eq!(m("redisDB").value.unwrap().as_string(), "0");
    assert_eq!(m("enableTLS").value.unwrap().as_string(), "false");

    let kafka: Component = assert_round_trips("dapr.io/v1alpha1", "Component", &example("Component", "pubsub"));
    let value = |name: &str| {
        kafka
            .spec
            .metadata
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .value
            .clone()
            .unwrap()
    };
    assert_eq!(value("consumerGroupRebalanceStrategy").0["fallbacks"][1], "roundrobin");
    assert_eq!(value("topics").as_string(), r#"["orders","payments"]"#);
    assert_eq!(kafka.spec.metadata[2].secret_key_ref.as_ref().unwrap().key, None);
}

#[test]
fn v1alpha1_subscriptions_read_as_v2alpha1_routes() {
    let doc = example("Subscription", "order-created");
    let v1: SubscriptionV1Alpha1 = assert_round_trips("dapr.io/v1alpha1", "Subscription", &doc);
    let converted = Subscription::from(v1);
    assert_eq!(converted.spec.routes.default, "/orders");
    assert_eq!(
        converted.spec.bulk_subscribe.as_ref().unwrap().max_messages_count,
        Some(100)
    );

    // Without a conversion webhook the API server hands the stored v1alpha1 fields out as v2alpha1.
    let mut as_stored = doc.clone();
    as_stored["apiVersion"] = "dapr.io/v2alpha1".into();
    let problems = violations(&schema("dapr.io/v2alpha1", "Subscription"), &as_stored);
    assert!(problems.is_empty(), "v1alpha1 fields under v2alpha1: {problems:#?}");
    let read: Subscription = typed(&as_stored);
    assert_eq!(read.spec.routes.default, "/orders");
    assert_eq!(read.spec, converted.spec);
}

#[test]
fn v2alpha1_subscriptions_keep_cel_rules_in_order() {
    let s: Subscription = assert_round_trips(
        "dapr.io/v2alpha1",
        "Subscription",
        &example("Subscription", "order-routing"),
    );
    let rules: Vec<(&str, &str)> = s
        .spec
        .routes
        .rules
        .iter()
        .map(|r| (r.match_.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            (r#"event.type == "widget""#, "/widgets"),
            (
                r#"event.type == "gadget" && event.data.priority > 5"#,
                "/gadgets/urgent"
            )
        ]
    );
    assert_eq!(s.spec.routes.default, "/products");
    assert_eq!(s.scopes, ["inventory", "audit"]);
}

#[test]
fn http_endpoints_keep_client_tls() {
    let e: HttpEndpoint = assert_round_trips(
        "dapr.io/v1alpha1",
        "HTTPEndpoint",
        &example("HTTPEndpoint", "payments-api"),
    );
    let tls = e.spec.client_tls.unwrap();
    assert!(
        tls.root_ca
            .unwrap()
            .value
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(
        tls.private_key.unwrap().secret_key_ref.unwrap().key.as_deref(),
        Some("tls.key")
    );
    assert_eq!(tls.renegotiation.as_deref(), Some("OnceAsClient"));
    assert_eq!(e.spec.headers.len(), 3);
}

#[test]
fn configurations_type_what_tandem_uses_and_keep_the_rest() {
    let c: Configuration = assert_round_trips(
        "dapr.io/v1alpha1",
        "Configuration",
        &example("Configuration", "appconfig"),
    );
    let acl = c.spec.access_control.as_ref().unwrap();
    assert_eq!(acl.default_action, "deny");
    assert_eq!(acl.policies[0].operations[0].http_verb, ["POST", "GET"]);
    assert!(!c.secret_scope("kubernetes").unwrap().is_allowed("other"));
    assert_eq!(
        c.spec.name_resolution.as_ref().unwrap().configuration["clusterDomain"],
        "cluster.local"
    );
    assert_eq!(c.enabled_features(), ["HotReload"]);
    assert!(
        c.spec
            .logging
            .as_ref()
            .unwrap()
            .api_logging
            .as_ref()
            .unwrap()
            .obfuscate_urls
    );
    let kept: Vec<&str> = c.spec.other.keys().map(String::as_str).collect();
    assert_eq!(
        kept,
        [
            "api",
            "appHttpPipeline",
            "components",
            "httpPipeline",
            "metric",
            "mtls",
            "tracing",
            "workflow"
        ]
    );
    assert_eq!(
        c.spec.other["tracing"]["zipkin"]["endpointAddress"],
        example("Configuration", "appconfig")["spec"]["tracing"]["zipkin"]["endpointAddress"]
    );
}

#[test]
fn resiliencies_keep_policies_and_targets() {
    let r: Resiliency = assert_round_trips("dapr.io/v1alpha1", "Resiliency", &example("Resiliency", "myresiliency"));
    let p = &r.spec.policies;
    assert_eq!(p.timeouts["important"], "60s");
    assert_eq!(p.retries["retryForever"].max_retries, Some(-1));
    assert_eq!(
        p.retries["important"].matching.as_ref().unwrap().grpc_status_codes,
        "1-4,8-11,13,14"
    );
    assert_eq!(p.circuit_breakers["pubsubCB"].max_requests, Some(1));
    let t = &r.spec.targets;
    assert_eq!(t.actors["myActorType"].circuit_breaker_scope.as_deref(), Some("both"));
    assert_eq!(
        t.components["pubsub1"].inbound.as_ref().unwrap().retry.as_deref(),
        Some("important")
    );
    assert_eq!(r.scopes, ["checkout"]);
}

#[test]
fn the_schema_reports_what_dapr_rejects_and_what_would_be_pruned() {
    let component = schema("dapr.io/v1alpha1", "Component");
    let mut doc = example("Component", "statestore");
    doc["spec"].as_object_mut().unwrap().remove("type");
    doc["spec"]["metadata"][0].as_object_mut().unwrap().remove("name");
    doc["spec"]["typo"] = json!(1);
    doc["spec"]["ignoreErrors"] = json!("yes");
    let mut problems = violations(&component, &doc);
    problems.sort();
    assert_eq!(
        problems,
        [
            r#".spec.ignoreErrors: expected Some("boolean"), got "yes""#,
            ".spec.metadata[0]: missing required field name",
            ".spec.typo: unknown field (pruned)",
            ".spec: missing required field type",
        ]
    );
    // A v2alpha1 subscription without its topic is refused, as Dapr's CRD refuses it.
    let mut sub = example("Subscription", "order-routing");
    sub["spec"].as_object_mut().unwrap().remove("topic");
    assert_eq!(
        violations(&schema("dapr.io/v2alpha1", "Subscription"), &sub),
        [".spec: missing required field topic"]
    );
}

#[test]
fn status_is_conditions_and_observed_generation() {
    let mut c: Component = typed(&example("Component", "localsecretstore"));
    assert!(
        serde_json::to_value(&c).unwrap().get("status").is_none(),
        "no status until the operator writes one"
    );
    c.status = Some(ResourceStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Valid".into(),
            message: String::new(),
            observed_generation: Some(3),
            last_transition_time: Time("2025-01-02T03:04:05Z".parse().unwrap()),
        }],
        observed_generation: Some(3),
    });
    let written = serde_json::to_value(&c).unwrap();
    assert_eq!(written["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(written["status"]["observedGeneration"], 3);
    let problems = violations(&schema("dapr.io/v1alpha1", "Component"), &written);
    assert!(problems.is_empty(), "{problems:#?}");
    let back: Component = typed(&written);
    assert_eq!(back.status, c.status);
    assert_eq!(
        kube::core::object::HasStatus::status(&back)
            .unwrap()
            .observed_generation,
        Some(3)
    );
}

#[test]
fn configuration_spec_lists_untyped_sections_as_schemaless() {
    let spec = &schema("dapr.io/v1alpha1", "Configuration").properties.unwrap()["spec"];
    assert_eq!(
        spec.x_kubernetes_preserve_unknown_fields,
        Some(true),
        "unknown sections are kept"
    );
    let props = spec.properties.as_ref().unwrap();
    for name in [
        "tracing",
        "metric",
        "metrics",
        "httpPipeline",
        "mtls",
        "api",
        "wasm",
        "workflow",
    ] {
        assert_eq!(props[name].x_kubernetes_preserve_unknown_fields, Some(true), "{name}");
    }
    let default_spec: ConfigurationSpec = serde_json::from_value(json!({})).unwrap();
    assert!(default_spec.other.is_empty());
}
