//! HTTP Subtle crypto handlers (`POST /v1.0-alpha1/subtlecrypto/<store>/<op>`): Dapr's protojson bodies of the
//! `Subtle*Request` messages in, the `Subtle*Response` messages out (lowerCamelCase names, proto names accepted,
//! bytes as base64, empty fields left out), over the same crypto block the gRPC methods call.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use tracing::instrument;

use super::{ApiState, DaprPath, json_response, read_json};
use crate::components::crypto::Sealed;
use crate::sidecar::crypto::subtle::KeyFormat;
use crate::sidecar::error::ApiError;

/// protojson reads `bytes` as standard or URL-safe base64, padded or not.
fn decode_b64(text: &str) -> Result<Vec<u8>, String> {
    let lenient = GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient);
    let url = GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient);
    standard
        .decode(text)
        .or_else(|_| url.decode(text))
        .map_err(|e| format!("invalid base64 data: {e}"))
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(Vec::new()),
        Some(s) => decode_b64(&s).map_err(serde::de::Error::custom),
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The `KeyFormat` enum as protojson reads it: its name or its number; `None` for one that does not exist.
fn key_format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KeyFormat>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None => Some(KeyFormat::Pem),
        Some(Value::String(s)) => match s.as_str() {
            "PEM" => Some(KeyFormat::Pem),
            "JSON" => Some(KeyFormat::Json),
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "invalid value for enum field format: {s:?}"
                )));
            }
        },
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(KeyFormat::from_proto)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid value for enum field format: {n}")))?,
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "invalid value for enum field format: {other}"
            )));
        }
    })
}

/// Every field any `Subtle*Request` has; each route reads the ones its message has, as protojson ignores the rest.
#[derive(Deserialize)]
#[serde(default)]
struct SubtleJson {
    #[serde(deserialize_with = "text")]
    name: String,
    #[serde(deserialize_with = "key_format")]
    format: Option<KeyFormat>,
    #[serde(deserialize_with = "text")]
    algorithm: String,
    #[serde(alias = "key_name", rename = "keyName", deserialize_with = "text")]
    key_name: String,
    #[serde(deserialize_with = "bytes")]
    plaintext: Vec<u8>,
    #[serde(deserialize_with = "bytes")]
    ciphertext: Vec<u8>,
    #[serde(alias = "plaintext_key", rename = "plaintextKey", deserialize_with = "bytes")]
    plaintext_key: Vec<u8>,
    #[serde(alias = "wrapped_key", rename = "wrappedKey", deserialize_with = "bytes")]
    wrapped_key: Vec<u8>,
    #[serde(deserialize_with = "bytes")]
    nonce: Vec<u8>,
    #[serde(deserialize_with = "bytes")]
    tag: Vec<u8>,
    #[serde(alias = "associated_data", rename = "associatedData", deserialize_with = "bytes")]
    associated_data: Vec<u8>,
    #[serde(deserialize_with = "bytes")]
    digest: Vec<u8>,
    #[serde(deserialize_with = "bytes")]
    signature: Vec<u8>,
}

impl Default for SubtleJson {
    fn default() -> Self {
        SubtleJson {
            name: String::new(),
            format: Some(KeyFormat::Pem),
            algorithm: String::new(),
            key_name: String::new(),
            plaintext: Vec::new(),
            ciphertext: Vec::new(),
            plaintext_key: Vec::new(),
            wrapped_key: Vec::new(),
            nonce: Vec::new(),
            tag: Vec::new(),
            associated_data: Vec::new(),
            digest: Vec::new(),
            signature: Vec::new(),
        }
    }
}

/// The answer as protojson writes it: empty fields and `false` left out, bytes in standard base64.
fn answer(fields: &[(&str, Field)]) -> Response {
    let mut out = Map::new();
    for (key, value) in fields {
        match value {
            Field::Text(t) if !t.is_empty() => {
                out.insert((*key).into(), json!(t));
            }
            Field::Bytes(b) if !b.is_empty() => {
                out.insert((*key).into(), json!(STANDARD.encode(b)));
            }
            Field::Bool(true) => {
                out.insert((*key).into(), json!(true));
            }
            _ => {}
        }
    }
    json_response(StatusCode::OK, Value::Object(out))
}

enum Field {
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

async fn parse(st: &ApiState, body: Body) -> Result<SubtleJson, ApiError> {
    Ok(read_json::<SubtleJson>(st, body).await?.unwrap_or_default())
}

macro_rules! respond {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return e.into_response(),
        }
    };
}

#[instrument(level = "debug", name = "http.subtle.get_key", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn get_key(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let r = respond!(parse(&st, body).await);
    let key = respond!(st.rt.crypto.get_key(path.store(), &r.name, r.format).await);
    answer(&[
        ("name", Field::Text(key.name)),
        ("publicKey", Field::Text(key.public_key)),
    ])
}

