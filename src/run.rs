//! `tandem run`: a sidecar with embedded defaults beside the user's app, like `dapr run`.

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
/// Every app started with `tandem run` registers in one SQLite file, so local apps find each other by app id.
pub fn defaults() -> Defaults {
    let home = home_dir();
    let db = home.join("state.db");
    Defaults {
        components: vec![Component::new(
            "statestore",
            "state.sqlite",
            &[
                ("connectionString", db.to_string_lossy().as_ref()),
                ("actorStateStore", "true"),
            ],
        )],
        name_resolution: Some(NameResolutionSpec {
            component: "sqlite".into(),
            version: "v1".into(),
            configuration: serde_json::json!({ "connectionString": home.join("nameresolution.db").to_string_lossy() }),
        }),
    }
}

pub async fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    // Local development: other machines have no business on the internal port.
    if args.sidecar.dapr_internal_grpc_listen_address == "0.0.0.0" {
        args.sidecar.dapr_internal_grpc_listen_address = "127.0.0.1".into();
    }
    let sidecar = Sidecar::start(args.sidecar.clone(), PortPolicy::DefaultsIfFree, defaults()).await?;
    let shutdown = sidecar.rt.shutdown.clone();
    let Some((program, rest)) = args.command.split_first() else {
        crate::sidecar::cancel_on_signals(shutdown);
        sidecar.wait().await?;
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
    shutdown.cancel();
    sidecar.wait().await?;
    Ok(ExitCode::from(status.code().map(|c| c as u8).unwrap_or(1)))
}

fn send(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
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
