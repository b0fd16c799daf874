//! Compilation, defaults and precedence; the executor's behaviour is in `executor_tests.rs`.

use super::*;

pub(super) fn resources(yaml: &str) -> Vec<crate::api::Resiliency> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("test YAML parses"))
        .collect()
}

pub(super) fn compile(yaml: &str) -> Resiliency {
    Resiliency::new(&resources(yaml)).expect("resources compile")
}

fn compile_err(yaml: &str) -> ResiliencyError {
    Resiliency::new(&resources(yaml)).expect_err("resources are refused")
}

const DOCS_EXAMPLE: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: myresiliency
scopes:
  - app1
spec:
  policies:
    timeouts:
      general: 5s
      important: 60s
      largeResponse: 10s
    retries:
      pubsubRetry:
        policy: constant
        duration: 5s
        maxRetries: 10
      retryForever:
        policy: exponential
        maxInterval: 15s
        maxRetries: -1
      important:
        policy: constant
        duration: 5s
        maxRetries: 30
        matching:
          httpStatusCodes: "500-599,429"
          gRPCStatusCodes: "14"
    circuitBreakers:
      simpleCB:
        maxRequests: 1
        timeout: 30s
        trip: consecutiveFailures >= 5
      pubsubCB:
        maxRequests: 1
        interval: 8s
        timeout: 45s
        trip: consecutiveFailures > 8
  targets:
    apps:
      appB:
        timeout: general
        retry: important
        circuitBreaker: simpleCB
        circuitBreakerCacheSize: 100
"#;

#[test]
fn docs_example_compiles_to_the_documented_policies() {
    let r = compile(DOCS_EXAMPLE);
    let b = r.app_policy("appB").expect("appB is a target");
    assert_eq!(b.timeout(), Some(Duration::from_secs(5)));
    let retry = b.retry().expect("retry policy");
    assert_eq!(retry.backoff, Backoff::Constant(Duration::from_secs(5)));
    assert_eq!(retry.max_retries, Some(30));
    assert!(retry.matching.retries(Status::Http(503)));
    assert!(retry.matching.retries(Status::Http(429)));
    assert!(!retry.matching.retries(Status::Http(404)));
    assert!(retry.matching.retries(Status::Grpc(tonic::Code::Unavailable)));
    assert!(!retry.matching.retries(Status::Grpc(tonic::Code::NotFound)));
    let forever = &r.retries["retryForever"];
    assert_eq!(forever.max_retries, None);
    match &forever.backoff {
        Backoff::Exponential(e) => {
            assert_eq!(e.max_interval, Duration::from_secs(15));
            assert_eq!(e.initial_interval, Duration::from_millis(500));
        }
        other => panic!("expected exponential, got {other:?}"),
    }
    let cb = &r.breakers["pubsubCB"];
    assert_eq!(cb.interval, Some(Duration::from_secs(8)));
    assert_eq!(cb.timeout, Duration::from_secs(45));
    assert_eq!(cb.trip(), "consecutiveFailures > 8");
    assert!(r.has_app_target("appB"));
    assert!(r.app_policy("appC").is_none(), "no target and no defaults");
}

#[test]
fn unset_fields_take_daprs_defaults() {
    let r = compile(
        r#"
metadata: {name: defaults}
spec:
  policies:
    retries:
      plain: {}
    circuitBreakers:
      plain: {}
"#,
    );
    let retry = &r.retries["plain"];
    assert_eq!(retry.backoff, Backoff::Constant(Duration::from_secs(5)));
    assert_eq!(retry.max_retries, None, "maxRetries defaults to -1 (forever)");
    assert_eq!(retry.matching, StatusMatch::default());
    let cb = &r.breakers["plain"];
    assert_eq!(cb.max_requests, 1);
    assert_eq!(cb.interval, None);
    assert_eq!(cb.timeout, Duration::from_secs(60));
    assert_eq!(cb.trip(), "consecutiveFailures > 5");
}

