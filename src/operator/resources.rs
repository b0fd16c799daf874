//! Validation status for the dapr.io kinds: each object gets a `Ready` condition saying whether a sidecar could
//! load it and, if not, why; transitions are published as Kubernetes Events.
//!
//! Objects are watched as `DynamicObject` and parsed here, so a malformed object becomes `Ready=False` with the
//! parse error instead of breaking the watch for every other object of its kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{Span, instrument};

use super::context::{Context, FIELD_MANAGER};
use super::error::Error;
use super::{secrets, status, validate};
use crate::control_plane::kinds::{DaprKind, DaprResource};

/// How often a resource is re-validated without changes (Secrets it refers to may appear or go away).
const RECHECK_READY: Duration = Duration::from_secs(300);
const RECHECK_NOT_READY: Duration = Duration::from_secs(60);

/// The dapr.io kind of a watched object, from its `apiVersion`/`kind`.
pub fn kind_of(obj: &DynamicObject) -> Result<DaprKind, Error> {
    let types = obj.types.as_ref();
    let kind = types.map(|t| t.kind.as_str()).unwrap_or_default();
    let group_ok = types.is_some_and(|t| t.api_version.starts_with("dapr.io/"));
    DaprKind::ALL
        .into_iter()
        .find(|k| group_ok && k.name() == kind)
        .ok_or_else(|| Error::UnknownKind {
            found: types
                .map(|t| format!("{}/{}", t.api_version, t.kind))
                .unwrap_or_default(),
        })
}

/// The controller name of a kind in logs and metrics, e.g. `component`.
pub fn controller_name(kind: DaprKind) -> &'static str {
    match kind {
        DaprKind::Component => "component",
        DaprKind::Subscription => "subscription",
        DaprKind::HttpEndpoint => "httpendpoint",
        DaprKind::Configuration => "configuration",
        DaprKind::Resiliency => "resiliency",
    }
}

/// Validates the object, records the verdict in its status and publishes an Event when the verdict changed.
#[instrument(skip_all, fields(kind, namespace, name))]
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let kind = kind_of(&obj)?;
    let started = Instant::now();
    let result = reconcile_inner(&obj, kind, &ctx).await;
    ctx.metrics
        .reconciled(controller_name(kind), started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner(obj: &DynamicObject, kind: DaprKind, ctx: &Context) -> Result<Action, Error> {
    let name = obj.name_any();
    let namespace = obj.namespace().ok_or_else(|| Error::NoNamespace {
        kind: kind.name().into(),
        name: name.clone(),
    })?;
    Span::current()
        .record("kind", kind.name())
        .record("namespace", namespace.as_str())
        .record("name", name.as_str());
    if obj.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    let verdict = match DaprResource::from_dynamic(kind, obj) {
        Err(e) => validate::unparsable(kind, &e),
        Ok(res) => match validate::check(&res, &ctx.registry) {
            Err(v) => v,
            Ok(v) => {
                let refs = secrets::kubernetes_refs(&res);
                if refs.is_empty() {
                    v
                } else {
                    let data = secrets::fetch(&ctx.client, &namespace, &refs).await?;
                    validate::with_secrets(&res, &data, v)
                }
            }
        },
    };

    let uid = obj.uid().unwrap_or_default();
    let stored = status::current_ready(obj);
    let remembered = ctx.last_ready.lock().expect("last_ready lock").get(&uid).cloned();
    let previous = remembered.or_else(|| stored.clone());
    let condition = status::ready_condition(&verdict, obj.metadata.generation, previous.as_ref(), Timestamp::now());

    if status::differs(stored.as_ref(), &condition) {
        write_status(ctx, kind, &namespace, &name, &condition).await?;
    }
    if status::is_transition(previous.as_ref(), &condition) {
        publish(ctx, obj, kind, &condition).await;
    }
    ctx.last_ready.lock().expect("last_ready lock").insert(uid, condition);
    Ok(Action::requeue(if verdict.ready {
        RECHECK_READY
    } else {
        RECHECK_NOT_READY
    }))
}

async fn write_status(
    ctx: &Context,
    kind: DaprKind,
    namespace: &str,
    name: &str,
    condition: &Condition,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &kind.api_resource());
    let body = status::status_apply(kind, name, condition);
    match api
        .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(()),
        // The object is gone, or its CRD has no status subresource (Dapr's own CRDs have none).
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            if ctx.no_status.lock().expect("no_status lock").insert(kind) {
                tracing::warn!(
                    "cannot store the status of {kind} {namespace}/{name}: not found; if the object exists, its CRD \
                     has no status subresource (install tandem's CRDs: `tandem crds | kubectl apply -f -`); \
                     verdicts are still published as Events"
                );
            }
            Ok(())
        }
        Err(source) => Err(Error::Status {
            kind: kind.name().into(),
            namespace: namespace.into(),
            name: name.into(),
            source: Box::new(source),
        }),
    }
}

