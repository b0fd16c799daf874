//! `bindings.http`: an output binding that sends HTTP requests to `url`. The operation is the method (`create` is
//! POST); `path` metadata is appended to the URL, metadata names starting with a capital letter are sent as
//! headers, and the answer carries `statusCode`, `status` and the response headers as metadata. A status outside
//! 2xx is an error (`received status code N`) unless `errorIfNot2XX` is false. `MTLSRootCA`, `MTLSClientCert` and
//! `MTLSClientKey` (PEM or a file path), `securityToken`/`securityTokenHeader`, `responseTimeout` and
//! `maxResponseBodySize` (the body is cut there, as in Dapr) are Dapr's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};

use super::{Binding, BindingError, Directions, InvokeRequest, InvokeResponse};
use crate::components::http_client::{ClientTlsPem, HttpsClient, tls_client};
use crate::components::{ComponentError, Metadata};

const DEFAULT_MAX_BODY: u64 = 100 * 1024 * 1024;

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let url = md
        .string("url")
        .ok_or_else(|| ComponentError::invalid("url", "the url to call must be set"))?;
    crate::components::http_client::http_url("url", &url)?;
    let tls = ClientTlsPem {
        root_ca: pem_or_file(&md, "MTLSRootCA")?,
        certificate: pem_or_file(&md, "MTLSClientCert")?,
        private_key: pem_or_file(&md, "MTLSClientKey")?,
    };
    let client = tls_client(&tls).map_err(|e| ComponentError::invalid("MTLSRootCA", e.replace("clientTLS.", "")))?;
    let max_body = match md.string("maxResponseBodySize") {
        None => DEFAULT_MAX_BODY,
        Some(v) => parse_size(&v).map_err(|e| {
            ComponentError::invalid(
                "maxResponseBodySize",
                format!("invalid value for maxResponseBodySize: {e}"),
            )
        })?,
    };
    let token = match (md.string("securityTokenHeader"), md.string("securityToken")) {
        (Some(h), Some(t)) => Some((
            HeaderName::try_from(h.as_str())
                .map_err(|e| ComponentError::invalid("securityTokenHeader", e.to_string()))?,
            HeaderValue::try_from(t.as_str()).map_err(|e| ComponentError::invalid("securityToken", e.to_string()))?,
        )),
        _ => None,
    };
    super::directed(
        &md,
        Arc::new(HttpBinding {
            url,
            client,
            timeout: md.duration("responseTimeout")?.filter(|d| !d.is_zero()),
            max_body,
            error_if_not_2xx: md.bool("errorIfNot2XX")?.unwrap_or(true),
            token,
        }),
    )
}

/// A PEM document given inline or as the path of a file holding it.
fn pem_or_file(md: &Metadata, key: &str) -> Result<Option<String>, ComponentError> {
    let Some(v) = md.string(key) else { return Ok(None) };
    if v.contains("-----BEGIN") {
        return Ok(Some(v));
    }
    std::fs::read_to_string(&v).map(Some).map_err(|e| {
        ComponentError::invalid(
            key,
            format!("provided {key:?} value is neither a valid file path nor a valid pem encoded string: {e}"),
        )
    })
}

/// A size as Kubernetes quantities write it: `100`, `1k`, `100Mi`, `2Gi`; zero or less means no limit.
fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: i64 = num.parse().map_err(|_| format!("{v:?} is not a size such as 100Mi"))?;
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "Ki" => 1024,
        "Mi" => 1024_u64.pow(2),
        "Gi" => 1024_u64.pow(3),
        _ => return Err(format!("{v:?} has an unknown unit {unit:?}")),
    };
    Ok(if n <= 0 {
        u64::MAX
    } else {
        (n as u64).saturating_mul(mult)
    })
}

struct HttpBinding {
    url: String,
    client: HttpsClient<Full<Bytes>>,
    timeout: Option<Duration>,
    max_body: u64,
    error_if_not_2xx: bool,
    token: Option<(HeaderName, HeaderValue)>,
}

/// A header name as Go writes it: `content-type` → `Content-Type`.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

