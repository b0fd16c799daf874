//! Workload → Service: every Deployment and StatefulSet whose pod template enables Dapr gets the headless
//! `<app-id>-dapr` Service that sidecars resolve each other through; it goes away when Dapr is disabled.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Span, instrument};

use super::context::{Context, FIELD_MANAGER};
use super::error::Error;

pub const ANNOTATION_ENABLED: &str = "dapr.io/enabled";
pub const ANNOTATION_APP_ID: &str = "dapr.io/app-id";
pub const ANNOTATION_ENABLE_METRICS: &str = "dapr.io/enable-metrics";
pub const ANNOTATION_METRICS_PORT: &str = "dapr.io/metrics-port";
pub const ANNOTATION_GRPC_PORT: &str = "dapr.io/grpc-port";
pub const ANNOTATION_INTERNAL_GRPC_PORT: &str = "dapr.io/internal-grpc-port";
pub const ANNOTATION_SVC_ANNOTATIONS: &str = "dapr.io/sidecar-svc-annotations";
/// The label on every Service this reconciler makes.
pub const SERVICE_LABEL: (&str, &str) = ("dapr.io/enabled", "true");

/// A workload kind whose pods may carry a sidecar.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name in logs and metrics.
    const CONTROLLER: &'static str;
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>>;
    fn match_labels(&self) -> Option<&BTreeMap<String, String>>;
}

impl Workload for Deployment {
    const CONTROLLER: &'static str = "deployment";
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()
    }
    fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.as_ref()?.selector.match_labels.as_ref()
    }
}

impl Workload for StatefulSet {
    const CONTROLLER: &'static str = "statefulset";
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()
    }
    fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.as_ref()?.selector.match_labels.as_ref()
    }
}

/// Dapr's truthy spellings (`dapr/kit` `strings.IsTruthy`).
pub fn is_truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

fn annotation<'a, K: Workload>(w: &'a K, key: &str) -> Option<&'a str> {
    w.template_annotations()?.get(key).map(String::as_str)
}

fn port<K: Workload>(w: &K, key: &str, default: i32) -> i32 {
    annotation(w, key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// True when the pod template's `dapr.io/enabled` is truthy.
pub fn is_enabled<K: Workload>(w: &K) -> bool {
    annotation(w, ANNOTATION_ENABLED).is_some_and(is_truthy)
}

/// `dapr.io/app-id`, or the workload's name when unset.
pub fn app_id<K: Workload>(w: &K) -> String {
    annotation(w, ANNOTATION_APP_ID)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map_or_else(|| w.name_any(), str::to_owned)
}

pub fn service_name(app_id: &str) -> String {
    format!("{app_id}-dapr")
}

/// Dapr's `ValidateKubernetesAppID`: `<app-id>-dapr` must be an RFC 1123 label.
pub fn validate_app_id(app_id: &str) -> Result<(), String> {
    let svc = service_name(app_id);
    if svc.len() > 63 {
        return Err(format!("Service name {svc:?} is longer than 63 characters"));
    }
    let ok_chars = svc
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || !svc.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "Service name {svc:?} must consist of lower case alphanumeric characters or '-' and start with one"
        ));
    }
    Ok(())
}

