//! Helpers shared by the benchmarks: ports, process memory and CPU, latency statistics.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

/// The benchmarks' HTTP/1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Waits until the sidecar whose HTTP API listens on `port` says it is ready (GET /v1.0/healthz is 204).
pub async fn wait_ready(client: &HttpClient, port: u16) {
    for _ in 0..400 {
        let url = format!("http://127.0.0.1:{port}/v1.0/healthz");
        if client.get(url.parse().unwrap()).await.is_ok_and(|r| r.status() == 204) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sidecar on {port} never became ready");
}

/// The tandem binary the benchmark drives: this build, or the one `BENCH_TANDEM_BIN` names (say, the previous
/// commit's, to compare two builds through the same cases).
pub fn tandem_bin() -> String {
    std::env::var("BENCH_TANDEM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tandem").to_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Resident memory of `pid` in MB.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// User + system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat, i.e. indexes 11 and 12 after the command.
    let hz = 100.0; // USER_HZ on Linux
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}

pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
}

pub fn percentiles(mut lat: Vec<Duration>) -> Percentiles {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Percentiles {
        count: lat.len(),
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `workers` closed loops each calling `call` until `secs` have passed: (calls per second, latency percentiles).
pub async fn closed_loop<F, Fut>(workers: usize, secs: u64, call: F) -> (f64, Percentiles)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = vec![];
                let mut n = 0usize;
                while std::time::Instant::now() < deadline {
                    let t = std::time::Instant::now();
                    call(w * 1_000_000 + n).await;
                    lat.push(t.elapsed());
                    n += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len() as f64 / started.elapsed().as_secs_f64(), percentiles(all))
}

/// Starts a sidecar (app id `bench`, quiet, no metrics) on free ports with the components in `resources`, for the
/// app on `app_port` if any: (the process, its HTTP port).
pub fn start_sidecar(resources: &std::path::Path, app_port: Option<u16>) -> (tokio::process::Child, u16) {
    let http = free_port();
    let mut cmd = tokio::process::Command::new(tandem_bin());
    cmd.args([
        "sidecar",
        "--app-id",
        "bench",
        "--log-level",
        "error",
        "--enable-metrics=false",
        "--dapr-internal-grpc-listen-address",
        "127.0.0.1",
    ])
    .args([
        "--dapr-http-port",
        &http.to_string(),
        "--dapr-grpc-port",
        &free_port().to_string(),
    ])
    .args(["--dapr-internal-grpc-port", &free_port().to_string()])
    .args(["--resources-path", resources.to_str().unwrap()])
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true);
    if let Some(p) = app_port {
        cmd.args(["--app-port", &p.to_string()]);
    }
    (cmd.spawn().expect("start tandem"), http)
}
