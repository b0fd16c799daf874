//! `patch_for` on many annotation combinations: every patch is applied to the pod's JSON with the json-patch
//! crate and the resulting pod is checked, as the API server would see it.

use clap::Parser;
use serde_json::{Value, json};

use super::*;
use crate::sidecar::{Args, Mode};

fn cfg() -> InjectorConfig {
    InjectorConfig {
        sidecar_image: "ghcr.io/tandem/tandem:1.0".into(),
        image_pull_policy: None,
        control_plane_namespace: "tandem-system".into(),
        placement_host_address: None,
        native_sidecar: false,
        mtls: false,
    }
}

/// A pod as a ReplicaSet creates it: no name yet, annotations from the template.
fn pod_with(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "orders-5d8c7b9f4-",
            "namespace": "shop",
            "labels": {"app": "orders"},
            "annotations": annotations,
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "orders:1",
                "env": [{"name": "LOG", "value": "1"}],
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    })
}

fn enabled(extra: &[(&str, &str)]) -> Value {
    let mut a = json!({"dapr.io/enabled": "true", "dapr.io/app-id": "orders"});
    for (k, v) in extra {
        a[*k] = json!(v);
    }
    pod_with(a)
}

fn to_pod(v: &Value) -> Pod {
    serde_json::from_value(v.clone()).unwrap()
}

/// Runs the injector with `cfg` and returns the patched pod JSON (panics when no patch).
fn inject_with(v: &Value, cfg: &InjectorConfig) -> Value {
    let patch = patch_for(&to_pod(v), cfg).unwrap().expect("a patch");
    for op in patch.iter() {
        assert!(matches!(op, PatchOperation::Add(_)), "only add ops: {op}");
    }
    let mut doc = v.clone();
    json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("patch does not apply: {e}\n{patch:#}"));
    // Applying the patch to the patched pod is what a reinvocation would do: nothing more.
    assert_eq!(patch_for(&to_pod(&doc), cfg).unwrap(), None, "not idempotent");
    doc
}

fn inject(v: &Value) -> Value {
    inject_with(v, &cfg())
}

fn daprd(pod: &Value) -> &Value {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten())
        .find(|c| c["name"] == "daprd")
        .expect("a daprd container")
}

fn args_of(pod: &Value) -> Vec<String> {
    serde_json::from_value(daprd(pod)["args"].clone()).unwrap()
}