/// The Service the workload needs, as Dapr's operator builds it (`[D] pkg/operator/handlers/dapr_handler.go`).
pub fn build_service<K: Workload>(w: &K) -> Service {
    let app_id = app_id(w);
    let metrics_port = port(w, ANNOTATION_METRICS_PORT, 9090);
    let grpc_port = port(w, ANNOTATION_GRPC_PORT, 50001);
    let internal_port = port(w, ANNOTATION_INTERNAL_GRPC_PORT, 50002);
    let metrics_enabled = annotation(w, ANNOTATION_ENABLE_METRICS)
        .filter(|v| !v.is_empty())
        .is_none_or(is_truthy);

    let mut annotations = BTreeMap::from([(ANNOTATION_APP_ID.to_owned(), app_id.clone())]);
    if metrics_enabled {
        annotations.insert("prometheus.io/probe".into(), "true".into());
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), metrics_port.to_string());
        annotations.insert("prometheus.io/path".into(), "/".into());
    }
    for pair in annotation(w, ANNOTATION_SVC_ANNOTATIONS).unwrap_or_default().split(',') {
        let Some((key, value)) = pair.trim().split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            continue;
        }
        if annotations.contains_key(key) {
            tracing::warn!(
                annotation = key,
                "ignoring {ANNOTATION_SVC_ANNOTATIONS} entry: the operator manages it"
            );
            continue;
        }
        annotations.insert(key.to_owned(), value.trim().to_owned());
    }

    let tcp = |name: &str, port: i32, target: i32, protocol: &str| ServicePort {
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        app_protocol: Some(protocol.into()),
        ..Default::default()
    };
    let mut owner = w.controller_owner_ref(&());
    if let Some(o) = owner.as_mut() {
        o.block_owner_deletion = Some(true);
    }
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(&app_id)),
            namespace: w.namespace(),
            labels: Some(BTreeMap::from([(SERVICE_LABEL.0.into(), SERVICE_LABEL.1.into())])),
            annotations: Some(annotations),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: w.match_labels().cloned(),
            cluster_ip: Some("None".into()),
            ports: Some(vec![
                tcp("dapr-http", 80, 3500, "http"),
                tcp("dapr-grpc", grpc_port, grpc_port, "grpc"),
                tcp("dapr-internal", internal_port, internal_port, "grpc"),
                tcp("dapr-metrics", metrics_port, metrics_port, "http"),
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// True when `svc` names `uid` as its controlling owner.
fn controlled_by(svc: &Service, uid: &str) -> bool {
    svc.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Applies the Service an enabled workload needs and deletes the ones it controls but no longer needs
/// (Dapr disabled, or the app id changed).
#[instrument(skip_all, fields(controller = K::CONTROLLER, namespace, name))]
pub async fn reconcile<K: Workload>(w: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&*w, &ctx).await;
    ctx.metrics.reconciled(K::CONTROLLER, started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner<K: Workload>(w: &K, ctx: &Context) -> Result<Action, Error> {
    let name = w.name_any();
    let kind = K::kind(&()).into_owned();
    let namespace = w.namespace().ok_or_else(|| Error::NoNamespace {
        kind: kind.clone(),
        name: name.clone(),
    })?;
    Span::current()
        .record("namespace", namespace.as_str())
        .record("name", name.as_str());
    if w.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);

    let wanted = if is_enabled(w) {
        let app_id = app_id(w);
        validate_app_id(&app_id).map_err(|problem| Error::InvalidAppId {
            kind: kind.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            app_id: app_id.clone(),
            problem,
        })?;
        let svc = build_service(w);
        let svc_name = svc.name_any();
        services
            .patch(
                &svc_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&svc),
            )
            .await
            .map_err(|source| Error::ApplyService {
                namespace: namespace.clone(),
                name: svc_name.clone(),
                source: Box::new(source),
            })?;
        tracing::debug!(service = svc_name, "applied Service");
        ctx.metrics.service_applied(&app_id);
        Some(svc_name)
    } else {
        None
    };

    let uid = w.uid().unwrap_or_default();
    let stale = ctx.services.state().into_iter().filter(|s| {
        s.namespace().as_deref() == Some(namespace.as_str()) && controlled_by(s, &uid) && Some(s.name_any()) != wanted
    });
    for svc in stale {
        let svc_name = svc.name_any();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: svc.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match services.delete(&svc_name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                return Err(Error::DeleteService {
                    namespace: namespace.clone(),
                    name: svc_name,
                    source: Box::new(source),
                });
            }
        }
        tracing::info!(service = svc_name, "deleted Service the workload no longer needs");
        let app = svc.annotations().get(ANNOTATION_APP_ID).cloned().unwrap_or_default();
        ctx.metrics.service_deleted(&app);
    }
    Ok(Action::await_change())
}

/// Logs the failure and retries: soon for API errors, later for an app id the user must fix.
pub fn error_policy<K: Workload>(w: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        controller = K::CONTROLLER,
        namespace = w.namespace().unwrap_or_default(),
        name = w.name_any(),
        "reconcile failed: {err}"
    );
    match err {
        Error::InvalidAppId { .. } => Action::requeue(Duration::from_secs(300)),
        _ => Action::requeue(Duration::from_secs(15)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn deployment(annotations: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "d-uid"},
            "spec": {
                "selector": {"matchLabels": {"app": "orders"}},
                "template": {"metadata": {"labels": {"app": "orders"}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "orders:1"}]}}
            }
        }))
        .unwrap()
    }

    fn expected_service(owner_kind: &str, owner: &str, uid: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "checkout-dapr", "namespace": "shop",
                "labels": {"dapr.io/enabled": "true"},
                "annotations": {"dapr.io/app-id": "checkout", "prometheus.io/path": "/",
                    "prometheus.io/port": "9090", "prometheus.io/probe": "true", "prometheus.io/scrape": "true"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner,
                    "uid": uid, "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "orders"},
                "ports": [
                    {"name": "dapr-http", "port": 80, "targetPort": 3500, "protocol": "TCP", "appProtocol": "http"},
                    {"name": "dapr-grpc", "port": 50001, "targetPort": 50001, "protocol": "TCP", "appProtocol": "grpc"},
                    {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP", "appProtocol": "grpc"},
                    {"name": "dapr-metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP", "appProtocol": "http"}
                ]
            }
        })
    }

    #[test]
    fn service_matches_what_dapr_builds() {
        let d = deployment(json!({"dapr.io/enabled": "true", "dapr.io/app-id": "checkout"}));
        let svc = serde_json::to_value(build_service(&d)).unwrap();
        assert_eq!(svc, expected_service("Deployment", "orders", "d-uid"));
    }

    #[test]
    fn annotations_tune_ports_metrics_and_service_annotations() {
        let d = deployment(json!({
            "dapr.io/enabled": "on", "dapr.io/metrics-port": "9999", "dapr.io/grpc-port": "x",
            "dapr.io/internal-grpc-port": "50012", "dapr.io/enable-metrics": "false",
            "dapr.io/sidecar-svc-annotations": " team = payments ,dapr.io/app-id=evil, =x, novalue"
        }));
        assert!(is_enabled(&d));
        let svc = build_service(&d);
        assert_eq!(
            svc.metadata.name.as_deref(),
            Some("orders-dapr"),
            "app id defaults to the workload name"
        );
        let ann = svc.metadata.annotations.unwrap();
        assert_eq!(
            ann,
            BTreeMap::from([
                ("dapr.io/app-id".to_string(), "orders".to_string()),
                ("team".to_string(), "payments".to_string())
            ])
        );
        let ports: Vec<(String, i32)> = svc
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("dapr-http", 80),
                ("dapr-grpc", 50001),
                ("dapr-internal", 50012),
                ("dapr-metrics", 9999)
            ]
            .map(|(n, p)| (n.to_string(), p))
        );
    }

    #[test]
    fn enabled_takes_daprs_truthy_spellings() {
        for v in ["true", "TRUE", "1", "yes", "y", "on", "t"] {
            assert!(is_enabled(&deployment(json!({"dapr.io/enabled": v}))), "{v}");
        }
        for v in ["false", "0", "", "enabled"] {
            assert!(!is_enabled(&deployment(json!({"dapr.io/enabled": v}))), "{v}");
        }
        assert!(!is_enabled(&deployment(json!({}))));
    }

    #[test]
    fn app_ids_must_make_valid_service_names() {
        assert!(validate_app_id("orders").is_ok());
        assert!(validate_app_id("Orders").unwrap_err().contains("\"Orders-dapr\""));
        assert!(validate_app_id("a.b").is_err());
        assert!(validate_app_id(&"a".repeat(59)).unwrap_err().contains("63"));
    }

    fn statefulset(annotations: serde_json::Value) -> StatefulSet {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "ledger", "namespace": "shop", "uid": "s-uid"},
            "spec": {
                "serviceName": "ledger",
                "selector": {"matchLabels": {"app": "orders"}},
                "template": {"metadata": {"labels": {"app": "orders"}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "ledger:1"}]}}
            }
        }))
        .unwrap()
    }

    /// A Service in the cache, controlled by the workload with `owner_uid`.
    fn existing_service(name: &str, uid: &str, owner_uid: &str) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "uid": uid,
                "labels": {"dapr.io/enabled": "true"}, "annotations": {"dapr.io/app-id": "checkout"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders",
                    "uid": owner_uid, "controller": true}]},
            "spec": {"clusterIP": "None"}
        }))
        .unwrap()
    }

    mod scenarios {
        use super::*;
        use crate::operator::fixtures::{Scenario, finished, test_context};

        const ENABLED: &str = r#"{"dapr.io/enabled": "true", "dapr.io/app-id": "checkout"}"#;

        fn enabled() -> serde_json::Value {
            serde_json::from_str(ENABLED).unwrap()
        }

        #[tokio::test]
        async fn annotated_deployment_gets_its_service_applied() {
            let (ctx, server) = test_context(vec![]);
            let expected = serde_json::from_value(expected_service("Deployment", "orders", "d-uid")).unwrap();
            let mocksrv = server.run(Scenario::ServiceApplied(Box::new(expected)));
            let action = reconcile(Arc::new(deployment(enabled())), ctx.clone()).await.unwrap();
            assert_eq!(action, Action::await_change());
            drop(ctx);
            finished(mocksrv).await;
        }

        #[tokio::test]
        async fn annotated_statefulset_gets_its_service_applied() {
            let (ctx, server) = test_context(vec![]);
            let expected = serde_json::from_value(expected_service("StatefulSet", "ledger", "s-uid")).unwrap();
            let mocksrv = server.run(Scenario::ServiceApplied(Box::new(expected)));
            reconcile(Arc::new(statefulset(enabled())), ctx.clone()).await.unwrap();
            drop(ctx);
            finished(mocksrv).await;
        }

        #[tokio::test]
        async fn unannotated_workload_gets_no_service() {
            let (ctx, server) = test_context(vec![]);
            let mocksrv = server.run(Scenario::NoRequests);
            reconcile(Arc::new(deployment(json!({"other": "x"}))), ctx.clone())
                .await
                .unwrap();
            drop(ctx);
            finished(mocksrv).await;
        }

        #[tokio::test]
        async fn disabling_deletes_the_service_we_made() {
            let (ctx, server) = test_context(vec![existing_service("checkout-dapr", "svc-uid", "d-uid")]);
            let mocksrv = server.run(Scenario::ServiceDeleted {
                namespace: "shop",
                name: "checkout-dapr",
                uid: "svc-uid",
            });
            let disabled = json!({"dapr.io/enabled": "false", "dapr.io/app-id": "checkout"});
            reconcile(Arc::new(deployment(disabled)), ctx.clone()).await.unwrap();
            assert!(
                ctx.metrics
                    .render()
                    .windows(35)
                    .any(|w| w == b"dapr_operator_service_deleted_total")
            );
            drop(ctx);
            finished(mocksrv).await;
        }

        #[tokio::test]
        async fn services_of_other_owners_are_left_alone() {
            let (ctx, server) = test_context(vec![existing_service("checkout-dapr", "svc-uid", "someone-else")]);
            let mocksrv = server.run(Scenario::NoRequests);
            reconcile(Arc::new(deployment(json!({}))), ctx.clone()).await.unwrap();
            drop(ctx);
            finished(mocksrv).await;
        }

        #[tokio::test]
        async fn an_invalid_app_id_is_an_error_naming_the_annotation() {
            let (ctx, server) = test_context(vec![]);
            let mocksrv = server.run(Scenario::NoRequests);
            let bad = json!({"dapr.io/enabled": "true", "dapr.io/app-id": "Check_Out"});
            let err = reconcile(Arc::new(deployment(bad)), ctx.clone()).await.unwrap_err();
            assert!(matches!(err, Error::InvalidAppId { .. }));
            assert!(
                err.to_string().contains("dapr.io/app-id") && err.to_string().contains("Check_Out"),
                "{err}"
            );
            drop(ctx);
            finished(mocksrv).await;
        }
    }
}
