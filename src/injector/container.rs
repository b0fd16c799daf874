//! The injected `daprd` container, built as a Kubernetes `Container`: its flags are rendered from the sidecar's
//! own [`Args`] so they cannot drift; ports, probes, env, resources, security context and mounts follow Dapr's
//! `pkg/injector/patcher/sidecar_container.go`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
    ServiceAccountTokenProjection, TCPSocketAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::annotations::{ProbeTimings, SidecarConfig};
use super::patch::InjectorConfig;
use crate::sidecar::{Args, Mode};

/// Name of the injected container; a pod with a container (or init container) of this name is left alone.
pub const CONTAINER_NAME: &str = "daprd";
/// The Dapr HTTP API port (fixed, as in Dapr: there is no annotation for it).
pub const HTTP_PORT: u16 = 3500;
/// The public health port (fixed, not declared as a container port, as in Dapr).
pub const PUBLIC_PORT: u16 = 3501;
/// Path of the health endpoint the readiness probe calls on the public port.
pub const HEALTHZ_PATH: &str = "/v1.0/healthz";
/// The projected ServiceAccount token the sidecar presents to the operator's sidecar API.
pub const TOKEN_VOLUME: &str = "tandem-identity-token";
/// Directory the token volume is mounted at; the token is the file [`TOKEN_FILE`] inside.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/tandem.io";
pub const TOKEN_FILE: &str = "token";
/// Audience of the projected token: the operator's sidecar API checks it with a TokenReview.
pub use crate::control_plane::TOKEN_AUDIENCE;
pub const TOKEN_EXPIRATION_SECONDS: i64 = 7200;
/// Key read from the Secrets named by `dapr.io/api-token-secret` and `dapr.io/app-token-secret`.
pub const TOKEN_SECRET_KEY: &str = "token";

/// The sidecar configuration the pod's annotations and the injector's settings ask for.
pub fn sidecar_args(sc: &SidecarConfig, cfg: &InjectorConfig, app_id: &str) -> Args {
    let mut a = Args::declared_defaults();
    a.mode = Mode::Kubernetes;
    a.app_id = app_id.to_owned();
    a.app_port = sc.app_port;
    a.app_protocol = sc.app_protocol.clone();
    if let Some(addr) = &sc.app_channel_address {
        a.app_channel_address = addr.clone();
    }
    a.dapr_http_port = Some(HTTP_PORT);
    a.dapr_grpc_port = Some(sc.grpc_port);
    a.dapr_internal_grpc_port = Some(sc.internal_grpc_port);
    a.dapr_public_port = Some(PUBLIC_PORT);
    let listen: Vec<String> = sc
        .listen_addresses
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    a.dapr_listen_addresses = if listen.is_empty() {
        vec!["[::1]".into(), "127.0.0.1".into()]
    } else {
        listen
    };
    a.enable_metrics = sc.enable_metrics;
    if sc.enable_metrics {
        a.metrics_port = Some(sc.metrics_port);
    }
    a.config = sc.config.clone();
    a.log_level = sc.log_level.clone();
    a.log_as_json = sc.log_as_json;
    a.enable_api_logging = sc.enable_api_logging;
    if let Some(n) = sc.app_max_concurrency {
        a.app_max_concurrency = n;
    }
    if let Some(size) = &sc.max_body_size {
        a.max_body_size = size.clone();
    }
    if let Some(s) = sc.graceful_shutdown_seconds {
        a.dapr_graceful_shutdown_seconds = s;
    }
    if sc.enable_app_health_check {
        a.enable_app_health_check = true;
        a.app_health_check_path = sc.app_health_check_path.clone();
        a.app_health_probe_interval = sc.app_health_probe_interval;
        a.app_health_probe_timeout = sc.app_health_probe_timeout;
        a.app_health_threshold = sc.app_health_threshold;
    }
    a.placement_host_address = match &sc.placement_host_address {
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s.clone()),
        None => cfg.placement_host_address.clone(),
    };
    a.control_plane_address = cfg.control_plane_address();
    a.enable_mtls = cfg.mtls;
    a
}

