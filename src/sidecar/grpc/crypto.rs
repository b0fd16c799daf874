//! gRPC `EncryptAlpha1` / `DecryptAlpha1` and the unary `Subtle*Alpha1` methods. Encrypt and decrypt are bidirectional streams of `StreamPayload{data, seq}` with the options in
//! the first message, as Dapr reads them (first message within 5 s, sequence numbers from 0 without gaps, options
//! only up front); the answer is streamed back in chunks of at most one segment.

use std::time::Duration;

use bytes::Bytes;
use dapr::dapr::proto::common::v1::StreamPayload;
use dapr::dapr::proto::runtime::v1 as rt;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Streaming};
use tracing::instrument;

use super::DaprApi;
use super::handlers::Reply;
use crate::components::crypto::Sealed;
use crate::echo::echo;
use crate::sidecar::crypto::subtle::KeyFormat;

use crate::sidecar::crypto::scheme::{SEGMENT_SIZE, TAG_SIZE};
use crate::sidecar::crypto::{CryptoApi, EncryptOptions, Output};
use crate::sidecar::error::{ApiError, ApiResult};

/// How long the caller has to send the first message (with the options), as in Dapr.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most data one answer message carries.
const CHUNK: usize = SEGMENT_SIZE + TAG_SIZE + 1;

/// A request message of either stream: options (first message only) and a payload chunk.
pub trait CryptoRequest: Send + 'static {
    type Options;
    fn has_options(&self) -> bool;
    fn take_options(&mut self) -> Option<Self::Options>;
    fn take_payload(&mut self) -> Option<StreamPayload>;
}

impl CryptoRequest for rt::EncryptRequest {
    type Options = rt::EncryptRequestOptions;
    fn has_options(&self) -> bool {
        self.options.is_some()
    }
    fn take_options(&mut self) -> Option<Self::Options> {
        self.options.take()
    }
    fn take_payload(&mut self) -> Option<StreamPayload> {
        self.payload.take()
    }
}

impl CryptoRequest for rt::DecryptRequest {
    type Options = rt::DecryptRequestOptions;
    fn has_options(&self) -> bool {
        self.options.is_some()
    }
    fn take_options(&mut self) -> Option<Self::Options> {
        self.options.take()
    }
    fn take_payload(&mut self) -> Option<StreamPayload> {
        self.payload.take()
    }
}

/// The first message of the stream and the options it must carry.
async fn opening<T: CryptoRequest>(stream: &mut Streaming<T>) -> ApiResult<(T, T::Options)> {
    let mut first = first_message(stream).await?;
    let options = first
        .take_options()
        .ok_or_else(|| ApiError::bad_request("first message does not contain the required options"))?;
    Ok((first, options))
}

/// The first message of the stream.
async fn first_message<T: CryptoRequest>(stream: &mut Streaming<T>) -> ApiResult<T> {
    match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, stream.message()).await {
        Err(_) => Err(ApiError::bad_request(
            "error waiting for first message: context deadline exceeded",
        )),
        Ok(Err(e)) => Err(ApiError::crypto_operation(format!(
            "error receiving the first message: {}",
            e.message()
        ))),
        Ok(Ok(None)) => Err(ApiError::crypto_operation("error receiving the first message: EOF")),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// The data of the first message's payload and of every later message, checking sequence numbers.
fn payloads<T: CryptoRequest>(
    mut first: T,
    rest: Streaming<T>,
) -> impl Stream<Item = ApiResult<Bytes>> + Send + Unpin + 'static {
    let head = first.take_payload();
    let mut expect: u64 = 0;
    let later = rest.map(|m| match m {
        Err(e) => Err(ApiError::crypto_operation(format!(
            "error receiving message: {}",
            e.message()
        ))),
        Ok(m) if m.has_options() => Err(ApiError::crypto_operation("options found in non-leading message")),
        Ok(mut m) => Ok(m.take_payload()),
    });
    futures::stream::iter(std::iter::once(Ok(head)))
        .chain(later)
        .filter_map(move |item| {
            let out = match item {
                Err(e) => Some(Err(e)),
                Ok(None) => None,
                Ok(Some(p)) if p.seq != expect => Some(Err(ApiError::crypto_operation(format!(
                    "invalid sequence number received: {} (expected: {expect})",
                    p.seq
                )))),
                Ok(Some(p)) => {
                    expect += 1;
                    Some(Ok(Bytes::from(p.data)))
                }
            };
            std::future::ready(out)
        })
        .boxed()
}

