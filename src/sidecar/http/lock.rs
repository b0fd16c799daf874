//! HTTP lock handlers: `POST /v1.0-alpha1/lock/<store>` and `POST /v1.0-alpha1/unlock/<store>`. Bodies are read
//! as Dapr reads them (protobuf JSON: camelCase or proto field names, unknown fields ignored, an int32 expiry
//! given as a number or a string, an empty body as all fields unset).

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use tracing::instrument;

use super::{ApiState, DaprPath, json_response, read_body};
use crate::sidecar::error::ApiError;

/// The fields of Dapr's `TryLockRequest`/`UnlockRequest` a body may set (the store comes from the path).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LockBody {
    #[serde(alias = "resource_id", deserialize_with = "text")]
    #[serde(rename = "resourceId")]
    pub resource_id: String,
    #[serde(alias = "lock_owner", deserialize_with = "text")]
    #[serde(rename = "lockOwner")]
    pub lock_owner: String,
    #[serde(alias = "expiry_in_seconds", deserialize_with = "int32")]
    #[serde(rename = "expiryInSeconds")]
    pub expiry_in_seconds: i32,
}

/// A string field; `null` is unset, as in protobuf JSON.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// An int32 field as protobuf JSON takes it: an integral number or a string holding one, within int32;
/// `null` is unset.
fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    use serde::de::Error;
    let v = Option::<serde_json::Value>::deserialize(d)?;
    let n: Option<f64> = match &v {
        None | Some(serde_json::Value::Null) => return Ok(0),
        Some(serde_json::Value::Number(n)) => n.as_i64().map(|i| i as f64).or(n.as_f64()),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok().filter(|_| s.trim() == s),
        Some(_) => None,
    };
    match n {
        Some(n) if n.fract() == 0.0 && n >= f64::from(i32::MIN) && n <= f64::from(i32::MAX) => Ok(n as i32),
        _ => Err(D::Error::custom(format!(
            "invalid value for int32 field expiryInSeconds: {}",
            v.map(|v| v.to_string()).unwrap_or_default()
        ))),
    }
}

/// Decodes a lock request body; an empty body sets nothing.
pub fn decode(body: &[u8]) -> Result<LockBody, ApiError> {
    if body.is_empty() {
        return Ok(LockBody::default());
    }
    // Only an object is a message (serde would also take a struct from an array).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::malformed_request("a request body must be a JSON object"));
    }
    serde_json::from_slice(body).map_err(ApiError::malformed_request)
}

async fn body(st: &ApiState, body: Body) -> Result<LockBody, ApiError> {
    let bytes = read_body(body, st.max_body).await.map_err(ApiError::body_read)?;
    decode(&bytes)
}

#[instrument(level = "debug", name = "http.lock.try_lock", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn try_lock(State(st): State<ApiState>, path: DaprPath, req: Body) -> Response {
    let b = match body(&st, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match st
        .rt
        .locks
        .try_lock(path.store(), &b.resource_id, &b.lock_owner, b.expiry_in_seconds)
        .await
    {
        Ok(success) => json_response(StatusCode::OK, serde_json::json!({ "success": success })),
        Err(e) => e.into_response(),
    }
}

#[instrument(level = "debug", name = "http.lock.unlock", skip_all, fields(store = %crate::echo::echo(path.store())))]
pub async fn unlock(State(st): State<ApiState>, path: DaprPath, req: Body) -> Response {
    let b = match body(&st, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match st.rt.locks.unlock(path.store(), &b.resource_id, &b.lock_owner).await {
        // The status as its number, as Dapr writes it.
        Ok(status) => json_response(StatusCode::OK, serde_json::json!({ "status": status as i32 })),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> LockBody {
        decode(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn bodies_decode_as_protobuf_json() {
        let want = LockBody {
            resource_id: "r".into(),
            lock_owner: "o".into(),
            expiry_in_seconds: 60,
        };
        assert_eq!(ok(r#"{"resourceId":"r","lockOwner":"o","expiryInSeconds":60}"#), want);
        assert_eq!(
            ok(r#"{"resource_id":"r","lock_owner":"o","expiry_in_seconds":"60"}"#),
            want
        );
        assert_eq!(
            ok(r#"{"resourceId":"r","lockOwner":"o","expiryInSeconds":6e1,"x":[1]}"#),
            want
        );
        assert_eq!(ok(""), LockBody::default());
        assert_eq!(ok(r#"{"resourceId":null,"expiryInSeconds":null}"#), LockBody::default());
        assert_eq!(ok(r#"{"expiryInSeconds":-5}"#).expiry_in_seconds, -5);
    }

    #[test]
    fn bad_bodies_are_malformed_requests() {
        for body in [
            "{",
            "[]",
            r#"["r","o",5]"#,
            "null",
            r#"{"expiryInSeconds":2147483648}"#,
            r#"{"expiryInSeconds":1.5}"#,
            r#"{"expiryInSeconds":true}"#,
            r#"{"expiryInSeconds":"ten"}"#,
            r#"{"resourceId":7}"#,
            r#"{"resourceId":"a","resource_id":"b"}"#,
            r#"{} x"#,
        ] {
            let e = decode(body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.code), (400, "ERR_MALFORMED_REQUEST"), "{body}");
        }
    }
}
