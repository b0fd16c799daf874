//! Test doubles for the reconcilers: a `kube::Client` over `tower_test::mock`, and an [`ApiServerVerifier`] that
//! plays a named [`Scenario`], asserting the method, URI and body of every request and answering it.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::context::Context;
use super::health::Metrics;

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// Plays the API server's side of one scenario.
pub struct ApiServerVerifier(ApiServerHandle);

/// What the API server expects to be asked, in order.
pub enum Scenario {
    /// The reconciler makes no request at all.
    NoRequests,
    /// Server-side apply of exactly this Service.
    ServiceApplied(Box<Service>),
    /// The Service (with this uid precondition) is deleted.
    ServiceDeleted {
        namespace: &'static str,
        name: &'static str,
        uid: &'static str,
    },
    /// The Secrets are read (each answered with its data, or 404 when `None`), then the status of the Component is
    /// applied with this `Ready` status and reason, then (if `event`) an Event with that type and reason is created.
    ComponentStatus {
        namespace: &'static str,
        name: &'static str,
        secrets: Vec<(&'static str, Option<Value>)>,
        ready: bool,
        reason: &'static str,
        message_contains: &'static str,
        event: Option<&'static str>,
    },
    /// The Lease does not exist and is created held by `identity`.
    LeaseCreated { identity: &'static str },
    /// The Lease is `current`; it is replaced by one held by `identity` with `transitions` transitions, keeping
    /// the acquire time when `keeps_acquire_time`.
    LeaseReplaced {
        current: Lease,
        identity: &'static str,
        transitions: i32,
        keeps_acquire_time: bool,
    },
    /// The Lease is `current` and nothing is written.
    LeaseLeftAlone { current: Lease },
}

/// A context whose client talks to the returned verifier; `services` seeds the Service cache.
pub fn test_context(services: Vec<Service>) -> (Arc<Context>, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let (store, mut writer) = reflector::store::<Service>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for s in services {
        writer.apply_watcher_event(&watcher::Event::InitApply(s));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Context::new(client, Arc::new(Metrics::new()), store, Some("test".into()));
    (Arc::new(ctx), verifier)
}

/// A client over a mocked API server.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// Runs `scenario` to completion (panicking on any unexpected request) within a few seconds.
pub async fn finished(handle: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("timeout on mock apiserver")
        .expect("scenario succeeded")
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

pub fn not_found(what: &str) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("{what} not found")}),
    )
}

