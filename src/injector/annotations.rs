//! The `dapr.io/*` pod annotations, parsed into a typed [`SidecarConfig`] the way Dapr's injector reads them
//! (`pkg/injector/patcher/sidecar.go`): booleans are truthy strings, integers that do not parse are ignored with
//! a warning, and an annotation that is absent keeps its default while one set to `""` is honoured.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Annotation keys, exactly as Dapr spells them.
pub mod keys {
    pub const ENABLED: &str = "dapr.io/enabled";
    pub const APP_ID: &str = "dapr.io/app-id";
    pub const APP_PORT: &str = "dapr.io/app-port";
    pub const APP_PROTOCOL: &str = "dapr.io/app-protocol";
    pub const APP_CHANNEL_ADDRESS: &str = "dapr.io/app-channel-address";
    pub const CONFIG: &str = "dapr.io/config";
    pub const LOG_LEVEL: &str = "dapr.io/log-level";
    pub const LOG_AS_JSON: &str = "dapr.io/log-as-json";
    pub const API_TOKEN_SECRET: &str = "dapr.io/api-token-secret";
    pub const APP_TOKEN_SECRET: &str = "dapr.io/app-token-secret";
    pub const APP_MAX_CONCURRENCY: &str = "dapr.io/app-max-concurrency";
    pub const ENABLE_METRICS: &str = "dapr.io/enable-metrics";
    pub const METRICS_PORT: &str = "dapr.io/metrics-port";
    pub const ENV: &str = "dapr.io/env";
    pub const ENV_FROM_SECRET: &str = "dapr.io/env-from-secret";
    pub const GRPC_PORT: &str = "dapr.io/grpc-port";
    pub const INTERNAL_GRPC_PORT: &str = "dapr.io/internal-grpc-port";
    pub const CPU_REQUEST: &str = "dapr.io/sidecar-cpu-request";
    pub const CPU_LIMIT: &str = "dapr.io/sidecar-cpu-limit";
    pub const MEMORY_REQUEST: &str = "dapr.io/sidecar-memory-request";
    pub const MEMORY_LIMIT: &str = "dapr.io/sidecar-memory-limit";
    pub const LISTEN_ADDRESSES: &str = "dapr.io/sidecar-listen-addresses";
    pub const LIVENESS_DELAY: &str = "dapr.io/sidecar-liveness-probe-delay-seconds";
    pub const LIVENESS_TIMEOUT: &str = "dapr.io/sidecar-liveness-probe-timeout-seconds";
    pub const LIVENESS_PERIOD: &str = "dapr.io/sidecar-liveness-probe-period-seconds";
    pub const LIVENESS_THRESHOLD: &str = "dapr.io/sidecar-liveness-probe-threshold";
    pub const READINESS_DELAY: &str = "dapr.io/sidecar-readiness-probe-delay-seconds";
    pub const READINESS_TIMEOUT: &str = "dapr.io/sidecar-readiness-probe-timeout-seconds";
    pub const READINESS_PERIOD: &str = "dapr.io/sidecar-readiness-probe-period-seconds";
    pub const READINESS_THRESHOLD: &str = "dapr.io/sidecar-readiness-probe-threshold";
    pub const SIDECAR_IMAGE: &str = "dapr.io/sidecar-image";
    pub const SECCOMP_PROFILE_TYPE: &str = "dapr.io/sidecar-seccomp-profile-type";
    pub const HTTP_MAX_REQUEST_SIZE: &str = "dapr.io/http-max-request-size";
    pub const MAX_BODY_SIZE: &str = "dapr.io/max-body-size";
    pub const GRACEFUL_SHUTDOWN_SECONDS: &str = "dapr.io/graceful-shutdown-seconds";
    pub const ENABLE_API_LOGGING: &str = "dapr.io/enable-api-logging";
    pub const VOLUME_MOUNTS: &str = "dapr.io/volume-mounts";
    pub const VOLUME_MOUNTS_RW: &str = "dapr.io/volume-mounts-rw";
    pub const ENABLE_APP_HEALTH_CHECK: &str = "dapr.io/enable-app-health-check";
    pub const APP_HEALTH_CHECK_PATH: &str = "dapr.io/app-health-check-path";
    pub const APP_HEALTH_PROBE_INTERVAL: &str = "dapr.io/app-health-probe-interval";
    pub const APP_HEALTH_PROBE_TIMEOUT: &str = "dapr.io/app-health-probe-timeout";
    pub const APP_HEALTH_THRESHOLD: &str = "dapr.io/app-health-threshold";
    pub const PLACEMENT_HOST_ADDRESS: &str = "dapr.io/placement-host-address";
    pub const ENABLE_NATIVE_SIDECAR: &str = "dapr.io/enable-native-sidecar";