/// The daprd args parsed the way `tandem sidecar` parses them.
fn parsed(pod: &Value) -> Args {
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Sidecar(Box<Args>),
    }
    let args = args_of(pod);
    assert_eq!(args[0], "sidecar");
    let Sub::Sidecar(a) = Cli::try_parse_from(std::iter::once("tandem".to_owned()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .command;
    *a
}

fn env_of<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

#[test]
fn injects_daprd_with_daprs_flags_ports_probes_and_labels() {
    let pod = inject(&enabled(&[
        ("dapr.io/app-port", "8080"),
        ("dapr.io/config", "appconfig"),
        ("dapr.io/log-level", "debug"),
        ("dapr.io/log-as-json", "true"),
    ]));
    let c = daprd(&pod);
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 2);
    assert_eq!(c["image"], "ghcr.io/tandem/tandem:1.0");

    let a = parsed(&pod);
    assert_eq!(a.mode, Mode::Kubernetes);
    assert_eq!(a.app_id, "orders");
    assert_eq!(a.app_port, Some(8080));
    assert_eq!(a.config, "appconfig");
    assert_eq!(a.log_level, "debug");
    assert!(a.log_as_json);
    assert_eq!(
        (
            a.dapr_http_port,
            a.dapr_grpc_port,
            a.dapr_internal_grpc_port,
            a.dapr_public_port
        ),
        (Some(3500), Some(50001), Some(50002), Some(3501))
    );
    assert_eq!(a.dapr_listen_addresses, ["[::1]", "127.0.0.1"]);
    assert_eq!(a.metrics_port, Some(9090));
    assert_eq!(a.control_plane_address, "tandem-api.tandem-system.svc:443");
    assert_eq!(a.placement_host_address, None);
    let flags = args_of(&pod).join(" ");
    assert!(
        flags.contains("--mode kubernetes") && flags.contains("--dapr-listen-addresses [::1],127.0.0.1"),
        "{flags}"
    );

    assert_eq!(
        c["ports"],
        json!([
            {"name": "dapr-http", "containerPort": 3500},
            {"name": "dapr-grpc", "containerPort": 50001},
            {"name": "dapr-internal", "containerPort": 50002},
            {"name": "dapr-metrics", "containerPort": 9090},
        ])
    );
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": {"path": "/v1.0/healthz", "port": 3501},
               "initialDelaySeconds": 1, "timeoutSeconds": 1, "periodSeconds": 1, "failureThreshold": 5})
    );
    assert_eq!(
        c["livenessProbe"],
        json!({"tcpSocket": {"port": 3501},
               "initialDelaySeconds": 180, "timeoutSeconds": 3, "periodSeconds": 10, "failureThreshold": 5})
    );
    assert_eq!(
        c["securityContext"],
        json!({"allowPrivilegeEscalation": false, "runAsNonRoot": true, "readOnlyRootFilesystem": true,
               "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(
        env_of(c, "NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_of(c, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(env_of(c, "DAPR_API_TOKEN").is_none());
    assert!(c.get("resources").is_none());
    assert!(c.get("restartPolicy").is_none());

    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["app"], "orders");
    assert_eq!(labels["dapr.io/sidecar-injected"], "true");
    assert_eq!(labels["dapr.io/app-id"], "orders");
    assert_eq!(labels["dapr.io/metrics-enabled"], "true");
}

#[test]
fn label_paths_are_escaped_json_pointers() {
    let patch = patch_for(&to_pod(&enabled(&[])), &cfg()).unwrap().unwrap();
    let text = serde_json::to_string(&patch).unwrap();
    assert!(
        text.contains(r#""path":"/metadata/labels/dapr.io~1sidecar-injected""#),
        "{text}"
    );
    assert!(text.contains(r#""path":"/metadata/labels/dapr.io~1app-id""#), "{text}");
}

#[test]
fn the_service_account_token_is_projected_for_the_operator() {
    let pod = inject(&enabled(&[]));
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["name"], "data");
    assert_eq!(
        volumes[1],
        json!({"name": "tandem-identity-token", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"audience": "tandem-api", "expirationSeconds": 7200, "path": "token"}}]}})
    );
    let mounts = daprd(&pod)["volumeMounts"].as_array().unwrap();
    assert!(mounts.contains(
        &json!({"name": "tandem-identity-token", "mountPath": "/var/run/secrets/tandem.io", "readOnly": true})
    ));
}

#[test]
fn app_containers_get_dapr_ports_without_losing_their_own() {
    let mut v = enabled(&[("dapr.io/app-protocol", "GRPC"), ("dapr.io/grpc-port", "50011")]);
    v["spec"]["containers"][0]["env"] = json!([{"name": "DAPR_HTTP_PORT", "value": "9999"}]);
    v["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "worker", "image": "w:1"}));
    let pod = inject(&v);
    let app = &pod["spec"]["containers"][0];
    assert_eq!(env_of(app, "DAPR_HTTP_PORT").unwrap()["value"], "9999");
    assert_eq!(env_of(app, "DAPR_GRPC_PORT").unwrap()["value"], "50011");
    assert_eq!(env_of(app, "APP_PROTOCOL").unwrap()["value"], "grpc");
    let worker = &pod["spec"]["containers"][1];
    assert_eq!(
        worker["env"],
        json!([{"name": "DAPR_HTTP_PORT", "value": "3500"}, {"name": "DAPR_GRPC_PORT", "value": "50011"},
               {"name": "APP_PROTOCOL", "value": "grpc"}])
    );
    assert_eq!(parsed(&pod).dapr_grpc_port, Some(50011));
    assert!(
        daprd(&pod)["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "DAPR_HTTP_PORT")
    );
}

#[test]
fn a_bare_pod_gets_labels_volumes_and_env_created() {
    let v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "solo", "annotations": {"dapr.io/enabled": "true"}},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    });
    let patch = patch_for(&to_pod(&v), &cfg()).unwrap().unwrap();
    let paths: Vec<String> = patch.iter().map(|op| op.path().to_string()).collect();
    assert_eq!(paths[0], "/metadata/labels");
    assert_eq!(paths[1], "/spec/volumes");
    assert!(paths.contains(&"/spec/containers/0/env".to_owned()));
    let pod = inject(&v);
    assert_eq!(pod["metadata"]["labels"]["dapr.io/app-id"], "solo");
    assert_eq!(pod["spec"]["volumes"][0]["name"], "tandem-identity-token");
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["name"], "DAPR_HTTP_PORT");
    assert_eq!(parsed(&pod).app_id, "solo");
}

