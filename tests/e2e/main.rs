//! End-to-end tests on a real cluster (kind or k3d): the image is built and loaded, tandem is installed (Helm
//! chart, else config/install.yaml), and the sample apps of config/samples run in temporary namespaces with
//! injected sidecars. See tests/e2e/README.md.
//!
//! Without a reachable cluster every test prints `skipping e2e: no Kubernetes cluster reachable` and passes;
//! `E2E_REQUIRE_CLUSTER=1` turns that into a failure.

mod harness;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use harness::{Cluster, cluster, eventually, exec, kubectl, kubectl_apply, kubectl_json, kubectl_run, with_temp_ns};

const ROLLOUT_TIMEOUT: &str = "--timeout=300s";

/// A sample of config/samples with its namespaces (and names derived from them) replaced. Every replaced text
/// must occur, so that a changed sample fails here loudly instead of deploying into the wrong namespace.
fn sample(file: &str, replacements: &[(&str, &str)]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/samples")
        .join(file);
    let mut text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "config/samples/{file} no longer contains {from:?}; update tests/e2e/main.rs"
        );
        text = text.replace(from, to);
    }
    text
}

/// The state store of the orders app, as a Component applied with kubectl: in-memory, so the test needs no
/// Redis image (config/samples/statestore.yaml points at the Redis of redis.yaml instead).
const IN_MEMORY_STATESTORE: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
  metadata: []
scopes:
- orders
"#;

/// The orders sample for `ns`: its local secret store (the Secret its pod mounts), its Configuration (which lets
/// `checkout` of `checkout_ns` call GET/POST /orders and nothing else), the state store and the Deployment.
fn orders_manifests(ns: &str, checkout_ns: &str) -> Vec<String> {
    let in_ns = format!("namespace: {ns}");
    let checkout = format!("namespace: {checkout_ns}");
    vec![
        sample("secretstore.yaml", &[("namespace: orders", &in_ns)]),
        sample(
            "configuration.yaml",
            &[("namespace: orders", &in_ns), ("namespace: checkout", &checkout)],
        ),
        IN_MEMORY_STATESTORE.to_owned(),
        sample("orders-app.yaml", &[("namespace: orders", &in_ns)]),
    ]
}

/// The checkout sample for `ns`, calling the orders app of `orders_ns` (`orders.<orders_ns>`).
fn checkout_manifest(ns: &str, orders_ns: &str) -> String {
    let in_ns = format!("namespace: {ns}");
    let target = format!("orders.{orders_ns}");
    sample(
        "checkout-app.yaml",
        &[("namespace: checkout", &in_ns), ("orders.orders", &target)],
    )
}

fn deploy_orders(ns: &str, checkout_ns: &str) {
    for yaml in orders_manifests(ns, checkout_ns) {
        kubectl_apply(ns, &yaml);
    }
}

fn deploy_checkout(ns: &str, orders_ns: &str) {
    kubectl_apply(ns, &checkout_manifest(ns, orders_ns));
}

fn rollout(ns: &str, deployment: &str) {
    kubectl_run(&[
        "-n",
        ns,
        "rollout",
        "status",
        &format!("deploy/{deployment}"),
        ROLLOUT_TIMEOUT,
    ]);
}

/// The (ready) pod of `app` in `ns`.
fn pod_of(ns: &str, app: &str) -> Value {
    let pods = kubectl_json(&["-n", ns, "get", "pods", "-l", &format!("app={app}")]);
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
        .unwrap_or_else(|| panic!("no running pod of app {app} in {ns}: {pods}"))
}

