//! `tandem sidecar` flags: daprd's names and defaults. The injector renders its container args from this
//! same type, so the two cannot drift.

use clap::{ArgAction, Args as ClapArgs, ValueEnum};

/// Go's flag package accepts `--flag`, `--flag=true` and `--flag=false`; these attributes give clap the same.
macro_rules! go_bool {
    () => {
        ArgAction::Set
    };
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    #[default]
    Standalone,
    Kubernetes,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct Args {
    /// A unique ID for the application, used for service discovery, state encapsulation and pub/sub consumer ID.
    #[arg(short = 'a', long, default_value = "")]
    pub app_id: String,
    /// The port the application is listening on; none means no app channel.
    #[arg(short = 'p', long)]
    pub app_port: Option<u16>,
    /// Protocol for the app: http or grpc (https, grpcs and h2c are not supported yet).
    #[arg(short = 'P', long, default_value = "http")]
    pub app_protocol: String,
    /// Address the app listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub app_channel_address: String,
    /// HTTP port for the Dapr API (0 picks a free port).
    #[arg(short = 'H', long)]
    pub dapr_http_port: Option<u16>,
    /// gRPC port for the Dapr API (0 picks a free port).
    #[arg(short = 'G', long)]
    pub dapr_grpc_port: Option<u16>,
    /// gRPC port for sidecar-to-sidecar calls (0 picks a free port).
    #[arg(short = 'I', long)]
    pub dapr_internal_grpc_port: Option<u16>,
    /// Address the internal (sidecar-to-sidecar) server listens on; all interfaces by default.
    #[arg(long, default_value = "0.0.0.0")]
    pub dapr_internal_grpc_listen_address: String,
    /// Public port serving /v1.0/healthz on all interfaces.
    #[arg(long)]
    pub dapr_public_port: Option<u16>,
    /// Port for Prometheus metrics (0 picks a free port).
    #[arg(short = 'M', long)]
    pub metrics_port: Option<u16>,
    /// Serve metrics.
    #[arg(long, action = go_bool!(), default_value_t = true, num_args = 0..=1, default_missing_value = "true")]
    pub enable_metrics: bool,
    /// Comma-separated addresses the HTTP and gRPC APIs listen on.
    #[arg(long, default_value = "127.0.0.1", value_delimiter = ',')]
    pub dapr_listen_addresses: Vec<String>,
    /// Folder of resource YAML (Components, Subscriptions, HTTPEndpoints, Resiliency); repeatable.
    #[arg(short = 'd', long = "resources-path", alias = "components-path")]
    pub resources_path: Vec<String>,
    /// Path to a Configuration YAML file (standalone) or Configuration name (kubernetes).
    #[arg(short = 'c', long, default_value = "")]
    pub config: String,
    #[arg(long, value_enum, default_value_t = Mode::Standalone)]
    pub mode: Mode,
    /// debug, info, warn, error or fatal.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Print logs as JSON.
    #[arg(long, action = go_bool!(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub log_as_json: bool,
    /// Log every API call.
    #[arg(long, action = go_bool!(), num_args = 0..=1, default_missing_value = "true")]
    pub enable_api_logging: Option<bool>,
    /// Maximum concurrent calls to the app (-1: unlimited).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub app_max_concurrency: i64,
    /// Largest request body accepted, as a quantity (4Mi, 512Ki, 1G or bytes).
    #[arg(long, default_value = "4Mi")]
    pub max_body_size: String,
    /// Seconds to drain in-flight requests on shutdown.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    pub dapr_graceful_shutdown_seconds: i64,
    /// Probe the app's health and stop delivering work to it while unhealthy.
    #[arg(long, action = go_bool!(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub enable_app_health_check: bool,
    #[arg(long, default_value = "/healthz")]
    pub app_health_check_path: String,
    /// Seconds between app health probes.
    #[arg(long, default_value_t = 5)]
    pub app_health_probe_interval: u64,
    /// Milliseconds a probe may take.
    #[arg(long, default_value_t = 500)]
    pub app_health_probe_timeout: u64,
    /// Consecutive failed probes before the app counts as unhealthy.
    #[arg(long, default_value_t = 3)]
    pub app_health_threshold: u32,
    /// How long an invocation arriving before the app listens on --app-port is held for it (tandem's; 0 fails
    /// such calls at once). At most 1024 are held.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub app_ready_hold: std::time::Duration,
    /// Address of the placement service (used by actors).
    #[arg(long)]
    pub placement_host_address: Option<String>,
    /// Address of the tandem operator's sidecar API (kubernetes mode)
    #[arg(long, default_value = "")]
    pub control_plane_address: String,
    /// Mutual TLS between sidecars on workload certificates (SPIFFE IDs): the internal port requires a client
    /// certificate and callers are identified by it. The certificate comes from the operator in kubernetes mode,
    /// else from DAPR_CERT_CHAIN, DAPR_CERT_KEY and DAPR_TRUST_ANCHORS.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_mtls: bool,
    /// Address of Dapr's Sentry; accepted for compatibility: tandem's certificate authority is the operator at
    /// --control-plane-address.
    #[arg(long, default_value = "")]
    pub sentry_address: String,
    /// Namespace of this app (kubernetes mode sets it from the pod).
    #[arg(long = "namespace", env = "NAMESPACE", default_value = "default", hide = true)]
    pub namespace: String,
    #[arg(long = "pod-name", env = "POD_NAME", default_value = "", hide = true)]
    pub pod_name: String,
    /// Token every API call must carry as `dapr-api-token`.
    #[arg(long = "dapr-api-token", env = "DAPR_API_TOKEN", hide = true, hide_env_values = true)]
    pub api_token: Option<String>,
    /// Token sent to the app as `dapr-api-token`.
    #[arg(long = "app-api-token", env = "APP_API_TOKEN", hide = true, hide_env_values = true)]
    pub app_token: Option<String>,
}

impl Default for Args {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: Args,
        }
        Wrapper::parse_from(["sidecar"]).args
    }
}

