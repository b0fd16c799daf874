//! The executor: runs an operation under a timeout, a retry policy and a circuit breaker, layered as Dapr layers
//! them — retries outermost, then the breaker, then the per-attempt timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::{CircuitBreaker, Rejection};
use super::retry::Retry;

/// The status of a failed call: an app's HTTP response status or a gRPC status code, or a failure that carries
/// no status (some keys of a component's bulk operation failed), which is retried like an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Http(u16),
    Grpc(tonic::Code),
    Failed,
}

impl Status {
    /// Dapr's rule for HTTP responses: anything outside 200–399 is a failure (counted by breakers, retried
    /// when the policy matches it).
    pub fn http_failure(code: u16) -> Option<Status> {
        (!(200..=399).contains(&code)).then_some(Status::Http(code))
    }

    /// A gRPC response fails unless its status is `Ok`.
    pub fn grpc_failure(code: tonic::Code) -> Option<Status> {
        (code != tonic::Code::Ok).then_some(Status::Grpc(code))
    }
}

/// What an operation's error says about itself, so a policy can decide whether to retry it.
///
/// A transport error (no connection, reset, the remote sidecar unreachable) is retried by every policy
/// whatever its `matching`; an error carrying an HTTP status or gRPC code is retried when `matching` lists it
/// (an unset list retries all); any other error is retried. Every error counts as a failure for breakers.
pub trait Retryable {
    /// The HTTP status this error carries, if any.
    fn http_status(&self) -> Option<u16> {
        None
    }
    /// The gRPC status code this error carries, if any.
    fn grpc_code(&self) -> Option<tonic::Code> {
        None
    }
    /// True for failures to reach the target at all.
    fn is_transport(&self) -> bool {
        false
    }
    /// True for definitive answers that trying again cannot change (an etag mismatch): never retried, and not
    /// counted against the circuit breaker.
    fn is_permanent(&self) -> bool {
        false
    }
}

/// A gRPC status returned by a proxied call: its code is matched against `gRPCStatusCodes`.
impl Retryable for tonic::Status {
    fn grpc_code(&self) -> Option<tonic::Code> {
        Some(self.code())
    }
}

/// Why a run under a policy failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError<E> {
    /// The operation's own error, after any retries.
    #[error("{0}")]
    Op(E),
    /// The last attempt ran out of time.
    #[error("timeout of {0:?} exceeded")]
    Timeout(Duration),
    /// The circuit breaker is open; the operation was not called.
    #[error("circuit breaker {breaker:?} is open")]
    CircuitOpen { breaker: String },
    /// The breaker is half-open and already testing as many calls as `maxRequests` allows.
    #[error("circuit breaker {breaker:?} is half-open and has too many requests in flight")]
    TooManyRequests { breaker: String },
}

impl<E> PolicyError<E> {
    /// True when a circuit breaker refused the call.
    pub fn is_circuit_breaker(&self) -> bool {
        matches!(
            self,
            PolicyError::CircuitOpen { .. } | PolicyError::TooManyRequests { .. }
        )
    }
}

/// Which failures a policy retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetryScope {
    /// A Resiliency policy: failed responses and errors, subject to `matching`.
    Policy,
    /// Dapr's built-in service-invocation retry: only errors that say the target could not be reached
    /// (transport errors, gRPC `Unavailable` / `Unauthenticated`); responses are never retried.
    Transient,
}

/// Timeout, retry and circuit breaker for one target, ready to run operations.
#[derive(Clone, Debug)]
pub struct Policy {
    name: Arc<str>,
    timeout: Option<Duration>,
    retry: Option<Arc<Retry>>,
    breaker: Option<Arc<CircuitBreaker>>,
    scope: RetryScope,
}

/// Dapr's built-in retry for service invocation when no Resiliency policy targets the app: 3 retries, 1s apart,
/// only when the target could not be reached.
pub fn builtin_retry() -> Policy {
    Policy::builtin(Arc::new(Retry::builtin_service()))
}

impl Policy {
    pub(crate) fn new(
        name: impl Into<Arc<str>>,
        timeout: Option<Duration>,
        retry: Option<Arc<Retry>>,
        breaker: Option<Arc<CircuitBreaker>>,
    ) -> Policy {
        Policy {
            name: name.into(),
            timeout,
            retry,
            breaker,
            scope: RetryScope::Policy,
        }
    }

    pub(crate) fn builtin(retry: Arc<Retry>) -> Policy {
        Policy {
            name: "DaprBuiltInServiceRetries".into(),
            timeout: None,
            retry: Some(retry),
            breaker: None,
            scope: RetryScope::Transient,
        }
    }