    /// Dapr annotations tandem's sidecar has no equivalent for yet: reported, then ignored.
    pub const UNSUPPORTED: &[&str] = &[
        "dapr.io/app-ssl",
        "dapr.io/enable-profiling",
        "dapr.io/enable-debug",
        "dapr.io/debug-port",
        "dapr.io/http-read-buffer-size",
        "dapr.io/read-buffer-size",
        "dapr.io/block-shutdown-duration",
        "dapr.io/unix-domain-socket-path",
        "dapr.io/disable-builtin-k8s-secret-store",
        "dapr.io/app-binding-options-timeout",
        "dapr.io/actors-disseminate-timeout",
        "dapr.io/scheduler-host-address",
        "dapr.io/pluggable-components",
        "dapr.io/pluggable-components-sockets-folder",
        "dapr.io/inject-pluggable-components",
        "dapr.io/sentry-request-jwt-audiences",
        "dapr.io/disable-init-endpoints",
    ];
}

/// Timings of one probe on the daprd container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTimings {
    pub initial_delay_seconds: i32,
    pub timeout_seconds: i32,
    pub period_seconds: i32,
    pub failure_threshold: i32,
}

/// Everything the annotations of one pod ask of its sidecar. Fields left `None` were not set (or set to a
/// value that was ignored); the injector then uses its own default.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarConfig {
    /// `dapr.io/enabled` is `"true"` in any letter case (Dapr's handler checks exactly this, not truthiness).
    pub enabled: bool,
    /// `None` when absent; the pod's name is used instead.
    pub app_id: Option<String>,
    /// Absent or ≤ 0: no app channel.
    pub app_port: Option<u16>,
    pub app_protocol: String,
    pub app_channel_address: Option<String>,
    pub config: String,
    pub log_level: String,
    pub log_as_json: bool,
    pub api_token_secret: String,
    pub app_token_secret: String,
    pub app_max_concurrency: Option<i64>,
    pub enable_metrics: bool,
    pub metrics_port: u16,
    pub grpc_port: u16,
    pub internal_grpc_port: u16,
    /// `dapr.io/env`: `(name, value)` pairs for the daprd container.
    pub env: Vec<(String, String)>,
    /// `dapr.io/env-from-secret`: `(name, secret, key)`.
    pub env_from_secret: Vec<(String, String, String)>,
    /// Every name listed by `dapr.io/env` and `dapr.io/env-from-secret` (daprd's `DAPR_ENV_KEYS`).
    pub env_keys: Vec<String>,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    pub listen_addresses: String,
    pub liveness: ProbeTimings,
    pub readiness: ProbeTimings,
    pub sidecar_image: Option<String>,
    pub seccomp_profile_type: Option<String>,
    /// `dapr.io/max-body-size`, or the legacy `dapr.io/http-max-request-size` (MB) as `<n>Mi`.
    pub max_body_size: Option<String>,
    /// Absent or negative: daprd's default.
    pub graceful_shutdown_seconds: Option<i64>,
    /// Passed only when set: otherwise the Configuration decides.
    pub enable_api_logging: Option<bool>,
    /// `(volume, mountPath)` from `dapr.io/volume-mounts` (read-only).
    pub volume_mounts: Vec<(String, String)>,
    /// `(volume, mountPath)` from `dapr.io/volume-mounts-rw`.
    pub volume_mounts_rw: Vec<(String, String)>,
    pub enable_app_health_check: bool,
    pub app_health_check_path: String,
    pub app_health_probe_interval: u64,
    pub app_health_probe_timeout: u64,
    pub app_health_threshold: u32,
    /// `Some("")` disables placement for this pod.
    pub placement_host_address: Option<String>,
    pub enable_native_sidecar: Option<bool>,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            app_id: None,
            app_port: None,
            app_protocol: "http".into(),
            app_channel_address: None,
            config: String::new(),
            log_level: "info".into(),
            log_as_json: false,
            api_token_secret: String::new(),
            app_token_secret: String::new(),
            app_max_concurrency: None,
            enable_metrics: true,
            metrics_port: 9090,
            grpc_port: 50001,
            internal_grpc_port: 50002,
            env: Vec::new(),
            env_from_secret: Vec::new(),
            env_keys: Vec::new(),
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
            listen_addresses: "[::1],127.0.0.1".into(),
            liveness: ProbeTimings {
                initial_delay_seconds: 180,
                timeout_seconds: 3,
                period_seconds: 10,
                failure_threshold: 5,
            },
            readiness: ProbeTimings {
                initial_delay_seconds: 1,
                timeout_seconds: 1,
                period_seconds: 1,
                failure_threshold: 5,
            },
            sidecar_image: None,
            seccomp_profile_type: None,
            max_body_size: None,
            graceful_shutdown_seconds: None,
            enable_api_logging: None,
            volume_mounts: Vec::new(),
            volume_mounts_rw: Vec::new(),
            enable_app_health_check: false,
            app_health_check_path: "/healthz".into(),
            app_health_probe_interval: 5,
            app_health_probe_timeout: 500,
            app_health_threshold: 3,
            placement_host_address: None,
            enable_native_sidecar: None,
        }
    }
}

