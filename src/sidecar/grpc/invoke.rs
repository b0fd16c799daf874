//! Service invocation from the gRPC API (an adapter over the invocation block): `Dapr.InvokeService`, and proxying of any other gRPC call that carries
//! `dapr-app-id` metadata to that app's gRPC server (streaming RPCs included).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Response};
use dapr::dapr::proto::common::v1 as common;
use http_body_util::BodyExt;

use crate::sidecar::error::ApiError;
use crate::sidecar::invoke::{Invoker, Mode, headers};
use crate::sidecar::net::code_from_http_status;

/// State of the gRPC proxy fallback.
#[derive(Clone)]
pub struct ProxyState {
    pub invoker: Arc<Invoker>,
    pub api_token: Option<Arc<str>>,
}

/// Any gRPC call the Dapr service does not know: forwarded to the app named by `dapr-app-id`.
pub async fn proxy(st: ProxyState, peer: std::net::SocketAddr, req: Request) -> Response<Body> {
    if let Err(e) = super::check_token(st.api_token.as_deref(), headers::get(req.headers(), "dapr-api-token")) {
        return e.into_grpc_response();
    }
    let target = headers::get(req.headers(), "dapr-app-id")
        .or_else(|| headers::get(req.headers(), headers::CALLEE_APP_ID))
        .map(str::to_owned);
    let Some(target) = target else {
        return ApiError::proxy_no_app_id().into_grpc_response();
    };
    let method = req.uri().path().to_owned();
    match st.invoker.invoke(&target, &method, req, Mode::Grpc, Some(peer)).await {
        Ok(resp) => resp,
        Err(e) => e.into_grpc_response(),
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
    if !message.content_type.is_empty()
        && let Ok(ct) = HeaderValue::from_str(&message.content_type)
    {
        req = req.header("content-type", ct);
    }
    let data = message.data.map(|a| a.value).unwrap_or_default();
    let req = req
        .header("content-length", data.len())
        .body(Body::from(data))
        .map_err(ApiError::bad_request)?;
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
        .map_err(|e| {
            ApiError::new(
                500,
                tonic::Code::ResourceExhausted,
                "ERR_DIRECT_INVOKE",
                format!("reading the app's response: {e}"),
            )
        })?
        .to_bytes();
    if !(200..300).contains(&status) {
        let code = code_from_http_status(status);
        // The app's own answer, passed on with the gRPC code Dapr maps its HTTP status to.
        let message = String::from_utf8_lossy(&body).into_owned();
        return Err(ApiError::new(status, code, "ERR_DIRECT_INVOKE", message).into());
    }
    Ok(common::InvokeResponse {
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: body.to_vec(),
        }),
        content_type,
    })
}
