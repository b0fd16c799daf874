//! `tandem run`: a sidecar with embedded defaults beside the user's app, like `dapr run`.

pub mod client;
pub mod file;
pub mod registry;
pub mod status;
pub mod supervisor;
pub mod verbs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use tokio::process::Command;

use crate::api::Component;
use crate::api::configuration::NameResolutionSpec;
use crate::sidecar::{Args, Defaults, PortPolicy, Sidecar};

#[derive(Clone, Debug, ClapArgs)]
pub struct RunArgs {
    #[command(flatten)]
    pub sidecar: Args,
    /// Run every app of a Dapr run file (`dapr.yaml`, or a directory holding one; `-` reads standard input).
    #[arg(short = 'f', long = "run-file")]
    pub run_file: Option<String>,
    /// Started by `tandem run -f`, which records the app for `tandem list` itself.
    #[arg(long, hide = true)]
    pub supervised: bool,
    /// The app to start beside the sidecar (after `--`); without it the sidecar runs alone.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Where `tandem run` keeps local state: `~/.tandem`.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".tandem")
}

/// What `tandem run` uses when the user gives no resources or Configuration: needs no other software.
/// Every app started with `tandem run` registers in one SQLite file, so local apps find each other by app id;
/// jobs are kept in another (`jobs.db`), so they survive restarts.
pub fn defaults() -> Defaults {
    let home = home_dir();
    let db = home.join("state.db");
    Defaults {
        components: vec![
            Component::new(
                "statestore",
                "state.sqlite",
                &[
                    ("connectionString", db.to_string_lossy().as_ref()),
                    ("actorStateStore", "true"),
                ],
            ),
            // Named as `dapr init`'s Redis pub/sub is, so samples written for it work unchanged: one SQLite file
            // shared by every local sidecar, each app id its own consumer group.
            Component::new(
                "pubsub",
                "pubsub.sqlite",
                &[("connectionString", home.join("pubsub.db").to_string_lossy().as_ref())],
            ),
        ],
        name_resolution: Some(NameResolutionSpec {
            component: "sqlite".into(),
            version: "v1".into(),
            configuration: serde_json::json!({ "connectionString": home.join("nameresolution.db").to_string_lossy() }),
        }),
        jobs_store: Some(home.join("jobs.db")),
    }
}

pub async fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.run_file {
        if !args.command.is_empty() {
            anyhow::bail!("--run-file starts the apps its file names; it takes no command after --");
        }
        let ignored = flags_beside_run_file();
        if !ignored.is_empty() {
            status::warning(
                &supervisor::Sink::console(),
                &format!("flags given with --run-file are ignored: {}", ignored.join(" ")),
            );
        }
        let file = file::load(&file::locate(path)?)?;
        return supervisor::run(file).await;
    }
    // Local development: other machines have no business on the internal port.
    if args.sidecar.dapr_internal_grpc_listen_address == "0.0.0.0" {
        args.sidecar.dapr_internal_grpc_listen_address = "127.0.0.1".into();
    }
    let sidecar = Sidecar::start(args.sidecar.clone(), PortPolicy::DefaultsIfFree, defaults()).await?;
    let shutdown = sidecar.rt.shutdown.clone();
    let console = supervisor::Sink::console();
    let Some((program, rest)) = args.command.split_first() else {
        let _registration = register(&args, &sidecar.ports, 0);
        crate::sidecar::cancel_on_signals(shutdown);
        sidecar.wait().await?;
        status::success(&console, "Exited Dapr successfully");
        return Ok(ExitCode::SUCCESS);
    };
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env("DAPR_HTTP_PORT", sidecar.ports.http.to_string())
        .env("DAPR_GRPC_PORT", sidecar.ports.grpc.to_string())
        .env("APP_ID", &args.sidecar.app_id);
    if let Some(p) = args.sidecar.app_port {
        cmd.env("APP_PORT", p.to_string());
    }
    if let Some(p) = sidecar.ports.metrics {
        cmd.env("DAPR_METRICS_PORT", p.to_string());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            shutdown.cancel();
            let _ = sidecar.wait().await;
            anyhow::bail!("starting the app {program:?}: {e}");
        }
    };
    tracing::info!(pid = child.id(), app = %program, "app started");
    let pid = child.id();
    let _registration = register(&args, &sidecar.ports, pid.unwrap_or(0));
    let forward = tokio::spawn(forward_signals(pid));
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = shutdown.cancelled() => {
            // The sidecar stopped on its own (failed start or /v1.0/shutdown): stop the app too.
            send(pid, libc::SIGTERM);
            child.wait().await?
        }
    };
    forward.abort();
    tracing::info!(%status, "app exited");
    supervisor::report_app(&console, Ok(status));
    shutdown.cancel();
    sidecar.wait().await?;
    status::success(&console, "Exited Dapr successfully");
    Ok(ExitCode::from(status.code().map(|c| c as u8).unwrap_or(1)))
}

/// Records this app for `tandem list` (a supervised sidecar is recorded by its supervisor).
fn register(args: &RunArgs, ports: &crate::sidecar::Ports, app_pid: u32) -> Option<registry::Registration> {
    if args.supervised {
        return None;
    }
    let me = std::process::id();
    let entry = registry::Entry {
        app_id: args.sidecar.app_id.clone(),
        http_port: ports.http,
        grpc_port: ports.grpc,
        app_port: args.sidecar.app_port.unwrap_or(0),
        metrics_enabled: ports.metrics.is_some(),
        command: args.command.join(" "),
        started: registry::now(),
        daprd_pid: me,
        cli_pid: me,
        app_pid,
        max_request_body_size: args.sidecar.max_body_bytes().unwrap_or(0) as u64,
        run_template_path: String::new(),
        run_template_name: String::new(),
        app_log_path: String::new(),
        daprd_log_path: String::new(),
        cli_start: registry::start_ticks(me).unwrap_or(0),
    };
    registry::register(&registry::dir(), 0, &entry)
        .inspect_err(|e| tracing::warn!("recording the app for `tandem list`: {e}"))
        .ok()
}

/// The flags (names only: values may be secrets) given on the command line beside `--run-file`.
fn flags_beside_run_file() -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in std::env::args().skip_while(|a| a != "run").skip(1) {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if a == "-f" || a == "--run-file" {
            skip_value = true;
        } else if a.starts_with("--run-file=") || (a.starts_with("-f") && a.len() > 2 && !a.starts_with("--")) {
        } else if a.starts_with('-') {
            out.push(a.split('=').next().unwrap_or_default().to_string());
        }
    }
    out
}

fn send(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid {
        registry::signal(pid, signal, false);
    }
}

/// Passes SIGINT and SIGTERM on to the app; the app's exit then stops the sidecar.
async fn forward_signals(pid: Option<u32>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => send(pid, libc::SIGINT),
            _ = term.recv() => send(pid, libc::SIGTERM),
        }
    }
}
