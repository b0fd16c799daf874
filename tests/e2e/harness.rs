//! The cluster side of the e2e tests: is a cluster reachable, build and load the image, install tandem, run
//! kubectl, and temporary namespaces that are deleted even when a test panics.
//!
//! Only `kube` is used (for the reachability check); everything else goes through the kubectl, helm, docker,
//! kind and k3d binaries with `std::process::Command`, as a person would run them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Namespace the control plane is installed into.
pub const CONTROL_PLANE_NS: &str = "tandem-system";
/// The image `docker build` produces; loaded into the cluster under a content-addressed tag (see [`image`]).
pub const LOCAL_IMAGE: &str = "tandem:e2e";
/// How long the reachability check may take.
const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(5);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

/// A reachable cluster, with tandem installed in it.
pub struct Cluster {
    /// The kubeconfig context the tests use (kubectl's current context).
    pub context: String,
    /// The image the control plane and the injected sidecars run.
    pub image: String,
}

/// The cluster of the current kubeconfig context, with tandem installed; `None` (after printing
/// `skipping e2e: no Kubernetes cluster reachable`) when there is none, which lets the test pass as skipped.
/// With `E2E_REQUIRE_CLUSTER=1` an unreachable cluster fails the test instead.
pub fn cluster() -> Option<Cluster> {
    if let Err(why) = reachable() {
        if env_flag("E2E_REQUIRE_CLUSTER") {
            panic!("E2E_REQUIRE_CLUSTER=1 but no Kubernetes cluster is reachable: {why}");
        }
        eprintln!("skipping e2e: no Kubernetes cluster reachable ({why})");
        return None;
    }
    Some(install())
}

/// `kube::Client::try_default()` plus a `/version` call, within [`REACHABILITY_TIMEOUT`].
fn reachable() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a Tokio runtime: {e}"))?;
    rt.block_on(async {
        let check = async {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| format!("no usable kubeconfig or in-cluster config: {e}"))?;
            let version = client
                .apiserver_version()
                .await
                .map_err(|e| format!("the API server did not answer /version: {e}"))?;
            eprintln!(
                "e2e: Kubernetes {}.{} ({})",
                version.major, version.minor, version.git_version
            );
            Ok::<(), String>(())
        };
        tokio::time::timeout(REACHABILITY_TIMEOUT, check)
            .await
            .map_err(|_| format!("no answer within {REACHABILITY_TIMEOUT:?}"))?
    })
}

// ------------------------------------------------------------------------------------------------------------
// Commands
// ------------------------------------------------------------------------------------------------------------

/// What a finished command printed.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (with `stdin` fed to it, if any) and collects its output. Panics only when it cannot be started.
pub fn exec(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to the stdin of {shown}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {shown}: {e}"));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` and returns its stdout; panics with its stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    run_with_stdin(cmd, None)
}

pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> String {
    let shown = format!("{cmd:?}");
    let out = exec(cmd, stdin);
    assert!(out.ok, "{shown} failed:\n{}\n{}", out.stderr.trim(), out.stdout.trim());
    out.stdout
}

/// True when `program --version`-like `args` run successfully (the tool is installed).
fn has_tool(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn kubectl() -> Command {
    Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
}

/// `kubectl <args>`; panics when it fails.
pub fn kubectl_run(args: &[&str]) -> String {
    run(kubectl().args(args))
}

/// `kubectl apply -f -` of `yaml` into `namespace`.
pub fn kubectl_apply(namespace: &str, yaml: &str) {
    run_with_stdin(kubectl().args(["apply", "-n", namespace, "-f", "-"]), Some(yaml));
}

/// `kubectl get <what> -o json`, parsed.
pub fn kubectl_json(args: &[&str]) -> serde_json::Value {
    let text = run(kubectl().args(args).args(["-o", "json"]));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {args:?} printed no JSON ({e}):\n{text}"))
}

/// Calls `f` until it returns `Some`, at most for `timeout`; panics with `what` and the last `Err` otherwise.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last: {last}"),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Installation
// ------------------------------------------------------------------------------------------------------------

/// Installs tandem once per test run. nextest runs every test in its own process, so the processes of one run
/// (same `NEXTEST_RUN_ID`) agree through a lock file and a stamp file; `cargo test` runs them in one process.
fn install() -> Cluster {
    static DONE: Mutex<Option<(String, String)>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((context, image)) = done.as_ref() {
        return Cluster {
            context: context.clone(),
            image: image.clone(),
        };
    }
    let context = kubectl_run(&["config", "current-context"]).trim().to_owned();
    let dir = std::env::temp_dir();
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("tandem-e2e-install.lock"))
        .expect("creating the e2e lock file");
    lock.lock().expect("locking the e2e lock file");
    let stamp_path = dir.join("tandem-e2e-install.stamp");
    let run_id = std::env::var("NEXTEST_RUN_ID").ok();
    let stamp = |image: &str| format!("{}\n{context}\n{image}\n", run_id.as_deref().unwrap_or("-"));
    let previous = read_to_string(&stamp_path);
    let image = match previous.lines().collect::<Vec<_>>().as_slice() {
        [id, ctx, image] if run_id.as_deref() == Some(*id) && *ctx == context => {
            eprintln!("e2e: tandem already installed by this run ({image})");
            (*image).to_owned()
        }
        _ => {
            let image = if env_flag("E2E_SKIP_INSTALL") {
                eprintln!("e2e: E2E_SKIP_INSTALL=1: using the tandem already installed in {CONTROL_PLANE_NS}");
                kubectl_run(&[
                    "-n",
                    CONTROL_PLANE_NS,
                    "get",
                    "deploy/tandem-operator",
                    "-o",
                    "jsonpath={.spec.template.spec.containers[0].image}",
                ])
                .trim()
                .to_owned()
            } else {
                let image = image(&context);
                install_control_plane(&image);
                image
            };
            wait_for_control_plane();
            fs::write(&stamp_path, stamp(&image)).expect("writing the e2e stamp file");
            image
        }
    };
    let _ = lock.unlock();
    *done = Some((context.clone(), image.clone()));
    Cluster { context, image }
}

fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// The image to run: `E2E_IMAGE` as given (it must be pullable by the cluster), else `docker build` of this
/// repository, tagged by content (`tandem:e2e-<id>`, so that a rebuilt image rolls the control plane) and loaded
/// into the kind or k3d cluster of `context`.
fn image(context: &str) -> String {
    if let Ok(image) = std::env::var("E2E_IMAGE")
        && !image.is_empty()
    {
        return image;
    }
    eprintln!("e2e: docker build -t {LOCAL_IMAGE} . (first build compiles tandem in release mode: minutes)");
    run(Command::new("docker")
        .args(["build", "-t", LOCAL_IMAGE, "."])
        .current_dir(repo()));
    let id = run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", LOCAL_IMAGE]));
    let id = id.trim().trim_start_matches("sha256:");
    let tagged = format!("tandem:e2e-{}", &id[..id.len().min(12)]);
    run(Command::new("docker").args(["tag", LOCAL_IMAGE, &tagged]));
    if let Some(name) = context.strip_prefix("kind-") {
        eprintln!("e2e: kind load docker-image {tagged} --name {name}");
        run(Command::new("kind").args(["load", "docker-image", &tagged, "--name", name]));
    } else if let Some(name) = context.strip_prefix("k3d-") {
        eprintln!("e2e: k3d image import {tagged} -c {name}");
        run(Command::new("k3d").args(["image", "import", &tagged, "-c", name]));
    } else {
        panic!(
            "kubeconfig context {context:?} is neither kind (kind-*) nor k3d (k3d-*): cannot load the image into \
             it; push an image the cluster can pull and set E2E_IMAGE to it"
        );
    }
    tagged
}

/// `repository:tag` → (`repository`, `tag`); a reference without a tag gets `latest`.
fn split_image(image: &str) -> (&str, &str) {
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], &image[name_start + i + 1..]),
        None => (image, "latest"),
    }
}

/// The Helm chart when helm is installed, else config/install.yaml with the image substituted.
fn install_control_plane(image: &str) {
    let (repository, tag) = split_image(image);
    if has_tool("helm", &["version", "--short"]) {
        eprintln!("e2e: helm upgrade --install tandem charts/tandem ({image})");
        run(Command::new("helm")
            .args(["upgrade", "--install", "tandem", "charts/tandem"])
            .args(["-n", CONTROL_PLANE_NS, "--create-namespace"])
            .args(["--set", &format!("image.repository={repository}")])
            .args(["--set", &format!("image.tag={tag}")])
            .args(["--set", "image.pullPolicy=IfNotPresent"])
            .args(["--set", "logLevel=debug"])
            .args(["--wait", "--timeout", "5m"])
            .current_dir(repo()));
    } else {
        eprintln!("e2e: helm not found; kubectl apply of config/install.yaml ({image})");
        let yaml = install_yaml_with_image(image);
        run_with_stdin(
            kubectl().args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
            Some(&yaml),
        );
    }
}

/// config/install.yaml with every reference to the published image replaced by `image`.
pub fn install_yaml_with_image(image: &str) -> String {
    const PUBLISHED: &str = "ghcr.io/tandem-rs/tandem:";
    let text = fs::read_to_string(repo().join("config/install.yaml")).expect("reading config/install.yaml");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    let mut replaced = 0;
    while let Some(at) = rest.find(PUBLISHED) {
        out.push_str(&rest[..at]);
        let after = &rest[at + PUBLISHED.len()..];
        let tag_len = after
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(after.len());
        out.push_str(image);
        rest = &after[tag_len..];
        replaced += 1;
    }
    out.push_str(rest);
    assert!(
        replaced >= 2,
        "config/install.yaml names the image {replaced} times; expected the operator and the injector"
    );
    out
}

