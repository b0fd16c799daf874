//! State benchmark (prints figures; not a test): save and get through the tandem sidecar over HTTP and gRPC
//! for state.in-memory, state.sqlite and state.redis, beside the same operations straight against Redis, and
//! for an in-memory store behind a Resiliency outbound policy (timeout, retry, circuit breaker) beside the
//! same store without one: the cost of the resiliency layer.
//!
//!     cargo bench --bench state            # BENCH_SECONDS=3 BENCH_CONCURRENCY=16 by default
//!     BENCH_TANDEM_BIN=/path/to/other/tandem cargo bench --bench state   # the same cases against another build
//!
//! Needs Redis on 127.0.0.1:6379. Each case runs closed-loop with BENCH_CONCURRENCY workers for BENCH_SECONDS.

mod common;

use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dapr::dapr::proto::common::v1::StateItem;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dapr::dapr::proto::runtime::v1::{GetStateRequest, SaveStateRequest};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;

use common::{free_port, rss_mb, tandem_bin};

const VALUE: &str = r#"{"name":"tandem","count":42,"tags":["a","b","c"],"payload":"0123456789abcdef0123456789abcdef"}"#;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Stats {
    ops: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `op(worker, i)` in `workers` closed loops for `secs`, returning throughput and latency percentiles.
async fn measure<F, Fut>(workers: usize, secs: u64, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                let mut i = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(w, i).await;
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Stats {
        ops: all.len(),
        secs,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn report(case: &str, s: &Stats) {
    println!(
        "{case:<34} {:>10.0} ops/s   p50 {:>7.3} ms   p99 {:>7.3} ms",
        s.ops as f64 / s.secs,
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let workers = env("BENCH_CONCURRENCY", 16) as usize;
    let secs = env("BENCH_SECONDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let components = format!(
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: memory}}
spec: {{type: state.in-memory, version: v1}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: sqlite}}
spec:
  type: state.sqlite
  version: v1
  metadata: [{{name: connectionString, value: "{}"}}]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: redis}}
spec:
  type: state.redis
  version: v1
  metadata: [{{name: redisHost, value: "127.0.0.1:6379"}}]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: guarded}}
spec: {{type: state.in-memory, version: v1}}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: bench}}
spec:
  policies:
    timeouts: {{quick: 5s}}
    retries: {{few: {{policy: constant, duration: 10ms, maxRetries: 3}}}}
    circuitBreakers: {{cb: {{maxRequests: 1, timeout: 30s, trip: consecutiveFailures > 5}}}}
  targets:
    components:
      guarded: {{outbound: {{timeout: quick, retry: few, circuitBreaker: cb}}}}
"#,
        dir.path().join("bench.db").display()
    );
    std::fs::write(dir.path().join("components.yaml"), components).unwrap();
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut sidecar = tokio::process::Command::new(tandem_bin())
        .args([
            "sidecar",
            "--app-id",
            "bench",
            "--log-level",
            "warn",
            "--enable-metrics=false",
        ])
        .args([
            "--dapr-http-port",
            &http_port.to_string(),
            "--dapr-grpc-port",
            &grpc_port.to_string(),
        ])
        .args(["--resources-path", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tandem");
    let pid = sidecar.id().unwrap();

    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{http_port}");
    for _ in 0..200 {
        let ready = http.get(format!("{base}/v1.0/healthz").parse().unwrap()).await;
        if ready.is_ok_and(|r| r.status() == 204) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_rss = rss_mb(pid);
    let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let grpc = DaprClient::new(channel);

    println!(
        "tandem state benchmark: {workers} concurrent clients, {secs} s per case, {}-byte JSON value",
        VALUE.len()
    );
    println!("sidecar idle RSS: {:.1} MB", idle_rss);
    for store in ["memory", "guarded", "sqlite", "redis"] {
        let (h, b) = (http.clone(), base.clone());
        let s = measure(workers, secs, move |w, i| {
            let (h, url) = (h.clone(), format!("{b}/v1.0/state/{store}"));
            async move {
                let body = format!(r#"[{{"key":"k{w}-{}","value":{VALUE}}}]"#, i % 100);
                let req = http::Request::post(url).body(Full::new(Bytes::from(body))).unwrap();
                let resp = h.request(req).await.unwrap();
                assert_eq!(resp.status(), 204);
                resp.into_body().collect().await.unwrap();
            }
        })
        .await;
        report(&format!("HTTP save  {store}"), &s);
        let (h, b) = (http.clone(), base.clone());
        let s = measure(workers, secs, move |w, i| {
            let (h, url) = (h.clone(), format!("{b}/v1.0/state/{store}/k{w}-{}", i % 100));
            async move {
                let resp = h.get(url.parse().unwrap()).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
            }
        })
        .await;
        report(&format!("HTTP get   {store}"), &s);
        let g = grpc.clone();
        let s = measure(workers, secs, move |w, i| {
            let mut g = g.clone();
            async move {
                let item = StateItem {
                    key: format!("g{w}-{}", i % 100),
                    value: VALUE.as_bytes().to_vec(),
                    ..Default::default()
                };
                g.save_state(SaveStateRequest {
                    store_name: store.into(),
                    states: vec![item],
                })
                .await
                .unwrap();
            }
        })
        .await;
        report(&format!("gRPC save  {store}"), &s);
        let g = grpc.clone();
        let s = measure(workers, secs, move |w, i| {
            let mut g = g.clone();
            async move {
                let req = GetStateRequest {
                    store_name: store.into(),
                    key: format!("g{w}-{}", i % 100),
                    ..Default::default()
                };
                let resp = g.get_state(req).await.unwrap();
                assert!(!resp.into_inner().data.is_empty());
            }
        })
        .await;
        report(&format!("gRPC get   {store}"), &s);
    }
    let loaded_rss = rss_mb(pid);

    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let c = conn.clone();
    let s = measure(workers, secs, move |w, i| {
        let mut c = c.clone();
        async move {
            let _: () = redis::cmd("HSET")
                .arg(format!("direct||k{w}-{}", i % 100))
                .arg("data")
                .arg(VALUE)
                .arg("version")
                .arg(1)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    report("Redis direct HSET (no sidecar)", &s);
    let c = conn.clone();
    let s = measure(workers, secs, move |w, i| {
        let mut c = c.clone();
        async move {
            let _: (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(format!("direct||k{w}-{}", i % 100))
                .arg("data")
                .arg("version")
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    report("Redis direct HMGET (no sidecar)", &s);
    println!("sidecar RSS after load: {:.1} MB", loaded_rss);
    let _ = sidecar.start_kill();
}
