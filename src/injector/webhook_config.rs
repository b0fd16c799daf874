//! Keeps the injector's self-made CA in `webhooks[*].clientConfig.caBundle` of its MutatingWebhookConfiguration,
//! so the API server trusts the certificate the injector serves: patched at start, and re-checked periodically
//! in case an upgrade or `kubectl apply` reset it.

use std::time::Duration;

use base64::Engine as _;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

/// What [`ensure_ca_bundle`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaBundle {
    /// Every webhook already carried the CA.
    Current,
    /// This many webhooks were patched.
    Patched(usize),
}

/// Makes every webhook of the MutatingWebhookConfiguration `name` trust `ca_pem`: one GET, and one JSON patch
/// (`test` of each webhook's name, then `add` of its `caBundle`) when any differs.
pub async fn ensure_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<CaBundle, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api.get(name).await?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let webhooks = current.webhooks.as_deref().unwrap_or_default();
    let stale: Vec<usize> = webhooks
        .iter()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes()))
        .map(|(i, _)| i)
        .collect();
    if stale.is_empty() {
        if webhooks.is_empty() {
            tracing::warn!(
                webhook_configuration = name,
                "has no webhooks; nothing to trust the injector's CA"
            );
        }
        return Ok(CaBundle::Current);
    }
    let mut ops = Vec::new();
    for &i in &stale {
        let idx = i.to_string();
        // The test guards against the list changing between our GET and PATCH.
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", idx.as_str(), "name"]),
            value: webhooks[i].name.clone().into(),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", idx.as_str(), "clientConfig", "caBundle"]),
            value: bundle.clone().into(),
        }));
    }
    let patched = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch::Patch(ops)),
        )
        .await?;
    tracing::info!(
        webhook_configuration = %patched.name_any(),
        webhooks = stale.len(),
        "caBundle set to the injector's CA"
    );
    Ok(CaBundle::Patched(stale.len()))
}

/// Runs [`ensure_ca_bundle`] until it succeeds (retrying with backoff, e.g. while the configuration is not yet
/// installed), calls `on_ready` once, then re-checks every `recheck` until `shutdown`.
pub async fn keep_ca_bundle(
    client: Client,
    name: String,
    ca_pem: String,
    recheck: Duration,
    on_ready: impl FnOnce() + Send,
    shutdown: CancellationToken,
) {
    let mut on_ready = Some(on_ready);
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = match ensure_ca_bundle(&client, &name, &ca_pem).await {
            Ok(_) => {
                if let Some(f) = on_ready.take() {
                    f();
                }
                backoff = Duration::from_secs(1);
                recheck
            }
            Err(e) => {
                tracing::warn!(
                    webhook_configuration = %name,
                    "cannot set caBundle yet (retrying in {}s): {e}",
                    backoff.as_secs()
                );
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    const NAME: &str = "tandem-sidecar-injector";
    const PATH: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/tandem-sidecar-injector";

    fn configuration(bundles: &[Option<&str>]) -> serde_json::Value {
        let webhooks: Vec<_> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut cc = json!({"service": {"name": NAME, "namespace": "tandem-system", "path": "/mutate"}});
                if let Some(b) = b {
                    cc["caBundle"] = json!(b);
                }
                json!({
                    "name": format!("sidecar-injector-{i}.tandem.io"),
                    "clientConfig": cc,
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                })
            })
            .collect();
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": NAME, "resourceVersion": "1"},
            "webhooks": webhooks,
        })
    }

    fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: serde_json::Value) {
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    /// The API server side: plays one scenario and asserts every request the injector makes.
    struct ApiServerVerifier(tower_test::mock::Handle<Request<Body>, Response<Body>>);

    impl ApiServerVerifier {
        async fn expect_get(&mut self, reply: serde_json::Value) {
            let (req, send) = self.0.next_request().await.expect("a GET");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().path(), PATH);
            respond(send, StatusCode::OK, reply);
        }

        async fn expect_patch(&mut self, expected: serde_json::Value, reply: serde_json::Value) {
            let (req, send) = self.0.next_request().await.expect("a PATCH");
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(req.uri().path(), PATH);
            assert_eq!(
                req.headers().get("content-type").unwrap(),
                "application/json-patch+json"
            );
            let body: serde_json::Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
            assert_eq!(body, expected);
            respond(send, StatusCode::OK, reply);
        }
    }

    fn mock() -> (Client, ApiServerVerifier) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(svc, "default"), ApiServerVerifier(handle))
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn patches_every_stale_webhook_with_the_ca() {
        let (client, mut server) = mock();
        let task = tokio::spawn(async move { ensure_ca_bundle(&client, NAME, CA).await });
        let b64 = base64::engine::general_purpose::STANDARD.encode(CA);
        server
            .expect_get(configuration(&[None, Some("b2xk"), Some(&b64)]))
            .await;
        server
            .expect_patch(
                json!([
                    {"op": "test", "path": "/webhooks/0/name", "value": "sidecar-injector-0.tandem.io"},
                    {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64},
                    {"op": "test", "path": "/webhooks/1/name", "value": "sidecar-injector-1.tandem.io"},
                    {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64},
                ]),
                configuration(&[Some(&b64), Some(&b64), Some(&b64)]),
            )
            .await;
        assert_eq!(task.await.unwrap().unwrap(), CaBundle::Patched(2));
    }

    #[tokio::test]
    async fn a_current_bundle_is_left_alone() {
        let (client, mut server) = mock();
        let task = tokio::spawn(async move { ensure_ca_bundle(&client, NAME, CA).await });
        let b64 = base64::engine::general_purpose::STANDARD.encode(CA);
        server.expect_get(configuration(&[Some(&b64)])).await;
        assert_eq!(task.await.unwrap().unwrap(), CaBundle::Current);
    }

    #[tokio::test]
    async fn a_missing_configuration_is_an_error_the_caller_retries() {
        let (client, mut server) = mock();
        let task = tokio::spawn(async move { ensure_ca_bundle(&client, NAME, CA).await });
        let (req, send) = server.0.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        respond(
            send,
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                   "message": "mutatingwebhookconfigurations.admissionregistration.k8s.io \"tandem-sidecar-injector\" not found"}),
        );
        let e = task.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }
}