#[instrument(level = "debug", name = "http.subtle.encrypt", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn encrypt(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let r = respond!(parse(&st, body).await);
    let sealed = respond!(
        st.rt
            .crypto
            .subtle_encrypt(
                path.store(),
                &r.key_name,
                &r.algorithm,
                &r.plaintext,
                &r.nonce,
                &r.associated_data
            )
            .await
    );
    answer(&[
        ("ciphertext", Field::Bytes(sealed.ciphertext)),
        ("tag", Field::Bytes(sealed.tag)),
    ])
}

#[instrument(level = "debug", name = "http.subtle.decrypt", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn decrypt(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let r = respond!(parse(&st, body).await);
    let sealed = Sealed {
        ciphertext: r.ciphertext,
        tag: r.tag,
    };
    let plaintext = respond!(
        st.rt
            .crypto
            .subtle_decrypt(
                path.store(),
                &r.key_name,
                &r.algorithm,
                &sealed,
                &r.nonce,
                &r.associated_data
            )
            .await
    );
    answer(&[("plaintext", Field::Bytes(plaintext))])
}

#[instrument(level = "debug", name = "http.subtle.wrap_key", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn wrap_key(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let r = respond!(parse(&st, body).await);
    let sealed = respond!(
        st.rt
            .crypto
            .subtle_wrap_key(
                path.store(),
                &r.key_name,
                &r.algorithm,
                &r.plaintext_key,
                &r.nonce,
                &r.associated_data
            )
            .await
    );
    answer(&[
        ("wrappedKey", Field::Bytes(sealed.ciphertext)),
        ("tag", Field::Bytes(sealed.tag)),
    ])
}

#[instrument(level = "debug", name = "http.subtle.unwrap_key", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn unwrap_key(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let r = respond!(parse(&st, body).await);
    let sealed = Sealed {
        ciphertext: r.wrapped_key,
        tag: r.tag,
    };
    let key = respond!(
        st.rt
            .crypto
            .subtle_unwrap_key(
                path.store(),
                &r.key_name,
                &r.algorithm,
                &sealed,
                &r.nonce,
                &r.associated_data
            )
            .await
    );
    answer(&[("plaintextKey", Field::Bytes(key))])
}

#[instrument(level = "debug", name = "http.subtle.sign", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn sign(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let r = respond!(parse(&st, body).await);
    let signature = respond!(
        st.rt
            .crypto
            .subtle_sign(path.store(), &r.key_name, &r.algorithm, &r.digest)
            .await
    );
    answer(&[("signature", Field::Bytes(signature))])
}

#[instrument(level = "debug", name = "http.subtle.verify", skip_all, fields(component = %crate::echo::echo(path.store())))]
pub async fn verify(State(st): State<ApiState>, path: DaprPath, body: Body) -> Response {
    let r = respond!(parse(&st, body).await);
    let valid = respond!(
        st.rt
            .crypto
            .subtle_verify(path.store(), &r.key_name, &r.algorithm, &r.digest, &r.signature)
            .await
    );
    answer(&[("valid", Field::Bool(valid))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_read_as_protojson_reads_them() {
        assert_eq!(decode_b64("aGk/").unwrap(), b"hi?");
        assert_eq!(decode_b64("aGk_").unwrap(), b"hi?");
        assert_eq!(decode_b64("aGk").unwrap(), b"hi");
        assert_eq!(decode_b64("aGk=").unwrap(), b"hi");
        assert!(decode_b64("not base64!").is_err());
    }

    #[test]
    fn requests_take_json_and_proto_names_and_enum_names_or_numbers() {
        let r: SubtleJson =
            serde_json::from_str(r#"{"keyName":"k","associated_data":"YQ==","format":"JSON","unknown":1}"#).unwrap();
        assert_eq!(r.key_name, "k");
        assert_eq!(r.associated_data, b"a");
        assert_eq!(r.format, Some(KeyFormat::Json));
        let r: SubtleJson = serde_json::from_str(r#"{"key_name":"k2","format":1,"nonce":null}"#).unwrap();
        assert_eq!(r.key_name, "k2");
        assert_eq!(r.format, Some(KeyFormat::Json));
        assert!(r.nonce.is_empty());
        let r: SubtleJson = serde_json::from_str("{}").unwrap();
        assert_eq!(r.format, Some(KeyFormat::Pem));
        let r: SubtleJson = serde_json::from_str(r#"{"format":7}"#).unwrap();
        assert_eq!(r.format, None);
        assert!(serde_json::from_str::<SubtleJson>(r#"{"format":"DER"}"#).is_err());
        assert!(serde_json::from_str::<SubtleJson>(r#"{"digest":"%%%"}"#).is_err());
    }
}
