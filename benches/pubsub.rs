//! Pub/sub benchmark (prints figures; not a test): publish -> deliver through one tandem sidecar for every
//! pub/sub backend whose broker answers here — pubsub.in-memory, pubsub.sqlite, pubsub.redis, pubsub.rabbitmq,
//! pubsub.jetstream, pubsub.mqtt3 and pubsub.kafka — publish throughput and latency, delivery throughput and
//! end-to-end latency (publish call to the app's handler) — beside the baseline of the same HTTP POST straight to
//! the app, measured in the same run; then bulk publish throughput (batches of 10 and 100) to in-memory.
//!
//!     cargo bench --bench pubsub        # BENCH_SECONDS=3 BENCH_CONCURRENCY=16; BENCH_BROKERS=redis,kafka picks
//!
//! Brokers on 127.0.0.1: Redis 6379, RabbitMQ 5672 (guest/guest), NATS JetStream 4222, Mosquitto 1883, a Kafka
//! broker 9092; one that does not answer gets a row saying so. Every run publishes to a topic of its own.
//!
//! The subscriber app is in this process: a hyper HTTP/1 server answering `GET /dapr/subscribe` and taking each
//! event (204). Events carry their publish time; the app records when each arrived.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use common::{HttpClient, free_port, percentiles, rss_mb, start_sidecar, wait_ready};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// What the subscriber app saw.
#[derive(Default)]
struct Received {
    count: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
}

