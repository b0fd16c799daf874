//! Service invocation from the gRPC API: `Dapr.InvokeService`, and proxying of any other gRPC call that carries
//! `dapr-app-id` metadata to that app's gRPC server (streaming RPCs included).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Response};
use dapr::dapr::proto::common::v1 as common;
use http_body_util::BodyExt;

use super::{Invoker, Mode, code_from_http_status, grpc_error_response, headers};

/// State of the gRPC proxy fallback.
#[derive(Clone)]
pub struct ProxyState {
    pub invoker: Arc<Invoker>,
    pub api_token: Option<Arc<str>>,
}

/// Any gRPC call the Dapr service does not know: forwarded to the app named by `dapr-app-id`.
pub async fn proxy(st: ProxyState, peer: std::net::SocketAddr, req: Request) -> Response<Body> {
    if let Some(token) = &st.api_token {
        if headers::get(req.headers(), "dapr-api-token") != Some(token.as_ref()) {
            return grpc_error_response(tonic::Code::Unauthenticated, "Unauthorized");
        }
    }
    let target = headers::get(req.headers(), "dapr-app-id")
        .or_else(|| headers::get(req.headers(), headers::CALLEE_APP_ID))
        .map(str::to_owned);
    let Some(target) = target else {
        return grpc_error_response(
            tonic::Code::Unknown,
            "failed to proxy request: required metadata dapr-callee-app-id or dapr-app-id not found",
        );
    };
    let method = req.uri().path().to_owned();
    match st.invoker.invoke(&target, &method, req, Mode::Grpc, Some(peer)).await {
        Ok(resp) => resp,
        Err(e) => grpc_error_response(e.grpc, &e.message),
    }
}

/// `Dapr.InvokeService`: an HTTP-style invocation (verb, query string, content type, data) of `id`'s `method`.
pub async fn invoke_service(
    invoker: &Invoker,
    id: &str,
    message: common::InvokeRequest,
    max_body: usize,
) -> Result<common::InvokeResponse, tonic::Status> {
    let verb = message
        .http_extension
        .as_ref()
        .and_then(|e| common::http_extension::Verb::try_from(e.verb).ok())
        .filter(|v| *v != common::http_extension::Verb::None)
        .map(|v| v.as_str_name())
        .unwrap_or("POST");
    let query = message
        .http_extension
        .as_ref()
        .map(|e| e.querystring.as_str())
        .unwrap_or_default();
    let uri = if query.is_empty() {
        "/".to_owned()
    } else {
        format!("/?{query}")
    };
    let mut req = Request::builder().method(verb).uri(uri);
    if !message.content_type.is_empty() {
        if let Ok(ct) = HeaderValue::from_str(&message.content_type) {
            req = req.header("content-type", ct);
        }
    }
    let data = message.data.map(|a| a.value).unwrap_or_default();
    let req = req
        .header("content-length", data.len())
        .body(Body::from(data))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let resp = invoker
        .invoke(id, &message.method, req, Mode::Http, None)
        .await
        .map_err(tonic::Status::from)?;
    let status = resp.status().as_u16();
    let content_type = headers::get(resp.headers(), "content-type")
        .unwrap_or_default()
        .to_owned();
    let body = http_body_util::Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| tonic::Status::resource_exhausted(format!("reading the app's response: {e}")))?
        .to_bytes();
    if !(200..300).contains(&status) {
        let code = code_from_http_status(status);
        return Err(tonic::Status::new(code, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(common::InvokeResponse {
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: body.to_vec(),
        }),
        content_type,
    })
}
