//! Output bindings benchmark (prints figures; not a test): `POST /v1.0/bindings/<name>` through one tandem sidecar
//! to bindings.redis (`create`), bindings.postgresql (`exec` of an INSERT), bindings.localstorage (`create`) and
//! bindings.http (`post` to a server in this process), each beside its baseline measured in the same run: the
//! same operation done straight from this process (a redis SET, the INSERT over tokio-postgres, a file write, the
//! POST to the server), with the same number of closed-loop workers.
//!
//!     cargo bench --bench bindings      # BENCH_SECONDS=3 BENCH_CONCURRENCY=16; needs Redis on 127.0.0.1:6379
//!                                       # and PostgreSQL on 127.0.0.1:5432 (user postgres, database test)

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use common::{HttpClient, Percentiles, closed_loop, env_u64, free_port, ms, rss_mb, start_sidecar, wait_ready};

/// The row text the INSERT cases write (120 bytes, no characters JSON would escape).
const TEXT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567";
const VALUE: &str = r#"{"order":{"id":42,"item":"book","qty":2,"note":"0123456789abcdef0123456789abcdef"}}"#;

/// A server answering every request 200 with a short body, standing for the remote end of bindings.http.
async fn serve_echo(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|req: hyper::Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn components(dir: &std::path::Path, echo_port: u16) -> std::path::PathBuf {
    let res = dir.join("resources");
    std::fs::create_dir_all(&res).unwrap();
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let yaml = [
        (
            "kv",
            "bindings.redis",
            "  - name: redisHost\n    value: 127.0.0.1:6379\n".to_owned(),
        ),
        (
            "sql",
            "bindings.postgresql",
            "  - name: connectionString\n    value: host=127.0.0.1 port=5432 user=postgres dbname=test\n".to_owned(),
        ),
        (
            "files",
            "bindings.localstorage",
            format!("  - name: rootPath\n    value: {}\n", files.display()),
        ),
        (
            "web",
            "bindings.http",
            format!("  - name: url\n    value: http://127.0.0.1:{echo_port}/in\n"),
        ),
    ];
    for (name, type_, md) in yaml {
        std::fs::write(
            res.join(format!("{name}.yaml")),
            format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {type_}\n  version: v1\n  metadata:\n{md}"
            ),
        )
        .unwrap();
    }
    res
}

/// One output-binding call through the sidecar; panics on anything but 200/204 (a benchmark of errors is no
/// benchmark).
async fn invoke(client: &HttpClient, url: &str, body: String) {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.expect("invoke binding");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status.is_success(),
        "{url}: {status} {}",
        String::from_utf8_lossy(&body)
    );
}

fn row(case: &str, base: &(f64, Percentiles), via: &(f64, Percentiles)) {
    println!(
        "| {case} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | +{:.2} |",
        base.0,
        via.0,
        ms(base.1.p50),
        ms(base.1.p99),
        ms(via.1.p50),
        ms(via.1.p99),
        ms(via.1.p50.saturating_sub(base.1.p50)),
    );
}

