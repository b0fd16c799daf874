//! `crypto.dapr.jwks`: keys from a JWKS, looked up by `kid`. Metadata `jwks` is the JWKS itself (JSON, optionally
//! base64-encoded), the path of a file holding it, or an `http(s)://` URL to fetch it from (`requestTimeout`,
//! default 30s). A key that is not found reloads a file, or refetches a URL at most once per
//! `minRefreshInterval` (default 10m).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;

use super::{CryptoError, CryptoProvider, Key};
use crate::components::{ComponentError, Metadata};

/// Where the JWKS comes from.
enum Source {
    Inline,
    File(String),
    Url(String),
}

pub struct Jwks {
    source: Source,
    keys: RwLock<Arc<HashMap<String, Key>>>,
    request_timeout: Duration,
    min_refresh: Duration,
    /// When the JWKS was last (re)loaded; held while reloading so one reload runs at a time.
    loaded: tokio::sync::Mutex<Instant>,
}

/// A JWKS document larger than this is refused.
const MAX_JWKS: usize = 4 << 20;

pub async fn build(md: Metadata) -> Result<Arc<dyn CryptoProvider>, ComponentError> {
    let location = md
        .string("jwks")
        .ok_or_else(|| ComponentError::invalid("jwks", "metadata property 'jwks' is required"))?;
    let request_timeout = md
        .duration("requestTimeout")?
        .filter(|d| *d >= Duration::from_millis(1))
        .unwrap_or(Duration::from_secs(30));
    let min_refresh = md
        .duration("minRefreshInterval")?
        .filter(|d| *d >= Duration::from_secs(1))
        .unwrap_or(Duration::from_secs(600));
    let source = if location.starts_with("https://") || location.starts_with("http://") {
        Source::Url(location.clone())
    } else if tokio::fs::metadata(&location).await.is_ok_and(|m| m.is_file()) {
        Source::File(location.clone())
    } else {
        Source::Inline
    };
    let jwks = Jwks {
        source,
        keys: RwLock::default(),
        request_timeout,
        min_refresh,
        loaded: tokio::sync::Mutex::new(Instant::now()),
    };
    let keys = match &jwks.source {
        Source::Inline => {
            let trimmed = location.trim_end_matches('=');
            let json = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .unwrap_or_else(|_| location.clone().into_bytes());
            parse_jwks(&json).map_err(|_| {
                ComponentError::invalid(
                    "jwks",
                    "failed to parse property 'jwks': not a URL, path to local file, or JSON value (optionally base64-encoded)",
                )
            })?
        }
        _ => jwks.fetch().await.map_err(|e| ComponentError::Init(e.to_string()))?,
    };
    *jwks.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    Ok(Arc::new(jwks))
}

impl Jwks {
    /// Reads the JWKS from its file or URL.
    async fn fetch(&self) -> Result<HashMap<String, Key>, CryptoError> {
        let data = match &self.source {
            Source::Inline => return Ok((**self.keys.read().unwrap_or_else(|p| p.into_inner())).clone()),
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| CryptoError::Backend(format!("failed to read JWKS file '{path}': {e}")))?,
            Source::Url(url) => tokio::time::timeout(self.request_timeout, get(url))
                .await
                .map_err(|_| CryptoError::Backend(format!("fetching the JWKS from {url} timed out")))??,
        };
        parse_jwks(&data)
    }

    fn lookup(&self, kid: &str) -> Option<Key> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).get(kid).cloned()
    }
}

async fn get(url: &str) -> Result<Vec<u8>, CryptoError> {
    use http_body_util::BodyExt;
    let failed = |e: &dyn std::fmt::Display| CryptoError::Backend(format!("failed to fetch the JWKS from {url}: {e}"));
    let client = crate::components::http_client::https_client::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::new())
        .map_err(|e| failed(&e))?;
    let resp = client.request(req).await.map_err(|e| failed(&e))?;
    if !resp.status().is_success() {
        return Err(failed(&format!("status {}", resp.status())));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| failed(&e))?;
    Ok(body.to_bytes().to_vec())
}

/// The keys of a JWKS (`{"keys":[...]}`) or of a single JWK, by `kid`.
fn parse_jwks(data: &[u8]) -> Result<HashMap<String, Key>, CryptoError> {
    let doc: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| CryptoError::Key(format!("invalid JWKS: {e}")))?;
    let list = match doc.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.clone(),
        Some(_) => return Err(CryptoError::Key("invalid JWKS: \"keys\" is not an array".into())),
        None if doc.is_object() => vec![doc],
        None => return Err(CryptoError::Key("invalid JWKS: not a JSON object".into())),
    };
    let mut keys = HashMap::new();
    for jwk in &list {
        let key = Key::from_jwk(jwk)?;
        if let Some(kid) = jwk.get("kid").and_then(|k| k.as_str()) {
            keys.insert(kid.to_owned(), key);
        }
    }
    Ok(keys)
}

#[async_trait]
impl CryptoProvider for Jwks {
    async fn key(&self, name: &str) -> Result<Key, CryptoError> {
        if let Some(key) = self.lookup(name) {
            return Ok(key);
        }
        if matches!(self.source, Source::Inline) {
            return Err(CryptoError::KeyNotFound);
        }
        let mut loaded = self.loaded.lock().await;
        let due = matches!(self.source, Source::File(_)) || loaded.elapsed() >= self.min_refresh;
        if due {
            let keys = self.fetch().await?;
            *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
            *loaded = Instant::now();
        }
        drop(loaded);
        self.lookup(name).ok_or(CryptoError::KeyNotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inline_json_or_base64_and_lookup_by_kid() {
        let doc = r#"{"keys":[{"kty":"oct","kid":"k1","k":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}]}"#;
        for location in [doc.to_owned(), base64::engine::general_purpose::STANDARD.encode(doc)] {
            let p = build(Metadata::new("j", "app", "", [("jwks".into(), location)]))
                .await
                .unwrap();
            assert_eq!(p.key("k1").await.unwrap().kty(), "oct");
            assert_eq!(p.key("k2").await.unwrap_err(), CryptoError::KeyNotFound);
        }
        let bad = build(Metadata::new("j", "app", "", [("jwks".into(), "nope".into())])).await;
        assert!(
            bad.err()
                .unwrap()
                .to_string()
                .contains("failed to parse property 'jwks'")
        );
        let missing = build(Metadata::new("j", "app", "", [])).await;
        assert!(missing.err().unwrap().to_string().contains("'jwks' is required"));
    }
}