    /// The policy's name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The retry policy, if any.
    pub fn retry(&self) -> Option<&Retry> {
        self.retry.as_deref()
    }

    /// True when an operation may run more than once (the caller must be able to replay the request).
    pub fn has_retries(&self) -> bool {
        self.retry.as_ref().is_some_and(|r| r.has_retries())
    }

    /// The circuit breaker this policy feeds, if any.
    pub fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    /// Runs `op` under the policy. `classify` looks at a completed response: `None` is a success, `Some(status)`
    /// a failed response (see [`Status::http_failure`]), which the breaker counts as a failure and the retry
    /// policy retries when its `matching` allows. When retrying ends, the last failed response is returned as
    /// `Ok` — the caller forwards it, as Dapr does. Errors are retried as [`Retryable`] describes.
    pub async fn run<T, E, F, Fut, C>(&self, classify: C, mut op: F) -> Result<T, PolicyError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable,
        C: Fn(&T) -> Option<Status>,
    {
        let mut backoff = self.retry.as_ref().map(|r| r.start());
        loop {
            let ticket = match &self.breaker {
                None => None,
                Some(b) => match b.admit() {
                    Ok(t) => Some(t),
                    Err(rejection) => {
                        let breaker = b.name().to_owned();
                        return Err(match rejection {
                            Rejection::Open => PolicyError::CircuitOpen { breaker },
                            Rejection::TooManyRequests => PolicyError::TooManyRequests { breaker },
                        });
                    }
                },
            };
            let attempt = match self.timeout {
                Some(limit) => tokio::time::timeout(limit, op()).await.ok(),
                None => Some(op().await),
            };
            let outcome = match attempt {
                None => Outcome::TimedOut,
                Some(Ok(value)) => match classify(&value) {
                    None => Outcome::Success(value),
                    Some(status) => Outcome::Failed(value, status),
                },
                Some(Err(e)) => Outcome::Error(e),
            };
            if let Some(ticket) = ticket {
                let permanent = matches!(&outcome, Outcome::Error(e) if e.is_permanent());
                ticket.settle(permanent || matches!(outcome, Outcome::Success(_)));
            }
            let retry_wanted = match &outcome {
                Outcome::Success(_) => false,
                Outcome::Failed(_, status) => self.retries_status(*status),
                Outcome::Error(e) => self.retries_error(e),
                Outcome::TimedOut => self.scope == RetryScope::Policy,
            };
            let delay = match (&self.retry, backoff.as_mut()) {
                (Some(retry), Some(state)) if retry_wanted => retry.next_delay(state, rand::random::<f64>()),
                _ => None,
            };
            let Some(delay) = delay else {
                if backoff.as_ref().is_some_and(|b| b.retries() > 0) && matches!(outcome, Outcome::Success(_)) {
                    tracing::info!(policy = %self.name, "recovered processing operation after retries");
                }
                return match outcome {
                    Outcome::Success(v) | Outcome::Failed(v, _) => Ok(v),
                    Outcome::Error(e) => Err(PolicyError::Op(e)),
                    Outcome::TimedOut => Err(PolicyError::Timeout(self.timeout.unwrap_or_default())),
                };
            };
            if backoff.as_ref().is_some_and(|b| b.retries() == 1) {
                tracing::warn!(policy = %self.name, ?delay, "error processing operation; retrying");
            } else {
                tracing::debug!(policy = %self.name, ?delay, "retrying operation");
            }
            drop(outcome);
            tokio::time::sleep(delay).await;
        }
    }

    fn retries_status(&self, status: Status) -> bool {
        match (self.scope, &self.retry) {
            (RetryScope::Policy, Some(r)) => r.matching.retries(status),
            _ => false,
        }
    }

    fn retries_error<E: Retryable>(&self, e: &E) -> bool {
        let Some(retry) = &self.retry else {
            return false;
        };
        if e.is_permanent() {
            return false;
        }
        match self.scope {
            RetryScope::Transient => {
                e.is_transport()
                    || matches!(
                        e.grpc_code(),
                        Some(tonic::Code::Unavailable | tonic::Code::Unauthenticated)
                    )
            }
            RetryScope::Policy => {
                if e.is_transport() {
                    true
                } else if let Some(code) = e.http_status() {
                    retry.matching.retries(Status::Http(code))
                } else if let Some(code) = e.grpc_code() {
                    retry.matching.retries(Status::Grpc(code))
                } else {
                    true
                }
            }
        }
    }
}

enum Outcome<T, E> {
    Success(T),
    Failed(T, Status),
    Error(E),
    TimedOut,
}
