//! HTTP cryptography handlers: `PUT /v1.0-alpha1/crypto/<store>/encrypt|decrypt`, options in `dapr-*` headers,
//! the body read as a stream, the answer sent once the body has been read whole (held in a temporary file when
//! large, so memory stays flat).

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

/// Answers bytes held in memory up to this size; beyond it they wait in an unlinked temporary file.
const IN_MEMORY: usize = 1 << 20;

/// Answers with `out` once the input has been read whole, so every error (a tampered segment too) gets its
/// status, as in Dapr, and an HTTP client that sends its whole body before reading the answer cannot deadlock
/// against the sidecar. Memory stays flat: past [`IN_MEMORY`] the answer waits in a temporary file, then streams.
async fn respond(mut out: Output) -> Response {
    use tokio::io::AsyncWriteExt;
    let spill_failed = |e: std::io::Error| ApiError::crypto_operation(format!("failed to buffer the answer: {e}"));
    let mut mem: Vec<u8> = vec![];
    let mut file: Option<tokio::fs::File> = None;
    while let Some(item) = out.next().await {
        let chunk = match item {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        if file.is_none() && mem.len() + chunk.len() > IN_MEMORY {
            match tokio::task::spawn_blocking(tempfile::tempfile).await {
                Ok(Ok(f)) => file = Some(tokio::fs::File::from_std(f)),
                Ok(Err(e)) => return spill_failed(e).into_response(),
                Err(e) => return spill_failed(std::io::Error::other(e)).into_response(),
            }
        }
        match &mut file {
            Some(f) => {
                let written = async {
                    if !mem.is_empty() {
                        f.write_all(&std::mem::take(&mut mem)).await?;
                    }
                    f.write_all(&chunk).await
                };
                if let Err(e) = written.await {
                    return spill_failed(e).into_response();
                }
            }
            None => mem.extend_from_slice(&chunk),
        }
    }
    let body = match file {
        None => Body::from(mem),
        Some(mut f) => {
            use tokio::io::AsyncSeekExt;
            if let Err(e) = async {
                f.flush().await?;
                f.seek(std::io::SeekFrom::Start(0)).await.map(|_| ())
            }
            .await
            {
                return spill_failed(e).into_response();
            }
            Body::from_stream(futures::stream::unfold(f, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 << 10];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            }))
        }
    };
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}
