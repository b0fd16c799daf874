//! Dapr's multi-app run file (`dapr.yaml`, version 1), read and resolved as the Dapr CLI resolves it: paths
//! relative to the file (common) or to the app's directory (apps), app settings over `<appDir>/.dapr/` over
//! common ones, and every key tandem does not act on reported instead of silently dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::sidecar::Args;

/// What `-f DIR` looks for in the directory, as the Dapr CLI does.
pub const DEFAULT_FILE_NAME: &str = "dapr.yaml";

#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    #[error("reading the run file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> RunFileError {
    RunFileError::Invalid(msg.into())
}

/// Where an app's output (or its sidecar's log) goes: Dapr's `appLogDestination`/`daprdLogDestination`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum LogDestination {
    #[serde(rename = "console")]
    Console,
    #[serde(rename = "file")]
    File,
    #[serde(rename = "fileAndConsole")]
    FileAndConsole,
}

impl LogDestination {
    pub fn console(self) -> bool {
        matches!(self, LogDestination::Console | LogDestination::FileAndConsole)
    }
    pub fn file(self) -> bool {
        matches!(self, LogDestination::File | LogDestination::FileAndConsole)
    }
}

/// A port in a run file: 1-65535, or 0/-1 (Dapr's "unset": pick one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Port(pub Option<u16>);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that a bad value is reported where it stands (key and line).
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port: 1-65535, or -1 to leave it unset")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Port, E> {
                match n {
                    -1 | 0 => Ok(Port(None)),
                    1..=65535 => Ok(Port(Some(n as u16))),
                    _ => Err(E::custom(format!(
                        "{n} is not a port: use 1-65535, or -1 to leave it unset"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Port, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_i64(V)
    }
}

/// An `env` value: YAML scalars are taken as their text, as the Dapr CLI's YAML reader takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(s.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(n.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(b.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<EnvValue, E> {
                Ok(EnvValue(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Declares the settings `common` and an app share (each optional; an app's own value wins) and the app
/// entry, which has them plus its own. Spelled once so that the two cannot disagree.
macro_rules! run_file_entries {
    (
        shared { $($(#[$sm:meta])* $s:ident : $st:ty,)* }
        app { $($(#[$am:meta])* $a:ident : $at:ty,)* }
    ) => {
        /// The `common` section, and the shared part of an app.
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct Shared { $($(#[$sm])* pub $s: Option<$st>,)* }

        impl Shared {
            /// Each setting of `self`, else `common`'s.
            fn or(mut self, common: &Shared) -> Shared {
                $( if self.$s.is_none() { self.$s = common.$s.clone(); } )*
                self
            }
        }

        /// One entry of `apps`.
        #[derive(Debug, Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct RawApp { $($(#[$am])* $a: $at,)* $($(#[$sm])* $s: Option<$st>,)* }

        struct AppOwn { $($a: $at,)* }

        impl RawApp {
            fn split(self) -> (AppOwn, Shared) {
                (AppOwn { $($a: self.$a,)* }, Shared { $($s: self.$s,)* })
            }
        }
    };
}

run_file_entries! {
    shared {
        config_file_path: String,
        app_protocol: String,
        api_listen_addresses: String,
        log_level: String,
        app_max_concurrency: i64,
        placement_host_address: String,
        resources_path: String,
        resources_paths: Vec<String>,
        max_body_size: String,
        enable_app_health_check: bool,
        app_health_check_path: String,
        app_health_probe_interval: u32,
        app_health_probe_timeout: u32,
        app_health_threshold: u32,
        enable_api_logging: bool,
        env: BTreeMap<String, EnvValue>,
        daprd_log_destination: LogDestination,
        app_log_destination: LogDestination,
    }
    app {
        #[serde(rename = "appID")]
        app_id: Option<String>,
        app_dir_path: String,
        #[serde(default)]
        app_port: Port,
        app_channel_address: Option<String>,
        #[serde(default)]
        command: Vec<String>,
        #[serde(rename = "daprHTTPPort", default)]
        dapr_http_port: Port,
        #[serde(rename = "daprGRPCPort", default)]
        dapr_grpc_port: Port,
        #[serde(rename = "daprInternalGRPCPort", default)]
        dapr_internal_grpc_port: Port,
        #[serde(default)]
        metrics_port: Port,
    }
}

/// Keys a run file may hold that tandem reads.
const SHARED_KEYS: &[&str] = &[
    "configFilePath",
    "appProtocol",
    "apiListenAddresses",
    "logLevel",
    "appMaxConcurrency",
    "placementHostAddress",
    "resourcesPath",
    "resourcesPaths",
    "maxBodySize",
    "enableAppHealthCheck",
    "appHealthCheckPath",
    "appHealthProbeInterval",
    "appHealthProbeTimeout",
    "appHealthThreshold",
    "enableApiLogging",
    "env",
    "daprdLogDestination",
    "appLogDestination",
];
const APP_KEYS: &[&str] = &[
    "appID",
    "appDirPath",
    "appPort",
    "appChannelAddress",
    "command",
    "daprHTTPPort",
    "daprGRPCPort",
    "daprInternalGRPCPort",
    "metricsPort",
];
/// Keys the Dapr CLI reads that tandem does not act on (yet).
const UNSUPPORTED_KEYS: &[(&str, &str)] = &[
    ("runtimePath", "tandem is its own runtime"),
    ("enableProfiling", "tandem has no profiling endpoint"),
    ("profilePort", "tandem has no profiling endpoint"),
    ("appSSL", "deprecated in Dapr; use appProtocol"),
    ("readBufferSize", "tandem sizes its HTTP buffers itself"),
    ("unixDomainSocket", "Unix domain sockets are not supported yet"),
    ("schedulerHostAddress", "tandem has no scheduler yet"),
    ("containerImage", "apps run as local processes only"),
    ("containerImagePullPolicy", "apps run as local processes only"),
    ("createService", "apps run as local processes only"),
];

#[derive(Debug, Deserialize)]
struct RawFile {
    version: Option<i64>,
    name: Option<String>,
    common: Option<Shared>,
    apps: Option<Vec<RawApp>>,
}

/// One app of a run file, resolved: what to start and how.
#[derive(Clone, Debug)]
pub struct AppPlan {
    pub app_id: String,
    pub app_dir: PathBuf,
    /// The app's command line; empty for a sidecar alone.
    pub command: Vec<String>,
    /// Added to the app's environment (common's, then the app's own).
    pub env: BTreeMap<String, String>,
    /// The sidecar's settings. Ports left `None` are chosen when the app starts; no resources path means
    /// tandem's embedded defaults (where the Dapr CLI would use `~/.dapr/components`).
    pub sidecar: Args,
    pub app_log: LogDestination,
    pub daprd_log: LogDestination,
}

/// A parsed run file.
#[derive(Clone, Debug)]
pub struct RunFile {
    /// The file's absolute path (`-` for standard input).
    pub path: String,
    pub name: String,
    pub apps: Vec<AppPlan>,
    /// Keys present but not acted on, one line each.
    pub ignored: Vec<String>,
}

/// `-f` takes a file (`.yaml`/`.yml`), a directory holding `dapr.yaml`, or `-` for standard input.
pub fn locate(path: &str) -> Result<PathBuf, RunFileError> {
    if path == "-" {
        return Ok(PathBuf::from("-"));
    }
    let p = Path::new(path);
    let meta = std::fs::metadata(p).map_err(|source| RunFileError::Read {
        path: path.to_string(),
        source,
    })?;
    let file = if meta.is_dir() {
        let f = p.join(DEFAULT_FILE_NAME);
        if !f.is_file() {
            return Err(invalid(format!("no {DEFAULT_FILE_NAME} in the directory {path}")));
        }
        f
    } else if path.ends_with(".yaml") || path.ends_with(".yml") {
        p.to_path_buf()
    } else {
        return Err(invalid(format!("file {path:?} is not a YAML file")));
    };
    std::path::absolute(&file).map_err(|source| RunFileError::Read {
        path: path.to_string(),
        source,
    })
}

/// Reads and resolves the run file at `path` (from [`locate`]).
pub fn load(path: &Path) -> Result<RunFile, RunFileError> {
    let (text, base) = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|source| RunFileError::Read {
            path: "-".into(),
            source,
        })?;
        (s, std::env::current_dir().unwrap_or_default())
    } else {
        let text = std::fs::read_to_string(path).map_err(|source| RunFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        (text, path.parent().map(Path::to_path_buf).unwrap_or_default())
    };
    parse(&text, &path.display().to_string(), &base)
}

/// Parses run-file text; relative paths in `common` are taken from `base`.
pub fn parse(text: &str, path: &str, base: &Path) -> Result<RunFile, RunFileError> {
    let raw: RawFile = serde_yaml::from_str(text).map_err(|e| invalid(format!("{path}: {e}")))?;
    let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
    let ignored = ignored_keys(&value);
    match raw.version {
        Some(1) => {}
        None | Some(0) => return Err(invalid(format!("{path}: required field 'version' not found"))),
        Some(v) => return Err(invalid(format!("{path}: version {v} is not supported; use version: 1"))),
    }
    let common = raw.common.unwrap_or_default();
    let raw_apps = raw.apps.unwrap_or_default();
    if raw_apps.is_empty() {
        return Err(invalid(format!("{path}: no apps to run")));
    }
    let common_config = opt_path(base, common.config_file_path.as_deref(), "common.configFilePath")?;
    let common_resources = resource_paths(
        base,
        common.resources_paths.as_deref(),
        common.resources_path.as_deref(),
        "common",
    )?;
    let mut apps = Vec::with_capacity(raw_apps.len());
    for (i, raw) in raw_apps.into_iter().enumerate() {
        let (own, shared) = raw.split();
        let at = format!("apps[{i}]");
        let app_dir = existing(base, &own.app_dir_path, &format!("{at}.appDirPath"))?;
        let app_id = match own.app_id {
            Some(id) if !id.trim().is_empty() => id,
            _ => app_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    invalid(format!(
                        "{path}: {at}: no appID, and appDirPath has no name to take it from"
                    ))
                })?,
        };
        let at = format!("{at} ({app_id})");
        let env = {
            let mut env: BTreeMap<String, String> = common
                .env
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            env.extend(shared.env.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
            env
        };
        // Precedence (as the Dapr CLI's): the app's own > <appDir>/.dapr/ > common.
        let dot_dapr = app_dir.join(".dapr");
        let own_resources = resource_paths(
            &app_dir,
            shared.resources_paths.as_deref(),
            shared.resources_path.as_deref(),
            &at,
        )?;
        let resources = if !own_resources.is_empty() {
            own_resources
        } else if dot_dapr.join("resources").is_dir() {
            vec![dot_dapr.join("resources")]
        } else {
            common_resources.clone()
        };
        let config = match opt_path(
            &app_dir,
            shared.config_file_path.as_deref(),
            &format!("{at}.configFilePath"),
        )? {
            Some(c) => Some(c),
            None if dot_dapr.join("config.yaml").is_file() => Some(dot_dapr.join("config.yaml")),
            None => common_config.clone(),
        };
        let s = shared.or(&common);
        let mut args = Args::declared_defaults();
        args.app_id = app_id.clone();
        args.app_port = own.app_port.0;
        args.dapr_http_port = own.dapr_http_port.0;
        args.dapr_grpc_port = own.dapr_grpc_port.0;
        args.dapr_internal_grpc_port = own.dapr_internal_grpc_port.0;
        args.metrics_port = own.metrics_port.0;
        if let Some(a) = own.app_channel_address {
            args.app_channel_address = a;
        }
        args.resources_path = resources.iter().map(|p| p.display().to_string()).collect();
        args.config = config.map(|c| c.display().to_string()).unwrap_or_default();
        if let Some(v) = s.app_protocol {
            args.app_protocol = v;
        }
        if let Some(v) = s.api_listen_addresses {
            args.dapr_listen_addresses = v
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
        }
        if let Some(v) = s.log_level {
            args.log_level = v;
        }
        if let Some(v) = s.app_max_concurrency {
            args.app_max_concurrency = v;
        }
        args.placement_host_address = s.placement_host_address;
        if let Some(v) = s.max_body_size {
            args.max_body_size = v;
        }
        if let Some(v) = s.enable_app_health_check {
            args.enable_app_health_check = v;
        }
        if let Some(v) = s.app_health_check_path {
            args.app_health_check_path = v;
        }
        if let Some(v) = s.app_health_probe_interval.filter(|v| *v > 0) {
            args.app_health_probe_interval = v.into();
        }
        if let Some(v) = s.app_health_probe_timeout.filter(|v| *v > 0) {
            args.app_health_probe_timeout = v.into();
        }
        if let Some(v) = s.app_health_threshold.filter(|v| *v > 0) {
            args.app_health_threshold = v;
        }
        args.enable_api_logging = s.enable_api_logging;
        // Local development: other machines have no business on the internal port.
        args.dapr_internal_grpc_listen_address = "127.0.0.1".into();
        args.validate().map_err(|e| invalid(format!("{path}: {at}: {e}")))?;
        if own.command.first().is_some_and(|c| c.trim().is_empty()) {
            return Err(invalid(format!("{path}: {at}.command: the program is empty")));
        }
        apps.push(AppPlan {
            app_id,
            app_dir,
            command: own.command,
            env,
            sidecar: args,
            app_log: s.app_log_destination.unwrap_or(LogDestination::FileAndConsole),
            daprd_log: s.daprd_log_destination.unwrap_or(LogDestination::File),
        });
    }
    for (i, a) in apps.iter().enumerate() {
        if apps[..i].iter().any(|b| b.app_id == a.app_id) {
            return Err(invalid(format!("{path}: appID {:?} appears more than once", a.app_id)));
        }
    }
    Ok(RunFile {
        path: path.to_string(),
        name: raw.name.unwrap_or_default(),
        apps,
        ignored,
    })
}

/// `~` expanded, then taken relative to `base`.
fn absolute(base: &Path, p: &str) -> PathBuf {
    let p = p.trim();
    let expanded = match p.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(p),
    };
    let joined = base.join(expanded);
    // Without `.` parts or a trailing slash, so that the same directory always reads the same.
    std::path::absolute(&joined).unwrap_or(joined).components().collect()
}

fn existing(base: &Path, p: &str, key: &str) -> Result<PathBuf, RunFileError> {
    if p.trim().is_empty() {
        return Err(invalid(format!("{key} is empty")));
    }
    let abs = absolute(base, p);
    if !abs.exists() {
        return Err(invalid(format!("{key}: {} does not exist", abs.display())));
    }
    Ok(abs)
}

fn opt_path(base: &Path, p: Option<&str>, key: &str) -> Result<Option<PathBuf>, RunFileError> {
    match p {
        Some(p) if !p.trim().is_empty() => existing(base, p, key).map(Some),
        _ => Ok(None),
    }
}

/// `resourcesPaths` then the older `resourcesPath`, as the Dapr CLI merges them.
fn resource_paths(
    base: &Path,
    many: Option<&[String]>,
    one: Option<&str>,
    at: &str,
) -> Result<Vec<PathBuf>, RunFileError> {
    let mut out = Vec::new();
    for (j, p) in many.unwrap_or_default().iter().enumerate() {
        out.push(existing(base, p, &format!("{at}.resourcesPaths[{j}]"))?);
    }
    if let Some(p) = opt_path(base, one, &format!("{at}.resourcesPath"))? {
        out.push(p);
    }
    Ok(out)
}

/// Every key present that tandem does not act on, with why.
fn ignored_keys(v: &serde_yaml::Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(top) = v.as_mapping() else { return out };
    for k in top.keys() {
        let key = k.as_str().unwrap_or("?");
        if !["version", "name", "common", "apps"].contains(&key) {
            out.push(format!("{key} is ignored: not a run-file key"));
        }
    }
    let mut check = |at: &str, m: &serde_yaml::Mapping, allowed: &[&[&str]], app_only_hint: bool| {
        for k in m.keys() {
            let key = k.as_str().unwrap_or("?");
            if allowed.iter().any(|list| list.contains(&key)) {
                continue;
            }
            let why = if let Some((_, why)) = UNSUPPORTED_KEYS.iter().find(|(k, _)| *k == key) {
                (*why).to_string()
            } else if app_only_hint && APP_KEYS.contains(&key) {
                "it belongs in an app entry, not in common".to_string()
            } else {
                "not a run-file key".to_string()
            };
            out.push(format!("{at}.{key} is ignored: {why}"));
        }
    };
    if let Some(c) = top.get("common").and_then(|c| c.as_mapping()) {
        check("common", c, &[SHARED_KEYS], true);
    }
    if let Some(apps) = top.get("apps").and_then(|a| a.as_sequence()) {
        for (i, a) in apps.iter().enumerate() {
            if let Some(m) = a.as_mapping() {
                check(&format!("apps[{i}]"), m, &[SHARED_KEYS, APP_KEYS], false);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