#[test]
fn a_pod_without_containers_gets_the_array_first() {
    let v = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "empty", "annotations": {"dapr.io/enabled": "true"}}, "spec": {"containers": []}});
    let patch = patch_for(&to_pod(&v), &cfg()).unwrap().unwrap();
    assert_eq!(patch[0].path().to_string(), "/spec/containers");
    let pod = inject(&v);
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn only_pods_asking_with_true_are_injected() {
    for v in ["false", "1", "yes", ""] {
        let p = pod_with(json!({"dapr.io/enabled": v, "dapr.io/app-id": "a"}));
        assert_eq!(patch_for(&to_pod(&p), &cfg()).unwrap(), None, "{v}");
    }
    let p = pod_with(json!({"dapr.io/app-id": "a"}));
    assert_eq!(patch_for(&to_pod(&p), &cfg()).unwrap(), None);
    let mut p = pod_with(json!({}));
    p["metadata"].as_object_mut().unwrap().remove("annotations");
    assert_eq!(patch_for(&to_pod(&p), &cfg()).unwrap(), None);
    inject(&pod_with(json!({"dapr.io/enabled": "TRUE", "dapr.io/app-id": "a"})));
}

#[test]
fn a_pod_that_already_has_daprd_is_left_alone() {
    let mut v = enabled(&[]);
    v["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "daprd", "image": "x"}));
    assert_eq!(patch_for(&to_pod(&v), &cfg()).unwrap(), None);
    let mut v = enabled(&[]);
    v["spec"]["initContainers"] = json!([{"name": "daprd", "image": "x"}]);
    assert_eq!(patch_for(&to_pod(&v), &cfg()).unwrap(), None);
}

#[test]
fn invalid_app_ids_are_denied_with_the_reason() {
    for id in ["Orders", "orders_v2", "-orders", "orders.shop", &"a".repeat(59)] {
        let v = enabled(&[("dapr.io/app-id", id)]);
        let e = patch_for(&to_pod(&v), &cfg()).unwrap_err();
        assert!(matches!(e, Deny::InvalidAppId { .. }), "{id}: {e}");
        assert!(e.to_string().contains(&format!("'{id}-dapr'")), "{e}");
    }
    let long = patch_for(&to_pod(&enabled(&[("dapr.io/app-id", &"a".repeat(59))])), &cfg()).unwrap_err();
    assert!(long.to_string().contains("no more than 63 characters"), "{long}");
    // 58 + "-dapr" = 63: the longest allowed.
    inject(&enabled(&[("dapr.io/app-id", &"a".repeat(58))]));
}

#[test]
fn app_id_defaults_to_the_pod_name_or_generate_name() {
    let pod = inject(&pod_with(json!({"dapr.io/enabled": "true"})));
    assert_eq!(parsed(&pod).app_id, "orders-5d8c7b9f4");
    let mut v = pod_with(json!({"dapr.io/enabled": "true"}));
    v["metadata"] = json!({"annotations": {"dapr.io/enabled": "true"}});
    assert_eq!(patch_for(&to_pod(&v), &cfg()).unwrap_err(), Deny::EmptyAppId);
}

#[test]
fn native_sidecar_goes_into_init_containers_with_restart_policy_always() {
    let pod = inject(&enabled(&[("dapr.io/enable-native-sidecar", "true")]));
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0]["name"], "daprd");
    assert_eq!(init[0]["restartPolicy"], "Always");
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);

    let mut v = enabled(&[]);
    v["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    let native = InjectorConfig {
        native_sidecar: true,
        mtls: false,
        ..cfg()
    };
    let pod = inject_with(&v, &native);
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(
        (init[0]["name"].as_str(), init[1]["name"].as_str()),
        (Some("migrate"), Some("daprd"))
    );

    // The annotation overrides the injector's default.
    let pod = inject_with(&enabled(&[("dapr.io/enable-native-sidecar", "false")]), &native);
    assert!(pod["spec"].get("initContainers").is_none());
    assert_eq!(pod["spec"]["containers"][1]["name"], "daprd");
}

