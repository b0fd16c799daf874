//! CloudEvents 1.0 as Dapr builds and reads them: the envelope a publish wraps around the app's data, the one
//! rebuilt around a raw payload on delivery, expiry (`ttlInSeconds`), and the content-type rules that decide
//! between `data` and `data_base64`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Map, Value};

pub const EVENT_TYPE: &str = "com.dapr.event.sent";
pub const BULK_EVENT_TYPE: &str = "com.dapr.event.sent.bulk";
pub const CLOUDEVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The media type without parameters, lower-cased.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

pub fn is_cloudevent(content_type: &str) -> bool {
    media_type(content_type) == CLOUDEVENT_CONTENT_TYPE
}

pub fn is_json(content_type: &str) -> bool {
    media_type(content_type) == "application/json"
}

pub fn is_binary(content_type: &str) -> bool {
    media_type(content_type) == "application/octet-stream"
}

pub fn is_string(content_type: &str) -> bool {
    content_type.to_ascii_lowercase().starts_with("text/") || media_type(content_type) == "application/xml"
}

/// What a publish knows about the event it wraps.
#[derive(Clone, Debug, Default)]
pub struct Publication<'a> {
    /// The publishing app (the envelope's `source`).
    pub source: &'a str,
    pub topic: &'a str,
    pub pubsub: &'a str,
    pub content_type: &'a str,
    pub data: &'a [u8],
    pub traceparent: &'a str,
    pub tracestate: &'a str,
}

/// RFC 3339 to the second, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The envelope of a publish, as Dapr's `NewCloudEvent`: data that already is a CloudEvent
/// (`application/cloudevents+json`) keeps its fields, with topic, pubsub and missing trace and defaults filled
/// in; anything else is wrapped, with `cloudevent.<field>` metadata overriding id, source, type, subject and
/// the trace fields. Invalid JSON for a CloudEvent is an error.
pub fn envelope(p: &Publication<'_>, metadata: &BTreeMap<String, String>) -> Result<Map<String, Value>, String> {
    if is_cloudevent(p.content_type) {
        let mut ce: Map<String, Value> =
            serde_json::from_slice(p.data).map_err(|e| format!("the CloudEvent is not a JSON object: {e}"))?;
        ce.entry("time").or_insert_with(|| rfc3339(SystemTime::now()).into());
        if !ce.contains_key("traceid") {
            ce.insert("traceid".into(), p.traceparent.into());
            ce.insert("traceparent".into(), p.traceparent.into());
        }
        ce.entry("tracestate").or_insert_with(|| p.tracestate.into());
        ce.insert("topic".into(), p.topic.into());
        ce.insert("pubsubname".into(), p.pubsub.into());
        for (field, default) in [("source", "Dapr"), ("type", EVENT_TYPE), ("specversion", "1.0")] {
            if ce.get(field).is_none_or(Value::is_null) {
                ce.insert(field.into(), default.into());
            }
        }
        return Ok(ce);
    }
    let over = |field: &str| -> Option<&str> {
        metadata
            .iter()
            .find(|(k, _)| k.len() == 11 + field.len() && k.to_ascii_lowercase() == format!("cloudevent.{field}"))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let id = over("id")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let source = over("source").unwrap_or(if p.source.is_empty() { "Dapr" } else { p.source });
    let type_ = over("type").unwrap_or(EVENT_TYPE);
    let trace = over("traceparent").or_else(|| over("traceid")).unwrap_or(p.traceparent);
    let tracestate = over("tracestate").unwrap_or(p.tracestate);
    let content_type = if p.content_type.is_empty() {
        "text/plain"
    } else {
        p.content_type
    };
    let mut ce = Map::new();
    ce.insert("id".into(), id.into());
    ce.insert("specversion".into(), "1.0".into());
    ce.insert("datacontenttype".into(), content_type.into());
    ce.insert("source".into(), source.into());
    ce.insert("type".into(), type_.into());
    ce.insert("topic".into(), p.topic.into());
    ce.insert("pubsubname".into(), p.pubsub.into());
    ce.insert("traceid".into(), trace.into());
    ce.insert("traceparent".into(), trace.into());
    ce.insert("tracestate".into(), tracestate.into());
    ce.insert("time".into(), rfc3339(SystemTime::now()).into());
    let (field, data) = data_field(content_type, p.data);
    ce.insert(field.into(), data);
    if let Some(subject) = over("subject") {
        ce.insert("subject".into(), subject.into());
    }
    Ok(ce)
}

/// `data` as JSON for JSON content (as text when it does not parse), `data_base64` for binary, text otherwise.
fn data_field(content_type: &str, data: &[u8]) -> (&'static str, Value) {
    if is_json(content_type) || media_type(content_type).ends_with("+json") && !is_cloudevent(content_type) {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            return ("data", v);
        }
    } else if is_binary(content_type) || media_type(content_type) == "application/cloudevents+protobuf" {
        return (
            "data_base64",
            base64::engine::general_purpose::STANDARD.encode(data).into(),
        );
    }
    ("data", String::from_utf8_lossy(data).into_owned().into())
}

