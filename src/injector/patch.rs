//! The pure decision: from a Pod and the injector's settings to an RFC 6902 patch that adds the `daprd`
//! sidecar (Dapr's `pkg/injector/patcher/sidecar_patcher.go`). Only `add` operations; arrays and maps that
//! the pod lacks are created before anything is appended to them; a pod that already has `daprd` gets no patch.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde::Serialize;
use serde_json::Value;

use super::annotations::{SidecarConfig, injection_requested};
use super::container::{self, CONTAINER_NAME, HTTP_PORT};

/// Pod labels the injector adds.
pub const LABEL_INJECTED: &str = "dapr.io/sidecar-injected";
pub const LABEL_APP_ID: &str = "dapr.io/app-id";
pub const LABEL_METRICS_ENABLED: &str = "dapr.io/metrics-enabled";

/// The injector's own settings, the same for every pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectorConfig {
    /// Image of the `daprd` container unless `dapr.io/sidecar-image` names another.
    pub sidecar_image: String,
    /// `imagePullPolicy` of the `daprd` container; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// Namespace of tandem's control plane (operator, injector).
    pub control_plane_namespace: String,
    /// `--placement-host-address` for pods without `dapr.io/placement-host-address`.
    pub placement_host_address: Option<String>,
    /// Whether `daprd` is a native sidecar (init container with `restartPolicy: Always`) unless
    /// `dapr.io/enable-native-sidecar` says otherwise.
    pub native_sidecar: bool,
    /// Whether injected sidecars run with `--enable-mtls`.
    pub mtls: bool,
}

impl InjectorConfig {
    /// Where sidecars reach the operator's sidecar API.
    pub fn control_plane_address(&self) -> String {
        format!("tandem-api.{}.svc:443", self.control_plane_namespace)
    }
}

/// Why a pod that asked for a sidecar may not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Deny {
    #[error("value for the dapr.io/app-id annotation is empty and the pod has no name to default to")]
    EmptyAppId,
    #[error(
        "invalid app id (input: '{app_id}', service: '{service}'): {reason}; set dapr.io/app-id to a lowercase name of letters, digits and '-'"
    )]
    InvalidAppId {
        app_id: String,
        service: String,
        reason: String,
    },
    #[error("the pod cannot be read: {0}")]
    UnreadablePod(String),
}

/// The patch that injects the sidecar into `pod`, or `None` when the pod did not ask for one
/// (`dapr.io/enabled` is not `"true"`) or already has a `daprd` container.
pub fn patch_for(pod: &Pod, cfg: &InjectorConfig) -> Result<Option<Patch>, Deny> {
    let annotations = pod.metadata.annotations.as_ref();
    if !injection_requested(annotations) || has_sidecar(pod) {
        return Ok(None);
    }
    let pod_name = pod_display_name(pod);
    let (sc, mut warnings) = SidecarConfig::from_annotations(annotations.expect("checked above"));
    let app_id = match &sc.app_id {
        Some(id) => id.clone(),
        None => {
            let id = default_app_id(pod).ok_or(Deny::EmptyAppId)?;
            warnings.push(format!("dapr.io/app-id is not set; defaulting to {id:?}"));
            id
        }
    };
    validate_app_id(&app_id)?;

    let native = sc.enable_native_sidecar.unwrap_or(cfg.native_sidecar);
    let sidecar = container::sidecar_container(pod, &sc, cfg, &app_id, native, &mut warnings);
    for w in &warnings {
        tracing::warn!(pod = %pod_name, app_id = %app_id, "{w}");
    }

    let spec = pod.spec.as_ref();
    let containers: &[Container] = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let mut ops = Ops::default();
    match spec {
        None => ops.add(&["spec"], serde_json::json!({ "containers": [] })),
        Some(s) if s.containers.is_empty() => ops.add(&["spec", "containers"], Vec::<Value>::new()),
        Some(_) => {}
    }
    if pod.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
        ops.add(&["metadata", "labels"], serde_json::json!({}));
    }

    let volume = container::token_volume();
    match spec.and_then(|s| s.volumes.as_ref()).filter(|v| !v.is_empty()) {
        None => ops.add(&["spec", "volumes"], [&volume]),
        Some(existing) if existing.iter().any(|v| v.name == volume.name) => {}
        Some(_) => ops.add(&["spec", "volumes", "-"], &volume),
    }

    if native {
        if spec
            .and_then(|s| s.init_containers.as_ref())
            .is_none_or(|c| c.is_empty())
        {
            ops.add(&["spec", "initContainers"], Vec::<Value>::new());
        }
        ops.add(&["spec", "initContainers", "-"], &sidecar);
    } else {
        ops.add(&["spec", "containers", "-"], &sidecar);
    }

    ops.add(&["metadata", "labels", LABEL_INJECTED], "true");
    ops.add(&["metadata", "labels", LABEL_APP_ID], &app_id);
    ops.add(
        &["metadata", "labels", LABEL_METRICS_ENABLED],
        sc.enable_metrics.to_string(),
    );

    let mut app_env = vec![
        ("DAPR_HTTP_PORT", HTTP_PORT.to_string()),
        ("DAPR_GRPC_PORT", sc.grpc_port.to_string()),
    ];
    if let Some(p) = app_protocol_env(&sc.app_protocol) {
        app_env.push(("APP_PROTOCOL", p.to_owned()));
    }
    for (i, c) in containers.iter().enumerate() {
        add_env_if_missing(&mut ops, i, c, &app_env);
    }
    Ok(Some(Patch(ops.0)))
}

