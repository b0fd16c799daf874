//! The `status` the operator writes on dapr.io resources: one `Ready` condition plus `observedGeneration`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::validate::Verdict;
use crate::control_plane::kinds::DaprKind;

pub const READY: &str = "Ready";

/// The `Ready` condition currently recorded in the object's status, if any.
pub fn current_ready(obj: &DynamicObject) -> Option<Condition> {
    obj.data
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == READY)
}

/// The `Ready` condition for `verdict`. `lastTransitionTime` stays as it was unless the status flips.
pub fn ready_condition(
    verdict: &Verdict,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: Timestamp,
) -> Condition {
    let status = if verdict.ready { "True" } else { "False" };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: READY.into(),
        status: status.into(),
        reason: verdict.reason.clone(),
        message: verdict.message.clone(),
        last_transition_time,
        observed_generation: generation,
    }
}

/// True when writing `next` would change what `previous` says (ignoring the transition time).
pub fn differs(previous: Option<&Condition>, next: &Condition) -> bool {
    previous.is_none_or(|p| {
        (&p.status, &p.reason, &p.message, p.observed_generation)
            != (&next.status, &next.reason, &next.message, next.observed_generation)
    })
}

/// True when `next` is a transition worth an Event: first verdict, status flipped, or a different reason.
pub fn is_transition(previous: Option<&Condition>, next: &Condition) -> bool {
    previous.is_none_or(|p| p.status != next.status || p.reason != next.reason)
}

/// The server-side-apply body for the status subresource.
pub fn status_apply(kind: DaprKind, name: &str, condition: &Condition) -> Value {
    json!({
        "apiVersion": kind.api_resource().api_version,
        "kind": kind.name(),
        "metadata": {"name": name},
        "status": {
            "observedGeneration": condition.observed_generation,
            "conditions": [condition],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let bad = Verdict::invalid("UnknownType", "no such type");
        let first = ready_condition(&bad, Some(1), None, at(100));
        assert_eq!(first.last_transition_time, Time(at(100)));
        let again = ready_condition(&Verdict::invalid("SecretNotFound", "x"), Some(2), Some(&first), at(200));
        assert_eq!(again.last_transition_time, Time(at(100)));
        assert!(is_transition(Some(&first), &again), "a new reason is a transition");
        let good = ready_condition(&Verdict::valid("ok"), Some(2), Some(&again), at(300));
        assert_eq!(
            (good.status.as_str(), good.last_transition_time.clone()),
            ("True", Time(at(300)))
        );
        let same = ready_condition(&Verdict::valid("ok"), Some(2), Some(&good), at(400));
        assert!(!differs(Some(&good), &same) && !is_transition(Some(&good), &same));
        assert!(is_transition(None, &same) && differs(None, &same));
    }

    #[test]
    fn current_condition_is_read_from_status() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "Component", "metadata": {"name": "c"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "UnknownType",
                "message": "m", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let c = current_ready(&obj).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "UnknownType"));
        let apply = status_apply(DaprKind::Component, "c", &c);
        assert_eq!(
            apply["status"]["conditions"][0]["lastTransitionTime"],
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(apply["apiVersion"], "dapr.io/v1alpha1");
    }
}