impl HttpBinding {
    fn request(&self, req: &InvokeRequest) -> Result<Request<Full<Bytes>>, BindingError> {
        let method = match req.operation.as_str() {
            "create" => Method::POST,
            op => Method::from_bytes(op.to_ascii_uppercase().as_bytes())
                .map_err(|_| BindingError::new(format!("invalid operation: {op}")))?,
        };
        let url = match req.metadata.get("path").filter(|p| !p.is_empty()) {
            Some(path) => format!("{}/{}", self.url.trim_end_matches('/'), path.trim_start_matches('/')),
            None => self.url.clone(),
        };
        let with_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        let mut builder = Request::builder().method(method).uri(&url);
        let headers = builder.headers_mut().expect("a fresh request builder has headers");
        if with_body && !req.metadata.contains_key("Content-Type") {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        if !req.metadata.contains_key("Accept") {
            headers.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        if let Some((name, value)) = &self.token {
            headers.insert(name.clone(), value.clone());
        }
        for (k, v) in &req.metadata {
            let is_header = k.starts_with(|c: char| c.is_ascii_uppercase())
                || matches!(k.as_str(), "traceparent" | "tracestate" | "baggage");
            if !is_header {
                continue;
            }
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| BindingError::new(format!("metadata {k:?} is not a valid header name")))?;
            let value = HeaderValue::try_from(v.as_str())
                .map_err(|_| BindingError::new(format!("metadata {k:?} is not a valid header value")))?;
            headers.insert(name, value);
        }
        let body = if with_body { req.data.clone() } else { Bytes::new() };
        builder
            .body(Full::new(body))
            .map_err(|e| BindingError::new(format!("{url:?} is not a valid request: {e}")))
    }

    async fn send(&self, req: &InvokeRequest) -> Result<InvokeResponse, BindingError> {
        let request = self.request(req)?;
        let uri = request.uri().to_string();
        let method = request.method().to_string();
        let fail = |e: &dyn std::fmt::Display| BindingError::new(format!("{method} \"{uri}\": {e}"));
        let resp = self.client.request(request).await.map_err(|e| fail(&e))?;
        let status = resp.status();
        let mut metadata = BTreeMap::new();
        metadata.insert("statusCode".to_owned(), status.as_u16().to_string());
        metadata.insert(
            "status".to_owned(),
            format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
                .trim_end()
                .to_owned(),
        );
        for name in resp.headers().keys() {
            let values: Vec<&str> = resp
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            metadata.insert(canonical(name.as_str()), values.join(", "));
        }
        // The body up to the limit; the rest is left unread, as Dapr cuts it.
        let mut body = resp.into_body();
        let mut data = BytesMut::new();
        while (data.len() as u64) < self.max_body {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(fail(&e)),
                Some(Ok(frame)) => {
                    if let Ok(chunk) = frame.into_data() {
                        let room = (self.max_body - data.len() as u64).min(chunk.len() as u64) as usize;
                        data.extend_from_slice(&chunk[..room]);
                    }
                }
            }
        }
        let error_if_not_2xx = match req.metadata.get("errorIfNot2XX").filter(|v| !v.is_empty()) {
            Some(v) => crate::components::metadata::parse_bool(v).unwrap_or(false),
            None => self.error_if_not_2xx,
        };
        if error_if_not_2xx && !status.is_success() {
            return Err(BindingError {
                message: format!("received status code {}", status.as_u16()),
                metadata,
            });
        }
        Ok(InvokeResponse {
            data: data.freeze(),
            metadata,
        })
    }
}

#[async_trait]
impl Binding for HttpBinding {
    fn directions(&self) -> Directions {
        Directions::OUTPUT
    }

    fn operations(&self) -> &[&'static str] {
        &[
            "create", "get", "head", "post", "put", "patch", "delete", "options", "trace",
        ]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        let sent = self.send(&req);
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, sent)
                .await
                .unwrap_or_else(|_| Err(BindingError::new(format!("no response within {limit:?}")))),
            None => sent.await,
        }
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_header_names_read_as_dapr_reads_them() {
        assert_eq!(parse_size("100Mi").unwrap(), 100 * 1024 * 1024);
        assert_eq!(parse_size("1k").unwrap(), 1000);
        assert_eq!(parse_size("0").unwrap(), u64::MAX);
        assert!(parse_size("lots").is_err());
        assert_eq!(canonical("content-type"), "Content-Type");
        assert_eq!(canonical("x-request-id"), "X-Request-Id");
    }

    #[tokio::test]
    async fn a_url_that_is_not_http_is_refused_at_start() {
        let md = Metadata::new("h", "app", "", [("url".to_owned(), "ftp://x".to_owned())]);
        let err = build(md).await.err().unwrap().to_string();
        assert!(err.contains("http://"), "{err}");
    }
}
