//! The real binary's readiness: outbound APIs answer before the app listens; /v1.0/healthz waits for the app.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn status(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Option<u16> {
    client.get(url.parse().unwrap()).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn healthz_waits_for_the_app_port_but_outbound_does_not() {
    let (http_port, grpc_port, app_port) = (free_port(), free_port(), free_port());
    let mut sidecar = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["sidecar", "--app-id", "ready", "--enable-metrics=false"])
        .args([
            "--dapr-http-port",
            &http_port.to_string(),
            "--dapr-grpc-port",
            &grpc_port.to_string(),
        ])
        .args(["--app-port", &app_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{http_port}/v1.0");

    let started = Instant::now();
    while status(&client, &format!("{base}/healthz/outbound")).await != Some(204) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "outbound never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing listens on the app port yet: the sidecar is up for outbound calls but not ready.
    assert_eq!(status(&client, &format!("{base}/healthz")).await, Some(500));

    let _app = tokio::net::TcpListener::bind(("127.0.0.1", app_port)).await.unwrap();
    let started = Instant::now();
    while status(&client, &format!("{base}/healthz")).await != Some(204) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "healthz never became ready after the app listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(&client, &format!("{base}/healthz?appid=someone-else")).await,
        Some(500)
    );

    // SIGTERM drains and exits cleanly.
    unsafe {
        libc::kill(sidecar.id().unwrap() as i32, libc::SIGTERM);
    }
    let exit = tokio::time::timeout(Duration::from_secs(10), sidecar.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(exit.success(), "{exit}");
}