/// `out` as answer messages of at most [`CHUNK`] bytes, numbered from 0.
fn answers<R: Send + 'static>(
    out: Output,
    wrap: fn(StreamPayload) -> R,
) -> impl Stream<Item = Result<R, tonic::Status>> + Send + 'static {
    let mut seq = 0u64;
    out.flat_map(|item| {
        let pieces: Vec<ApiResult<Bytes>> = match item {
            Ok(mut b) => {
                let mut v = vec![];
                while !b.is_empty() {
                    v.push(Ok(b.split_to(b.len().min(CHUNK))));
                }
                v
            }
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(pieces)
    })
    .map(move |piece| {
        piece.map_err(tonic::Status::from).map(|data| {
            let p = StreamPayload {
                data: data.to_vec(),
                seq,
            };
            seq += 1;
            wrap(p)
        })
    })
}

pub type AnswerStream<R> = std::pin::Pin<Box<dyn Stream<Item = Result<R, tonic::Status>> + Send + 'static>>;

pub async fn encrypt(
    api: &CryptoApi,
    mut stream: Streaming<rt::EncryptRequest>,
) -> ApiResult<AnswerStream<rt::EncryptResponse>> {
    let (first, o) = opening(&mut stream).await?;
    if o.key_name.is_empty() {
        return Err(ApiError::bad_request(
            "missing property 'keyName' in the options message",
        ));
    }
    if o.key_wrap_algorithm.is_empty() {
        return Err(ApiError::bad_request(
            "missing property 'keyWrapAlgorithm' in the options message",
        ));
    }
    let opts = EncryptOptions {
        key_name: o.key_name,
        key_wrap_algorithm: o.key_wrap_algorithm,
        data_encryption_cipher: o.data_encryption_cipher,
        omit_decryption_key_name: o.omit_decryption_key_name,
        decryption_key_name: o.decryption_key_name,
    };
    let out = api.encrypt(&o.component_name, opts, payloads(first, stream)).await?;
    Ok(Box::pin(answers(out, |p| rt::EncryptResponse { payload: Some(p) })))
}

pub async fn decrypt(
    api: &CryptoApi,
    mut stream: Streaming<rt::DecryptRequest>,
) -> ApiResult<AnswerStream<rt::DecryptResponse>> {
    let (first, o) = opening(&mut stream).await?;
    let out = api
        .decrypt(&o.component_name, &o.key_name, payloads(first, stream))
        .await?;
    Ok(Box::pin(answers(out, |p| rt::DecryptResponse { payload: Some(p) })))
}

#[instrument(level = "debug", name = "grpc.subtle_get_key_alpha1", skip_all, fields(component = %echo(&req.get_ref().component_name)))]
pub async fn subtle_get_key_alpha1(
    api: &DaprApi,
    req: Request<rt::SubtleGetKeyRequest>,
) -> Reply<rt::SubtleGetKeyResponse> {
    let r = req.into_inner();
    let key = api
        .rt
        .crypto
        .get_key(&r.component_name, &r.name, KeyFormat::from_proto(r.format))
        .await?;
    Ok(Response::new(rt::SubtleGetKeyResponse {
        name: key.name,
        public_key: key.public_key,
    }))
}

