//! How Dapr's SQL state stores keep a value in a JSON column: JSON as itself, anything else as a JSON string of
//! its base64 with `isbinary` set. Shared by `state.postgresql` (v1) and `state.mysql`, so rows written by either
//! Dapr or tandem read back the same.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use super::StateError;

/// The column text for `value` and whether it is binary.
pub fn encode(value: &[u8]) -> (String, bool) {
    // PostgreSQL's jsonb refuses the NUL escape, so such a document is kept as bytes like any non-JSON value.
    let json = std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.contains("\\u0000") && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok());
    match json {
        Some(s) => (s.to_owned(), false),
        None => {
            let b64 = STANDARD.encode(value);
            (serde_json::Value::String(b64).to_string(), true)
        }
    }
}

/// The value a row holds: the JSON text itself, or the bytes behind a binary row's base64 string.
pub fn decode(column: Vec<u8>, is_binary: bool) -> Result<Bytes, StateError> {
    if !is_binary {
        return Ok(Bytes::from(column));
    }
    let text: String = serde_json::from_slice(&column)
        .map_err(|e| StateError::Backend(format!("failed to unmarshal JSON binary data: {e}")))?;
    STANDARD
        .decode(text.trim())
        .map(Bytes::from)
        .map_err(|e| StateError::Backend(format!("failed to decode binary data: {e}")))
}

/// A table, schema or prefix name as Dapr allows them: letters, digits and `_`, with at most one `.` between a
/// schema and a table when `dotted`.
pub fn valid_identifier(name: &str, dotted: bool) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    (parts.len() == 1 || (dotted && parts.len() == 2))
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_stays_json_and_the_rest_is_base64() {
        assert_eq!(encode(br#"{"a":1}"#), (r#"{"a":1}"#.to_owned(), false));
        assert_eq!(encode(b"42"), ("42".to_owned(), false));
        let (text, binary) = encode(b"hello");
        assert_eq!((text.as_str(), binary), ("\"aGVsbG8=\"", true));
        assert_eq!(decode(text.into_bytes(), true).unwrap(), Bytes::from_static(b"hello"));
        let raw = [0u8, 159, 255];
        let (text, binary) = encode(&raw);
        assert!(binary);
        assert_eq!(&decode(text.into_bytes(), true).unwrap()[..], &raw);
        assert!(encode(br#""a\u0000b""#).1, "NUL escapes cannot go into jsonb");
        assert!(decode(b"not json".to_vec(), true).is_err());
    }

    #[test]
    fn identifiers() {
        assert!(valid_identifier("state", false));
        assert!(valid_identifier("public.state_1", true));
        assert!(!valid_identifier("public.state", false));
        assert!(!valid_identifier("a.b.c", true));
        assert!(!valid_identifier("x; DROP TABLE y", true));
        assert!(!valid_identifier("", true));
    }
}
