//! `tandem run -f`: every app of a run file with its own sidecar, started in the file's order, their output
//! prefixed (`== APP - <id> ==`) and sent where the file says, and stopped together — apps first, then
//! sidecars — on SIGINT/SIGTERM. Each sidecar is a `tandem run` child process, so that one app's logs,
//! log level and crash stay its own.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::file::{AppPlan, LogDestination, RunFile};
use super::registry::{self, Entry, Registration};
use super::{client, status};

/// A line of app output longer than this is cut into pieces.
const MAX_LINE: u64 = 64 * 1024;
/// How long an app has to exit after SIGTERM before it is killed.
const APP_GRACE: Duration = Duration::from_secs(10);
/// How long a sidecar may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where one stream of lines goes: the console, a log file, or both.
#[derive(Clone)]
pub struct Sink {
    console: bool,
    file: Option<Arc<Mutex<std::fs::File>>>,
    pub file_path: Option<PathBuf>,
}

impl Sink {
    pub fn console() -> Sink {
        Sink {
            console: true,
            file: None,
            file_path: None,
        }
    }

    fn open(dest: LogDestination, dir: &Path, app_id: &str, kind: &str, stamp: &str) -> std::io::Result<Sink> {
        let (file, file_path) = if dest.file() {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{app_id}_{kind}_{stamp}.log"));
            (Some(Arc::new(Mutex::new(std::fs::File::create(&path)?))), Some(path))
        } else {
            (None, None)
        };
        Ok(Sink {
            console: dest.console(),
            file,
            file_path,
        })
    }

    /// Writes one line; a full disk or closed console loses the line, never the app.
    pub fn line(&self, line: &str) {
        if self.console {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Copies `r` to `sink` line by line, each prefixed.
async fn pump(r: impl AsyncRead + Unpin, prefix: String, sink: Sink) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        sink.line(&format!("{prefix}{}", text.trim_end_matches(['\n', '\r'])));
    }
}

/// An app and its sidecar while they run.
struct Running {
    app: Option<Child>,
    app_pid: u32,
    app_sink: Sink,
    sidecar: Child,
    sidecar_pid: u32,
    daprd_sink: Sink,
    sidecar_grace: Duration,
    _registration: Option<Registration>,
}

enum Outcome {
    /// Both have ended; `failed` when the app or the sidecar failed on its own.
    Ended { failed: bool },
    /// A stop was asked for while both ran.
    Stopping(Box<Running>),
}

/// `tandem run -f`: runs every app of `file` until all have ended or a signal stops them.
pub async fn run(file: RunFile) -> anyhow::Result<ExitCode> {
    for line in &file.ignored {
        status::warning(&Sink::console(), line);
    }
    let stop = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signals(stop.clone()));
    let ports = choose_ports(&file)?;
    let stamp = registry::file_stamp(registry::now());
    let mut watching = JoinSet::new();
    let mut failed = false;
    for (index, (plan, ports)) in file.apps.iter().zip(ports).enumerate() {
        if stop.is_cancelled() {
            break;
        }
        match start(&file, index, plan, ports, &stamp, &stop).await {
            Ok(running) => {
                watching.spawn(watch(running, stop.clone()));
            }
            Err(e) => {
                status::failure(&format!("Error starting Dapr and app ({:?}): {e:#}", plan.app_id));
                failed = true;
                stop.cancel();
                break;
            }
        }
    }
    let mut stopping = Vec::new();
    while let Some(joined) = watching.join_next().await {
        match joined {
            Ok(Outcome::Ended { failed: f }) => failed |= f,
            Ok(Outcome::Stopping(r)) => stopping.push(r),
            Err(e) => {
                status::failure(&format!("supervising an app: {e}"));
                failed = true;
            }
        }
    }
    // Apps first, so that none loses its sidecar while it still works; then the sidecars.
    futures::future::join_all(stopping.iter_mut().map(|r| stop_app(r))).await;
    let sidecars = futures::future::join_all(stopping.iter_mut().map(|r| stop_sidecar(r))).await;
    failed |= sidecars.iter().any(|ok| !ok);
    signals.abort();
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn stop_on_signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    println!();
    status::info(
        &Sink::console(),
        "Received signal to stop Dapr and app processes. Shutting down Dapr and app processes.",
    );
    stop.cancel();
}

