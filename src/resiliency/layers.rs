//! Resiliency layers: a component's trait object wrapped so every operation runs under its policy (timeout,
//! retries, circuit breaker), whatever the backend. A kind gets its layer here; kinds without one are used as
//! they are (and a warning says so).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Policy, PolicyError, Retryable, Status};
use crate::components::Instance;
use crate::components::Kind;
use crate::components::bindings::{Binding, BindingError, Directions, Handler, InvokeRequest, InvokeResponse};
use crate::components::conversation::{Conversation, ConversationError, ConverseRequest, ConverseResponse};
use crate::components::lock::{LockError, LockKey, LockStore, TryLockRequest, UnlockStatus};
use crate::components::pubsub::{self, BulkEntry, FailedEntry, Message, PubSub, PubSubError, SubscribeRequest};
use crate::components::secretstores::{Secret, SecretError, SecretStore};
use crate::components::state::{
    DeleteRequest, Feature, Query, QueryResponse, SetRequest, StateError, StateItem, StateStore, TransactionOp,
};

/// `instance` with its outbound policy applied to every operation.
pub fn outbound(instance: Instance, policy: Policy) -> Instance {
    match instance.kind() {
        Kind::State => instance.map::<dyn StateStore>(|inner| Arc::new(ResilientState { inner, policy })),
        Kind::SecretStore => instance.map::<dyn SecretStore>(|inner| Arc::new(ResilientSecrets { inner, policy })),
        Kind::Bindings => instance.map::<dyn Binding>(|inner| Arc::new(ResilientBinding { inner, policy })),
        Kind::PubSub => instance.map::<dyn PubSub>(|inner| Arc::new(ResilientPubSub { inner, policy })),
        Kind::Lock => instance.map::<dyn LockStore>(|inner| Arc::new(ResilientLock { inner, policy })),
        Kind::Conversation => {
            instance.map::<dyn Conversation>(|inner| Arc::new(ResilientConversation { inner, policy }))
        }
        other => {
            tracing::warn!(kind = %other, policy = %policy.name(), "resiliency policies do not apply to {other} components yet");
            instance
        }
    }
}

/// A policy's failure as the component's own error: the operation's error, or Dapr's words for a timeout or
/// an open breaker.
fn flatten<E: std::fmt::Display>(e: PolicyError<E>, wrap: impl FnOnce(String) -> E) -> E {
    match e {
        PolicyError::Op(e) => e,
        PolicyError::Timeout(d) => wrap(format!("timeout after {d:?}: context deadline exceeded")),
        other => wrap(other.to_string()),
    }
}

impl Retryable for StateError {
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            StateError::EtagMismatch(_) | StateError::EtagInvalid(_) | StateError::NotSupported(_)
        )
    }
}

impl Retryable for SecretError {
    fn is_permanent(&self) -> bool {
        matches!(self, SecretError::NotFound(_))
    }
}

fn every_response_succeeds<T>(_: &T) -> Option<Status> {
    None
}

/// A state store whose every operation runs under a policy.
struct ResilientState {
    inner: Arc<dyn StateStore>,
    policy: Policy,
}

impl ResilientState {
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StateError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StateError>>,
    {
        self.policy
            .run(every_response_succeeds, op)
            .await
            .map_err(|e| flatten(e, StateError::Backend))
    }
}