#[test]
fn go_durations_and_bare_milliseconds() {
    let cases = [
        ("250", Duration::from_millis(250)),
        ("0", Duration::ZERO),
        ("1h30m", Duration::from_secs(5400)),
        ("1.5s", Duration::from_millis(1500)),
        ("300ms", Duration::from_millis(300)),
        ("2us", Duration::from_micros(2)),
        ("2m0s", Duration::from_secs(120)),
    ];
    for (input, want) in cases {
        assert_eq!(parse_go_duration(input).unwrap(), want, "{input}");
    }
    for bad in ["soon", "5x", "-1s", "1..5s", "", "1.5", "99999999999999999999", "1e400"] {
        assert!(parse_go_duration(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn default_policy_keywords_apply_to_apps_without_a_target() {
    let r = compile(
        r#"
metadata: {name: defaults}
spec:
  policies:
    timeouts:
      DefaultTimeoutPolicy: 3s
    retries:
      DefaultRetryPolicy: {policy: constant, duration: 1s, maxRetries: 1}
      DefaultAppRetryPolicy: {policy: constant, duration: 2s, maxRetries: 2}
    circuitBreakers:
      DefaultCircuitBreakerPolicy: {trip: consecutiveFailures > 1}
"#,
    );
    let p = r.app_policy("anyapp").expect("defaults apply");
    // The App-specific keyword wins over the generic one; the others fall back to the generic keywords.
    assert_eq!(p.retry().unwrap().max_retries, Some(2));
    assert_eq!(p.timeout(), Some(Duration::from_secs(3)));
    assert!(p.endpoint("anyapp:m").breaker().is_some());
    // Defaults do not make the app a target: the built-in retries still apply underneath.
    assert!(!r.has_app_target("anyapp"));
    // The same app gets the same policy (and so the same breakers) every time.
    assert!(Arc::ptr_eq(&p, &r.app_policy("anyapp").unwrap()));
    assert!(!Arc::ptr_eq(&p, &r.app_policy("other").unwrap()));
}

#[test]
fn a_target_uses_only_the_policies_it_names() {
    let r = compile(
        r#"
metadata: {name: targets}
spec:
  policies:
    timeouts:
      fast: 100ms
    retries:
      DefaultRetryPolicy: {maxRetries: 7}
  targets:
    apps:
      orders:
        timeout: fast
"#,
    );
    let p = r.app_policy("orders").unwrap();
    assert_eq!(p.timeout(), Some(Duration::from_millis(100)));
    assert!(p.retry().is_none(), "a target does not inherit default policies");
    assert!(!p.has_retries());
    assert_eq!(r.app_policy("billing").unwrap().retry().unwrap().max_retries, Some(7));
}

#[test]
fn resources_share_policies_and_later_ones_override() {
    let r = compile(
        r#"
metadata: {name: first}
spec:
  policies:
    retries:
      shared: {maxRetries: 1}
---
metadata: {name: second}
spec:
  policies:
    retries:
      shared: {maxRetries: 4}
  targets:
    apps:
      a: {retry: shared}
"#,
    );
    assert_eq!(r.app_policy("a").unwrap().retry().unwrap().max_retries, Some(4));
}

#[test]
fn builtin_service_retries_can_be_overridden_but_not_below_three() {
    assert_eq!(
        *compile("metadata: {name: none}")
            .builtin_service_retry()
            .retry()
            .unwrap(),
        Retry::builtin_service()
    );
    let r = compile(
        r#"
metadata: {name: override}
spec:
  policies:
    retries:
      DaprBuiltInServiceRetries: {policy: constant, duration: 2s, maxRetries: 1}
"#,
    );
    let retry = r.builtin_service_retry().retry().unwrap().clone();
    assert_eq!(retry.backoff, Backoff::Constant(Duration::from_secs(2)));
    assert_eq!(retry.max_retries, Some(3));
}

#[test]
fn bad_policies_name_the_resource_and_field() {
    let cases = [
        (
            "timeouts: {general: soon}",
            "spec.policies.timeouts.general",
            "\"soon\"",
        ),
        (
            "retries: {r: {policy: linear}}",
            "spec.policies.retries.r.policy",
            "unknown retry policy \"linear\"",
        ),
        (
            "retries: {r: {duration: 5parsecs}}",
            "spec.policies.retries.r.duration",
            "5parsecs",
        ),
        (
            "retries: {r: {matching: {httpStatusCodes: \"500-599,600\"}}}",
            "spec.policies.retries.r.matching.httpStatusCodes",
            "outside 100-599",
        ),
        (
            "retries: {r: {matching: {httpStatusCodes: \"599-500\"}}}",
            "spec.policies.retries.r.matching.httpStatusCodes",
            "ends before it starts",
        ),
        (
            "retries: {r: {matching: {gRPCStatusCodes: \"1-2-3\"}}}",
            "spec.policies.retries.r.matching.gRPCStatusCodes",
            "more than one '-'",
        ),
        (
            "retries: {r: {matching: {gRPCStatusCodes: \"x\"}}}",
            "spec.policies.retries.r.matching.gRPCStatusCodes",
            "not a status code",
        ),
        (
            "circuitBreakers: {cb: {trip: \"consecutiveFailures >\"}}",
            "spec.policies.circuitBreakers.cb.trip",
            "not a valid CEL expression",
        ),
        (
            "circuitBreakers: {cb: {trip: \"consecutiveFailure > 3\"}}",
            "spec.policies.circuitBreakers.cb.trip",
            "unknown variable(s) consecutiveFailure",
        ),
        (
            "circuitBreakers: {cb: {timeout: abc}}",
            "spec.policies.circuitBreakers.cb.timeout",
            "\"abc\"",
        ),
    ];
    for (policies, field, message) in cases {
        let yaml = format!("metadata: {{name: broken}}\nspec:\n  policies:\n    {policies}\n");
        let e = compile_err(&yaml);
        assert_eq!(e.resource, "broken", "{policies}");
        assert_eq!(e.field, field, "{policies}");
        assert!(e.message.contains(message), "{policies}: {}", e.message);
        let shown = e.to_string();
        assert!(shown.contains("broken") && shown.contains(field), "{shown}");
    }
}

#[test]
fn a_target_naming_a_missing_policy_is_an_error() {
    let e = compile_err(
        r#"
metadata: {name: r}
spec:
  targets:
    apps:
      a: {retry: nope}
"#,
    );
    assert_eq!(e.field, "spec.targets.apps.a.retry");
    assert!(e.message.contains("no retry policy named \"nope\""), "{}", e.message);
}

#[test]
fn lenient_compilation_skips_bad_resources_like_daprd() {
    let (r, errors) = Resiliency::new_lenient(&resources(
        r#"
metadata: {name: good}
spec:
  policies:
    retries:
      ok: {maxRetries: 2}
  targets:
    apps:
      a: {retry: ok, circuitBreaker: missing}
---
metadata: {name: bad}
spec:
  policies:
    retries:
      broken: {policy: sometimes}
  targets:
    apps:
      b: {retry: broken}
"#,
    ));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.resource == "bad"));
    assert!(errors.iter().any(|e| e.field == "spec.targets.apps.a.circuitBreaker"));
    let a = r.app_policy("a").unwrap();
    assert_eq!(a.retry().unwrap().max_retries, Some(2));
    assert!(a.endpoint("a:x").breaker().is_none());
    assert!(!r.has_app_target("b"), "the bad resource's targets are skipped");
}

#[test]
fn breakers_are_kept_per_endpoint_within_the_cache_size() {
    let r = compile(
        r#"
metadata: {name: r}
spec:
  policies:
    circuitBreakers:
      cb: {}
  targets:
    apps:
      a: {circuitBreaker: cb, circuitBreakerCacheSize: 2}
"#,
    );
    let a = r.app_policy("a").unwrap();
    let first = a.endpoint("a:one").breaker().unwrap().clone();
    assert!(Arc::ptr_eq(&first, a.endpoint("a:one").breaker().unwrap()));
    assert!(!Arc::ptr_eq(&first, a.endpoint("a:two").breaker().unwrap()));
    // Touch "one" so "two" is the least recently used; a third endpoint evicts "two".
    let _ = a.endpoint("a:one");
    let _ = a.endpoint("a:three");
    assert!(Arc::ptr_eq(&first, a.endpoint("a:one").breaker().unwrap()));
    assert_eq!(first.name(), "a:one");
}

#[test]
fn exponential_schedule_grows_by_half_and_caps_at_max_interval() {
    let retry = Retry {
        backoff: Backoff::Exponential(Exponential {
            max_interval: Duration::from_secs(2),
            ..Exponential::default()
        }),
        max_retries: Some(7),
        matching: StatusMatch::default(),
    };
    let mut state = retry.start();
    let mid: Vec<u128> = (0..7)
        .map(|_| retry.next_delay(&mut state, 0.5).unwrap().as_millis())
        .collect();
    assert_eq!(mid, [500, 750, 1125, 1687, 2000, 2000, 2000]);
    assert_eq!(retry.next_delay(&mut state, 0.5), None, "maxRetries reached");
    // Jitter spreads each delay over interval * (1 ± 0.5).
    let mut state = retry.start();
    assert_eq!(retry.next_delay(&mut state, 0.0).unwrap(), Duration::from_millis(250));
    assert_eq!(retry.next_delay(&mut state, 1.0).unwrap(), Duration::from_millis(1125));
}

#[test]
fn zero_max_retries_means_no_retries() {
    let r = compile("metadata: {name: r}\nspec:\n  policies:\n    retries:\n      none: {maxRetries: 0}\n");
    let retry = &r.retries["none"];
    assert!(!retry.has_retries());
    let mut state = retry.start();
    assert_eq!(retry.next_delay(&mut state, 0.5), None);
}