#[tokio::main]
async fn main() {
    let secs = env_u64("BENCH_SECONDS", 3);
    let workers = env_u64("BENCH_CONCURRENCY", 16) as usize;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let dir = tempfile::tempdir().unwrap();
    let echo_port = free_port();
    tokio::spawn(serve_echo(echo_port));

    // The baseline gets the binding's own pool shape: 4 pipelined connections, calls spread round-robin.
    let mut pg = vec![];
    for _ in 0..4 {
        let (client, conn) = tokio_postgres::connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test",
            tokio_postgres::NoTls,
        )
        .await
        .expect("PostgreSQL on 127.0.0.1:5432, database test");
        tokio::spawn(conn);
        pg.push(client);
    }
    pg[0]
        .batch_execute("drop table if exists bench_bindings; create table bench_bindings (id bigint, body text)")
        .await
        .unwrap();
    let pg = Arc::new(pg);
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let redis = redis::aio::ConnectionManager::new(redis)
        .await
        .expect("Redis on 127.0.0.1:6379");

    let (mut sidecar, http) = start_sidecar(&components(dir.path(), echo_port), None);
    wait_ready(&client, http).await;
    let url = |name: &str| format!("http://127.0.0.1:{http}/v1.0/bindings/{name}");
    println!("output bindings benchmark: {workers} closed-loop workers, {secs}s per case, 120-byte JSON values\n");
    println!(
        "| binding, operation | baseline calls/s (direct) | via tandem calls/s | baseline p50 / p99 ms | via tandem p50 / p99 ms | added p50 ms |"
    );
    println!("|---|---|---|---|---|---|");

    let r = redis.clone();
    let base = closed_loop(workers, secs, move |n| {
        let mut r = r.clone();
        async move {
            let _: () = redis::cmd("SET")
                .arg(format!("bench-direct-{}", n % 1000))
                .arg(VALUE)
                .query_async(&mut r)
                .await
                .unwrap();
        }
    })
    .await;
    let (c, u) = (client.clone(), url("kv"));
    let via = closed_loop(workers, secs, move |n| {
        let (c, u) = (c.clone(), u.clone());
        async move {
            let body = format!(
                r#"{{"operation":"create","data":{VALUE},"metadata":{{"key":"bench-{}"}}}}"#,
                n % 1000
            );
            invoke(&c, &u, body).await
        }
    })
    .await;
    row("bindings.redis, create", &base, &via);

    let p = pg.clone();
    let base = closed_loop(workers, secs, move |n| {
        let p = p.clone();
        async move {
            p[n % p.len()]
                .execute(
                    "insert into bench_bindings (id, body) values ($1, $2)",
                    &[&(n as i64), &TEXT],
                )
                .await
                .unwrap();
        }
    })
    .await;
    let (c, u) = (client.clone(), url("sql"));
    let via = closed_loop(workers, secs, move |n| {
        let (c, u) = (c.clone(), u.clone());
        async move {
            let body = format!(
                r#"{{"operation":"exec","metadata":{{"sql":"insert into bench_bindings (id, body) values ($1, $2)","params":"[{n}, \"{TEXT}\"]"}}}}"#
            );
            invoke(&c, &u, body).await
        }
    })
    .await;
    row("bindings.postgresql, exec INSERT", &base, &via);

    let files = dir.path().join("direct");
    std::fs::create_dir_all(&files).unwrap();
    let base = closed_loop(workers, secs, move |n| {
        let path = files.join(format!("f{}", n % 1000));
        async move { tokio::fs::write(path, VALUE).await.unwrap() }
    })
    .await;
    let (c, u) = (client.clone(), url("files"));
    let via = closed_loop(workers, secs, move |n| {
        let (c, u) = (c.clone(), u.clone());
        async move {
            let body = format!(
                r#"{{"operation":"create","data":{VALUE},"metadata":{{"fileName":"f{}"}}}}"#,
                n % 1000
            );
            invoke(&c, &u, body).await
        }
    })
    .await;
    row("bindings.localstorage, create", &base, &via);

    let (c, u) = (client.clone(), format!("http://127.0.0.1:{echo_port}/in"));
    let base = closed_loop(workers, secs, move |_| {
        let (c, u) = (c.clone(), u.clone());
        async move { invoke(&c, &u, VALUE.to_owned()).await }
    })
    .await;
    let (c, u) = (client.clone(), url("web"));
    let via = closed_loop(workers, secs, move |_| {
        let (c, u) = (c.clone(), u.clone());
        async move { invoke(&c, &u, format!(r#"{{"operation":"post","data":{VALUE}}}"#)).await }
    })
    .await;
    row("bindings.http, post", &base, &via);

    let rss = sidecar.id().map(rss_mb).unwrap_or(0.0);
    println!("\nsidecar RSS after the run: {rss:.1} MB");
    let _ = sidecar.kill().await;
    let _ = pg[0].batch_execute("drop table bench_bindings").await;
}