/// Both Deployments rolled out, and the injector has patched its CA into the webhook configuration (until
/// then, with failurePolicy Ignore, pods would be created without a sidecar).
fn wait_for_control_plane() {
    for deploy in ["deploy/tandem-operator", "deploy/tandem-sidecar-injector"] {
        kubectl_run(&["-n", CONTROL_PLANE_NS, "rollout", "status", deploy, "--timeout=300s"]);
    }
    eventually(
        "the injector's caBundle in MutatingWebhookConfiguration tandem-sidecar-injector",
        Duration::from_secs(120),
        || {
            let out = exec(
                kubectl().args([
                    "get",
                    "mutatingwebhookconfiguration",
                    "tandem-sidecar-injector",
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ]),
                None,
            );
            if out.ok && !out.stdout.trim().is_empty() {
                Ok(())
            } else {
                Err(format!("{}{}", out.stdout.trim(), out.stderr.trim()))
            }
        },
    );
}

// ------------------------------------------------------------------------------------------------------------
// Temporary namespaces
// ------------------------------------------------------------------------------------------------------------

/// A namespace that exists for one test: created labelled `tandem.io/e2e=true`, deleted when dropped (also when
/// the test panics, after printing what is in it). `E2E_KEEP_NAMESPACES=1` keeps it for inspection.
pub struct TempNs {
    pub name: String,
}

impl TempNs {
    pub fn create(prefix: &str) -> TempNs {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("e2e-{prefix}-{suffix}");
        kubectl_run(&["create", "namespace", &name]);
        kubectl_run(&["label", "namespace", &name, "tandem.io/e2e=true"]);
        eprintln!("e2e: namespace {name} created");
        TempNs { name }
    }
}

impl Drop for TempNs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            diagnose(&self.name);
        }
        if env_flag("E2E_KEEP_NAMESPACES") {
            eprintln!("e2e: keeping namespace {} (E2E_KEEP_NAMESPACES=1)", self.name);
            return;
        }
        let out = exec(
            kubectl().args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"]),
            None,
        );
        if !out.ok {
            eprintln!("e2e: deleting namespace {} failed: {}", self.name, out.stderr.trim());
        }
    }
}

/// Runs `f` with a fresh namespace, deleting it afterwards whatever happens (linkerd2's `with_temp_ns`).
pub fn with_temp_ns<T>(prefix: &str, f: impl FnOnce(&str) -> T) -> T {
    let ns = TempNs::create(prefix);
    f(&ns.name)
}

/// What a failed test leaves to look at: the pods, the events and the sidecars' logs.
fn diagnose(ns: &str) {
    let show = |args: &[&str]| {
        let out = exec(kubectl().args(args), None);
        eprintln!("--- kubectl {}\n{}{}", args.join(" "), out.stdout, out.stderr);
    };
    show(&[
        "-n",
        ns,
        "get",
        "pods,services,components.dapr.io,configurations.dapr.io",
        "-o",
        "wide",
    ]);
    show(&["-n", ns, "get", "events", "--sort-by=.lastTimestamp"]);
    // Every sample app's pods carry an `app` label.
    show(&[
        "-n",
        ns,
        "logs",
        "--selector=app",
        "-c",
        "daprd",
        "--tail=80",
        "--prefix",
    ]);
    show(&["-n", CONTROL_PLANE_NS, "logs", "deploy/tandem-operator", "--tail=80"]);
    show(&[
        "-n",
        CONTROL_PLANE_NS,
        "logs",
        "deploy/tandem-sidecar-injector",
        "--tail=40",
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_repository_and_tag() {
        assert_eq!(split_image("tandem:e2e-0123"), ("tandem", "e2e-0123"));
        assert_eq!(
            split_image("localhost:5000/tandem/tandem:v1"),
            ("localhost:5000/tandem/tandem", "v1")
        );
        assert_eq!(
            split_image("localhost:5000/tandem"),
            ("localhost:5000/tandem", "latest")
        );
    }

    #[test]
    fn install_yaml_runs_the_given_image() {
        let yaml = install_yaml_with_image("tandem:e2e-abc");
        assert!(
            !yaml.contains("ghcr.io/tandem-rs/tandem"),
            "published image left in place"
        );
        assert!(yaml.contains("image: tandem:e2e-abc"), "{yaml}");
        assert!(
            yaml.contains("--sidecar-image=tandem:e2e-abc"),
            "the injected sidecars run it too"
        );
    }
}
