//! `POST /mutate`: decodes the `admission.k8s.io/v1` AdmissionReview, asks [`patch_for`] what to do, and answers
//! 200 with an AdmissionReview response: allowed with a JSON patch, allowed unchanged, or denied with a message.
//! Only a request that is not an AdmissionReview at all gets an HTTP error (415 wrong content type, 400 bad body).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use super::annotations::injection_requested;
use super::patch::{Deny, InjectorConfig, patch_for};
use super::requester::AllowedRequesters;

/// Path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";

/// Larger than any Pod the API server accepts (its request limit is 3 MiB), with room for `oldObject`.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What the webhook needs to decide: the injector's settings and whose pods it injects.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub config: InjectorConfig,
    pub requesters: AllowedRequesters,
    /// `spec.mtls.enabled` of the control plane's `daprsystem` Configuration (true when there is none): with
    /// `config.mtls`, whether injected sidecars get `--enable-mtls`.
    pub system_mtls: Arc<std::sync::atomic::AtomicBool>,
}

pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(webhook)
}

#[tracing::instrument(skip_all)]
async fn mutate(State(webhook): State<Arc<Webhook>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        tracing::error!(
            content_type,
            "rejecting admission request: Content-Type is not application/json"
        );
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid Content-Type, expected `application/json`",
        )
            .into_response();
    }
    let parsed: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "rejecting admission request: body is not an AdmissionReview");
            return (StatusCode::BAD_REQUEST, format!("body is not an AdmissionReview: {e}")).into_response();
        }
    };
    let request: AdmissionRequest<DynamicObject> = match parsed.try_into() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("rejecting admission request: {e}");
            return (StatusCode::BAD_REQUEST, "AdmissionReview has no request").into_response();
        }
    };
    let response = review(&webhook, &request);
    (StatusCode::OK, axum::Json(wire_form(response.into_review()))).into_response()
}

/// The review as the API server's own Go types encode it: `patch` ([]byte) as a base64 string. kube-core
/// serializes it as an array of numbers, which Go also decodes, but base64 is the canonical form and what
/// Dapr sends.
fn wire_form(review: AdmissionReview<DynamicObject>) -> serde_json::Value {
    let mut v = serde_json::to_value(review).expect("an AdmissionReview serializes to JSON");
    if let Some(patch) = v.pointer_mut("/response/patch")
        && let Ok(bytes) = serde_json::from_value::<Vec<u8>>(patch.clone())
    {
        *patch = base64::engine::general_purpose::STANDARD.encode(bytes).into();
    }
    v
}

/// The answer to one admission request.
pub fn review(webhook: &Webhook, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let Some(object) = req.object.as_ref() else {
        return allowed;
    };
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() || req.operation != Operation::Create {
        return allowed;
    }
    // Pods that did not ask for a sidecar pass silently.
    if !injection_requested(object.metadata.annotations.as_ref()) {
        return allowed;
    }
    let namespace = req.namespace.as_deref().unwrap_or("");
    let app_id = object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::annotations::keys::APP_ID))
        .map(String::as_str)
        .unwrap_or("");
    if !webhook.requesters.allows(&req.user_info) {
        tracing::warn!(
            namespace,
            app_id,
            user = req.user_info.username.as_deref().unwrap_or(""),
            "not injecting: the pod's creator is not an allowed controller service account (see --allowed-service-accounts)"
        );
        return allowed;
    }
    let pod = serde_json::to_value(object)
        .and_then(serde_json::from_value::<Pod>)
        .map_err(|e| Deny::UnreadablePod(e.to_string()));
    let mut config = webhook.config.clone();
    config.mtls &= webhook.system_mtls.load(std::sync::atomic::Ordering::Relaxed);
    match pod.and_then(|pod| patch_for(&pod, &config)) {
        Ok(None) => allowed,
        Ok(Some(patch)) => match allowed.clone().with_patch(patch) {
            Ok(r) => {
                tracing::info!(namespace, app_id, uid = %req.uid, "sidecar injected");
                r
            }
            Err(e) => {
                tracing::error!(namespace, app_id, "sidecar injection failed: {e}");
                allowed.deny(e)
            }
        },
        Err(deny) => {
            tracing::error!(namespace, app_id, "sidecar injection denied: {deny}");
            allowed.deny(deny)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn webhook() -> Webhook {
        Webhook {
            system_mtls: Arc::new(true.into()),
            config: InjectorConfig {
                sidecar_image: "tandem:test".into(),
                image_pull_policy: None,
                control_plane_namespace: "tandem-system".into(),
                placement_host_address: None,
                native_sidecar: false,
                mtls: false,
            },
            requesters: AllowedRequesters::new::<&str>(&[]).unwrap(),
        }
    }

    fn request(kind: &str, operation: &str, object: serde_json::Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object,
            },
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn annotated_pod() -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "annotations": {"dapr.io/enabled": "true"}},
               "spec": {"containers": [{"name": "app", "image": "a"}]}})
    }

    #[test]
    fn only_pod_creations_are_patched() {
        let w = webhook();
        let r = review(&w, &request("Pod", "CREATE", annotated_pod()));
        assert!(r.allowed && r.patch.is_some());
        assert_eq!(r.uid, "u-1");
        let r = review(&w, &request("Pod", "UPDATE", annotated_pod()));
        assert!(r.allowed && r.patch.is_none());
        let r = review(&w, &request("ConfigMap", "CREATE", annotated_pod()));
        assert!(r.allowed && r.patch.is_none());
    }

    #[test]
    fn a_pod_that_cannot_be_read_is_denied() {
        let mut pod = annotated_pod();
        pod["spec"]["containers"] = json!("not a list");
        let r = review(&webhook(), &request("Pod", "CREATE", pod));
        assert!(!r.allowed);
        assert!(r.result.message.contains("cannot be read"), "{}", r.result.message);
    }

    #[test]
    fn the_patch_goes_out_as_base64() {
        let r = review(&webhook(), &request("Pod", "CREATE", annotated_pod()));
        let patch = r.patch.clone().unwrap();
        let wire = wire_form(r.into_review());
        let encoded = wire["response"]["patch"].as_str().expect("a string");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(encoded).unwrap(),
            patch
        );
        assert_eq!(wire["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn sidecars_get_mtls_when_the_chart_and_daprsystem_both_want_it() {
        let injected_flags = |chart: bool, system: bool| {
            let mut w = webhook();
            w.config.mtls = chart;
            w.system_mtls.store(system, std::sync::atomic::Ordering::Relaxed);
            let resp = review(&w, &request("Pod", "CREATE", annotated_pod()));
            let patch = String::from_utf8(resp.patch.expect("the pod is patched")).unwrap();
            assert!(patch.contains("--app-id"), "{patch}");
            patch.contains("--enable-mtls")
        };
        assert!(injected_flags(true, true));
        assert!(
            !injected_flags(true, false),
            "daprsystem spec.mtls.enabled: false turns it off"
        );
        assert!(!injected_flags(false, true));
    }
}