/// The app: lists one subscription (to `topic`) and records the end-to-end latency of every event (the `t` in its
/// data).
async fn serve_app(port: u16, received: Arc<Received>, topic: String) {
    let subscriptions = Bytes::from(format!(
        r#"[{{"pubsubname":"pubsub","topic":"{topic}","route":"/events"}}]"#
    ));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let (received, subscriptions) = (received.clone(), subscriptions.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let (received, subscriptions) = (received.clone(), subscriptions.clone());
                async move {
                    if req.uri().path() == "/dapr/subscribe" {
                        return Ok::<_, Infallible>(hyper::Response::new(Full::new(subscriptions)));
                    }
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    // The event's data, or (the direct baseline) the body itself.
                    let t = v["data"]["t"].as_u64().or_else(|| v["t"].as_u64()).unwrap_or(0) as u128;
                    if t > 0 {
                        let lat = Duration::from_nanos(now_ns().saturating_sub(t) as u64);
                        received.latencies.lock().unwrap().push(lat);
                    }
                    received.count.fetch_add(1, Ordering::Relaxed);
                    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                    Ok(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn payload() -> Full<Bytes> {
    Full::new(Bytes::from(format!(
        r#"{{"t":{},"order":{{"id":42,"item":"book","qty":2,"note":"0123456789abcdef0123456789abcdef"}}}}"#,
        now_ns()
    )))
}

/// `workers` closed loops POSTing to `url` for `secs`: (requests per second, latency percentiles).
async fn post_loop(
    client: &HttpClient,
    url: &str,
    workers: usize,
    secs: u64,
    ct: &str,
    per_worker_rate: Option<u64>,
    fixed_body: Option<Bytes>,
) -> (usize, f64, common::Percentiles) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, url, ct, fixed) = (client.clone(), url.to_owned(), ct.to_owned(), fixed_body.clone());
            tokio::spawn(async move {
                let mut lat = vec![];
                let mut tick = per_worker_rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r as f64)));
                while Instant::now() < deadline {
                    if let Some(tick) = &mut tick {
                        tick.tick().await;
                    }
                    let t = Instant::now();
                    let req = hyper::Request::post(url.as_str())
                        .header("content-type", ct.as_str())
                        .body(fixed.clone().map(Full::new).unwrap_or_else(payload))
                        .unwrap();
                    let resp = client.request(req).await.expect("publish");
                    assert!(resp.status().is_success(), "{url}: {}", resp.status());
                    resp.into_body().collect().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (all.len(), rate, percentiles(all))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// The port each backend's broker answers on; `None` for the backends inside the sidecar.
fn broker_port(backend: &str) -> Option<u16> {
    match backend {
        "redis" => Some(6379),
        "rabbitmq" => Some(5672),
        "jetstream" => Some(4222),
        "mqtt3" => Some(1883),
        "kafka" => Some(9092),
        _ => None,
    }
}

fn component(dir: &std::path::Path, backend: &str, run: &str) -> std::path::PathBuf {
    let res = dir.join(backend);
    std::fs::create_dir_all(&res).unwrap();
    let md = |pairs: &[(&str, String)]| -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("  - name: {k}\n    value: \"{v}\"\n"))
            .collect()
    };
    let (type_, md) = match backend {
        "in-memory" => ("pubsub.in-memory", String::new()),
        "sqlite" => (
            "pubsub.sqlite",
            md(&[("connectionString", dir.join("pubsub.db").display().to_string())]),
        ),
        "redis" => ("pubsub.redis", md(&[("redisHost", "127.0.0.1:6379".into())])),
        // Persistent messages in a durable queue: the setup that loses nothing (Dapr's defaults do not persist).
        "rabbitmq" => (
            "pubsub.rabbitmq",
            md(&[
                ("connectionString", "amqp://guest:guest@127.0.0.1:5672".into()),
                ("durable", "true".into()),
                ("deliveryMode", "2".into()),
            ]),
        ),
        "jetstream" => (
            "pubsub.jetstream",
            md(&[
                ("natsURL", "nats://127.0.0.1:4222".into()),
                ("concurrencyMode", "parallel".into()),
            ]),
        ),
        // A client id of its own: a session another run left must not hand its messages to this one.
        "mqtt3" => (
            "pubsub.mqtt3",
            md(&[
                ("url", "tcp://127.0.0.1:1883".into()),
                ("qos", "1".into()),
                ("consumerID", format!("bench-{run}")),
            ]),
        ),
        "kafka" => (
            "pubsub.kafka",
            md(&[
                ("brokers", "127.0.0.1:9092".into()),
                ("authType", "none".into()),
                ("initialOffset", "oldest".into()),
                ("consumerGroup", format!("bench-{run}")),
            ]),
        ),
        other => panic!("{other}"),
    };
    std::fs::write(
        res.join("pubsub.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: {type_}\n  version: v1\n  metadata:\n{md}"
        ),
    )
    .unwrap();
    res
}

/// What a broker needs before a run (JetStream: a stream holding the topic, as Dapr requires) and after it.
async fn prepare(backend: &str, topic: &str) {
    if backend == "jetstream" {
        let js = async_nats::jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: topic.to_owned(),
            subjects: vec![topic.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

async fn clean_up(backend: &str, topic: &str) {
    match backend {
        "redis" => {
            let _ = tokio::process::Command::new("redis-cli")
                .args(["DEL", topic])
                .output()
                .await;
        }
        "jetstream" => {
            if let Ok(c) = async_nats::connect("nats://127.0.0.1:4222").await {
                let _ = async_nats::jetstream::new(c).delete_stream(topic).await;
            }
        }
        _ => {}
    }
}

#[tokio::main]
async fn main() {
    let secs = env("BENCH_SECONDS", 3);
    let workers = env("BENCH_CONCURRENCY", 16) as usize;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let dir = tempfile::tempdir().unwrap();
    println!("pub/sub benchmark: {workers} publishers, {secs}s per case, one sidecar publishing and delivering\n");

    let received = Arc::new(Received::default());
    let app_port = free_port();
    tokio::spawn(serve_app(app_port, received.clone(), "baseline".to_owned()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("http://127.0.0.1:{app_port}/events");
    let (_, rate, p) = post_loop(&client, &url, workers, secs, "application/json", None, None).await;
    println!(
        "baseline, POST straight to the app: {rate:.0} req/s, p50 {} / p99 {} ms\n",
        ms(p.p50),
        ms(p.p99)
    );

    println!(
        "| broker | publish msg/s (closed loop) | delivered msg/s until drained | at 1000 msg/s: publish p50 / p99 ms | end-to-end p50 / p99 ms | sidecar RSS |"
    );
    println!("|---|---|---|---|---|---|");
    let run = format!("{}-{}", std::process::id(), now_ns() % 1_000_000_000);
    let wanted = std::env::var("BENCH_BROKERS").unwrap_or_default();
    for backend in [
        "in-memory",
        "sqlite",
        "redis",
        "rabbitmq",
        "jetstream",
        "mqtt3",
        "kafka",
    ] {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w.trim() == backend) {
            continue;
        }
        if let Some(port) = broker_port(backend)
            && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
        {
            println!("| {backend} | skipped: no broker answers on 127.0.0.1:{port} | | | | |");
            continue;
        }
        let topic = format!("bench-{run}");
        prepare(backend, &topic).await;
        let received = Arc::new(Received::default());
        let app_port = free_port();
        tokio::spawn(serve_app(app_port, received.clone(), topic.clone()));
        let (mut sidecar, http) = start_sidecar(&component(dir.path(), backend, &run), Some(app_port));
        wait_ready(&client, http).await;
        let url = format!("http://127.0.0.1:{http}/v1.0/publish/pubsub/{topic}");
        // Subscriptions with a broker are made after the sidecar is ready; a message published before would be
        // lost to a broker that keeps nothing for topics nobody subscribes to (RabbitMQ, MQTT), so one probe is
        // sent until one arrives.
        let probed = async {
            loop {
                let probe = hyper::Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .body(payload())
                    .unwrap();
                if let Ok(resp) = client.request(probe).await {
                    let _ = resp.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if received.count.load(Ordering::Relaxed) > 0 {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), probed).await.is_err() {
            println!("| {backend} | no message arrived within 30 s of subscribing | | | | |");
            let _ = sidecar.kill().await;
            clean_up(backend, &topic).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        received.count.store(0, Ordering::Relaxed);
        received.latencies.lock().unwrap().clear();
        // Throughput: publish as fast as the publishers can, then until every message is delivered.
        let started = Instant::now();
        let (published, rate, _) = post_loop(&client, &url, workers, secs, "application/json", None, None).await;
        let drained = async {
            while received.count.load(Ordering::Relaxed) < published {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let all_in = tokio::time::timeout(Duration::from_secs(120), drained).await.is_ok();
        let delivered = received.count.load(Ordering::Relaxed);
        let delivered_rate = delivered as f64 / started.elapsed().as_secs_f64();
        let lost = if all_in {
            String::new()
        } else {
            format!(" (only {delivered} of {published} in 120 s)")
        };
        // Latency: 1000 msg/s (Dapr's published setup), below every broker's capacity.
        received.latencies.lock().unwrap().clear();
        let before = received.count.load(Ordering::Relaxed);
        let (sent, _, p) = post_loop(&client, &url, 4, secs, "application/json", Some(250), None).await;
        let waited = Instant::now();
        while received.count.load(Ordering::Relaxed) < before + sent && waited.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e2e = percentiles(std::mem::take(&mut *received.latencies.lock().unwrap()));
        let rss = sidecar.id().map(rss_mb).unwrap_or(0.0);
        println!(
            "| {backend} | {rate:.0} | {delivered_rate:.0}{lost} | {} / {} | {} / {} | {rss:.1} MB |",
            ms(p.p50),
            ms(p.p99),
            ms(e2e.p50),
            ms(e2e.p99)
        );
        let _ = sidecar.kill().await;
        clean_up(backend, &topic).await;
    }

    // Bulk publish to in-memory with no subscriber, as Dapr's published bulk figures are measured.
    println!("\n| bulk publish to in-memory, {workers} workers | requests/s | messages/s | p50 / p99 ms |");
    println!("|---|---|---|---|");
    let res = component(dir.path(), "in-memory", &run);
    let (mut sidecar, http) = start_sidecar(&res, None);
    wait_ready(&client, http).await;
    for batch in [10usize, 100] {
        let url = format!("http://127.0.0.1:{http}/v1.0-alpha1/publish/bulk/pubsub/bulk-only");
        let body: String = {
            let entries: Vec<String> = (0..batch)
                .map(|i| format!(r#"{{"entryId":"{i}","event":{{"order":{i},"pad":"0123456789abcdef0123456789abcdef"}},"contentType":"application/json"}}"#))
                .collect();
            format!("[{}]", entries.join(","))
        };
        let (_, reqs, p) = post_loop(
            &client,
            &url,
            workers,
            secs,
            "application/json",
            None,
            Some(Bytes::from(body)),
        )
        .await;
        println!(
            "| batches of {batch} | {reqs:.0} | {:.0} | {} / {} |",
            reqs * batch as f64,
            ms(p.p50),
            ms(p.p99)
        );
    }
    let _ = sidecar.kill().await;
}