/// The sidecar ports of one app.
#[derive(Clone, Copy, Debug)]
struct Ports {
    http: u16,
    grpc: u16,
    internal: u16,
    metrics: u16,
}

/// Every port a run file asks for must be free and asked for once; the others are picked free.
fn choose_ports(file: &RunFile) -> anyhow::Result<Vec<Ports>> {
    let mut taken = HashSet::new();
    for a in &file.apps {
        let s = &a.sidecar;
        for (key, p) in [
            ("daprHTTPPort", s.dapr_http_port),
            ("daprGRPCPort", s.dapr_grpc_port),
            ("daprInternalGRPCPort", s.dapr_internal_grpc_port),
            ("metricsPort", s.metrics_port),
            ("appPort", s.app_port),
        ] {
            let Some(p) = p else { continue };
            if !taken.insert(p) {
                anyhow::bail!("{}: {key} {p} is used twice in the run file", a.app_id);
            }
            if key != "appPort" && std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                anyhow::bail!("{}: {key} {p} is not available", a.app_id);
            }
        }
    }
    let mut pick = |given: Option<u16>| -> anyhow::Result<u16> {
        if let Some(p) = given {
            return Ok(p);
        }
        for _ in 0..64 {
            let p = std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
            if taken.insert(p) {
                return Ok(p);
            }
        }
        anyhow::bail!("no free port found")
    };
    file.apps
        .iter()
        .map(|a| {
            let s = &a.sidecar;
            Ok(Ports {
                http: pick(s.dapr_http_port)?,
                grpc: pick(s.dapr_grpc_port)?,
                internal: pick(s.dapr_internal_grpc_port)?,
                metrics: pick(s.metrics_port)?,
            })
        })
        .collect()
}