/// Dapr's truthy strings (`dapr/kit/strings.IsTruthy`).
pub fn is_truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

/// Whether the annotations ask for injection: `dapr.io/enabled` is `"true"`, any letter case.
pub fn injection_requested(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(keys::ENABLED))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

impl SidecarConfig {
    /// Reads the annotations; returns the config and one warning per annotation that was ignored.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> (Self, Vec<String>) {
        let mut r = Reader {
            a: annotations,
            warnings: Vec::new(),
        };
        let mut c = SidecarConfig {
            enabled: injection_requested(Some(annotations)),
            ..SidecarConfig::default()
        };
        let d = SidecarConfig::default();

        c.app_id = r.string(keys::APP_ID).filter(|s| !s.is_empty());
        c.app_port = r.int::<i64>(keys::APP_PORT).and_then(|p| match p {
            ..=0 => None,
            1..=65535 => Some(p as u16),
            _ => {
                r.warn(keys::APP_PORT, format!("{p} is not a port number"));
                None
            }
        });
        c.app_protocol = r.string(keys::APP_PROTOCOL).unwrap_or(d.app_protocol);
        c.app_channel_address = r.string(keys::APP_CHANNEL_ADDRESS).filter(|s| !s.is_empty());
        c.config = r.string(keys::CONFIG).unwrap_or_default();
        c.log_level = r.string(keys::LOG_LEVEL).unwrap_or(d.log_level);
        c.log_as_json = r.boolean(keys::LOG_AS_JSON).unwrap_or(d.log_as_json);
        c.api_token_secret = r.string(keys::API_TOKEN_SECRET).unwrap_or_default();
        c.app_token_secret = r.string(keys::APP_TOKEN_SECRET).unwrap_or_default();
        c.app_max_concurrency = r.int(keys::APP_MAX_CONCURRENCY);
        c.enable_metrics = r.boolean(keys::ENABLE_METRICS).unwrap_or(d.enable_metrics);
        c.metrics_port = r.port(keys::METRICS_PORT).unwrap_or(d.metrics_port);
        c.grpc_port = r.port(keys::GRPC_PORT).unwrap_or(d.grpc_port);
        c.internal_grpc_port = r.port(keys::INTERNAL_GRPC_PORT).unwrap_or(d.internal_grpc_port);

