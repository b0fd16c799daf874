//! The cryptography building block: streaming encryption and decryption in Dapr's `dapr.io/enc/v1` format
//! ([`scheme`]) with file keys wrapped by a crypto provider. Streams in, streams out: memory stays at about one
//! 64 KiB segment per call whatever the message's size.

pub mod scheme;
pub mod subtle;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};

use crate::components::Kind;
use crate::components::crypto::{CryptoProvider, WrapAlgorithm};
use crate::sidecar::components::{ComponentTable, Handle};
use crate::sidecar::error::{ApiError, ApiResult};
use scheme::{Cipher, Direction, FileKey, HeaderReader, Manifest, SchemeError, Segments};

/// What `encrypt` is asked to do (HTTP headers `dapr-key-name`, ... or gRPC `EncryptRequestOptions`).
#[derive(Clone, Debug, Default)]
pub struct EncryptOptions {
    pub key_name: String,
    pub key_wrap_algorithm: String,
    /// Empty: AES-GCM.
    pub data_encryption_cipher: String,
    pub omit_decryption_key_name: bool,
    pub decryption_key_name: String,
}

/// Output of an encryption or decryption: chunks of bytes, ending with an error if the input turns out bad
/// part-way (a tampered segment, a cut-short message, a broken input stream).
pub type Output = BoxStream<'static, ApiResult<Bytes>>;

/// The cryptography API over the loaded crypto providers.
#[derive(Clone)]
pub struct CryptoApi {
    table: Arc<ComponentTable>,
}

impl CryptoApi {
    pub fn new(table: Arc<ComponentTable>) -> Self {
        CryptoApi { table }
    }

    /// Crypto provider `name`, or Dapr's error for none configured / not found.
    pub fn provider(&self, name: &str) -> ApiResult<Handle<dyn CryptoProvider>> {
        if self.table.is_empty(Kind::Crypto) {
            return Err(ApiError::crypto_providers_not_configured());
        }
        if name.is_empty() {
            return Err(ApiError::bad_request("missing component name"));
        }
        self.table
            .get::<dyn CryptoProvider>(name)
            .ok_or_else(|| ApiError::crypto_provider_not_found(name))
    }

    /// Encrypts `input` with a new file key wrapped by key `opts.key_name` of provider `store`. Errors about the
    /// request come back before any output.
    pub async fn encrypt<S>(&self, store: &str, opts: EncryptOptions, input: S) -> ApiResult<Output>
    where
        S: Stream<Item = ApiResult<Bytes>> + Send + Unpin + 'static,
    {
        let provider = self.provider(store)?;
        let op = |e: String| ApiError::crypto_operation(e);
        if opts.key_name.is_empty() {
            return Err(op("option KeyName is required".into()));
        }
        let algorithm = WrapAlgorithm::parse(&opts.key_wrap_algorithm).ok_or_else(|| {
            op(format!(
                "option Algorithm is not valid: algorithm {} is not supported",
                crate::echo::echo(&opts.key_wrap_algorithm.to_ascii_uppercase())
            ))
        })?;
        let cipher = match opts.data_encryption_cipher.as_str() {
            "" => Cipher::AesGcm,
            name => Cipher::parse(name).ok_or_else(|| {
                op(format!(
                    "option Cipher is not valid: cipher {} is not supported",
                    crate::echo::echo(&name.to_ascii_uppercase())
                ))
            })?,
        };
        let key = FileKey::generate(cipher).map_err(|e| op(e.to_string()))?;
        let wfk = provider
            .wrap_key(
                &opts.key_name,
                algorithm.algorithm(),
                key.file_key(),
                algorithm.iv(),
                &[],
            )
            .await
            .map_err(|e| op(format!("failed to wrap the file key: {e}")))?
            .ciphertext;
        let key_name = if opts.omit_decryption_key_name {
            String::new()
        } else if opts.decryption_key_name.is_empty() {
            opts.key_name.clone()
        } else {
            opts.decryption_key_name.clone()
        };
        let manifest = Manifest {
            key_name,
            key_wrap: algorithm,
            wfk,
            cipher,
            nonce_prefix: key.nonce_prefix(),
        };
        let header = key
            .header(&manifest.to_json())
            .map_err(|e| op(format!("failed to sign header: {e}")))?;
        Ok(pump(input, Segments::new(key, Direction::Encrypt), header))
    }

    /// Decrypts `input`, unwrapping its file key with key `key_name` of provider `store` (empty: the key the
    /// message names). The header is read and checked before this returns, so a wrong key or a bad header is an
    /// error before any output.
    pub async fn decrypt<S>(&self, store: &str, key_name: &str, mut input: S) -> ApiResult<Output>
    where
        S: Stream<Item = ApiResult<Bytes>> + Send + Unpin + 'static,
    {
        let provider = self.provider(store)?;
        let op = |e: SchemeError| ApiError::crypto_operation(e);
        let mut reader = HeaderReader::default();
        let header = loop {
            match input.next().await {
                Some(Ok(chunk)) => {
                    if let Some(h) = reader.push(&chunk).map_err(op)? {
                        break h;
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err(op(reader.incomplete())),
            }
        };
        let manifest = scheme::Manifest::parse(&header.manifest).map_err(op)?;
        let key_name = match (key_name, manifest.key_name.as_str()) {
            ("", "") => return Err(op(SchemeError::KeyNameMissing)),
            ("", named) => named.to_owned(),
            (given, _) => given.to_owned(),
        };
        let wrap = manifest.key_wrap;
        let unwrapped = match provider
            .unwrap_key(&key_name, wrap.algorithm(), &manifest.wfk, wrap.iv(), &[], &[])
            .await
        {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::debug!(store = %crate::echo::echo(store), error = %e, "unwrapping the file key failed");
                None
            }
        };
        let key = scheme::open_key(&manifest, &header, unwrapped).map_err(op)?;
        let mut segments = Segments::new(key, Direction::Decrypt);
        let mut first = vec![];
        segments.push(&header.rest, &mut first).map_err(op)?;
        Ok(pump(input, segments, first))
    }
}

/// Runs `segments` over `input`: `first` (already processed) goes out first, then each completed segment.
fn pump<S>(input: S, segments: Segments, first: Vec<u8>) -> Output
where
    S: Stream<Item = ApiResult<Bytes>> + Send + Unpin + 'static,
{
    struct Pump<S> {
        input: S,
        segments: Segments,
        first: Vec<u8>,
        done: bool,
    }
    let state = Pump {
        input,
        segments,
        first,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.first.is_empty() {
            let first = std::mem::take(&mut st.first);
            return Some((Ok(Bytes::from(first)), st));
        }
        loop {
            let mut out = vec![];
            let step = match st.input.next().await {
                Some(Ok(chunk)) => st.segments.push(&chunk, &mut out),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    st.segments.finish(&mut out)
                }
            };
            match step {
                Err(e) => {
                    st.done = true;
                    return Some((Err(ApiError::crypto_operation(e)), st));
                }
                Ok(()) if !out.is_empty() => return Some((Ok(Bytes::from(out)), st)),
                Ok(()) if st.done => return None,
                Ok(()) => {}
            }
        }
    })
    .boxed()
}