/// Checks that the pod runs the injected `daprd` container with the cluster's image, in kubernetes mode,
/// pointed at the operator, and that it is ready (it loaded its resources from the operator).
fn assert_injected(pod: &Value, app_id: &str, cluster: &Cluster) {
    let spec = &pod["spec"];
    let daprd = spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == "daprd")
        .unwrap_or_else(|| {
            panic!(
                "no daprd container injected into {} ({})",
                pod["metadata"]["name"], cluster.context
            )
        });
    assert_eq!(daprd["image"], json!(cluster.image), "sidecar image");
    let args: Vec<&str> = daprd["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let joined = args.join(" ");
    for flag in [
        "--mode kubernetes".to_owned(),
        format!("--app-id {app_id}"),
        format!(
            "--control-plane-address tandem-api.{}.svc:443",
            harness::CONTROL_PLANE_NS
        ),
    ] {
        assert!(joined.contains(&flag), "daprd args lack {flag:?}: {joined}");
    }
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .chain(pod["status"]["initContainerStatuses"].as_array())
        .flatten();
    let ready = statuses
        .filter(|s| s["name"] == "daprd")
        .any(|s| s["ready"] == json!(true));
    assert!(ready, "daprd is not ready: {}", pod["status"]);
}

/// The operator's headless `<app-id>-dapr` Service with Dapr's four ports.
fn assert_dapr_service(ns: &str, app_id: &str) {
    let name = format!("{app_id}-dapr");
    let svc = eventually(&format!("Service {ns}/{name}"), Duration::from_secs(60), || {
        let out = exec(kubectl().args(["-n", ns, "get", "service", &name, "-o", "json"]), None);
        if !out.ok {
            return Err(out.stderr);
        }
        serde_json::from_str::<Value>(&out.stdout).map_err(|e| e.to_string())
    });
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless: {svc}");
    assert_eq!(svc["spec"]["selector"], json!({"app": app_id}));
    assert_eq!(svc["metadata"]["labels"]["dapr.io/enabled"], "true");
    let ports: Vec<(String, i64, i64)> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_i64().unwrap_or_default(),
                p["targetPort"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    let expected = [
        ("dapr-http", 80, 3500),
        ("dapr-grpc", 50001, 50001),
        ("dapr-internal", 50002, 50002),
        ("dapr-metrics", 9090, 9090),
    ]
    .map(|(n, p, t)| (n.to_owned(), p, t));
    assert_eq!(ports, expected, "ports of {ns}/{name}");
}

/// Runs a Python snippet in `container` of `deploy` (the sample apps run python:3-slim) and parses the JSON
/// it prints last.
fn python(ns: &str, deploy: &str, container: &str, script: &str) -> Result<Value, String> {
    let out = exec(
        kubectl().args([
            "-n",
            ns,
            "exec",
            &format!("deploy/{deploy}"),
            "-c",
            container,
            "--",
            "python",
            "-c",
            script,
        ]),
        None,
    );
    if !out.ok {
        return Err(format!("kubectl exec failed: {}{}", out.stderr, out.stdout));
    }
    let last = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("{e}: {}", out.stdout))
}

/// Python: `call(method, path, body)` against the local sidecar's HTTP API, returning `[status, body]`.
const PY_CALL: &str = r#"
import json, os, urllib.error, urllib.request
BASE = "http://localhost:%s" % os.environ.get("DAPR_HTTP_PORT", "3500")
def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
"#;

/// Saves `{"n": 1}` under `key` in `statestore`, reads it back, and reads the sidecar's metadata.
fn state_script(key: &str) -> String {
    format!(
        "{PY_CALL}\nsaved = call('POST', '/v1.0/state/statestore', [{{'key': '{key}', 'value': {{'n': 1}}}}])\n\
         print(json.dumps({{'saved': saved, 'read': call('GET', '/v1.0/state/statestore/{key}'), \
         'metadata': call('GET', '/v1.0/metadata')}}))"
    )
}

/// Through service invocation of `target` (`app.namespace`): POST /orders with `order`, GET /orders?id=`id`,
/// and GET /admin (which orders' Configuration denies).
fn invoke_script(target: &str, order: &Value, id: u64) -> String {
    let invoke = format!("/v1.0/invoke/{target}/method");
    format!(
        "{PY_CALL}\norder = json.loads('{order}')\n\
         print(json.dumps({{'post': call('POST', '{invoke}/orders', order), \
         'get': call('GET', '{invoke}/orders?id={id}'), 'denied': call('GET', '{invoke}/admin')}}))"
    )
}