#[instrument(level = "debug", name = "grpc.subtle_encrypt_alpha1", skip_all, fields(component = %echo(&req.get_ref().component_name)))]
pub async fn subtle_encrypt_alpha1(
    api: &DaprApi,
    req: Request<rt::SubtleEncryptRequest>,
) -> Reply<rt::SubtleEncryptResponse> {
    let r = req.into_inner();
    let sealed = api
        .rt
        .crypto
        .subtle_encrypt(
            &r.component_name,
            &r.key_name,
            &r.algorithm,
            &r.plaintext,
            &r.nonce,
            &r.associated_data,
        )
        .await?;
    Ok(Response::new(rt::SubtleEncryptResponse {
        ciphertext: sealed.ciphertext,
        tag: sealed.tag,
    }))
}

#[instrument(level = "debug", name = "grpc.subtle_decrypt_alpha1", skip_all, fields(component = %echo(&req.get_ref().component_name)))]
pub async fn subtle_decrypt_alpha1(
    api: &DaprApi,
    req: Request<rt::SubtleDecryptRequest>,
) -> Reply<rt::SubtleDecryptResponse> {
    let r = req.into_inner();
    let plaintext = api
        .rt
        .crypto
        .subtle_decrypt(
            &r.component_name,
            &r.key_name,
            &r.algorithm,
            &Sealed {
                ciphertext: r.ciphertext,
                tag: r.tag,
            },
            &r.nonce,
            &r.associated_data,
        )
        .await?;
    Ok(Response::new(rt::SubtleDecryptResponse { plaintext }))
}

#[instrument(level = "debug", name = "grpc.subtle_wrap_key_alpha1", skip_all, fields(component = %echo(&req.get_ref().component_name)))]
pub async fn subtle_wrap_key_alpha1(
    api: &DaprApi,
    req: Request<rt::SubtleWrapKeyRequest>,
) -> Reply<rt::SubtleWrapKeyResponse> {
    let r = req.into_inner();
    let sealed = api
        .rt
        .crypto
        .subtle_wrap_key(
            &r.component_name,
            &r.key_name,
            &r.algorithm,
            &r.plaintext_key,
            &r.nonce,
            &r.associated_data,
        )
        .await?;
    Ok(Response::new(rt::SubtleWrapKeyResponse {
        wrapped_key: sealed.ciphertext,
        tag: sealed.tag,
    }))
}

#[instrument(level = "debug", name = "grpc.subtle_unwrap_key_alpha1", skip_all, fields(component = %echo(&req.get_ref().component_name)))]
pub async fn subtle_unwrap_key_alpha1(
    api: &DaprApi,
    req: Request<rt::SubtleUnwrapKeyRequest>,
) -> Reply<rt::SubtleUnwrapKeyResponse> {
    let r = req.into_inner();
    let plaintext_key = api
        .rt
        .crypto
        .subtle_unwrap_key(
            &r.component_name,
            &r.key_name,
            &r.algorithm,
            &Sealed {
                ciphertext: r.wrapped_key,
                tag: r.tag,
            },
            &r.nonce,
            &r.associated_data,
        )
        .await?;
    Ok(Response::new(rt::SubtleUnwrapKeyResponse { plaintext_key }))
}

#[instrument(level = "debug", name = "grpc.subtle_sign_alpha1", skip_all, fields(component = %echo(&req.get_ref().component_name)))]
pub async fn subtle_sign_alpha1(api: &DaprApi, req: Request<rt::SubtleSignRequest>) -> Reply<rt::SubtleSignResponse> {
    let r = req.into_inner();
    let signature = api
        .rt
        .crypto
        .subtle_sign(&r.component_name, &r.key_name, &r.algorithm, &r.digest)
        .await?;
    Ok(Response::new(rt::SubtleSignResponse { signature }))
}

#[instrument(level = "debug", name = "grpc.subtle_verify_alpha1", skip_all, fields(component = %echo(&req.get_ref().component_name)))]
pub async fn subtle_verify_alpha1(
    api: &DaprApi,
    req: Request<rt::SubtleVerifyRequest>,
) -> Reply<rt::SubtleVerifyResponse> {
    let r = req.into_inner();
    let valid = api
        .rt
        .crypto
        .subtle_verify(&r.component_name, &r.key_name, &r.algorithm, &r.digest, &r.signature)
        .await?;
    Ok(Response::new(rt::SubtleVerifyResponse { valid }))
}