#[async_trait]
impl StateStore for ResilientState {
    fn features(&self) -> &'static [Feature] {
        self.inner.features()
    }

    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        self.run(|| self.inner.get(key)).await
    }

    async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
        self.run(|| self.inner.set(req)).await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
        self.run(|| self.inner.delete(req)).await
    }

    /// The whole bulk runs again while it failed as a whole (every key with a retryable error), as Dapr
    /// retries a failed `BulkGet`; keys that fail alone are answered with their error.
    async fn bulk_get(&self, keys: &[String], parallelism: usize) -> Vec<Result<Option<StateItem>, StateError>> {
        let classify = |items: &Vec<Result<Option<StateItem>, StateError>>| {
            let all_failed = !items.is_empty() && items.iter().all(|i| i.as_ref().is_err_and(|e| !e.is_permanent()));
            all_failed.then_some(Status::Failed)
        };
        let op = || async { Ok::<_, StateError>(self.inner.bulk_get(keys, parallelism).await) };
        match self.policy.run(classify, op).await {
            Ok(items) => items,
            Err(e) => {
                let e = flatten(e, StateError::Backend);
                keys.iter().map(|_| Err(StateError::Backend(e.to_string()))).collect()
            }
        }
    }

    async fn transact(&self, ops: &[TransactionOp]) -> Result<(), StateError> {
        self.run(|| self.inner.transact(ops)).await
    }

    async fn query(&self, prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        self.run(|| self.inner.query(prefix, query)).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

impl Retryable for BindingError {}

/// A binding whose every invocation runs under a policy (reading is the inbound policy's, around the app).
struct ResilientBinding {
    inner: Arc<dyn Binding>,
    policy: Policy,
}

#[async_trait]
impl Binding for ResilientBinding {
    fn directions(&self) -> Directions {
        self.inner.directions()
    }
    fn input_declared(&self) -> bool {
        self.inner.input_declared()
    }
    fn operations(&self) -> &[&'static str] {
        self.inner.operations()
    }
    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        self.policy
            .run(every_response_succeeds, || self.inner.invoke(req.clone()))
            .await
            .map_err(|e| flatten(e, BindingError::new))
    }
    async fn read(&self, handler: Handler, stop: tokio_util::sync::CancellationToken) -> Result<(), BindingError> {
        self.inner.read(handler, stop).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

impl Retryable for PubSubError {
    fn is_permanent(&self) -> bool {
        matches!(self, PubSubError::Closed)
    }
}

/// A pub/sub whose publishing runs under a policy (delivery to the app is the inbound policy's).
struct ResilientPubSub {
    inner: Arc<dyn PubSub>,
    policy: Policy,
}

#[async_trait]
impl PubSub for ResilientPubSub {
    fn features(&self) -> &'static [pubsub::Feature] {
        self.inner.features()
    }

    async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
        self.policy
            .run(every_response_succeeds, || self.inner.publish(msg))
            .await
            .map_err(|e| flatten(e, PubSubError::Backend))
    }

    /// The backend's own bulk publish; a retry publishes again only the entries that failed. When the policy
    /// gives up on a timeout or an open breaker, every entry not yet published is reported failed.
    async fn bulk_publish(&self, entries: &[BulkEntry]) -> Vec<FailedEntry> {
        let pending = std::sync::Mutex::new((entries.to_vec(), Vec::<FailedEntry>::new()));
        let (shared, inner) = (&pending, &self.inner);
        let attempt = move || async move {
            let todo = shared.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
            let failed = inner.bulk_publish(&todo).await;
            if failed.is_empty() {
                return Ok(());
            }
            let ids: std::collections::HashSet<&str> = failed.iter().map(|f| f.entry_id.as_str()).collect();
            let again: Vec<BulkEntry> = todo
                .iter()
                .filter(|e| ids.contains(e.entry_id.as_str()))
                .cloned()
                .collect();
            let error = PubSubError::Backend(format!("{} of {} entries failed", failed.len(), todo.len()));
            *shared.lock().unwrap_or_else(|p| p.into_inner()) = (again, failed);
            Err(error)
        };
        let outcome = self.policy.run(every_response_succeeds, attempt).await;
        let (todo, failed) = pending.into_inner().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => vec![],
            Err(PolicyError::Op(_)) => failed,
            Err(other) => {
                let error = flatten(other, PubSubError::Backend).to_string();
                todo.into_iter()
                    .map(|e| FailedEntry {
                        entry_id: e.entry_id,
                        error: error.clone(),
                    })
                    .collect()
            }
        }
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: pubsub::Handler,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), PubSubError> {
        self.inner.subscribe(req, handler, stop).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

impl Retryable for LockError {}

/// A lock store whose every operation runs under a policy, as Dapr runs them.
struct ResilientLock {
    inner: Arc<dyn LockStore>,
    policy: Policy,
}

#[async_trait]
impl LockStore for ResilientLock {
    async fn try_lock(&self, req: &TryLockRequest) -> Result<bool, LockError> {
        self.policy
            .run(every_response_succeeds, || self.inner.try_lock(req))
            .await
            .map_err(|e| flatten(e, LockError))
    }
    async fn unlock(&self, key: &LockKey) -> Result<UnlockStatus, LockError> {
        self.policy
            .run(every_response_succeeds, || self.inner.unlock(key))
            .await
            .map_err(|e| flatten(e, LockError))
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

impl Retryable for ConversationError {}

/// An LLM whose every call runs under a policy.
struct ResilientConversation {
    inner: Arc<dyn Conversation>,
    policy: Policy,
}

#[async_trait]
impl Conversation for ResilientConversation {
    async fn converse(&self, req: &ConverseRequest) -> Result<ConverseResponse, ConversationError> {
        self.policy
            .run(every_response_succeeds, || self.inner.converse(req))
            .await
            .map_err(|e| flatten(e, ConversationError))
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// A secret store whose every read runs under a policy.
struct ResilientSecrets {
    inner: Arc<dyn SecretStore>,
    policy: Policy,
}

#[async_trait]
impl SecretStore for ResilientSecrets {
    fn features(&self) -> &'static [&'static str] {
        self.inner.features()
    }

    async fn get(&self, name: &str, metadata: &BTreeMap<String, String>) -> Result<Secret, SecretError> {
        self.policy
            .run(every_response_succeeds, || self.inner.get(name, metadata))
            .await
            .map_err(|e| flatten(e, SecretError::Backend))
    }

    async fn bulk_get(&self, metadata: &BTreeMap<String, String>) -> Result<BTreeMap<String, Secret>, SecretError> {
        self.policy
            .run(every_response_succeeds, || self.inner.bulk_get(metadata))
            .await
            .map_err(|e| flatten(e, SecretError::Backend))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::components::state::memory::MemoryStore;
    use crate::resiliency::Resiliency;

    /// A store that fails its first `failures` reads and counts every call.
    struct Flaky {
        inner: MemoryStore,
        failures: u32,
        calls: AtomicU32,
    }

    #[async_trait]
    impl StateStore for Flaky {
        fn features(&self) -> &'static [Feature] {
            self.inner.features()
        }
        async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(StateError::Backend("connection reset".into()));
            }
            self.inner.get(key).await
        }
        async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.set(req).await
        }
        async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
            self.inner.delete(req).await
        }
    }

    fn resiliency(yaml: &str) -> Resiliency {
        Resiliency::new(&super::super::tests::resources(yaml)).unwrap()
    }

    const RETRY_STORE: &str = r#"
spec:
  policies:
    retries:
      quick: {policy: constant, duration: 1ms, maxRetries: 3}
  targets:
    components:
      store:
        outbound: {retry: quick}
"#;

    fn layered(failures: u32, yaml: &str) -> (Arc<Flaky>, Arc<dyn StateStore>) {
        let flaky = Arc::new(Flaky {
            inner: MemoryStore::default(),
            failures,
            calls: AtomicU32::new(0),
        });
        let policy = resiliency(yaml)
            .component_outbound("store", Kind::State)
            .expect("a policy");
        let instance = outbound(Instance::new::<dyn StateStore>(flaky.clone()), policy);
        (flaky, instance.get::<dyn StateStore>().unwrap())
    }

    #[tokio::test]
    async fn retries_failed_operations_under_the_components_policy() {
        let (flaky, store) = layered(2, RETRY_STORE);
        assert_eq!(store.get("k").await.unwrap(), None);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        let (_, store) = layered(10, RETRY_STORE);
        let err = store.get("k").await.unwrap_err();
        assert_eq!(err, StateError::Backend("connection reset".into()));
    }

    /// A lock store that fails its first `failures` operations and counts every call.
    struct FlakyLocks {
        inner: crate::components::lock::memory::MemoryLocks,
        failures: u32,
        calls: AtomicU32,
    }

    #[async_trait]
    impl LockStore for FlakyLocks {
        async fn try_lock(&self, req: &TryLockRequest) -> Result<bool, LockError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(LockError("connection reset".into()));
            }
            self.inner.try_lock(req).await
        }
        async fn unlock(&self, key: &LockKey) -> Result<UnlockStatus, LockError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(LockError("connection reset".into()));
            }
            self.inner.unlock(key).await
        }
    }

    #[tokio::test]
    async fn lock_stores_run_under_their_policy() {
        let flaky = Arc::new(FlakyLocks {
            inner: Default::default(),
            failures: 2,
            calls: AtomicU32::new(0),
        });
        let policy = resiliency(RETRY_STORE)
            .component_outbound("store", Kind::Lock)
            .expect("a policy");
        let instance = outbound(Instance::new::<dyn LockStore>(flaky.clone()), policy);
        let locks = instance.get::<dyn LockStore>().unwrap();
        let key = LockKey {
            resource_id: "r".into(),
            owner: "o".into(),
        };
        let req = TryLockRequest {
            key: key.clone(),
            expiry_seconds: 60,
        };
        assert!(locks.try_lock(&req).await.unwrap(), "taken on the third attempt");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        assert_eq!(locks.unlock(&key).await.unwrap(), UnlockStatus::Success);
    }

    #[tokio::test]
    async fn etag_mismatches_are_not_retried() {
        let (flaky, store) = layered(0, RETRY_STORE);
        let stale = SetRequest {
            key: "k".into(),
            etag: Some("42".into()),
            ..Default::default()
        };
        assert!(matches!(store.set(&stale).await, Err(StateError::EtagMismatch(_))));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_open_breaker_fails_fast_with_daprs_words() {
        let yaml = r#"
spec:
  policies:
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 60s, trip: consecutiveFailures >= 2}
  targets:
    components:
      store:
        outbound: {circuitBreaker: cb}
"#;
        let (flaky, store) = layered(100, yaml);
        for _ in 0..2 {
            assert!(store.get("k").await.is_err());
        }
        let err = store.get("k").await.unwrap_err().to_string();
        assert!(err.contains("circuit breaker") && err.contains("open"), "{err}");
        assert_eq!(
            flaky.calls.load(Ordering::SeqCst),
            2,
            "the open breaker did not call the store"
        );
    }

    #[test]
    fn default_component_policies_by_dapr_names() {
        let r = resiliency(
            r#"
spec:
  policies:
    retries:
      DefaultStatestoreComponentOutboundRetryPolicy: {policy: constant, duration: 1s, maxRetries: 2}
    timeouts:
      DefaultComponentTimeoutPolicy: 3s
"#,
        );
        let state = r.component_outbound("any", Kind::State).unwrap();
        assert_eq!(state.retry().and_then(|r| r.max_retries), Some(2));
        assert_eq!(state.timeout(), Some(std::time::Duration::from_secs(3)));
        let secrets = r.component_outbound("any", Kind::SecretStore).unwrap();
        assert!(secrets.retry().is_none());
        assert_eq!(secrets.timeout(), Some(std::time::Duration::from_secs(3)));
        // A target names its policies; the defaults do not add to it.
        let r = resiliency(RETRY_STORE);
        assert!(r.component_outbound("store", Kind::State).unwrap().timeout().is_none());
        assert!(r.component_outbound("other", Kind::State).is_none());
        assert!(
            r.component_policy("store", Kind::State, super::super::Direction::Inbound)
                .is_none()
        );
    }

    #[test]
    fn a_component_target_naming_a_missing_policy_is_an_error() {
        let err = Resiliency::new(&super::super::tests::resources(
            "spec:\n  targets:\n    components:\n      store:\n        outbound: {retry: nope}\n",
        ))
        .unwrap_err();
        assert_eq!(err.field, "spec.targets.components.store.outbound.retry");
    }

    /// A broker that refuses each entry the first `refusals` times it is published, and records every attempt.
    #[derive(Default)]
    struct Refusing {
        refusals: u32,
        attempts: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait]
    impl PubSub for Refusing {
        fn features(&self) -> &'static [pubsub::Feature] {
            &[]
        }
        async fn publish(&self, msg: &Message) -> Result<(), PubSubError> {
            let body = String::from_utf8_lossy(&msg.data).into_owned();
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(body.clone());
            let tries = attempts.iter().filter(|a| **a == body).count() as u32;
            if body.starts_with("bad") && tries <= self.refusals {
                return Err(PubSubError::Backend("broker unavailable".into()));
            }
            Ok(())
        }
        async fn subscribe(
            &self,
            _: SubscribeRequest,
            _: pubsub::Handler,
            _: tokio_util::sync::CancellationToken,
        ) -> Result<(), PubSubError> {
            Ok(())
        }
    }

    fn layered_pubsub(refusals: u32) -> (Arc<Refusing>, Arc<dyn PubSub>) {
        let broker = Arc::new(Refusing {
            refusals,
            ..Default::default()
        });
        let policy = resiliency(&RETRY_STORE.replace("store:", "broker:"))
            .component_outbound("broker", Kind::PubSub)
            .expect("a policy");
        let instance = outbound(Instance::new::<dyn PubSub>(broker.clone()), policy);
        (broker, instance.get::<dyn PubSub>().unwrap())
    }

    fn entries(bodies: &[&str]) -> Vec<BulkEntry> {
        bodies
            .iter()
            .map(|b| BulkEntry {
                entry_id: format!("id-{b}"),
                message: Message {
                    data: bytes::Bytes::from(b.to_string()),
                    ..Default::default()
                },
            })
            .collect()
    }

    #[tokio::test]
    async fn publishing_is_retried_under_the_components_policy() {
        let (broker, pubsub) = layered_pubsub(2);
        let msg = &entries(&["bad"])[0].message;
        pubsub.publish(msg).await.unwrap();
        assert_eq!(broker.attempts.lock().unwrap().len(), 3);
        let (_, pubsub) = layered_pubsub(10);
        let err = pubsub.publish(msg).await.unwrap_err();
        assert_eq!(err, PubSubError::Backend("broker unavailable".into()));
    }

    #[tokio::test]
    async fn a_bulk_retry_publishes_only_the_entries_that_failed() {
        let (broker, pubsub) = layered_pubsub(1);
        let failed = pubsub.bulk_publish(&entries(&["a", "bad1", "b", "bad2"])).await;
        assert_eq!(failed, vec![]);
        let mut attempts = broker.attempts.lock().unwrap().clone();
        attempts.sort();
        assert_eq!(attempts, ["a", "b", "bad1", "bad1", "bad2", "bad2"]);

        // Retries exhausted (3): the entries still failing are reported, with the broker's error.
        let (_, pubsub) = layered_pubsub(10);
        let failed = pubsub.bulk_publish(&entries(&["a", "bad1"])).await;
        assert_eq!(
            failed,
            vec![FailedEntry {
                entry_id: "id-bad1".into(),
                error: "broker unavailable".into()
            }]
        );
    }
}
