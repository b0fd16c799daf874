//! HTTP plumbing the app channel and service invocation share: the h2c client, hop-by-hop headers, error
//! chains, and Dapr's mappings between HTTP statuses and gRPC codes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Compares a secret a caller sent with the expected one in time that does not depend on where they differ
/// (only on their lengths), so the API token cannot be guessed byte by byte from response times.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        // Past the end of `given`, compare with a byte that cannot match: the loop always runs over `expected`.
        let g = given.get(i).copied().unwrap_or(!*e);
        diff |= usize::from(g ^ e);
    }
    std::hint::black_box(diff) == 0
}

/// An HTTP/2-only (h2c) client, for sidecar-to-sidecar traffic and gRPC apps.
pub fn h2c_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_adaptive_window(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Headers that belong to one connection (RFC 7230 §6.1) and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !s.is_empty())
        .collect();
    // A message with both framings is framed by Transfer-Encoding (RFC 7230 §3.3.3); the length is not its own.
    if h.contains_key("transfer-encoding") {
        h.remove("content-length");
    }
    // HTTP/2 keeps one TE value, `trailers`, which gRPC requires.
    let te_trailers = h
        .get_all("te")
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("trailers")));
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        h.remove(name);
    }
    if te_trailers {
        h.insert("te", HeaderValue::from_static("trailers"));
    }
}

/// The first value of header `name` as text.
pub fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The causes of `e`, joined.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = vec![];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Dapr's gRPC code → HTTP status mapping.
pub fn http_status_from_code(code: tonic::Code) -> u16 {
    use tonic::Code::*;
    match code {
        Ok => 200,
        Cancelled => 408,
        InvalidArgument | FailedPrecondition | OutOfRange => 400,
        DeadlineExceeded => 504,
        NotFound => 404,
        AlreadyExists | Aborted => 409,
        PermissionDenied => 403,
        Unauthenticated => 401,
        ResourceExhausted => 429,
        Unimplemented => 501,
        Unavailable => 503,
        Unknown | Internal | DataLoss => 500,
    }
}

/// Dapr's HTTP status → gRPC code mapping (grpc's http-grpc-status-mapping).
pub fn code_from_http_status(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        200..=299 => Code::Ok,
        408 => Code::Cancelled,
        500 => Code::Unknown,
        400 => Code::Internal,
        504 => Code::DeadlineExceeded,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        403 => Code::PermissionDenied,
        401 => Code::Unauthenticated,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cret!", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(same_secret(b"", b""));
    }
}
