//! Plain HTTP/1.1 calls to a local sidecar's Dapr API, for `tandem run` (readiness) and the CLI verbs.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The most of a response body the CLI reads; a bigger answer is cut here.
const MAX_BODY: usize = 64 << 20;

pub struct Response {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// `method` `http://127.0.0.1:<port><path>` with `body`; the `DAPR_API_TOKEN` of this environment, when
/// set, is sent as the sidecar expects it.
pub async fn call(
    port: u16,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    if let Ok(token) = std::env::var("DAPR_API_TOKEN")
        && !token.is_empty()
    {
        req = req.header("dapr-api-token", token);
    }
    let req = req.body(Body::from(body))?;
    let resp = tokio::time::timeout(timeout, async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok(Response {
            status,
            content_type,
            body,
        })
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {}", humantime::format_duration(timeout)))??;
    Ok(resp)
}

/// Whether the sidecar on `port` can serve outbound calls (`GET /v1.0/healthz/outbound`).
pub async fn outbound_ready(port: u16) -> bool {
    call(
        port,
        Method::GET,
        "/v1.0/healthz/outbound",
        None,
        Vec::new(),
        Duration::from_secs(2),
    )
    .await
    .is_ok_and(|r| r.status.is_success())
}