#[test]
fn resources_come_from_annotations_and_bad_quantities_are_ignored() {
    let pod = inject(&enabled(&[
        ("dapr.io/sidecar-cpu-request", "100m"),
        ("dapr.io/sidecar-memory-request", "64Mi"),
        ("dapr.io/sidecar-cpu-limit", "lots"),
        ("dapr.io/sidecar-memory-limit", "256Mi"),
    ]));
    assert_eq!(
        daprd(&pod)["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
}

#[test]
fn api_and_app_tokens_come_from_secrets() {
    let pod = inject(&enabled(&[
        ("dapr.io/api-token-secret", "dapr-api-token"),
        ("dapr.io/app-token-secret", "app-token"),
    ]));
    let c = daprd(&pod);
    assert_eq!(
        env_of(c, "DAPR_API_TOKEN").unwrap()["valueFrom"],
        json!({"secretKeyRef": {"name": "dapr-api-token", "key": "token"}})
    );
    assert_eq!(
        env_of(c, "APP_API_TOKEN").unwrap()["valueFrom"],
        json!({"secretKeyRef": {"name": "app-token", "key": "token"}})
    );
    // Tokens never appear on the command line.
    assert!(!args_of(&pod).iter().any(|a| a.contains("token")));
}

#[test]
fn env_annotations_reach_daprd() {
    let pod = inject(&enabled(&[
        ("dapr.io/env", "GOMEMLIMIT=180MiB,HOSTS=a,b"),
        ("dapr.io/env-from-secret", "PW=db:password"),
    ]));
    let c = daprd(&pod);
    assert_eq!(env_of(c, "GOMEMLIMIT").unwrap()["value"], "180MiB");
    assert_eq!(env_of(c, "HOSTS").unwrap()["value"], "a,b");
    assert_eq!(
        env_of(c, "PW").unwrap()["valueFrom"],
        json!({"secretKeyRef": {"name": "db", "key": "password"}})
    );
    assert_eq!(env_of(c, "DAPR_ENV_KEYS").unwrap()["value"], "GOMEMLIMIT HOSTS PW");
}

#[test]
fn volume_mounts_use_existing_pod_volumes_only() {
    let pod = inject(&enabled(&[
        ("dapr.io/volume-mounts", "data:/mnt/data,missing:/nope"),
        ("dapr.io/volume-mounts-rw", "data:/mnt/rw"),
    ]));
    let mounts = daprd(&pod)["volumeMounts"].as_array().unwrap();
    assert_eq!(
        mounts[0],
        json!({"name": "data", "mountPath": "/mnt/data", "readOnly": true})
    );
    assert_eq!(
        mounts[1],
        json!({"name": "data", "mountPath": "/mnt/rw", "readOnly": false})
    );
    assert_eq!(mounts.len(), 3);
}

#[test]
fn per_pod_image_seccomp_and_probe_tuning() {
    let pod = inject(&enabled(&[
        ("dapr.io/sidecar-image", "registry.local/tandem:dev"),
        ("dapr.io/sidecar-seccomp-profile-type", "RuntimeDefault"),
        ("dapr.io/sidecar-liveness-probe-delay-seconds", "30"),
        ("dapr.io/sidecar-readiness-probe-threshold", "oops"),
    ]));
    let c = daprd(&pod);
    assert_eq!(c["image"], "registry.local/tandem:dev");
    assert_eq!(
        c["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    assert_eq!(c["livenessProbe"]["initialDelaySeconds"], 30);
    assert_eq!(c["readinessProbe"]["failureThreshold"], 5);

    let pulled = InjectorConfig {
        image_pull_policy: Some("IfNotPresent".into()),
        ..cfg()
    };
    assert_eq!(
        daprd(&inject_with(&enabled(&[]), &pulled))["imagePullPolicy"],
        "IfNotPresent"
    );
}

#[test]
fn runtime_flags_from_annotations() {
    let pod = inject(&enabled(&[
        ("dapr.io/app-port", "3000"),
        ("dapr.io/app-max-concurrency", "4"),
        ("dapr.io/max-body-size", "16Mi"),
        ("dapr.io/graceful-shutdown-seconds", "30"),
        ("dapr.io/enable-api-logging", "false"),
        ("dapr.io/enable-app-health-check", "true"),
        ("dapr.io/app-health-check-path", "/ready"),
        ("dapr.io/app-health-probe-interval", "2"),
        ("dapr.io/app-health-probe-timeout", "300"),
        ("dapr.io/app-health-threshold", "6"),
        ("dapr.io/app-channel-address", "10.1.2.3"),
        ("dapr.io/sidecar-listen-addresses", "0.0.0.0"),
    ]));
    let a = parsed(&pod);
    assert_eq!(a.app_max_concurrency, 4);
    assert_eq!(a.max_body_size, "16Mi");
    assert_eq!(a.dapr_graceful_shutdown_seconds, 30);
    assert_eq!(a.enable_api_logging, Some(false));
    assert!(a.enable_app_health_check);
    assert_eq!(a.app_health_check_path, "/ready");
    assert_eq!(
        (
            a.app_health_probe_interval,
            a.app_health_probe_timeout,
            a.app_health_threshold
        ),
        (2, 300, 6)
    );
    assert_eq!(a.app_channel_address, "10.1.2.3");
    assert_eq!(a.dapr_listen_addresses, ["0.0.0.0"]);
}

#[test]
fn metrics_can_be_disabled() {
    let pod = inject(&enabled(&[
        ("dapr.io/enable-metrics", "false"),
        ("dapr.io/metrics-port", "9999"),
    ]));
    let a = parsed(&pod);
    assert!(!a.enable_metrics);
    assert_eq!(a.metrics_port, None);
    assert_eq!(pod["metadata"]["labels"]["dapr.io/metrics-enabled"], "false");
    // The port is declared anyway, as Dapr does.
    assert_eq!(
        daprd(&pod)["ports"][3],
        json!({"name": "dapr-metrics", "containerPort": 9999})
    );
}

#[test]
fn placement_address_from_injector_or_annotation() {
    let with_placement = InjectorConfig {
        placement_host_address: Some("tandem-placement.tandem-system.svc:50005".into()),
        ..cfg()
    };
    let a = parsed(&inject_with(&enabled(&[]), &with_placement));
    assert_eq!(
        a.placement_host_address.as_deref(),
        Some("tandem-placement.tandem-system.svc:50005")
    );
    let a = parsed(&inject_with(
        &enabled(&[("dapr.io/placement-host-address", "p:1")]),
        &with_placement,
    ));
    assert_eq!(a.placement_host_address.as_deref(), Some("p:1"));
    let a = parsed(&inject_with(
        &enabled(&[("dapr.io/placement-host-address", "")]),
        &with_placement,
    ));
    assert_eq!(a.placement_host_address, None);
}

#[test]
fn an_existing_token_volume_is_not_added_twice() {
    let mut v = enabled(&[]);
    v["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "tandem-identity-token", "emptyDir": {}}));
    let pod = inject(&v);
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 2);
}
