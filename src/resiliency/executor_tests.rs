//! The executor under paused time: retry counts and schedules, matching, timeouts, circuit breakers.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::time::Instant;

use super::tests::compile;
use super::*;

/// An error as the invocation layer would report it.
#[derive(Debug)]
struct Failure {
    http: Option<u16>,
    grpc: Option<tonic::Code>,
    transport: bool,
}

impl Retryable for Failure {
    fn http_status(&self) -> Option<u16> {
        self.http
    }
    fn grpc_code(&self) -> Option<tonic::Code> {
        self.grpc
    }
    fn is_transport(&self) -> bool {
        self.transport
    }
}

fn transport() -> Failure {
    Failure {
        http: None,
        grpc: None,
        transport: true,
    }
}

fn grpc(code: tonic::Code) -> Failure {
    Failure {
        http: None,
        grpc: Some(code),
        transport: false,
    }
}

/// Records when each attempt started, relative to the first.
#[derive(Default)]
struct Attempts {
    started: std::sync::Mutex<Vec<Instant>>,
}

impl Attempts {
    fn hit(&self) -> usize {
        let mut s = self.started.lock().unwrap();
        s.push(Instant::now());
        s.len()
    }
    fn count(&self) -> usize {
        self.started.lock().unwrap().len()
    }
    fn gaps(&self) -> Vec<Duration> {
        let s = self.started.lock().unwrap();
        s.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

fn every_response_succeeds<T>(_: &T) -> Option<Status> {
    None
}

fn http_status(code: &u16) -> Option<Status> {
    Status::http_failure(*code)
}

fn app(yaml_policies: &str, target: &str) -> Arc<AppPolicy> {
    let yaml = format!(
        "metadata: {{name: test}}\nspec:\n  policies:\n{yaml_policies}\n  targets:\n    apps:\n      app: {target}\n"
    );
    compile(&yaml).app_policy("app").expect("app policy")
}

#[tokio::test(start_paused = true)]
async fn constant_retries_run_max_retries_more_times_at_the_given_interval() {
    let p = app(
        "    retries:\n      r: {policy: constant, duration: 2s, maxRetries: 3}",
        "{retry: r}",
    );
    let attempts = Attempts::default();
    let out: Result<u16, _> = p
        .run("app:m", every_response_succeeds, || async {
            attempts.hit();
            Err(transport())
        })
        .await;
    assert!(matches!(out, Err(PolicyError::Op(Failure { transport: true, .. }))));
    assert_eq!(attempts.count(), 4);
    assert_eq!(attempts.gaps(), vec![Duration::from_secs(2); 3]);
}

#[tokio::test(start_paused = true)]
async fn retrying_stops_at_the_first_success() {
    let p = app("    retries:\n      r: {duration: 1s}", "{retry: r}");
    let attempts = Attempts::default();
    let out = p
        .run("app:m", every_response_succeeds, || async {
            if attempts.hit() < 50 {
                Err(transport())
            } else {
                Ok("done")
            }
        })
        .await;
    assert_eq!(out.unwrap(), "done", "maxRetries -1 retries until success");
    assert_eq!(attempts.count(), 50);
}

#[tokio::test(start_paused = true)]
async fn exponential_retries_stay_within_jitter_and_the_cap() {
    let p = app(
        "    retries:\n      r: {policy: exponential, maxInterval: 2s, maxRetries: 6}",
        "{retry: r}",
    );
    let attempts = Attempts::default();
    let _ = p
        .run("app:m", every_response_succeeds, || async {
            attempts.hit();
            Err::<(), _>(transport())
        })
        .await;
    let expected_ms = [500.0, 750.0, 1125.0, 1687.5, 2000.0, 2000.0];
    let gaps = attempts.gaps();
    assert_eq!(gaps.len(), expected_ms.len());
    for (gap, want) in gaps.iter().zip(expected_ms) {
        let ms = gap.as_secs_f64() * 1000.0;
        assert!(ms >= want * 0.5 - 1.0 && ms <= want * 1.5 + 1.0, "{ms}ms vs {want}ms");
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_retry_forever_gives_up_after_fifteen_minutes() {
    let p = app(
        "    retries:\n      r: {policy: exponential, maxInterval: 10s}",
        "{retry: r}",
    );
    let attempts = Attempts::default();
    let start = Instant::now();
    let out = p
        .run("app:m", every_response_succeeds, || async {
            attempts.hit();
            Err::<(), _>(transport())
        })
        .await;
    assert!(out.is_err());
    let elapsed = start.elapsed();
    assert!(elapsed <= Duration::from_secs(15 * 60), "{elapsed:?}");
    assert!(elapsed >= Duration::from_secs(15 * 60 - 15), "{elapsed:?}");
    assert!(attempts.count() > 50, "{}", attempts.count());
}

#[tokio::test(start_paused = true)]
async fn failed_responses_are_retried_only_when_matched() {
    let p = app(
        "    retries:\n      r: {duration: 1s, maxRetries: 2, matching: {httpStatusCodes: \"500-599,429\"}}",
        "{retry: r}",
    );
    for (status, attempts_wanted) in [(503u16, 3usize), (429, 3), (404, 1), (200, 1)] {
        let attempts = Attempts::default();
        let out = p
            .run("app:m", http_status, || async {
                attempts.hit();
                Ok::<_, Failure>(status)
            })
            .await;
        // Once retrying ends the last response is handed back for the caller to forward.
        assert_eq!(out.unwrap(), status);
        assert_eq!(attempts.count(), attempts_wanted, "status {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn without_matching_every_failure_is_retried() {
    let p = app("    retries:\n      r: {duration: 1s, maxRetries: 1}", "{retry: r}");
    let attempts = Attempts::default();
    let out = p
        .run("app:m", http_status, || async {
            attempts.hit();
            Ok::<_, Failure>(404)
        })
        .await;
    assert_eq!(out.unwrap(), 404);
    assert_eq!(attempts.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn errors_with_codes_follow_matching_and_transport_errors_always_retry() {
    let p = app(
        "    retries:\n      r: {duration: 1s, maxRetries: 1, matching: {gRPCStatusCodes: \"14\", httpStatusCodes: \"502\"}}",
        "{retry: r}",
    );
    let cases: Vec<(Box<dyn Fn() -> Failure>, usize)> = vec![
        (Box::new(|| grpc(tonic::Code::Unavailable)), 2),
        (Box::new(|| grpc(tonic::Code::NotFound)), 1),
        (
            Box::new(|| Failure {
                http: Some(502),
                grpc: None,
                transport: false,
            }),
            2,
        ),
        (
            Box::new(|| Failure {
                http: Some(500),
                grpc: None,
                transport: false,
            }),
            1,
        ),
        (Box::new(transport), 2),
    ];
    for (make, wanted) in cases {
        let attempts = Attempts::default();
        let _ = p
            .run("app:m", every_response_succeeds, || async {
                attempts.hit();
                Err::<(), _>(make())
            })
            .await;
        assert_eq!(attempts.count(), wanted, "{:?}", make());
    }
}

#[tokio::test(start_paused = true)]
async fn the_timeout_applies_to_each_attempt() {
    let p = app(
        "    timeouts:\n      t: 1s\n    retries:\n      r: {duration: 500ms, maxRetries: 2}",
        "{timeout: t, retry: r}",
    );
    let attempts = Attempts::default();
    let start = Instant::now();
    let out = p
        .run("app:m", every_response_succeeds, || async {
            attempts.hit();
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Failure>(())
        })
        .await;
    assert!(matches!(out, Err(PolicyError::Timeout(d)) if d == Duration::from_secs(1)));
    assert_eq!(attempts.count(), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(4), "3 × 1s + 2 × 500ms");
    // A fast enough operation is untouched.
    let out = p
        .run("app:m", every_response_succeeds, || async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            Ok::<_, Failure>(7)
        })
        .await;
    assert_eq!(out.unwrap(), 7);
}

const BREAKER: &str = "    circuitBreakers:\n      cb: {timeout: 30s, trip: consecutiveFailures > 2}";

async fn fail(p: &Policy, calls: &AtomicU32) -> Result<(), PolicyError<Failure>> {
    p.run(every_response_succeeds, || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(transport())
    })
    .await
}

async fn succeed(p: &Policy, calls: &AtomicU32) -> Result<(), PolicyError<Failure>> {
    p.run(every_response_succeeds, || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_tripped_breaker_refuses_calls_then_closes_after_a_half_open_success() {
    let a = app(BREAKER, "{circuitBreaker: cb}");
    let p = a.endpoint("app:m");
    let calls = AtomicU32::new(0);
    for _ in 0..3 {
        assert!(matches!(fail(&p, &calls).await, Err(PolicyError::Op(_))));
    }
    let breaker = p.breaker().unwrap();
    assert_eq!(breaker.state(), BreakerState::Open);
    let refused = succeed(&p, &calls).await;
    assert!(matches!(&refused, Err(PolicyError::CircuitOpen { breaker }) if breaker == "app:m"));
    assert!(refused.unwrap_err().is_circuit_breaker());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an open breaker does not call the operation"
    );

    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    succeed(&p, &calls).await.unwrap();
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.counts(), Counts::default(), "closing starts fresh counts");
}

#[tokio::test(start_paused = true)]
async fn a_half_open_failure_reopens_the_breaker() {
    let a = app(BREAKER, "{circuitBreaker: cb}");
    let p = a.endpoint("app:m");
    let calls = AtomicU32::new(0);
    for _ in 0..3 {
        let _ = fail(&p, &calls).await;
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(matches!(fail(&p, &calls).await, Err(PolicyError::Op(_))));
    assert_eq!(p.breaker().unwrap().state(), BreakerState::Open);
    assert!(matches!(
        succeed(&p, &calls).await,
        Err(PolicyError::CircuitOpen { .. })
    ));
    // Open again for a full timeout from the reopening.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(p.breaker().unwrap().state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn breakers_are_independent_per_endpoint_and_default_to_six_failures() {
    let a = app("    circuitBreakers:\n      cb: {}", "{circuitBreaker: cb}");
    let (one, two) = (a.endpoint("app:one"), a.endpoint("app:two"));
    let calls = AtomicU32::new(0);
    for _ in 0..5 {
        let _ = fail(&one, &calls).await;
    }
    assert_eq!(
        one.breaker().unwrap().state(),
        BreakerState::Closed,
        "5 failures do not trip"
    );
    let _ = fail(&one, &calls).await;
    assert_eq!(one.breaker().unwrap().state(), BreakerState::Open, "the 6th does");
    assert_eq!(two.breaker().unwrap().state(), BreakerState::Closed);
    succeed(&two, &calls).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_max_requests_and_needs_that_many_successes() {
    let a = app(
        "    circuitBreakers:\n      cb: {maxRequests: 2, timeout: 10s, trip: consecutiveFailures > 0}",
        "{circuitBreaker: cb}",
    );
    let p = a.endpoint("app:m");
    let calls = AtomicU32::new(0);
    let _ = fail(&p, &calls).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    let breaker = p.breaker().unwrap();
    let first = breaker.admit().unwrap();
    let second = breaker.admit().unwrap();
    assert!(matches!(
        succeed(&p, &calls).await,
        Err(PolicyError::TooManyRequests { .. })
    ));
    first.settle(true);
    assert_eq!(breaker.state(), BreakerState::HalfOpen, "one success of two");
    second.settle(true);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_interval_clears_closed_counts() {
    let a = app(
        "    circuitBreakers:\n      cb: {interval: 10s, trip: totalFailures > 2}",
        "{circuitBreaker: cb}",
    );
    let p = a.endpoint("app:m");
    let calls = AtomicU32::new(0);
    for _ in 0..2 {
        let _ = fail(&p, &calls).await;
        let _ = succeed(&p, &calls).await;
    }
    assert_eq!(p.breaker().unwrap().counts().total_failures, 2);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(p.breaker().unwrap().counts(), Counts::default());
    for _ in 0..2 {
        let _ = fail(&p, &calls).await;
    }
    assert_eq!(p.breaker().unwrap().state(), BreakerState::Closed);
    let _ = fail(&p, &calls).await;
    assert_eq!(p.breaker().unwrap().state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failed_responses_timeouts_and_cancelled_calls_count_against_the_breaker() {
    let a = app(
        "    timeouts:\n      t: 1s\n    circuitBreakers:\n      cb: {trip: \"requests >= 3 && totalSuccesses == 0\"}",
        "{timeout: t, circuitBreaker: cb}",
    );
    let p = a.endpoint("app:m");
    let out = p.run(http_status, || async { Ok::<_, Failure>(500u16) }).await;
    assert_eq!(out.unwrap(), 500);
    let out = p
        .run(every_response_succeeds, || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, Failure>(())
        })
        .await;
    assert!(matches!(out, Err(PolicyError::Timeout(_))));
    assert_eq!(p.breaker().unwrap().counts().total_failures, 2);
    // A caller that gives up mid-call (client went away) leaves a failure behind, not a stuck request.
    let pending = p.run(every_response_succeeds, || async {
        std::future::pending::<Result<(), Failure>>().await
    });
    let _ = tokio::time::timeout(Duration::from_millis(10), pending).await;
    assert_eq!(p.breaker().unwrap().state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_ends_retrying() {
    let a = app(
        &format!("{BREAKER}\n    retries:\n      r: {{duration: 1s, maxRetries: 10}}"),
        "{retry: r, circuitBreaker: cb}",
    );
    let attempts = Attempts::default();
    let out = a
        .run("app:m", every_response_succeeds, || async {
            attempts.hit();
            Err::<(), _>(transport())
        })
        .await;
    assert!(matches!(out, Err(PolicyError::CircuitOpen { .. })));
    assert_eq!(attempts.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn builtin_retry_covers_only_unreachable_targets() {
    let p = builtin_retry();
    let attempts = Attempts::default();
    let out = p
        .run(every_response_succeeds, || async {
            attempts.hit();
            Err::<(), _>(transport())
        })
        .await;
    assert!(matches!(out, Err(PolicyError::Op(_))));
    assert_eq!(attempts.count(), 4, "1 attempt + 3 retries");
    assert_eq!(attempts.gaps(), vec![Duration::from_secs(1); 3]);

    for (code, wanted) in [
        (tonic::Code::Unavailable, 4),
        (tonic::Code::Unauthenticated, 4),
        (tonic::Code::PermissionDenied, 1),
        (tonic::Code::Internal, 1),
    ] {
        let attempts = Attempts::default();
        let _ = p
            .run(every_response_succeeds, || async {
                attempts.hit();
                Err::<(), _>(tonic::Status::new(code, "x"))
            })
            .await;
        assert_eq!(attempts.count(), wanted, "{code:?}");
    }
    // The app's own failed responses are never retried by the built-in policy.
    let attempts = Attempts::default();
    let out = p
        .run(http_status, || async {
            attempts.hit();
            Ok::<_, Failure>(503u16)
        })
        .await;
    assert_eq!(out.unwrap(), 503);
    assert_eq!(attempts.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_overridden_builtin_retry_uses_its_schedule() {
    let r = compile(
        "metadata: {name: r}\nspec:\n  policies:\n    retries:\n      DaprBuiltInServiceRetries: {duration: 250ms, maxRetries: 5}\n",
    );
    let attempts = Attempts::default();
    let _ = r
        .builtin_service_retry()
        .run(every_response_succeeds, || async {
            attempts.hit();
            Err::<(), _>(transport())
        })
        .await;
    assert_eq!(attempts.gaps(), vec![Duration::from_millis(250); 5]);
}

#[tokio::test(start_paused = true)]
async fn a_trip_that_errors_or_is_not_boolean_never_opens() {
    for trip in ["consecutiveFailures / 0 > 1", "consecutiveFailures"] {
        let a = app(
            &format!("    circuitBreakers:\n      cb: {{trip: \"{trip}\"}}"),
            "{circuitBreaker: cb}",
        );
        let p = a.endpoint("app:m");
        let calls = AtomicU32::new(0);
        for _ in 0..10 {
            let _ = fail(&p, &calls).await;
        }
        assert_eq!(p.breaker().unwrap().state(), BreakerState::Closed, "{trip}");
        assert_eq!(calls.load(Ordering::SeqCst), 10);
    }
}
