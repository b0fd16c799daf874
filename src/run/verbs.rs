//! The Dapr CLI's everyday verbs for apps started with `tandem run`: `list`, `stop`, `invoke`, `publish`,
//! `version`, and shell completions, with the Dapr CLI's flag names and output.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};
use http::Method;
use serde::Serialize;

use super::registry::{self, Entry};
use super::supervisor::Sink;
use super::{client, file, status};

/// How long `invoke` and `publish` wait for the sidecar's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits for what it stopped to be gone.
const STOP_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct ListArgs {
    /// The output format: table, json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct StopArgs {
    /// The app ids to stop (comma-separated, or as arguments).
    #[arg(short = 'a', long = "app-id", value_delimiter = ',')]
    pub app_id: Vec<String>,
    /// Stop every app started from this run file (or the directory holding its dapr.yaml).
    #[arg(short = 'f', long = "run-file")]
    pub run_file: Option<String>,
    /// App ids, as the Dapr CLI also takes them.
    pub ids: Vec<String>,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct InvokeArgs {
    /// The app to invoke.
    #[arg(short = 'a', long = "app-id")]
    pub app_id: String,
    /// The method to invoke.
    #[arg(short = 'm', long)]
    pub method: String,
    /// The request body.
    #[arg(short = 'd', long, conflicts_with = "data_file")]
    pub data: Option<String>,
    /// A file holding the request body.
    #[arg(short = 'f', long = "data-file")]
    pub data_file: Option<String>,
    /// The HTTP verb.
    #[arg(short = 'v', long, default_value = "POST")]
    pub verb: String,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct PublishArgs {
    /// The app whose sidecar publishes.
    #[arg(short = 'i', long = "publish-app-id")]
    pub publish_app_id: String,
    /// The pub/sub component.
    #[arg(short = 'p', long)]
    pub pubsub: String,
    /// The topic.
    #[arg(short = 't', long)]
    pub topic: String,
    /// The event's data.
    #[arg(short = 'd', long, conflicts_with = "data_file")]
    pub data: Option<String>,
    /// A file holding the event's data.
    #[arg(short = 'f', long = "data-file")]
    pub data_file: Option<String>,
    /// Publish metadata as a JSON object, e.g. '{"rawPayload":"true","ttlInSeconds":"10"}'.
    #[arg(short = 'm', long)]
    pub metadata: Option<String>,
}

#[derive(Clone, Debug, ClapArgs)]
pub struct VersionArgs {
    /// `json` for machine-readable output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
}

/// One row of `tandem list`, in the Dapr CLI's JSON names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    app_id: String,
    http_port: u16,
    grpc_port: u16,
    app_port: u16,
    metrics_enabled: bool,
    command: String,
    age: String,
    created: String,
    daprd_pid: u32,
    cli_pid: u32,
    app_pid: u32,
    max_request_body_size: u64,
    run_template_path: String,
    app_log_path: String,
    daprd_log_path: String,
    run_template_name: String,
}

fn row(e: Entry, now: u64) -> Row {
    Row {
        age: registry::age(e.started, now),
        created: registry::created(e.started),
        app_id: e.app_id,
        http_port: e.http_port,
        grpc_port: e.grpc_port,
        app_port: e.app_port,
        metrics_enabled: e.metrics_enabled,
        command: e.command,
        daprd_pid: e.daprd_pid,
        cli_pid: e.cli_pid,
        app_pid: e.app_pid,
        max_request_body_size: e.max_request_body_size,
        run_template_path: e.run_template_path,
        app_log_path: e.app_log_path,
        daprd_log_path: e.daprd_log_path,
        run_template_name: e.run_template_name,
    }
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let now = registry::now();
    let rows: Vec<Row> = registry::list(&registry::dir())
        .into_iter()
        .map(|e| row(e, now))
        .collect();
    match args.output {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        ListFormat::Yaml => print!("{}", serde_yaml::to_string(&rows)?),
        ListFormat::Table if rows.is_empty() => println!("No Dapr instances found."),
        ListFormat::Table => print!("{}", table(&rows)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The Dapr CLI's columns, aligned.
fn table(rows: &[Row]) -> String {
    let head = [
        "APP ID",
        "HTTP PORT",
        "GRPC PORT",
        "APP PORT",
        "COMMAND",
        "AGE",
        "CREATED",
        "DAPRD PID",
        "CLI PID",
        "APP PID",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.app_id.clone(),
                r.http_port.to_string(),
                r.grpc_port.to_string(),
                r.app_port.to_string(),
                truncate(&r.command, 20),
                r.age.clone(),
                r.created.clone(),
                r.daprd_pid.to_string(),
                r.cli_pid.to_string(),
                r.app_pid.to_string(),
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..head.len()).map(width).collect();
    let line = |cols: Vec<&str>| {
        let mut s = String::from("  ");
        for (i, c) in cols.iter().enumerate() {
            s.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for c in &cells {
        out.push_str(&line(c.iter().map(String::as_str).collect()));
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "..."
    }
}

pub async fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let entries = registry::list(&registry::dir());
    let mut failed = false;
    let mut waiting: Vec<(u32, u64)> = Vec::new();
    if let Some(path) = &args.run_file {
        let path = file::locate(path)?.display().to_string();
        let mut clis: Vec<(u32, u64)> = entries
            .iter()
            .filter(|e| e.run_template_path == path)
            .map(|e| (e.cli_pid, e.cli_start))
            .collect();
        clis.dedup();
        if clis.is_empty() {
            status::failure(&format!(
                "Failed to stop Dapr and app processes: couldn't find apps with run file {path:?}"
            ));
            failed = true;
        }
        for (pid, start) in clis {
            registry::signal(pid, libc::SIGTERM, false);
            waiting.push((pid, start));
        }
        if !failed {
            status::success(&Sink::console(), "Dapr and app processes stopped successfully");
        }
    }
    for id in args.app_id.iter().chain(&args.ids).filter(|i| !i.is_empty()) {
        let Some(e) = entries.iter().find(|e| &e.app_id == id) else {
            status::failure(&format!("failed to stop app id {id}: couldn't find app id {id}"));
            failed = true;
            continue;
        };
        let shared = entries.iter().filter(|o| o.cli_pid == e.cli_pid).count() > 1;
        if !shared {
            // Its own `tandem run`: stopping that stops the app, then its sidecar.
            registry::signal(e.cli_pid, libc::SIGTERM, false);
            waiting.push((e.cli_pid, e.cli_start));
        } else if e.app_pid != 0 {
            // One app of a run file: its supervisor sees the app end and stops its sidecar.
            registry::signal(e.app_pid, libc::SIGTERM, true);
            waiting.push((e.daprd_pid, registry::start_ticks(e.daprd_pid).unwrap_or(0)));
        } else {
            registry::signal(e.daprd_pid, libc::SIGTERM, true);
            waiting.push((e.daprd_pid, registry::start_ticks(e.daprd_pid).unwrap_or(0)));
        }
        status::success(&Sink::console(), &format!("app stopped successfully: {id}"));
    }
    if args.run_file.is_none() && args.app_id.is_empty() && args.ids.is_empty() {
        anyhow::bail!("name the apps to stop: --app-id ID or --run-file FILE");
    }
    // Wait for them to be gone, so that what follows (`tandem list`, a new run) sees them stopped.
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    while waiting.iter().any(|(pid, start)| registry::alive(*pid, *start)) {
        if tokio::time::Instant::now() > deadline {
            status::failure("some processes were still running 30s after they were asked to stop");
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `--data` or the contents of `--data-file`.
fn payload(data: Option<String>, file: Option<String>) -> anyhow::Result<Vec<u8>> {
    match (data, file) {
        (_, Some(f)) => std::fs::read(&f).map_err(|e| anyhow::anyhow!("Error reading payload from '{f}'. Error: {e}")),
        (Some(d), None) => Ok(d.into_bytes()),
        (None, None) => Ok(Vec::new()),
    }
}

fn find(app_id: &str) -> anyhow::Result<Entry> {
    registry::list(&registry::dir())
        .into_iter()
        .find(|e| e.app_id == app_id)
        .ok_or_else(|| anyhow::anyhow!("app ID {app_id} not found"))
}

/// Dapr's path segment encoding: an app id or method may not leave its segment.
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub async fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let result = async {
        let body = payload(args.data, args.data_file)?;
        let verb = Method::from_bytes(args.verb.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("{:?} is not an HTTP verb", args.verb))?;
        let e = find(&args.app_id)?;
        // The method may carry a path and a query, as in `dapr invoke --method orders/1?x=y`.
        let method = args.method.trim_start_matches('/');
        let path = format!("/v1.0/invoke/{}/method/{method}", segment(&args.app_id));
        let r = client::call(e.http_port, verb, &path, Some("application/json"), body, CALL_TIMEOUT).await?;
        if !(200..400).contains(&r.status.as_u16()) {
            anyhow::bail!("{}{}", r.status, body_hint(&r.body));
        }
        anyhow::Ok(r.body)
    }
    .await;
    match result {
        Ok(body) => {
            if !body.is_empty() {
                println!("{}", String::from_utf8_lossy(&body));
            }
            status::success(&Sink::console(), "App invoked successfully");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            status::failure(&format!("error invoking app {}: {e:#}", args.app_id));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `: <the sidecar's error>` when it answered with one.
fn body_hint(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    format!(": {}", text.trim())
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let topic = args.topic.clone();
    let result = async {
        let body = payload(args.data, args.data_file)?;
        let metadata: serde_json::Map<String, serde_json::Value> = match &args.metadata {
            Some(m) => {
                serde_json::from_str(m).map_err(|e| anyhow::anyhow!("Error parsing metadata as JSON. Error: {e}"))?
            }
            None => Default::default(),
        };
        let query: Vec<String> = metadata
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                format!("metadata.{}={}", segment(k), segment(&v))
            })
            .collect();
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        // A body that is a whole CloudEvent is sent as one, as the Dapr CLI does.
        let content_type = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v)
                if ["id", "source", "specversion", "type", "data"]
                    .iter()
                    .all(|k| v.get(k).is_some()) =>
            {
                "application/cloudevents+json"
            }
            _ => "application/json",
        };
        let e = find(&args.publish_app_id).map_err(|_| anyhow::anyhow!("couldn't find a running Dapr instance"))?;
        let path = format!(
            "/v1.0/publish/{}/{}{query}",
            segment(&args.pubsub),
            segment(&args.topic)
        );
        let r = client::call(e.http_port, Method::POST, &path, Some(content_type), body, CALL_TIMEOUT).await?;
        if !r.status.is_success() {
            anyhow::bail!(
                "unexpected status code {} on publishing to {} in {}{}",
                r.status.as_u16(),
                args.topic,
                args.pubsub,
                body_hint(&r.body)
            );
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            status::success(&Sink::console(), "Event published successfully");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            status::failure(&format!("Error publishing topic {topic}: {e:#}"));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn version(args: VersionArgs) -> anyhow::Result<ExitCode> {
    let v = env!("CARGO_PKG_VERSION");
    match args.output.as_deref() {
        None | Some("") => println!("CLI version: {v} \nRuntime version: {v}"),
        Some("json") => println!("{}", serde_json::json!({ "Cli version": v, "Runtime version": v })),
        Some(_) => {
            status::failure("An invalid output format was specified.");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_the_dapr_cli_columns_aligned() {
        let r = Row {
            app_id: "orders".into(),
            http_port: 3500,
            grpc_port: 50001,
            app_port: 8080,
            metrics_enabled: true,
            command: "python3 a-rather-long-app-name.py".into(),
            age: "5s".into(),
            created: "2026-12-05 12:10.19".into(),
            daprd_pid: 10,
            cli_pid: 9,
            app_pid: 11,
            max_request_body_size: 0,
            run_template_path: String::new(),
            app_log_path: String::new(),
            daprd_log_path: String::new(),
            run_template_name: String::new(),
        };
        let t = table(&[r]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("  APP ID  HTTP PORT  GRPC PORT  APP PORT  COMMAND"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("  orders  3500       50001      8080      python3 a-rather-lon..."),
            "{t}"
        );
        assert!(lines[1].ends_with("9        11"), "{t}");
    }

    #[test]
    fn payloads_come_from_data_or_a_file() {
        assert_eq!(payload(Some("x".into()), None).unwrap(), b"x");
        assert!(payload(None, None).unwrap().is_empty());
        let err = payload(None, Some("/no/such/file".into())).unwrap_err().to_string();
        assert!(err.contains("Error reading payload from '/no/such/file'"), "{err}");
    }
}
