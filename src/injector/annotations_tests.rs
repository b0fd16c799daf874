//! Annotation parsing: Dapr's defaults, truthy booleans, ignored bad values.

use super::*;

fn parse(pairs: &[(&str, &str)]) -> (SidecarConfig, Vec<String>) {
    let a = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    SidecarConfig::from_annotations(&a)
}

#[test]
fn defaults_match_dapr() {
    let (c, w) = parse(&[]);
    assert!(w.is_empty());
    assert_eq!(c, SidecarConfig::default());
    assert_eq!(c.liveness.initial_delay_seconds, 180);
    assert_eq!(c.readiness.period_seconds, 1);
    assert_eq!(c.listen_addresses, "[::1],127.0.0.1");
}

#[test]
fn enabled_is_case_insensitive_true_only() {
    for (v, want) in [
        ("true", true),
        ("TRUE", true),
        ("True", true),
        ("1", false),
        ("yes", false),
    ] {
        assert_eq!(parse(&[(keys::ENABLED, v)]).0.enabled, want, "{v}");
    }
}

#[test]
fn booleans_are_truthy() {
    for v in ["true", "1", "yes", "ON", " t ", "Y"] {
        assert!(parse(&[(keys::LOG_AS_JSON, v)]).0.log_as_json, "{v}");
    }
    for v in ["false", "0", "no", "", "enabled"] {
        assert!(!parse(&[(keys::LOG_AS_JSON, v)]).0.log_as_json, "{v}");
    }
    assert!(!parse(&[(keys::ENABLE_METRICS, "false")]).0.enable_metrics);
    assert_eq!(
        parse(&[(keys::ENABLE_API_LOGGING, "false")]).0.enable_api_logging,
        Some(false)
    );
}

#[test]
fn bad_integers_are_ignored_with_a_warning() {
    let (c, w) = parse(&[
        (keys::APP_PORT, "80a"),
        (keys::LIVENESS_DELAY, "soon"),
        (keys::METRICS_PORT, "70000"),
        (keys::READINESS_THRESHOLD, "7"),
    ]);
    assert_eq!(c.app_port, None);
    assert_eq!(c.liveness.initial_delay_seconds, 180);
    assert_eq!(c.metrics_port, 9090);
    assert_eq!(c.readiness.failure_threshold, 7);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].contains(keys::APP_PORT) && w[0].contains("80a"), "{w:?}");
}

#[test]
fn app_port_zero_or_negative_means_no_app_channel() {
    assert_eq!(parse(&[(keys::APP_PORT, "0")]).0.app_port, None);
    assert_eq!(parse(&[(keys::APP_PORT, "-1")]).0.app_port, None);
    assert_eq!(parse(&[(keys::APP_PORT, "3000")]).0.app_port, Some(3000));
    assert!(!parse(&[(keys::APP_PORT, "70000")]).1.is_empty());
}

#[test]
fn env_values_may_contain_commas() {
    let (c, _) = parse(&[(keys::ENV, "A=1, LIST=x,y,z ,B_2=two=2,bad")]);
    assert_eq!(
        c.env,
        [
            ("A".to_owned(), "1".to_owned()),
            ("LIST".to_owned(), "x,y,z".to_owned()),
            ("B_2".to_owned(), "two=2,bad".to_owned()),
        ]
    );
    assert_eq!(c.env_keys, ["A", "LIST", "B_2"]);
}

#[test]
fn env_from_secret_names_secret_and_key() {
    let (c, _) = parse(&[(keys::ENV_FROM_SECRET, "PW=db-secret:password,TOKEN=tok,X=a:b:c")]);
    assert_eq!(
        c.env_from_secret,
        [
            ("PW".to_owned(), "db-secret".to_owned(), "password".to_owned()),
            ("TOKEN".to_owned(), "tok".to_owned(), "tok".to_owned()),
        ]
    );
    assert_eq!(c.env_keys, ["PW", "TOKEN", "X"]);
}

#[test]
fn quantities_follow_kubernetes_grammar() {
    for q in [
        "100m", "0.5", "1", "128Mi", "1Gi", "1e3", "1.5G", ".5", "2.", "+1k", "3E-2",
    ] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "lots", "1.2.3", "128MB", "-1", "1e", ".", "1 Gi", "m"] {
        assert!(!is_quantity(q), "{q}");
    }
    let (c, w) = parse(&[(keys::CPU_LIMIT, "2 cores"), (keys::MEMORY_REQUEST, "64Mi")]);
    assert_eq!(c.cpu_limit, None);
    assert_eq!(c.memory_request.as_deref(), Some("64Mi"));
    assert_eq!(w.len(), 1);
}

#[test]
fn max_body_size_prefers_the_new_annotation_and_validates_it() {
    assert_eq!(
        parse(&[(keys::HTTP_MAX_REQUEST_SIZE, "16")]).0.max_body_size.as_deref(),
        Some("16Mi")
    );
    assert_eq!(
        parse(&[(keys::HTTP_MAX_REQUEST_SIZE, "16"), (keys::MAX_BODY_SIZE, "2Mi")])
            .0
            .max_body_size
            .as_deref(),
        Some("2Mi")
    );
    let (c, w) = parse(&[(keys::MAX_BODY_SIZE, "huge")]);
    assert_eq!(c.max_body_size, None);
    assert_eq!(w.len(), 1);
}

#[test]
fn placement_annotation_is_trimmed_and_empty_disables() {
    assert_eq!(
        parse(&[(keys::PLACEMENT_HOST_ADDRESS, "\"\"")])
            .0
            .placement_host_address
            .as_deref(),
        Some("")
    );
    assert_eq!(
        parse(&[(keys::PLACEMENT_HOST_ADDRESS, " p:50005 ")])
            .0
            .placement_host_address
            .as_deref(),
        Some("p:50005")
    );
}

#[test]
fn volume_mounts_skip_malformed_entries() {
    let (c, _) = parse(&[(keys::VOLUME_MOUNTS, "data:/data, bad ,x:/y:z,cfg:/etc/cfg")]);
    assert_eq!(
        c.volume_mounts,
        [
            ("data".to_owned(), "/data".to_owned()),
            ("cfg".to_owned(), "/etc/cfg".to_owned())
        ]
    );
}

#[test]
fn unsupported_annotations_are_reported() {
    let (_, w) = parse(&[
        ("dapr.io/enable-profiling", "true"),
        ("dapr.io/sidecar-svc-annotations", "a=b"),
    ]);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("enable-profiling"));
}

#[test]
fn negative_graceful_shutdown_keeps_the_sidecar_default() {
    assert_eq!(
        parse(&[(keys::GRACEFUL_SHUTDOWN_SECONDS, "-1")])
            .0
            .graceful_shutdown_seconds,
        None
    );
    assert_eq!(
        parse(&[(keys::GRACEFUL_SHUTDOWN_SECONDS, "20")])
            .0
            .graceful_shutdown_seconds,
        Some(20)
    );
}