/// Whether a container or init container is already named `daprd`.
pub fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == CONTAINER_NAME)
    })
}

/// The pod's name, else its `generateName` without the trailing `-` (pods made by a ReplicaSet have no name yet).
pub fn default_app_id(pod: &Pod) -> Option<String> {
    let m = &pod.metadata;
    m.name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| m.generate_name.as_deref().map(|g| g.trim_end_matches('-').to_owned()))
        .filter(|n| !n.is_empty())
}

/// Dapr's Kubernetes app-id rule: `<id>-dapr` (the Service name) must be a DNS-1123 label.
pub fn validate_app_id(app_id: &str) -> Result<(), Deny> {
    if app_id.is_empty() {
        return Err(Deny::EmptyAppId);
    }
    let service = format!("{app_id}-dapr");
    let mut reasons = Vec::new();
    if service.len() > 63 {
        reasons.push("must be no more than 63 characters".to_owned());
    }
    let valid_chars = service
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts_alnum = service
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid_chars || !starts_alnum {
        reasons.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Deny::InvalidAppId {
            app_id: app_id.to_owned(),
            service,
            reason: reasons.join(", "),
        })
    }
}

/// `APP_PROTOCOL` for the app containers: a known protocol in lower case, else none.
fn app_protocol_env(protocol: &str) -> Option<&'static str> {
    match protocol.to_ascii_lowercase().as_str() {
        "" | "http" => Some("http"),
        "https" => Some("https"),
        "grpc" => Some("grpc"),
        "grpcs" => Some("grpcs"),
        "h2c" => Some("h2c"),
        _ => None,
    }
}

/// Adds the variables a container does not define yet; creates its `env` when it has none.
fn add_env_if_missing(ops: &mut Ops, index: usize, c: &Container, vars: &[(&str, String)]) {
    let idx = index.to_string();
    let as_env = |(name, value): &(&str, String)| EnvVar {
        name: (*name).to_owned(),
        value: Some(value.clone()),
        ..Default::default()
    };
    match c.env.as_ref().filter(|e| !e.is_empty()) {
        None => ops.add(
            &["spec", "containers", &idx, "env"],
            vars.iter().map(as_env).collect::<Vec<_>>(),
        ),
        Some(existing) => {
            for var in vars {
                if !existing.iter().any(|e| e.name == var.0) {
                    ops.add(&["spec", "containers", &idx, "env", "-"], as_env(var));
                }
            }
        }
    }
}

fn pod_display_name(pod: &Pod) -> String {
    let m = &pod.metadata;
    let name = m
        .name
        .clone()
        .or_else(|| m.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_default();
    match &m.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    /// An `add` at the path made of `tokens`, each escaped as a JSON pointer token (`/` → `~1`).
    fn add(&mut self, tokens: &[&str], value: impl Serialize) {
        self.0.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value: serde_json::to_value(value).expect("Kubernetes objects serialize to JSON"),
        }));
    }
}

#[cfg(test)]
#[path = "patch_tests.rs"]
mod tests;