/// `ttlInSeconds` from publish metadata: a non-negative integer of seconds.
pub fn ttl(metadata: &BTreeMap<String, String>) -> Result<Option<Duration>, String> {
    match metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case("ttlInSeconds")) {
        None => Ok(None),
        Some((_, v)) => match v.trim().parse::<u64>() {
            Ok(s) if s <= i32::MAX as u64 => Ok(Some(Duration::from_secs(s))),
            _ => Err(format!(
                "ttlInSeconds {:?} is not a number of seconds from 0 to 2147483647",
                crate::echo::echo(v)
            )),
        },
    }
}

/// Stamps `expiration` for a TTL the broker does not enforce itself.
pub fn apply_ttl(ce: &mut Map<String, Value>, ttl: Option<Duration>) {
    if let Some(ttl) = ttl {
        ce.insert("expiration".into(), rfc3339(SystemTime::now() + ttl).into());
    }
}

/// True when the event's `expiration` has passed (an unreadable one never expires, as in Dapr).
pub fn has_expired(ce: &Map<String, Value>) -> bool {
    let Some(Value::String(e)) = ce.get("expiration") else {
        return false;
    };
    humantime::parse_rfc3339_weak(e).is_ok_and(|t| t < SystemTime::now())
}

/// The envelope a subscriber with `rawPayload` gets around bytes that were published raw.
pub fn from_raw_payload(
    data: &[u8],
    topic: &str,
    pubsub: &str,
    metadata: &BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut ce = Map::new();
    ce.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    ce.insert("specversion".into(), "1.0".into());
    ce.insert("datacontenttype".into(), "application/octet-stream".into());
    ce.insert("source".into(), "Dapr".into());
    ce.insert("type".into(), EVENT_TYPE.into());
    ce.insert("topic".into(), topic.into());
    ce.insert("pubsubname".into(), pubsub.into());
    ce.insert(
        "data_base64".into(),
        base64::engine::general_purpose::STANDARD.encode(data).into(),
    );
    if let Some(t) = metadata.get("traceid") {
        ce.insert("traceid".into(), t.as_str().into());
    }
    if let Some(t) = metadata.get("traceparent") {
        ce.insert("traceparent".into(), t.as_str().into());
        ce.insert("traceid".into(), t.as_str().into());
    }
    if let Some(t) = metadata.get("tracestate") {
        ce.insert("tracestate".into(), t.as_str().into());
    }
    ce
}

