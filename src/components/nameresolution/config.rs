//! Reads `spec.nameResolution.configuration`, a free-form JSON object, into typed values that name the bad field.

use std::time::Duration;

use serde_json::{Map, Value};

use super::ResolveError;
use crate::components::metadata::{parse_bool, parse_duration};

/// A resolver's configuration object; key lookups ignore case, as Dapr's decoding does.
#[derive(Debug, Default)]
pub struct Configuration {
    map: Map<String, Value>,
}

impl Configuration {
    /// Accepts a JSON object, or `null` for "no configuration"; anything else is an error.
    pub fn from_value(value: &Value) -> Result<Self, ResolveError> {
        match value {
            Value::Null => Ok(Self::default()),
            Value::Object(map) => Ok(Configuration { map: map.clone() }),
            other => Err(ResolveError::config(
                "configuration",
                format!(
                    "must be an object of settings (e.g. {{\"clusterDomain\": \"cluster.local\"}}), got {}",
                    kind(other)
                ),
            )),
        }
    }

    fn raw(&self, key: &str) -> Option<&Value> {
        self.map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    /// A non-empty string; numbers and booleans are accepted in their JSON spelling.
    pub fn string(&self, key: &str) -> Result<Option<String>, ResolveError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(other) => Err(ResolveError::config(
                key,
                format!("must be a string, got {}", kind(other)),
            )),
        }
    }

    /// A Go-style duration string (`5s`, `500ms`, `1h`) or a number of seconds.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, ResolveError> {
        match self.raw(key) {
            Some(Value::Number(n)) => match n.as_f64() {
                Some(secs) if secs >= 0.0 && secs.is_finite() => Ok(Some(Duration::from_secs_f64(secs))),
                _ => Err(ResolveError::config(
                    key,
                    format!("{n} is not a duration; write e.g. \"5s\" or \"500ms\""),
                )),
            },
            _ => match self.string(key)? {
                None => Ok(None),
                Some(v) => parse_duration(&v).map(Some).map_err(|e| ResolveError::config(key, e)),
            },
        }
    }

    /// A boolean, or a string in Dapr's truthy spelling (`true/false/1/0/yes/no/on/off`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ResolveError> {
        match self.raw(key) {
            Some(Value::Bool(b)) => Ok(Some(*b)),
            _ => match self.string(key)? {
                None => Ok(None),
                Some(v) => parse_bool(&v)
                    .map(Some)
                    .ok_or_else(|| ResolveError::config(key, format!("{v:?} is not a boolean (true or false)"))),
            },
        }
    }

    /// A list of strings: a JSON array, or one comma-separated string.
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ResolveError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.trim().to_owned()),
                    other => Err(ResolveError::config(
                        key,
                        format!("must be a list of strings, found {}", kind(other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Some(v.into_iter().filter(|s| !s.is_empty()).collect())),
            Some(Value::String(s)) => Ok(Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            Some(other) => Err(ResolveError::config(
                key,
                format!("must be a list of strings, got {}", kind(other)),
            )),
        }
    }

    /// A TCP/UDP port number.
    pub fn port(&self, key: &str) -> Result<Option<u16>, ResolveError> {
        match self.string(key)? {
            None => Ok(None),
            Some(v) => v
                .parse::<u16>()
                .map(Some)
                .map_err(|_| ResolveError::config(key, format!("{v:?} is not a port number (1-65535)"))),
        }
    }

    /// Keys that are not in `known`, so a resolver can warn about typos.
    pub fn unknown_keys<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        let mut keys: Vec<&str> = self
            .map
            .keys()
            .filter(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Logs a warning naming every setting the resolver ignores.
    pub fn warn_unknown(&self, component: &str, known: &[&str]) {
        let unknown = self.unknown_keys(known);
        if !unknown.is_empty() {
            tracing::warn!(
                component,
                ignored = ?unknown,
                known = ?known,
                "name resolution configuration has settings this resolver does not use"
            );
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_object_configuration_is_a_clear_error() {
        let err = Configuration::from_value(&json!(["a"])).unwrap_err().to_string();
        assert!(err.contains("configuration") && err.contains("a list"), "{err}");
        assert!(Configuration::from_value(&Value::Null).is_ok());
    }

    #[test]
    fn typed_reads_ignore_case_and_name_the_bad_field() {
        let c = Configuration::from_value(&json!({
            "UpdateInterval": "250ms",
            "timeout": 2,
            "disableWAL": "yes",
            "nameservers": ["127.0.0.1:53", " "],
            "cacheTTL": "soon",
            "tableName": {"x": 1}
        }))
        .unwrap();
        assert_eq!(c.duration("updateInterval").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(c.duration("timeout").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(c.bool("disablewal").unwrap(), Some(true));
        assert_eq!(
            c.string_list("nameservers").unwrap(),
            Some(vec!["127.0.0.1:53".to_owned()])
        );
        let err = c.duration("cacheTTL").unwrap_err().to_string();
        assert!(err.contains("cacheTTL") && err.contains("soon"), "{err}");
        let err = c.string("tableName").unwrap_err().to_string();
        assert!(err.contains("tableName") && err.contains("an object"), "{err}");
        assert_eq!(c.duration("missing").unwrap(), None);
        assert_eq!(
            c.unknown_keys(&["updateInterval", "timeout", "disableWAL", "nameservers"]),
            vec!["cacheTTL", "tableName"]
        );
    }
}