        let (keys_env, env) = parse_env(&r.string(keys::ENV).unwrap_or_default());
        let (keys_secret, from_secret) = parse_env(&r.string(keys::ENV_FROM_SECRET).unwrap_or_default());
        c.env = env;
        c.env_from_secret = from_secret
            .into_iter()
            .filter_map(|(name, v)| secret_source(&v).map(|(s, k)| (name, s, k)))
            .collect();
        c.env_keys = keys_env.into_iter().chain(keys_secret).collect();

        c.cpu_request = r.quantity(keys::CPU_REQUEST);
        c.cpu_limit = r.quantity(keys::CPU_LIMIT);
        c.memory_request = r.quantity(keys::MEMORY_REQUEST);
        c.memory_limit = r.quantity(keys::MEMORY_LIMIT);
        c.listen_addresses = r.string(keys::LISTEN_ADDRESSES).unwrap_or(d.listen_addresses);

        let probe = |r: &mut Reader, keys: [&str; 4], d: ProbeTimings| ProbeTimings {
            initial_delay_seconds: r.int(keys[0]).unwrap_or(d.initial_delay_seconds),
            timeout_seconds: r.int(keys[1]).unwrap_or(d.timeout_seconds),
            period_seconds: r.int(keys[2]).unwrap_or(d.period_seconds),
            failure_threshold: r.int(keys[3]).unwrap_or(d.failure_threshold),
        };
        c.liveness = probe(
            &mut r,
            [
                keys::LIVENESS_DELAY,
                keys::LIVENESS_TIMEOUT,
                keys::LIVENESS_PERIOD,
                keys::LIVENESS_THRESHOLD,
            ],
            d.liveness,
        );
        c.readiness = probe(
            &mut r,
            [
                keys::READINESS_DELAY,
                keys::READINESS_TIMEOUT,
                keys::READINESS_PERIOD,
                keys::READINESS_THRESHOLD,
            ],
            d.readiness,
        );

        c.sidecar_image = r.string(keys::SIDECAR_IMAGE).filter(|s| !s.is_empty());
        c.seccomp_profile_type = r.string(keys::SECCOMP_PROFILE_TYPE).filter(|s| !s.is_empty());
        let legacy_mb = r.int::<u32>(keys::HTTP_MAX_REQUEST_SIZE).map(|mb| format!("{mb}Mi"));
        c.max_body_size = r
            .string(keys::MAX_BODY_SIZE)
            .filter(|s| !s.is_empty())
            .and_then(|s| match crate::sidecar::args::parse_quantity(&s) {
                Ok(_) => Some(s),
                Err(e) => {
                    r.warn(keys::MAX_BODY_SIZE, e);
                    None
                }
            })
            .or(legacy_mb);
        c.graceful_shutdown_seconds = r.int::<i64>(keys::GRACEFUL_SHUTDOWN_SECONDS).filter(|s| *s >= 0);
        c.enable_api_logging = r.boolean(keys::ENABLE_API_LOGGING);

        c.volume_mounts = parse_volume_mounts(&r.string(keys::VOLUME_MOUNTS).unwrap_or_default());
        c.volume_mounts_rw = parse_volume_mounts(&r.string(keys::VOLUME_MOUNTS_RW).unwrap_or_default());

        c.enable_app_health_check = r.boolean(keys::ENABLE_APP_HEALTH_CHECK).unwrap_or(false);
        c.app_health_check_path = r.string(keys::APP_HEALTH_CHECK_PATH).unwrap_or(d.app_health_check_path);
        c.app_health_probe_interval = r
            .int(keys::APP_HEALTH_PROBE_INTERVAL)
            .unwrap_or(d.app_health_probe_interval);
        c.app_health_probe_timeout = r
            .int(keys::APP_HEALTH_PROBE_TIMEOUT)
            .unwrap_or(d.app_health_probe_timeout);
        c.app_health_threshold = r.int(keys::APP_HEALTH_THRESHOLD).unwrap_or(d.app_health_threshold);

        // Dapr trims spaces and quotes so that `'""'` in YAML disables placement.
        c.placement_host_address = r
            .string(keys::PLACEMENT_HOST_ADDRESS)
            .map(|s| s.trim_matches(['"', '\'']).trim().to_owned());
        c.enable_native_sidecar = r.boolean(keys::ENABLE_NATIVE_SIDECAR);

