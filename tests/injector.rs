//! The sidecar injector over real HTTPS: AdmissionReview documents as the API server sends them
//! (tests/fixtures/admission/), answered by the webhook serving a certificate from its own CA; and the
//! `tandem injector` binary picking up renewed certificate files.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tandem::injector::requester::AllowedRequesters;
use tandem::injector::{InjectorConfig, Readiness, Webhook, serve, tls};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SERVICE: &str = "tandem-sidecar-injector";
const NAMESPACE: &str = "tandem-system";
const SERVER_NAME: &str = "tandem-sidecar-injector.tandem-system.svc";

struct Injector {
    addr: SocketAddr,
    health: SocketAddr,
    ca_pem: String,
    shutdown: CancellationToken,
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The webhook as `tandem injector` runs it without certificate files: its own CA, ready once trusted.
async fn start_bootstrapped() -> Injector {
    let own = tls::bootstrap(&tls::dns_names(SERVICE, NAMESPACE)).unwrap();
    let webhook = Arc::new(Webhook {
        system_mtls: Arc::new(true.into()),
        config: InjectorConfig {
            sidecar_image: "ghcr.io/tandem/tandem:1.0".into(),
            image_pull_policy: None,
            control_plane_namespace: NAMESPACE.into(),
            placement_host_address: None,
            native_sidecar: false,
            mtls: false,
        },
        requesters: AllowedRequesters::new::<&str>(&[]).unwrap(),
    });
    let webhook_ls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_ls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, health) = (webhook_ls.local_addr().unwrap(), health_ls.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let ready = Readiness::default();
    ready.set_ready();
    tokio::spawn(serve(
        webhook_ls,
        health_ls,
        tls::CertStore::new(own.certified),
        webhook,
        ready,
        shutdown.clone(),
    ));
    Injector {
        addr,
        health,
        ca_pem: own.ca_pem,
        shutdown,
    }
}

/// One HTTPS request trusting only `ca_pems`; returns status, body and the certificate the server presented.
async fn https(
    addr: SocketAddr,
    ca_pems: &[&str],
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> std::io::Result<(u16, Bytes, CertificateDer<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await?;
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", SERVER_NAME)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, body, presented))
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// POSTs a fixture and checks the envelope every answer must have; returns the response.
async fn admit(inj: &Injector, review: &Value) -> Value {
    let (status, body, _) = https(
        inj.addr,
        &[&inj.ca_pem],
        "POST",
        "/mutate",
        "application/json",
        serde_json::to_vec(review).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    answer["response"].clone()
}

/// Applies the response's JSON patch to the request's pod.
fn patched_pod(review: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

fn unpatched(response: &Value) {
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

#[tokio::test]
async fn a_deployment_pod_gets_the_sidecar() {
    let inj = start_bootstrapped().await;
    let review = fixture("deployment-pod.json");
    let pod = patched_pod(&review, &admit(&inj, &review).await);

    let daprd = container(&pod["spec"]["containers"], "daprd");
    assert_eq!(daprd["image"], "ghcr.io/tandem/tandem:1.0");
    let args: Vec<&str> = daprd["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let line = args.join(" ");
    assert!(line.starts_with("sidecar "), "{line}");
    for flag in [
        "--app-id orders",
        "--app-port 8080",
        "--mode kubernetes",
        "--config appconfig",
        "--log-level debug",
        "--enable-api-logging=true",
        "--dapr-http-port 3500",
        "--dapr-grpc-port 50001",
        "--dapr-internal-grpc-port 50002",
        "--dapr-public-port 3501",
        "--dapr-listen-addresses [::1],127.0.0.1",
        "--metrics-port 9090",
        "--control-plane-address tandem-api.tandem-system.svc:443",
    ] {
        assert!(line.contains(flag), "{flag} missing from {line}");
    }
    assert_eq!(
        daprd["resources"],
        json!({"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}})
    );
    let app = container(&pod["spec"]["containers"], "orders");
    assert_eq!(
        app["env"],
        json!([{"name": "LOG_FORMAT", "value": "json"}, {"name": "DAPR_HTTP_PORT", "value": "3500"},
               {"name": "DAPR_GRPC_PORT", "value": "50001"}, {"name": "APP_PROTOCOL", "value": "http"}])
    );
    assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], "6b7f9c8d5");
    assert_eq!(pod["metadata"]["labels"]["dapr.io/sidecar-injected"], "true");
    assert_eq!(pod["metadata"]["labels"]["dapr.io/app-id"], "orders");
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2);
    assert_eq!(volumes[1]["name"], "tandem-identity-token");

    // The API server re-invokes the webhook (reinvocationPolicy IfNeeded) with the patched pod: no change.
    let mut again = review.clone();
    again["request"]["object"] = pod;
    unpatched(&admit(&inj, &again).await);
}

#[tokio::test]
async fn already_injected_and_unannotated_pods_pass_unchanged() {
    let inj = start_bootstrapped().await;
    for name in ["already-injected.json", "no-annotations.json", "bare-pod-by-user.json"] {
        let review = fixture(name);
        unpatched(&admit(&inj, &review).await);
    }
}

#[tokio::test]
async fn a_bad_app_id_is_denied_with_the_reason() {
    let inj = start_bootstrapped().await;
    let response = admit(&inj, &fixture("bad-app-id.json")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("Orders_Service-dapr"), "{message}");
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn an_admins_bare_pod_gets_labels_volumes_env_and_a_native_sidecar() {
    let inj = start_bootstrapped().await;
    let review = fixture("bare-pod-by-admin.json");
    let pod = patched_pod(&review, &admit(&inj, &review).await);
    assert_eq!(pod["metadata"]["labels"]["dapr.io/app-id"], "debug-shell");
    assert_eq!(pod["spec"]["volumes"][0]["name"], "tandem-identity-token");
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["name"], "DAPR_HTTP_PORT");
    let daprd = container(&pod["spec"]["initContainers"], "daprd");
    assert_eq!(daprd["restartPolicy"], "Always");
    let token = daprd["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DAPR_API_TOKEN")
        .unwrap();
    assert_eq!(
        token["valueFrom"],
        json!({"secretKeyRef": {"name": "dapr-api-token", "key": "token"}})
    );
}

#[tokio::test]
async fn not_an_admission_review_is_an_http_error() {
    let inj = start_bootstrapped().await;
    let body = serde_json::to_vec(&fixture("deployment-pod.json")).unwrap();
    let (status, _, _) = https(inj.addr, &[&inj.ca_pem], "POST", "/mutate", "text/plain", body)
        .await
        .unwrap();
    assert_eq!(status, 415);
    let (status, _, _) = https(
        inj.addr,
        &[&inj.ca_pem],
        "POST",
        "/mutate",
        "application/json",
        b"{\"kind\":".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let (status, _, _) = https(
        inj.addr,
        &[&inj.ca_pem],
        "POST",
        "/mutate",
        "application/json; charset=utf-8",
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_certificate_is_for_the_service_and_health_is_plain_http() {
    let inj = start_bootstrapped().await;
    // A client that does not trust the injector's CA cannot talk to it.
    let other = tls::bootstrap(&["x.svc".into()]).unwrap();
    assert!(
        https(inj.addr, &[&other.ca_pem], "GET", "/healthz", "text/plain", vec![])
            .await
            .is_err()
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    for path in ["/healthz", "/readyz"] {
        let url = format!("http://{}{path}", inj.health);
        let status = client.get(url.parse().unwrap()).await.unwrap().status();
        assert_eq!(status, 200, "{path}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces a file the way Kubernetes updates a mounted Secret: a new file renamed over the old one.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn the_binary_serves_certificate_files_and_picks_up_renewed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let names = tls::dns_names(SERVICE, NAMESPACE);
    let (first, second) = (tls::bootstrap(&names).unwrap(), tls::bootstrap(&names).unwrap());
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    replace(&cert, &first.cert_pem);
    replace(&key, &first.key_pem);

    let (port, health_port) = (free_port(), free_port());
    let _injector = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "injector",
            "--listen-address",
            "127.0.0.1",
            "--sidecar-image",
            "tandem:test",
        ])
        .args(["--port", &port.to_string(), "--health-port", &health_port.to_string()])
        .args(["--tls-reload-interval", "100ms"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cas = [first.ca_pem.as_str(), second.ca_pem.as_str()];

    let started = Instant::now();
    let presented = loop {
        match https(addr, &cas, "POST", "/mutate", "text/plain", vec![]).await {
            Ok((status, _, cert)) => {
                assert_eq!(status, 415);
                break cert;
            }
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "injector never served: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(presented, first.certified.cert[0]);

    // A key that does not match the certificate (a half-finished renewal) keeps the old certificate.
    replace(&key, &second.key_pem);
    // Then the renewal completes.
    replace(&cert, &second.cert_pem);
    let started = Instant::now();
    loop {
        let (_, _, presented) = https(addr, &cas, "POST", "/mutate", "text/plain", vec![])
            .await
            .unwrap();
        if presented == second.certified.cert[0] {
            break;
        }
        assert_eq!(presented, first.certified.cert[0]);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