/// The event's data as the bytes an app gets over gRPC (`TopicEventRequest.data`): `data_base64` decoded, text
/// as its bytes, JSON as serialised JSON.
pub fn data_bytes(ce: &Map<String, Value>) -> Result<Vec<u8>, String> {
    if let Some(v) = ce.get("data_base64").filter(|v| !v.is_null()) {
        let Value::String(s) = v else {
            return Err("data_base64 is not a string".into());
        };
        return base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("data_base64 is not base64: {e}"));
    }
    let content_type = ce.get("datacontenttype").and_then(Value::as_str).unwrap_or_default();
    Ok(match ce.get("data") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) if is_string(content_type) || !is_json(content_type) => s.clone().into_bytes(),
        Some(v) => serde_json::to_vec(v).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication<'a>(ct: &'a str, data: &'a [u8]) -> Publication<'a> {
        Publication {
            source: "checkout",
            topic: "orders",
            pubsub: "pubsub",
            content_type: ct,
            data,
            traceparent: "00-abc-def-01",
            tracestate: "",
        }
    }

    #[test]
    fn wraps_json_text_and_binary_as_dapr_does() {
        let md = BTreeMap::new();
        let ce = envelope(&publication("application/json", br#"{"orderId":1}"#), &md).unwrap();
        assert_eq!(ce["data"], serde_json::json!({"orderId": 1}));
        assert_eq!(ce["source"], "checkout");
        assert_eq!(ce["type"], EVENT_TYPE);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["topic"], "orders");
        assert_eq!(ce["pubsubname"], "pubsub");
        assert_eq!(ce["traceid"], ce["traceparent"]);
        assert!(ce["time"].as_str().unwrap().ends_with('Z'));
        let ce = envelope(&publication("", b"hi"), &md).unwrap();
        assert_eq!(ce["datacontenttype"], "text/plain");
        assert_eq!(ce["data"], "hi");
        let ce = envelope(&publication("application/octet-stream", &[0, 255]), &md).unwrap();
        assert_eq!(ce["data_base64"], "AP8=");
        assert!(!ce.contains_key("data"));
        // JSON content that does not parse travels as text.
        let ce = envelope(&publication("application/json", b"{oops"), &md).unwrap();
        assert_eq!(ce["data"], "{oops");
    }

    #[test]
    fn metadata_overrides_and_cloudevent_passthrough() {
        let md = BTreeMap::from([
            ("cloudevent.id".to_owned(), "my-id".to_owned()),
            ("cloudEvent.Type".to_owned(), "my.type".to_owned()),
            ("cloudevent.subject".to_owned(), "s".to_owned()),
        ]);
        let ce = envelope(&publication("text/plain", b"x"), &md).unwrap();
        assert_eq!(ce["id"], "my-id");
        assert_eq!(ce["type"], "my.type");
        assert_eq!(ce["subject"], "s");
        let given = br#"{"id":"1","source":"me","type":"t","specversion":"1.0","data":"x","topic":"other"}"#;
        let ce = envelope(&publication("application/cloudevents+json", given), &md).unwrap();
        assert_eq!(ce["id"], "1");
        assert_eq!(ce["source"], "me");
        assert_eq!(ce["topic"], "orders");
        assert_eq!(ce["traceparent"], "00-abc-def-01");
        assert!(envelope(&publication("application/cloudevents+json", b"[1]"), &md).is_err());
    }

    #[test]
    fn ttl_and_expiry() {
        let md = BTreeMap::from([("ttlInSeconds".to_owned(), "60".to_owned())]);
        let mut ce = Map::new();
        apply_ttl(&mut ce, ttl(&md).unwrap());
        assert!(!has_expired(&ce));
        ce.insert("expiration".into(), "2001-01-01T00:00:00Z".into());
        assert!(has_expired(&ce));
        ce.insert("expiration".into(), "not a time".into());
        assert!(!has_expired(&ce));
        for bad in ["-1", "x", "99999999999"] {
            let md = BTreeMap::from([("ttlInSeconds".to_owned(), bad.to_owned())]);
            assert!(ttl(&md).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_for_grpc_apps() {
        let ce = envelope(&publication("application/json", br#"{"a":1}"#), &BTreeMap::new()).unwrap();
        assert_eq!(data_bytes(&ce).unwrap(), br#"{"a":1}"#);
        let ce = envelope(&publication("text/plain", b"hi"), &BTreeMap::new()).unwrap();
        assert_eq!(data_bytes(&ce).unwrap(), b"hi");
        let raw = from_raw_payload(b"\x01\x02", "t", "p", &BTreeMap::new());
        assert_eq!(data_bytes(&raw).unwrap(), b"\x01\x02");
    }
}