        for key in keys::UNSUPPORTED {
            if annotations.contains_key(*key) {
                r.warn(key, "not supported by tandem yet; ignored".to_owned());
            }
        }
        (c, r.warnings)
    }
}

struct Reader<'a> {
    a: &'a BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl Reader<'_> {
    fn warn(&mut self, key: &str, why: String) {
        self.warnings.push(format!("annotation {key}: {why}"));
    }

    fn string(&self, key: &str) -> Option<String> {
        self.a.get(key).cloned()
    }

    fn boolean(&self, key: &str) -> Option<bool> {
        self.a.get(key).map(|v| is_truthy(v))
    }

    /// Parsed like Go's `strconv.ParseInt`: no surrounding spaces; a value that does not fit is ignored too.
    fn int<T: FromStr>(&mut self, key: &str) -> Option<T> {
        let v = self.a.get(key)?;
        match v.parse::<T>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.warn(key, format!("{v:?} is not an integer in range; ignored"));
                None
            }
        }
    }

    fn port(&mut self, key: &str) -> Option<u16> {
        self.int::<u16>(key).filter(|p| *p != 0)
    }

    fn quantity(&mut self, key: &str) -> Option<String> {
        let v = self.a.get(key).filter(|v| !v.is_empty())?;
        if is_quantity(v) {
            Some(v.clone())
        } else {
            self.warn(
                key,
                format!("{v:?} is not a Kubernetes quantity such as 250m or 128Mi; ignored"),
            );
            None
        }
    }
}

/// Kubernetes' quantity grammar (`resource.ParseQuantity`), non-negative: digits with an optional fraction,
/// then a binary (`Ki`..`Ei`) or decimal (`n u m k M G T P E`) suffix or an exponent (`e3`).
pub fn is_quantity(q: &str) -> bool {
    let s = q.strip_prefix('+').unwrap_or(q);
    let num_end = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let mut parts = num.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    if frac.is_some_and(|f| f.contains('.')) || (int.is_empty() && frac.is_none_or(str::is_empty)) {
        return false;
    }
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        e => {
            let Some(exp) = e.strip_prefix(['e', 'E']) else {
                return false;
            };
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        }
    }
}

/// Dapr's `K=V,K2=V2` splitting: a comma separates two variables only when a `NAME=` follows it, so values
/// may contain commas. Returns every name and the `(name, value)` pairs.
fn parse_env(s: &str) -> (Vec<String>, Vec<(String, String)>) {
    if s.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let starts_variable = |rest: &str| {
        let rest = rest.trim_start();
        let name_len = rest
            .char_indices()
            .take_while(|(i, c)| c.is_ascii_alphabetic() || *c == '_' || (*i > 0 && c.is_ascii_digit()))
            .count();
        name_len > 0 && rest[name_len..].starts_with('=')
    };
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == ',' && starts_variable(&s[i + 1..]) {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    let mut names = Vec::new();
    let mut vars = Vec::new();
    for p in parts {
        if let Some((k, v)) = p.trim().split_once('=') {
            names.push(k.to_owned());
            vars.push((k.to_owned(), v.to_owned()));
        }
    }
    (names, vars)
}

/// `secret` (key = secret name) or `secret:key`.
fn secret_source(v: &str) -> Option<(String, String)> {
    let v = v.trim();
    if v.contains(':') {
        let parts: Vec<&str> = v.split(':').collect();
        match parts[..] {
            [name, key] => Some((name.trim().to_owned(), key.trim().to_owned())),
            _ => None,
        }
    } else {
        Some((v.to_owned(), v.to_owned()))
    }
}

/// `volume:/path,volume2:/path2`; malformed entries are skipped, as Dapr does.
fn parse_volume_mounts(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|m| {
            let parts: Vec<&str> = m.trim().split(':').collect();
            match parts[..] {
                [name, path] => Some((name.to_owned(), path.to_owned())),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "annotations_tests.rs"]
mod tests;