impl Args {
    /// The namespace manifests read from --resources-path must be in to load. As in Dapr, a manifest's own
    /// `metadata.namespace` only counts when this process has a namespace (NAMESPACE set, or --namespace given
    /// other than the default); a local run ignores it, so Dapr's quickstart components (namespace
    /// `quickstarts`) load.
    pub fn manifest_namespace(&self) -> &str {
        let from_env = std::env::var("NAMESPACE").is_ok_and(|v| !v.is_empty());
        if from_env || self.namespace != "default" {
            &self.namespace
        } else {
            ""
        }
    }

    pub const DEFAULT_HTTP_PORT: u16 = 3500;
    pub const DEFAULT_GRPC_PORT: u16 = 50001;
    pub const DEFAULT_INTERNAL_GRPC_PORT: u16 = 50002;
    pub const DEFAULT_METRICS_PORT: u16 = 9090;

    /// `--max-body-size` in bytes.
    pub fn max_body_bytes(&self) -> Result<usize, String> {
        parse_quantity(&self.max_body_size)
    }

    /// Checks what clap cannot: values with meaning beyond their type.
    pub fn validate(&self) -> Result<(), String> {
        match self.app_protocol.as_str() {
            "http" | "grpc" => {}
            "https" | "grpcs" | "h2c" => {
                return Err(format!(
                    "--app-protocol {} is not supported by tandem yet; use http or grpc",
                    self.app_protocol
                ));
            }
            other => {
                return Err(format!("--app-protocol {other:?} is not valid; use http or grpc"));
            }
        }
        if self.app_id.contains('.') && self.mode == Mode::Standalone {
            return Err(format!("--app-id {:?} may not contain '.'", self.app_id));
        }
        self.max_body_bytes().map_err(|e| format!("--max-body-size: {e}"))?;
        match self.log_level.as_str() {
            "debug" | "info" | "warn" | "error" | "fatal" => Ok(()),
            other => Err(format!(
                "--log-level {other:?} is not one of debug, info, warn, error, fatal"
            )),
        }
    }
}

/// Parses a Kubernetes-style quantity (`4Mi`, `512Ki`, `1G`, `100`) into bytes.
pub fn parse_quantity(q: &str) -> Result<usize, String> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity such as 4Mi"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!("unknown unit {u:?} in {q:?} (use Ki, Mi, Gi, K, M, G)"));
        }
    };
    Ok((n * mult) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("4Mi").unwrap(), 4 * 1024 * 1024);
        assert_eq!(parse_quantity("100").unwrap(), 100);
        assert_eq!(parse_quantity("2K").unwrap(), 2000);
        assert!(parse_quantity("4Qi").is_err());
    }

    #[test]
    fn defaults_match_daprd() {
        let a = Args::default();
        assert_eq!(a.app_protocol, "http");
        assert_eq!(a.dapr_listen_addresses, ["127.0.0.1"]);
        assert_eq!(a.max_body_bytes().unwrap(), 4 * 1024 * 1024);
        assert_eq!(a.dapr_graceful_shutdown_seconds, 5);
        assert!(a.enable_metrics);
        assert!(a.validate().is_ok());
    }

    #[test]
    fn unsupported_protocols_are_refused_clearly() {
        let a = Args {
            app_protocol: "grpcs".into(),
            ..Args::default()
        };
        assert!(a.validate().unwrap_err().contains("not supported"));
    }
}