impl ApiServerVerifier {
    /// Plays `scenario` on a task; await the handle (see [`finished`]) to check it completed.
    pub fn run(self, scenario: Scenario) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            match scenario {
                Scenario::NoRequests => self.no_more_requests().await,
                Scenario::ServiceApplied(svc) => self.service_applied(*svc).await.no_more_requests().await,
                Scenario::ServiceDeleted { namespace, name, uid } => {
                    self.service_deleted(namespace, name, uid)
                        .await
                        .no_more_requests()
                        .await
                }
                Scenario::ComponentStatus {
                    namespace,
                    name,
                    secrets,
                    ready,
                    reason,
                    message_contains,
                    event,
                } => {
                    let mut me = self;
                    for (secret, data) in secrets {
                        me = me.secret_read(namespace, secret, data).await;
                    }
                    me = me
                        .status_applied(namespace, name, ready, reason, message_contains)
                        .await;
                    if let Some(event_type) = event {
                        me = me.event_created(namespace, name, event_type, reason).await;
                    }
                    me.no_more_requests().await
                }
                Scenario::LeaseCreated { identity } => {
                    let (me, (_, send)) = self.next(Method::GET, LEASE_URI).await;
                    send.send_response(not_found("lease"));
                    let uri = "/apis/coordination.k8s.io/v1/namespaces/ops/leases?";
                    let (me, (body, send)) = me.next(Method::POST, uri).await;
                    assert_eq!(body["metadata"]["name"], "tandem-operator");
                    assert_eq!(body["spec"]["holderIdentity"], identity);
                    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
                    assert_eq!(body["spec"]["leaseTransitions"], 0);
                    assert!(body["spec"]["renewTime"].is_string() && body["spec"]["acquireTime"].is_string());
                    send.send_response(json_response(StatusCode::CREATED, &body));
                    me.no_more_requests().await
                }
                Scenario::LeaseReplaced {
                    current,
                    identity,
                    transitions,
                    keeps_acquire_time,
                } => {
                    let (me, (_, send)) = self.next(Method::GET, LEASE_URI).await;
                    let current_json = serde_json::to_value(&current).unwrap();
                    send.send_response(json_response(StatusCode::OK, &current_json));
                    let uri = format!("{}?", LEASE_URI);
                    let (me, (body, send)) = me.next(Method::PUT, &uri).await;
                    assert_eq!(
                        body["metadata"]["resourceVersion"],
                        current_json["metadata"]["resourceVersion"]
                    );
                    assert_eq!(body["spec"]["holderIdentity"], identity);
                    assert_eq!(body["spec"]["leaseTransitions"], transitions);
                    assert_ne!(
                        body["spec"]["renewTime"], current_json["spec"]["renewTime"],
                        "renewTime moves on"
                    );
                    let kept = body["spec"]["acquireTime"] == current_json["spec"]["acquireTime"];
                    assert_eq!(kept, keeps_acquire_time, "acquireTime: {body}");
                    send.send_response(json_response(StatusCode::OK, &body));
                    me.no_more_requests().await
                }
                Scenario::LeaseLeftAlone { current } => {
                    let (me, (_, send)) = self.next(Method::GET, LEASE_URI).await;
                    send.send_response(json_response(StatusCode::OK, &serde_json::to_value(&current).unwrap()));
                    me.no_more_requests().await
                }
            }
        })
    }

    /// The next request: asserts method and URI, returns the JSON body (Null when empty) and the responder.
    async fn next(mut self, method: Method, uri: &str) -> (Self, (Value, Responder)) {
        let (request, send) = self
            .0
            .next_request()
            .await
            .expect("the reconciler made no further request");
        assert_eq!(
            (request.method(), request.uri().to_string().as_str()),
            (&method, uri),
            "unexpected request"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        (self, (body, send))
    }

    async fn no_more_requests(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }

    async fn service_applied(self, svc: Service) -> Self {
        let ns = svc.metadata.namespace.clone().unwrap();
        let name = svc.metadata.name.clone().unwrap();
        let uri = format!("/api/v1/namespaces/{ns}/services/{name}?&force=true&fieldManager=tandem-operator");
        let (me, (body, send)) = self.next(Method::PATCH, &uri).await;
        assert_eq!(body, serde_json::to_value(&svc).unwrap(), "applied Service");
        send.send_response(json_response(StatusCode::OK, &body));
        me
    }

    async fn service_deleted(self, namespace: &str, name: &str, uid: &str) -> Self {
        let uri = format!("/api/v1/namespaces/{namespace}/services/{name}?");
        let (me, (body, send)) = self.next(Method::DELETE, &uri).await;
        assert_eq!(body["preconditions"]["uid"], uid, "deletes only our Service: {body}");
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200});
        send.send_response(json_response(StatusCode::OK, &status));
        me
    }

    async fn secret_read(self, namespace: &str, name: &str, data: Option<Value>) -> Self {
        let uri = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
        let (me, (_, send)) = self.next(Method::GET, &uri).await;
        send.send_response(match data {
            None => not_found("secret"),
            Some(data) => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                    "data": data}),
            ),
        });
        me
    }

    async fn status_applied(
        self,
        namespace: &str,
        name: &str,
        ready: bool,
        reason: &str,
        message_contains: &str,
    ) -> Self {
        let uri = format!(
            "/apis/dapr.io/v1alpha1/namespaces/{namespace}/components/{name}/status?&force=true&fieldManager=tandem-operator"
        );
        let (me, (body, send)) = self.next(Method::PATCH, &uri).await;
        assert_eq!(
            (&body["apiVersion"], &body["kind"]),
            (&json!("dapr.io/v1alpha1"), &json!("Component"))
        );
        let conditions = body["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 1, "{body}");
        let c = &conditions[0];
        assert_eq!(c["type"], "Ready");
        assert_eq!(c["status"], if ready { "True" } else { "False" }, "{body}");
        assert_eq!(c["reason"], reason, "{body}");
        let message = c["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(message_contains),
            "message {message:?} lacks {message_contains:?}"
        );
        assert!(c["lastTransitionTime"].is_string(), "{body}");
        assert_eq!(c["observedGeneration"], 3);
        assert_eq!(body["status"]["observedGeneration"], 3);
        send.send_response(json_response(StatusCode::OK, &body));
        me
    }

    async fn event_created(self, namespace: &str, name: &str, event_type: &str, reason: &str) -> Self {
        let uri = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events?");
        let (me, (body, send)) = self.next(Method::POST, &uri).await;
        assert_eq!(body["type"], event_type, "{body}");
        assert_eq!(body["reason"], reason, "{body}");
        assert_eq!(body["action"], "Validate");
        assert_eq!(body["reportingController"], "tandem-operator");
        assert_eq!(
            (
                &body["regarding"]["kind"],
                &body["regarding"]["name"],
                &body["regarding"]["apiVersion"]
            ),
            (&json!("Component"), &json!(name), &json!("dapr.io/v1alpha1"))
        );
        send.send_response(json_response(StatusCode::CREATED, &body));
        me
    }
}

const LEASE_URI: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/tandem-operator";