/// Reads `key` from `statestore`.
fn read_script(key: &str) -> String {
    format!("{PY_CALL}\nprint(json.dumps(call('GET', '/v1.0/state/statestore/{key}')))")
}

fn status_and_json(v: &Value) -> (i64, Value) {
    let status = v[0].as_i64().unwrap_or_default();
    let body = v[1].as_str().unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or_else(|_| json!(body)))
}

#[test]
fn sidecar_is_injected_gets_its_service_and_serves_state() {
    let Some(cluster) = cluster() else { return };
    with_temp_ns("orders", |ns| {
        deploy_orders(ns, "checkout");
        rollout(ns, "orders");
        assert_injected(&pod_of(ns, "orders"), "orders", &cluster);
        assert_dapr_service(ns, "orders");

        let key = format!("e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let script = state_script(&key);
        let out = eventually(
            "state through the statestore Component",
            Duration::from_secs(60),
            || {
                let out = python(ns, "orders", "orders", &script)?;
                if out["saved"][0] == 204 {
                    Ok(out)
                } else {
                    Err(out.to_string())
                }
            },
        );
        assert_eq!(status_and_json(&out["read"]), (200, json!({"n": 1})), "{out}");
        let (status, metadata) = status_and_json(&out["metadata"]);
        assert_eq!(status, 200, "{out}");
        let components: Vec<(String, String)> = metadata["components"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().into(),
                    c["type"].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        for expected in [
            ("statestore", "state.in-memory"),
            ("localsecretstore", "secretstores.local.file"),
        ] {
            assert!(
                components.iter().any(|(n, t)| (n.as_str(), t.as_str()) == expected),
                "{expected:?} not loaded from the operator: {components:?}"
            );
        }
    });
}

#[test]
fn apps_in_two_namespaces_invoke_each_other_through_their_sidecars() {
    let Some(cluster) = cluster() else { return };
    with_temp_ns("orders", |orders_ns| {
        with_temp_ns("checkout", |checkout_ns| {
            deploy_orders(orders_ns, checkout_ns);
            deploy_checkout(checkout_ns, orders_ns);
            rollout(orders_ns, "orders");
            rollout(checkout_ns, "checkout");
            assert_injected(&pod_of(checkout_ns, "checkout"), "checkout", &cluster);
            assert_dapr_service(checkout_ns, "checkout");

            // checkout's app → its sidecar → (DNS: orders-dapr.<orders_ns>.svc) → orders' sidecar → orders' app,
            // which stores the order through its own sidecar's state API.
            let id = rand_id();
            let order = json!({"id": id, "item": "e2e", "qty": 3});
            let script = invoke_script(&format!("orders.{orders_ns}"), &order, id);
            let out = eventually("checkout invoking orders.<orders-ns>", Duration::from_secs(120), || {
                let out = python(checkout_ns, "checkout", "checkout", &script)?;
                if out["post"][0] == 201 {
                    Ok(out)
                } else {
                    Err(out.to_string())
                }
            });
            assert_eq!(status_and_json(&out["post"]), (201, order.clone()), "{out}");
            assert_eq!(status_and_json(&out["get"]), (200, order.clone()), "{out}");
            // orders' Configuration allows checkout GET/POST on /orders only.
            assert_eq!(out["denied"][0], 403, "access control of orders-config: {out}");

            // The order is in orders' state store, under the key the app chose.
            let stored =
                python(orders_ns, "orders", "orders", &read_script(&id.to_string())).expect("reading orders' state");
            assert_eq!(status_and_json(&stored), (200, order), "{stored}");
        })
    });
}

fn rand_id() -> u64 {
    // Python's json.dumps and serde agree on integers; the id is also the state key.
    u64::from(uuid::Uuid::new_v4().as_fields().0) + 1_000_000
}

// ------------------------------------------------------------------------------------------------------------
// Without a cluster: what the tests above would deploy and run is checked here.
// ------------------------------------------------------------------------------------------------------------

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{e}:\n{text}")))
        .filter(|d: &Value| !d.is_null())
        .collect()
}

#[test]
fn samples_are_adapted_to_the_temporary_namespaces() {
    let (orders_ns, checkout_ns) = ("e2e-orders-1a2b3c4d", "e2e-checkout-5e6f7a8b");
    let mut docs: Vec<Value> = orders_manifests(orders_ns, checkout_ns)
        .iter()
        .flat_map(|y| yaml_documents(y))
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        kinds,
        ["Secret", "Component", "Configuration", "Component", "Deployment"]
    );
    for d in &docs {
        let ns = &d["metadata"]["namespace"];
        assert!(ns.is_null() || *ns == json!(orders_ns), "{d}");
    }
    let config = docs.iter().find(|d| d["kind"] == "Configuration").unwrap();
    assert_eq!(config["spec"]["accessControl"]["policies"][0]["namespace"], checkout_ns);
    let orders = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let annotations = &orders["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        (
            &annotations["dapr.io/enabled"],
            &annotations["dapr.io/app-id"],
            &annotations["dapr.io/config"]
        ),
        (&json!("true"), &json!("orders"), &json!("orders-config"))
    );
    assert_eq!(orders["spec"]["template"]["metadata"]["labels"]["app"], "orders");

    let checkout = checkout_manifest(checkout_ns, orders_ns);
    assert!(checkout.contains(&format!("invoke/orders.{orders_ns}/method")) && !checkout.contains("orders.orders"));
    docs = yaml_documents(&checkout);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["metadata"]["namespace"], checkout_ns);
    assert_eq!(docs[0]["spec"]["template"]["metadata"]["labels"]["app"], "checkout");
}