/// The `daprd` container for `pod`. Volume mounts naming volumes the pod lacks are skipped with a warning.
pub fn sidecar_container(
    pod: &Pod,
    sc: &SidecarConfig,
    cfg: &InjectorConfig,
    app_id: &str,
    native: bool,
    warnings: &mut Vec<String>,
) -> Container {
    let args = sidecar_args(sc, cfg, app_id);
    let ports = [
        ("dapr-http", HTTP_PORT),
        ("dapr-grpc", sc.grpc_port),
        ("dapr-internal", sc.internal_grpc_port),
        ("dapr-metrics", sc.metrics_port),
    ]
    .into_iter()
    .map(|(name, port)| ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        ..Default::default()
    })
    .collect();

    Container {
        name: CONTAINER_NAME.into(),
        image: Some(sc.sidecar_image.clone().unwrap_or_else(|| cfg.sidecar_image.clone())),
        image_pull_policy: cfg.image_pull_policy.clone(),
        args: Some(std::iter::once("sidecar".to_owned()).chain(args.to_flags()).collect()),
        ports: Some(ports),
        env: Some(env(sc)),
        volume_mounts: Some(volume_mounts(pod, sc, warnings)),
        resources: resources(sc),
        security_context: Some(security_context(sc)),
        readiness_probe: Some(probe(
            sc.readiness,
            Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(HEALTHZ_PATH.into()),
                    port: IntOrString::Int(PUBLIC_PORT.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        liveness_probe: Some(probe(
            sc.liveness,
            Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(PUBLIC_PORT.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        restart_policy: native.then(|| "Always".to_owned()),
        ..Default::default()
    }
}

/// The projected ServiceAccount token volume mounted into `daprd`.
pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: TOKEN_FILE.into(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

fn probe(t: ProbeTimings, handler: Probe) -> Probe {
    Probe {
        initial_delay_seconds: Some(t.initial_delay_seconds),
        timeout_seconds: Some(t.timeout_seconds),
        period_seconds: Some(t.period_seconds),
        failure_threshold: Some(t.failure_threshold),
        ..handler
    }
}

fn field_ref(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret_ref(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env(sc: &SidecarConfig) -> Vec<EnvVar> {
    let mut env = vec![
        field_ref("NAMESPACE", "metadata.namespace"),
        field_ref("POD_NAME", "metadata.name"),
    ];
    env.extend(sc.env.iter().map(|(k, v)| value(k, v)));
    env.extend(
        sc.env_from_secret
            .iter()
            .map(|(k, secret, key)| secret_ref(k, secret, key)),
    );
    if !sc.env_keys.is_empty() {
        env.push(value("DAPR_ENV_KEYS", &sc.env_keys.join(" ")));
    }
    if !sc.api_token_secret.is_empty() {
        env.push(secret_ref("DAPR_API_TOKEN", &sc.api_token_secret, TOKEN_SECRET_KEY));
    }
    if !sc.app_token_secret.is_empty() {
        env.push(secret_ref("APP_API_TOKEN", &sc.app_token_secret, TOKEN_SECRET_KEY));
    }
    env
}

fn volume_mounts(pod: &Pod, sc: &SidecarConfig, warnings: &mut Vec<String>) -> Vec<VolumeMount> {
    let pod_has = |name: &str| {
        pod.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| vs.iter().any(|v| v.name == name))
    };
    let requested = sc
        .volume_mounts
        .iter()
        .map(|m| (m, true))
        .chain(sc.volume_mounts_rw.iter().map(|m| (m, false)));
    let mut mounts = Vec::new();
    for ((name, path), read_only) in requested {
        if pod_has(name) {
            mounts.push(VolumeMount {
                name: name.clone(),
                mount_path: path.clone(),
                read_only: Some(read_only),
                ..Default::default()
            });
        } else {
            warnings.push(format!(
                "volume {name} is not present in the pod; not mounted into daprd"
            ));
        }
    }
    mounts.push(VolumeMount {
        name: TOKEN_VOLUME.into(),
        mount_path: TOKEN_MOUNT_PATH.into(),
        read_only: Some(true),
        ..Default::default()
    });
    mounts
}

fn resources(sc: &SidecarConfig) -> Option<ResourceRequirements> {
    let list = |cpu: &Option<String>, memory: &Option<String>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), Quantity(v.clone()))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    let requests = list(&sc.cpu_request, &sc.memory_request);
    let limits = list(&sc.cpu_limit, &sc.memory_limit);
    (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    })
}

fn security_context(sc: &SidecarConfig) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: sc.seccomp_profile_type.as_ref().map(|t| SeccompProfile {
            type_: t.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