async fn publish(ctx: &Context, obj: &DynamicObject, kind: DaprKind, condition: &Condition) {
    let ready = condition.status == "True";
    let mut note = condition.message.clone();
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push('…');
    }
    let event = Event {
        type_: if ready { EventType::Normal } else { EventType::Warning },
        reason: condition.reason.clone(),
        note: Some(note),
        action: "Validate".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&kind.api_resource());
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(
            "publishing the {} event for {kind} {} failed: {e}",
            condition.reason,
            obj.name_any()
        );
    }
}

/// Logs the failure and retries shortly.
pub fn error_policy(obj: Arc<DynamicObject>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        "validation failed: {err}"
    );
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures::{Scenario, finished, test_context};
    use serde_json::{Value, json};

    fn component(type_: &str, metadata: Value, status: Option<Value>) -> Arc<DynamicObject> {
        let mut doc = json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "Component",
            "metadata": {"name": "store", "namespace": "shop", "uid": "c-uid", "generation": 3},
            "spec": {"type": type_, "version": "v1", "metadata": metadata}
        });
        if let Some(status) = status {
            doc["status"] = status;
        }
        Arc::new(serde_json::from_value(doc).unwrap())
    }

    fn ready_status(status: &str, reason: &str, message: &str) -> Value {
        json!({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": status, "reason": reason,
            "message": message, "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 3}]})
    }

    async fn play(obj: Arc<DynamicObject>, scenario: Scenario) -> Action {
        let (ctx, server) = test_context(vec![]);
        let mocksrv = server.run(scenario);
        let action = reconcile(obj, ctx.clone()).await.unwrap();
        drop(ctx);
        finished(mocksrv).await;
        action
    }

    fn status(
        ready: bool,
        reason: &'static str,
        message_contains: &'static str,
        event: Option<&'static str>,
    ) -> Scenario {
        Scenario::ComponentStatus {
            namespace: "shop",
            name: "store",
            secrets: vec![],
            ready,
            reason,
            message_contains,
            event,
        }
    }

    #[tokio::test]
    async fn a_valid_component_becomes_ready_with_an_event() {
        let obj = component("state.in-memory", json!([]), None);
        let action = play(
            obj,
            status(true, "Valid", "state.in-memory/v1 is available", Some("Normal")),
        )
        .await;
        assert_eq!(action, Action::requeue(RECHECK_READY));
    }

    #[tokio::test]
    async fn an_unknown_type_is_not_ready_and_lists_the_known_ones() {
        let obj = component("state.cassandra", json!([]), None);
        let action = play(obj, status(false, "UnknownType", "state.redis/v1", Some("Warning"))).await;
        assert_eq!(action, Action::requeue(RECHECK_NOT_READY));
    }

    #[tokio::test]
    async fn a_missing_secret_is_not_ready() {
        let md = json!([{"name": "redisPassword", "secretKeyRef": {"name": "redis", "key": "password"}}]);
        let scenario = Scenario::ComponentStatus {
            namespace: "shop",
            name: "store",
            secrets: vec![("redis", None)],
            ready: false,
            reason: "SecretNotFound",
            message_contains: "Secret shop/redis does not exist",
            event: Some("Warning"),
        };
        play(component("state.redis", md, None), scenario).await;
    }

    #[tokio::test]
    async fn a_missing_key_is_not_ready_and_a_present_one_is() {
        let md = json!([{"name": "redisPassword", "secretKeyRef": {"name": "redis", "key": "password"}}]);
        let missing_key = Scenario::ComponentStatus {
            namespace: "shop",
            name: "store",
            secrets: vec![("redis", Some(json!({"pass": "eA=="})))],
            ready: false,
            reason: "SecretKeyNotFound",
            message_contains: "has no key \"password\" (it has: pass)",
            event: Some("Warning"),
        };
        play(component("state.redis", md.clone(), None), missing_key).await;
        let present = Scenario::ComponentStatus {
            namespace: "shop",
            name: "store",
            secrets: vec![("redis", Some(json!({"password": "eA=="})))],
            ready: true,
            reason: "Valid",
            message_contains: "state.redis/v1",
            event: Some("Normal"),
        };
        play(component("state.redis", md, None), present).await;
    }

    #[tokio::test]
    async fn an_unchanged_verdict_writes_nothing_and_publishes_nothing() {
        let current = ready_status("True", "Valid", "state.in-memory/v1 is available");
        play(
            component("state.in-memory", json!([]), Some(current)),
            Scenario::NoRequests,
        )
        .await;
    }

    #[tokio::test]
    async fn a_transition_to_ready_is_published() {
        let current = ready_status(
            "False",
            "UnknownType",
            "component type state.in-memory/v1 is not available",
        );
        let obj = component("state.in-memory", json!([]), Some(current));
        play(obj, status(true, "Valid", "is available", Some("Normal"))).await;
    }

    #[tokio::test]
    async fn a_new_message_with_the_same_reason_is_written_without_an_event() {
        let current = ready_status("False", "UnknownType", "an older message");
        let obj = component("state.cassandra", json!([]), Some(current));
        play(obj, status(false, "UnknownType", "state.cassandra", None)).await;
    }

    #[test]
    fn only_dapr_kinds_are_reconciled() {
        let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x"}}))
        .unwrap();
        let err = kind_of(&obj).unwrap_err().to_string();
        assert!(err.contains("v1/ConfigMap"), "{err}");
    }
}
