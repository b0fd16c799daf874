//! A job's payload between its forms: the JSON an HTTP client schedules (kept, as daprd keeps it, as a
//! `google.protobuf.Value` inside an `Any`), the protobuf `Any` a gRPC client sends, the body an HTTP app
//! receives when the job fires, and the JSON of a job read back over HTTP.

use prost::Message;
use prost_types::value::Kind;
use serde_json::{Map, Number, Value as Json};

use super::JobData;

pub const VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.Value";

/// The deepest JSON nesting a payload may have (serde_json already refuses deeper input at 128).
const MAX_DEPTH: usize = 100;

/// JSON data scheduled over HTTP, as the `Any` of a `google.protobuf.Value`.
pub fn from_json(v: &Json) -> JobData {
    JobData {
        type_url: VALUE_TYPE.to_owned(),
        value: to_value(v, 0).encode_to_vec(),
    }
}

fn to_value(v: &Json, depth: usize) -> prost_types::Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        _ if depth >= MAX_DEPTH => Kind::NullValue(0),
        Json::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(|x| to_value(x, depth + 1)).collect(),
        }),
        Json::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, x)| (k.clone(), to_value(x, depth + 1))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_json(v: &prost_types::Value, depth: usize) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => Number::from_f64(*n)
            .map(|x| match x.as_f64() {
                // Integral numbers print as integers, as Go's protojson prints them.
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Json::Number((f as i64).into()),
                _ => Json::Number(x),
            })
            .unwrap_or(Json::Null),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(_) if depth >= MAX_DEPTH => Json::Null,
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(|x| to_json(x, depth + 1)).collect()),
        Some(Kind::StructValue(s)) => Json::Object(
            s.fields
                .iter()
                .map(|(k, x)| (k.clone(), to_json(x, depth + 1)))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// The body an HTTP app receives for a triggered job, as daprd builds it: a `Value` as its JSON (nothing when
/// unset), anything else as its bytes with surrounding whitespace trimmed.
pub fn http_body(data: Option<&JobData>) -> Vec<u8> {
    let Some(d) = data else { return vec![] };
    if d.type_url == VALUE_TYPE {
        return match prost_types::Value::decode(d.value.as_slice()) {
            Ok(v) if v.kind.is_some() => serde_json::to_vec(&to_json(&v, 0)).unwrap_or_default(),
            _ => vec![],
        };
    }
    d.value.trim_ascii().to_vec()
}

/// The `data` field of a job read over HTTP (protobuf JSON of an `Any`): a `Value` as
/// `{"@type": ..., "value": <json>}`; other types with their bytes in base64.
pub fn to_http_json(d: &JobData) -> Json {
    use base64::Engine as _;
    let value = if d.type_url == VALUE_TYPE {
        prost_types::Value::decode(d.value.as_slice())
            .map(|v| to_json(&v, 0))
            .unwrap_or(Json::Null)
    } else {
        Json::String(base64::engine::general_purpose::STANDARD.encode(&d.value))
    };
    serde_json::json!({ "@type": d.type_url, "value": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_data_reaches_an_http_app_as_the_json_it_was() {
        let v: Json = serde_json::json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "R2-D2:Oil Change", "n": 3, "f": 1.5, "l": [true, null]});
        let d = from_json(&v);
        assert_eq!(d.type_url, VALUE_TYPE);
        let body: Json = serde_json::from_slice(&http_body(Some(&d))).unwrap();
        assert_eq!(body, v);
        assert_eq!(to_http_json(&d), serde_json::json!({"@type": VALUE_TYPE, "value": v}));
    }

    #[test]
    fn other_data_reaches_an_http_app_as_its_bytes() {
        let d = JobData {
            type_url: String::new(),
            value: b"  {\"droid\":\"R2-D2\"}\n".to_vec(),
        };
        assert_eq!(http_body(Some(&d)), b"{\"droid\":\"R2-D2\"}");
        assert_eq!(http_body(None), b"");
        assert_eq!(
            to_http_json(&d),
            serde_json::json!({"@type": "", "value": "ICB7ImRyb2lkIjoiUjItRDIifQo="})
        );
    }
}
