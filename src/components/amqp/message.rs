//! The AMQP side of a message: its properties and headers from Dapr's metadata and back, and queue arguments.

use std::collections::BTreeMap;
use std::time::Duration;

use amqprs::{BasicProperties, FieldTable, FieldValue};

use super::short;

/// Most bytes of headers one message may carry (the broker closes the whole connection on an oversized frame).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A metadata value by its name in any case, when set.
pub fn lookup<'a>(md: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    md.get(key)
        .or_else(|| md.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The AMQP properties of a publish: content type, message id, correlation id and type from metadata (as Dapr
/// reads them), expiration from `ttlInSeconds` (or the component's), priority, and every metadata entry as a
/// header so it travels with the message.
pub fn properties(
    md: &BTreeMap<String, String>,
    content_type: Option<&str>,
    delivery_mode: u8,
    default_ttl: Option<Duration>,
) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let content_type = lookup(md, "contentType").or(content_type).unwrap_or("text/plain");
    p.with_content_type(short("content type", content_type)?);
    if delivery_mode > 0 {
        p.with_delivery_mode(delivery_mode);
    }
    let ttl = match lookup(md, "ttlInSeconds").or_else(|| lookup(md, "ttl")) {
        Some(v) => Some(
            crate::components::metadata::parse_duration(v)
                .map_err(|e| format!("ttlInSeconds: {e}"))
                .and_then(|d| {
                    (!d.is_zero())
                        .then_some(d)
                        .ok_or("ttlInSeconds must be above 0".to_owned())
                })?,
        ),
        None => default_ttl,
    };
    if let Some(ttl) = ttl {
        p.with_expiration(&expiration(ttl)?);
    }
    if let Some(v) = lookup(md, "priority") {
        let n = v
            .trim()
            .parse::<u8>()
            .map_err(|_| format!("priority {:?} is not a number from 0 to 255", crate::echo::echo(v)))?;
        p.with_priority(n);
    }
    if let Some(v) = lookup(md, "messageID") {
        p.with_message_id(short("messageID", v)?);
    }
    if let Some(v) = lookup(md, "correlationID") {
        p.with_correlation_id(short("correlationID", v)?);
    }
    if let Some(v) = lookup(md, "type") {
        p.with_message_type(short("type", v)?);
    }
    if !md.is_empty() {
        p.with_headers(headers(md)?);
    }
    Ok(p.finish())
}

/// Message metadata as AMQP headers (string values), within [`MAX_HEADER_BYTES`].
pub fn headers<'a>(metadata: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<FieldTable, String> {
    let mut table = FieldTable::new();
    let mut size = 0usize;
    for (k, v) in metadata {
        size += k.len() + v.len();
        if size > MAX_HEADER_BYTES {
            return Err(format!(
                "the metadata is larger than {MAX_HEADER_BYTES} bytes, more than a message header may carry"
            ));
        }
        let name = short("metadata key", k)?
            .try_into()
            .map_err(|_| "a metadata key is too long".to_owned())?;
        let value = v
            .as_str()
            .try_into()
            .map_err(|_| "a metadata value is too long".to_owned())?;
        table.insert(name, FieldValue::S(value));
    }
    Ok(table)
}

/// The headers of a delivered message as text (strings and byte arrays as UTF-8, numbers and booleans written
/// out; nested tables and arrays are left out).
pub fn header_map(props: &BasicProperties) -> BTreeMap<String, String> {
    let Some(table) = props.headers() else {
        return BTreeMap::new();
    };
    table
        .as_ref()
        .iter()
        .filter_map(|(k, v)| {
            let text = match v {
                FieldValue::S(s) => s.as_ref().clone(),
                FieldValue::x(b) => String::from_utf8_lossy(&Vec::<u8>::from(b.clone())).into_owned(),
                FieldValue::t(b) => b.to_string(),
                FieldValue::b(n) => n.to_string(),
                FieldValue::B(n) => n.to_string(),
                FieldValue::s(n) => n.to_string(),
                FieldValue::u(n) => n.to_string(),
                FieldValue::I(n) => n.to_string(),
                FieldValue::i(n) => n.to_string(),
                FieldValue::l(n) => n.to_string(),
                FieldValue::f(n) => n.to_string(),
                FieldValue::d(n) => n.to_string(),
                FieldValue::T(n) => n.to_string(),
                _ => return None,
            };
            Some((k.as_ref().clone(), text))
        })
        .collect()
}

/// A queue argument that is a number (RabbitMQ takes a signed 64-bit integer for all of them).
pub fn number(table: &mut FieldTable, key: &str, value: i64) {
    if let Ok(k) = key.try_into() {
        table.insert(k, FieldValue::l(value));
    }
}

/// A queue argument that is text.
pub fn text(table: &mut FieldTable, key: &str, value: &str) {
    if let (Ok(k), Ok(v)) = (key.try_into(), value.try_into()) {
        table.insert(k, FieldValue::S(v));
    }
}

/// A queue argument that is a boolean.
pub fn flag(table: &mut FieldTable, key: &str, value: bool) {
    if let Ok(k) = key.try_into() {
        table.insert(k, FieldValue::t(value));
    }
}

/// Milliseconds of `ttl` as AMQP writes a message expiration, checked against the broker's bound (2^32-1 ms).
pub fn expiration(ttl: Duration) -> Result<String, String> {
    let ms = ttl.as_millis();
    if ms == 0 || ms > u128::from(u32::MAX) {
        return Err(format!(
            "a time to live of {ttl:?} is out of range: from 1ms to 49 days"
        ));
    }
    Ok(ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_are_bounded() {
        let md = BTreeMap::from([("k".to_owned(), "v".to_owned()), ("n".to_owned(), "1".to_owned())]);
        let props = BasicProperties::default().with_headers(headers(&md).unwrap()).finish();
        assert_eq!(header_map(&props), md);
        let huge = BTreeMap::from([("k".to_owned(), "v".repeat(MAX_HEADER_BYTES + 1))]);
        assert!(headers(&huge).is_err());
        let long_key = BTreeMap::from([("k".repeat(256), "v".to_owned())]);
        assert!(headers(&long_key).unwrap_err().contains("255"));
    }

    #[test]
    fn expirations_are_milliseconds_in_range() {
        assert_eq!(expiration(Duration::from_secs(2)).unwrap(), "2000");
        assert!(expiration(Duration::ZERO).is_err());
        assert!(expiration(Duration::from_secs(60 * 86_400)).is_err());
    }
}
