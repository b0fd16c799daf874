//! HTTP cryptography handlers: `PUT /v1.0-alpha1/crypto/<store>/encrypt|decrypt`, options in `dapr-*` headers,
//! the body streamed through and the answer streamed back.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tracing::instrument;

use super::{ApiState, DaprPath};
use crate::components::metadata::parse_bool;
use crate::sidecar::crypto::{EncryptOptions, Output};
use crate::sidecar::error::ApiError;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// The request body as a stream of chunks, read errors as Dapr's.
fn body_stream(body: Body) -> impl futures::Stream<Item = Result<bytes::Bytes, ApiError>> + Send + Unpin + 'static {
    body.into_data_stream().map(|r| r.map_err(ApiError::body_read))
}

#[instrument(level = "debug", name = "http.crypto.encrypt", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn encrypt(State(st): State<ApiState>, path: DaprPath, headers: HeaderMap, body: Body) -> Response {
    let store = path.store();
    if let Err(e) = st.rt.crypto.provider(store) {
        return e.into_response();
    }
    let opts = EncryptOptions {
        key_name: header_str(&headers, "dapr-key-name").to_owned(),
        key_wrap_algorithm: header_str(&headers, "dapr-key-wrap-algorithm").to_owned(),
        data_encryption_cipher: header_str(&headers, "dapr-data-encryption-cipher").to_owned(),
        omit_decryption_key_name: parse_bool(header_str(&headers, "dapr-omit-decryption-key-name")).unwrap_or(false),
        decryption_key_name: header_str(&headers, "dapr-decryption-key-name").to_owned(),
    };
    for (value, name) in [
        (&opts.key_name, "dapr-key-name"),
        (&opts.key_wrap_algorithm, "dapr-key-wrap-algorithm"),
    ] {
        if value.is_empty() {
            return ApiError::bad_request(format!("missing header '{name}'")).into_response();
        }
    }
    match st.rt.crypto.encrypt(store, opts, body_stream(body)).await {
        Ok(out) => respond(out).await,
        Err(e) => e.into_response(),
    }
}

#[instrument(level = "debug", name = "http.crypto.decrypt", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn decrypt(State(st): State<ApiState>, path: DaprPath, headers: HeaderMap, body: Body) -> Response {
    let key_name = header_str(&headers, "dapr-key-name");
    match st.rt.crypto.decrypt(path.store(), key_name, body_stream(body)).await {
        Ok(out) => respond(out).await,
        Err(e) => e.into_response(),
    }
}

/// Streams `out` as the body. The first chunk is awaited before answering, so a message that fits one segment
/// (and any error before the first output) still gets a proper error status; a later error ends the body early
/// (the connection is reset), since the status has gone by then.
async fn respond(mut out: Output) -> Response {
    let first = match out.next().await {
        Some(Err(e)) => return e.into_response(),
        Some(Ok(chunk)) => Some(chunk),
        None => None,
    };
    let rest = futures::stream::iter(first.map(Ok)).chain(out);
    let mut resp = (StatusCode::OK, Body::from_stream(rest)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}