/// The Python the tests run in the sample apps' containers, run here against a local sidecar: it is valid,
/// talks to the sidecar's HTTP API and prints what the tests parse.
#[test]
fn python_snippets_run_against_a_sidecar() {
    if !std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipping: python3 not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("statestore.yaml"),
        IN_MEMORY_STATESTORE.replace("- orders", "- local"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let mut sidecar = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["sidecar", "--app-id", "local", "--enable-metrics=false"])
        .args(["--dapr-http-port", &port.to_string(), "--dapr-grpc-port", &free()])
        .args(["--dapr-internal-grpc-port", &free()])
        .arg("--resources-path")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting tandem sidecar");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut sidecar);
    let py = |script: &str| -> Result<Value, String> {
        let out = exec(
            std::process::Command::new("python3")
                .args(["-c", script])
                .env("DAPR_HTTP_PORT", port.to_string()),
            None,
        );
        let last = out.stdout.lines().last().unwrap_or_default().to_owned();
        serde_json::from_str(&last).map_err(|e| format!("{e}: {}{}", out.stdout, out.stderr))
    };
    let out = eventually("the local sidecar answering", Duration::from_secs(20), || {
        let out = py(&state_script("k1"))?;
        if out["saved"][0] == 204 {
            Ok(out)
        } else {
            Err(out.to_string())
        }
    });
    assert_eq!(status_and_json(&out["read"]), (200, json!({"n": 1})), "{out}");
    let (status, metadata) = status_and_json(&out["metadata"]);
    assert_eq!(
        (status, &metadata["components"][0]["name"]),
        (200, &json!("statestore")),
        "{out}"
    );
    assert_eq!(
        status_and_json(&py(&read_script("k1")).unwrap()),
        (200, json!({"n": 1}))
    );
    // No app behind this sidecar: the calls fail, but the snippet runs and reports a status for each.
    let order = json!({"id": 7, "item": "e2e", "qty": 3});
    let out = py(&invoke_script("local", &order, 7)).unwrap();
    for call in ["post", "get", "denied"] {
        assert!(out[call][0].as_i64().is_some_and(|s| s >= 400), "{call}: {out}");
    }
}
