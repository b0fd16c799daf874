//! Service-invocation benchmark (prints figures; not a test): app → sidecar → sidecar → app against
//! app → app directly, on loopback, in one run, with Dapr's published setup (1 KB payload, fixed 1000 req/s).
//!
//!     cargo bench --bench invoke       # INVOKE_SECONDS=10 INVOKE_RATE=1000 INVOKE_CONNECTIONS=32
//!     BENCH_TANDEM_BIN=/path/to/other/tandem cargo bench --bench invoke   # the same run against another build
//!
//! Prints added p50/p90/p99 latency at the fixed rate, maximum throughput at 32 connections, CPU seconds per
//! 1000 requests and RSS of each sidecar idle and under load; then the same calls between a second pair of
//! sidecars talking mutual TLS (`--enable-mtls`, certificates from tandem's certificate authority code).

mod common;

use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The app: answers every request with a 1 KB body.
async fn serve_app(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let body = body.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn call(client: &HttpClient, url: &str, payload: &Bytes) -> Duration {
    let started = Instant::now();
    let req = hyper::Request::post(url).body(Full::new(payload.clone())).unwrap();
    let resp = client.request(req).await.expect("request");
    assert_eq!(resp.status(), 200, "{url}");
    resp.into_body().collect().await.unwrap();
    started.elapsed()
}

/// Open loop at `rate` requests per second for `secs`: latency as a client sending at that rate sees it.
async fn fixed_rate(client: &HttpClient, url: &str, rate: u64, secs: u64) -> Percentiles {
    let payload = Bytes::from(vec![b'p'; 1024]);
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity((rate * secs) as usize);
    for _ in 0..rate * secs {
        ticker.tick().await;
        let (client, url, payload) = (client.clone(), url.to_owned(), payload.clone());
        tasks.push(tokio::spawn(async move { call(&client, &url, &payload).await }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    percentiles(lat)
}

/// Closed loop with `conns` concurrent clients for `secs`: requests per second.
async fn max_throughput(client: &HttpClient, url: &str, conns: usize, secs: u64) -> (f64, usize) {
    let payload = Bytes::from(vec![b'p'; 1024]);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (client, url, payload) = (client.clone(), url.to_owned(), payload.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while Instant::now() < deadline {
                    call(&client, &url, &payload).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    (total as f64 / started.elapsed().as_secs_f64(), total)
}

/// `DAPR_CERT_*` environment for a sidecar of `app_id`, signed by `ca`.
fn mtls_env(ca: &tandem::operator::ca::Authority, app_id: &str) -> Vec<(String, String)> {
    use tandem::control_plane::identity::{SpiffeId, key_and_csr};
    let id = SpiffeId::new("public", "default", app_id).unwrap();
    let (key, csr) = key_and_csr(&id).unwrap();
    let issued = ca
        .sign(&csr, &id, Duration::from_secs(3600), Duration::from_secs(60))
        .unwrap();
    vec![
        ("DAPR_CERT_CHAIN".into(), issued.chain_pem),
        ("DAPR_CERT_KEY".into(), key.serialize_pem()),
        ("DAPR_TRUST_ANCHORS".into(), issued.trust_bundle_pem),
    ]
}

fn start_sidecar(
    dir: &std::path::Path,
    app_id: &str,
    app_port: Option<u16>,
    mtls: Option<&tandem::operator::ca::Authority>,
) -> (tokio::process::Child, u16) {
    let http = free_port();
    let mut cmd = tokio::process::Command::new(tandem_bin());
    cmd.args([
        "sidecar",
        "--app-id",
        app_id,
        "--log-level",
        "warn",
        "--enable-metrics=false",
    ]);
    if let Some(ca) = mtls {
        cmd.arg("--enable-mtls").envs(mtls_env(ca, app_id));
    }
    cmd.args([
        "--dapr-http-port",
        &http.to_string(),
        "--dapr-grpc-port",
        &free_port().to_string(),
    ])
    .args(["--dapr-internal-grpc-port", &free_port().to_string()])
    .args(["--config", dir.join("config.yaml").to_str().unwrap()])
    .stdout(Stdio::null())
    .kill_on_drop(true);
    if let Some(p) = app_port {
        cmd.args(["--app-port", &p.to_string()]);
    }
    (cmd.spawn().expect("start tandem"), http)
}

#[tokio::main]
async fn main() {
    let secs = env_u64("INVOKE_SECONDS", 10);
    let rate = env_u64("INVOKE_RATE", 1000);
    let conns = env_u64("INVOKE_CONNECTIONS", 32) as usize;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {{name: bench}}\nspec:\n  nameResolution:\n    component: sqlite\n    configuration: {{connectionString: \"{}\"}}\n",
            dir.path().join("nr.db").display()
        ),
    )
    .unwrap();
    let app_port = free_port();
    tokio::spawn(serve_app(app_port));
    let (callee, _) = start_sidecar(dir.path(), "bench-app", Some(app_port), None);
    let (caller, caller_http) = start_sidecar(dir.path(), "bench-client", None, None);
    let (ca, _) = tandem::operator::ca::Authority::generate("public").unwrap();
    let (mtls_callee, _) = start_sidecar(dir.path(), "bench-app-mtls", Some(app_port), Some(&ca));
    let (mtls_caller, mtls_http) = start_sidecar(dir.path(), "bench-client-mtls", None, Some(&ca));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    wait_ready(&client, caller_http).await;
    wait_ready(&client, mtls_http).await;
    let (caller_pid, callee_pid) = (caller.id().unwrap(), callee.id().unwrap());
    let direct = format!("http://127.0.0.1:{app_port}/ping");
    let via = format!("http://127.0.0.1:{caller_http}/v1.0/invoke/bench-app/method/ping");
    let via_mtls = format!("http://127.0.0.1:{mtls_http}/v1.0/invoke/bench-app-mtls/method/ping");
    // Warm up connection pools on every hop.
    for _ in 0..200 {
        call(&client, &via, &Bytes::from_static(b"w")).await;
        call(&client, &via_mtls, &Bytes::from_static(b"w")).await;
        call(&client, &direct, &Bytes::from_static(b"w")).await;
    }
    let idle = (rss_mb(caller_pid), rss_mb(callee_pid));

    println!("tandem invocation benchmark: 1 KB request and response, {rate} req/s for {secs} s, {conns} connections");
    let d = fixed_rate(&client, &direct, rate, secs).await;
    let s = fixed_rate(&client, &via, rate, secs).await;
    println!("at {rate} req/s           p50        p90        p99");
    println!(
        "  app -> app          {:>7.3} ms {:>7.3} ms {:>7.3} ms",
        ms(d.p50),
        ms(d.p90),
        ms(d.p99)
    );
    println!(
        "  via two sidecars    {:>7.3} ms {:>7.3} ms {:>7.3} ms",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99)
    );
    println!(
        "  added by sidecars   {:>+7.3} ms {:>+7.3} ms {:>+7.3} ms   ({} requests each)",
        ms(s.p50) - ms(d.p50),
        ms(s.p90) - ms(d.p90),
        ms(s.p99) - ms(d.p99),
        s.count
    );

    let (direct_rps, _) = max_throughput(&client, &direct, conns, secs).await;
    let cpu_before = (cpu_time(caller_pid), cpu_time(callee_pid));
    let (via_rps, via_n) = max_throughput(&client, &via, conns, secs).await;
    let cpu = (cpu_time(caller_pid) - cpu_before.0, cpu_time(callee_pid) - cpu_before.1);
    let loaded = (rss_mb(caller_pid), rss_mb(callee_pid));
    println!(
        "max throughput, {conns} connections: app -> app {direct_rps:.0} req/s; via two sidecars {via_rps:.0} req/s"
    );
    let per_k = |c: Duration| c.as_secs_f64() / (via_n as f64 / 1000.0);
    println!(
        "CPU per 1000 requests: caller sidecar {:.3} s, callee sidecar {:.3} s",
        per_k(cpu.0),
        per_k(cpu.1)
    );
    println!(
        "RSS: caller sidecar {:.1} MB idle, {:.1} MB after load; callee sidecar {:.1} MB idle, {:.1} MB after load",
        idle.0, loaded.0, idle.1, loaded.1
    );
    let m = fixed_rate(&client, &via_mtls, rate, secs).await;
    let (mtls_rps, _) = max_throughput(&client, &via_mtls, conns, secs).await;
    println!(
        "with mTLS between the sidecars: added {:>+7.3} ms p50 {:>+7.3} ms p90 {:>+7.3} ms p99 at {rate} req/s; \
         max {mtls_rps:.0} req/s",
        ms(m.p50) - ms(d.p50),
        ms(m.p90) - ms(d.p90),
        ms(m.p99) - ms(d.p99),
    );
    let _ = Arc::new(());
    drop((caller, callee, mtls_caller, mtls_callee));
}