/// In a process group of its own (Ctrl-C reaches the supervisor only, which stops apps before sidecars),
/// and ended with the supervisor if the supervisor dies.
fn detach(cmd: &mut Command) {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

async fn start(
    file: &RunFile,
    index: usize,
    plan: &AppPlan,
    ports: Ports,
    stamp: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Running> {
    let console = Sink::console();
    status::info(
        &console,
        &format!("Validating config and starting app {:?}", plan.app_id),
    );
    let logs = plan.app_dir.join(".dapr").join("logs");
    let daprd_sink = Sink::open(plan.daprd_log, &logs, &plan.app_id, "daprd", stamp)?;
    let app_sink = if plan.command.is_empty() {
        status::warning(
            &console,
            &format!(
                "No application command found for app {:?} present in {}",
                plan.app_id, file.path
            ),
        );
        daprd_sink.clone()
    } else {
        Sink::open(plan.app_log, &logs, &plan.app_id, "app", stamp)?
    };

    let mut args = plan.sidecar.clone();
    args.dapr_http_port = Some(ports.http);
    args.dapr_grpc_port = Some(ports.grpc);
    args.dapr_internal_grpc_port = Some(ports.internal);
    args.metrics_port = Some(ports.metrics);
    status::info(
        &daprd_sink,
        &format!(
            "Starting Dapr with id {}. HTTP Port: {}. gRPC Port: {}",
            plan.app_id, ports.http, ports.grpc
        ),
    );
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("run")
        .arg("--supervised")
        .args(args.to_flags())
        .current_dir(&plan.app_dir);
    detach(&mut cmd);
    let mut sidecar = cmd.spawn().map_err(|e| anyhow::anyhow!("starting the sidecar: {e}"))?;
    let sidecar_pid = sidecar.id().unwrap_or(0);
    spawn_pumps(&mut sidecar, "", &daprd_sink);
    let sidecar_grace = Duration::from_secs(args.dapr_graceful_shutdown_seconds.clamp(0, 3600) as u64 + 5);

    // The app starts once its sidecar serves, so that its first call finds it.
    let ready = async {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(s)) = sidecar.try_wait() {
                return Err(anyhow::anyhow!(
                    "the sidecar exited ({}){}",
                    describe(s),
                    daprd_sink
                        .file_path
                        .as_ref()
                        .map(|p| format!("; its log is {}", p.display()))
                        .unwrap_or_default()
                ));
            }
            if client::outbound_ready(ports.http).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow::anyhow!(
                    "the sidecar was not ready within {}s",
                    READY_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let ready = tokio::select! {
        r = ready => r,
        _ = stop.cancelled() => Err(anyhow::anyhow!("stopped while starting")),
    };
    if let Err(e) = ready {
        let _ = terminate(&mut sidecar, sidecar_pid, sidecar_grace).await;
        return Err(e);
    }

    let (app, app_pid) = match plan.command.split_first() {
        None => (None, 0),
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).current_dir(&plan.app_dir);
            for (k, v) in app_env(plan, ports) {
                cmd.env(k, v);
            }
            detach(&mut cmd);
            match cmd.spawn() {
                Ok(mut child) => {
                    let pid = child.id().unwrap_or(0);
                    spawn_pumps(&mut child, &format!("== APP - {} == ", plan.app_id), &app_sink);
                    (Some(child), pid)
                }
                Err(e) => {
                    let _ = terminate(&mut sidecar, sidecar_pid, sidecar_grace).await;
                    anyhow::bail!("starting the app {program:?}: {e}");
                }
            }
        }
    };
    status::success(&daprd_sink, "You're up and running! Dapr logs will appear here.\n");
    status::info(
        &console,
        &format!(
            "Started Dapr with app id {:?}. HTTP Port: {}. gRPC Port: {}",
            plan.app_id, ports.http, ports.grpc
        ),
    );
    if plan.app_log.file() || plan.daprd_log.file() {
        status::info(
            &console,
            &format!("Writing log files to directory : {}", logs.display()),
        );
    }

    let cli_pid = std::process::id();
    let entry = Entry {
        app_id: plan.app_id.clone(),
        http_port: ports.http,
        grpc_port: ports.grpc,
        app_port: plan.sidecar.app_port.unwrap_or(0),
        metrics_enabled: plan.sidecar.enable_metrics,
        command: plan.command.join(" "),
        started: registry::now(),
        daprd_pid: sidecar_pid,
        cli_pid,
        app_pid,
        max_request_body_size: plan.sidecar.max_body_bytes().unwrap_or(0) as u64,
        run_template_path: file.path.clone(),
        run_template_name: file.name.clone(),
        app_log_path: app_sink
            .file_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        daprd_log_path: daprd_sink
            .file_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cli_start: registry::start_ticks(cli_pid).unwrap_or(0),
    };
    let registration = match registry::register(&registry::dir(), index, &entry) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("recording app {} for `tandem list`: {e}", plan.app_id);
            None
        }
    };
    Ok(Running {
        app,
        app_pid,
        app_sink,
        sidecar,
        sidecar_pid,
        daprd_sink,
        sidecar_grace,
        _registration: registration,
    })
}

/// What the app finds in its environment, as the Dapr CLI sets it, then the run file's `env`.
fn app_env(plan: &AppPlan, ports: Ports) -> Vec<(String, String)> {
    let s = &plan.sidecar;
    let mut env = vec![
        ("APP_ID".to_string(), plan.app_id.clone()),
        ("DAPR_HTTP_PORT".to_string(), ports.http.to_string()),
        ("DAPR_GRPC_PORT".to_string(), ports.grpc.to_string()),
        ("APP_PROTOCOL".to_string(), s.app_protocol.clone()),
    ];
    if let Some(p) = s.app_port {
        env.push(("APP_PORT".into(), p.to_string()));
    }
    if s.enable_metrics {
        env.push(("DAPR_METRICS_PORT".into(), ports.metrics.to_string()));
    }
    if s.app_channel_address != "127.0.0.1" {
        env.push(("APP_CHANNEL_ADDRESS".into(), s.app_channel_address.clone()));
    }
    // Python buffers its output when it goes to a pipe; unbuffered, the app's lines show as they happen.
    if std::env::var_os("PYTHONUNBUFFERED").is_none() && !plan.env.contains_key("PYTHONUNBUFFERED") {
        env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    }
    env.extend(plan.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

fn spawn_pumps(child: &mut Child, prefix: &str, sink: &Sink) {
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, prefix.to_string(), sink.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, prefix.to_string(), sink.clone()));
    }
}

/// Waits until the app or the sidecar ends (and then ends the other), or until a stop is asked for.
async fn watch(mut r: Running, stop: CancellationToken) -> Outcome {
    tokio::select! {
        s = wait_for(r.app.as_mut()) => {
            let failed = report_app(&r.app_sink, s);
            signal_group(r.app_pid, libc::SIGTERM);
            r.app = None;
            let ok = stop_sidecar(&mut r).await;
            Outcome::Ended { failed: failed || !ok }
        }
        s = r.sidecar.wait() => {
            let failed = !report_sidecar(&r.daprd_sink, s);
            stop_app(&mut r).await;
            Outcome::Ended { failed }
        }
        _ = stop.cancelled() => Outcome::Stopping(Box::new(r)),
    }
}

/// The child's exit, or never when there is none.
async fn wait_for(child: Option<&mut Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Prints how the app ended; whether that is a failure. An app ended by SIGTERM or SIGINT was stopped
/// (by `tandem stop` or the user), which is not one.
pub(super) fn report_app(sink: &Sink, s: std::io::Result<ExitStatus>) -> bool {
    use std::os::unix::process::ExitStatusExt;
    match s {
        Ok(s) if s.success() || matches!(s.signal(), Some(libc::SIGTERM | libc::SIGINT)) => {
            status::success(sink, "Exited App successfully");
            false
        }
        Ok(s) => {
            status::failure_to(
                sink,
                &format!("The App process exited with error code: {}", describe(s)),
            );
            true
        }
        Err(e) => {
            status::failure_to(sink, &format!("Error exiting App: {e}"));
            true
        }
    }
}

/// Prints how the sidecar ended; whether it ended well.
fn report_sidecar(sink: &Sink, s: std::io::Result<ExitStatus>) -> bool {
    match s {
        Ok(s) if s.success() => {
            status::success(sink, "Exited Dapr successfully");
            true
        }
        Ok(s) => {
            status::failure_to(
                sink,
                &format!("The daprd process exited with error code: {}", describe(s)),
            );
            false
        }
        Err(e) => {
            status::failure_to(sink, &format!("Error exiting Dapr: {e}"));
            false
        }
    }
}

async fn stop_app(r: &mut Running) {
    if let Some(mut app) = r.app.take() {
        let s = terminate(&mut app, r.app_pid, APP_GRACE).await;
        report_app(&r.app_sink, s);
    }
}

/// Stops the sidecar; whether it ended well.
async fn stop_sidecar(r: &mut Running) -> bool {
    let s = terminate(&mut r.sidecar, r.sidecar_pid, r.sidecar_grace).await;
    report_sidecar(&r.daprd_sink, s)
}

/// SIGTERM to the child's process group, SIGKILL after `grace`.
async fn terminate(child: &mut Child, pid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Ok(s);
    }
    signal_group(pid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            tracing::warn!(pid, "still running {}s after SIGTERM: killed", grace.as_secs());
            signal_group(pid, libc::SIGKILL);
            child.wait().await
        }
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    registry::signal(pid, signal, true);
}

/// Go's wording for an exit status (`exit status 1`, `signal: killed`), as the Dapr CLI prints it.
pub fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(libc::SIGKILL)) => "signal: killed".into(),
        (None, Some(libc::SIGTERM)) => "signal: terminated".into(),
        (None, Some(libc::SIGINT)) => "signal: interrupt".into(),
        (None, Some(n)) => format!("signal: {n}"),
        (None, None) => "unknown".into(),
    }
}
