//! Resolved component metadata: the name/value pairs a backend parses into its typed config.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use super::ComponentError;

/// A component's metadata after `envRef`/`secretKeyRef` resolution, with the context it runs in.
/// Lookups ignore case, as Dapr's do.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    /// The component's name (`metadata.name`).
    pub name: String,
    pub app_id: String,
    pub namespace: String,
    properties: BTreeMap<String, (String, String)>,
    /// Structured settings beside the name/value pairs: name resolution's `configuration` (JSON).
    pub configuration: serde_json::Value,
    /// This sidecar as other sidecars reach it, for name resolution (which registers it).
    pub sidecar: Option<super::nameresolution::Instance>,
}

impl Metadata {
    pub fn new(name: &str, app_id: &str, namespace: &str, props: impl IntoIterator<Item = (String, String)>) -> Self {
        let properties = props
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (k, v)))
            .collect();
        Metadata {
            name: name.into(),
            app_id: app_id.into(),
            namespace: namespace.into(),
            properties,
            configuration: serde_json::Value::Null,
            sidecar: None,
        }
    }

    /// The raw value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(&key.to_ascii_lowercase()).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, if set and not empty.
    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key).filter(|v| !v.is_empty()).map(str::to_owned)
    }

    /// The value of `key` parsed as `T`, if set; an unparsable value names the field.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, ComponentError>
    where
        T::Err: std::fmt::Display,
    {
        match self.string(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| ComponentError::invalid(key, format!("{v:?} is not valid: {e}"))),
        }
    }

    /// A boolean in Dapr's spelling (`true/false/1/0/yes/no/on/off`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ComponentError> {
        match self.string(key) {
            None => Ok(None),
            Some(v) => parse_bool(&v)
                .map(Some)
                .ok_or_else(|| ComponentError::invalid(key, format!("{v:?} is not a boolean"))),
        }
    }

    /// A duration written as Go writes them (`5s`, `1m30s`, `500ms`) or as plain seconds.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, ComponentError> {
        match self.string(key) {
            None => Ok(None),
            Some(v) => parse_duration(&v)
                .map(Some)
                .map_err(|e| ComponentError::invalid(key, e)),
        }
    }

    /// Every (name, value) pair with the names as written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties.values().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Dapr's truthy/falsy spellings.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" | "t" => Some(true),
        "false" | "0" | "no" | "n" | "off" | "f" => Some(false),
        _ => None,
    }
}

/// Parses a Go-style duration (`1h2m3.5s`, `300ms`, `2us`) or a bare number of seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        // try_: seconds beyond what a Duration holds (e.g. `1e300`) are an error, not a panic.
        if let Ok(d) = Duration::try_from_secs_f64(secs) {
            return Ok(d);
        }
    }
    humantime::parse_duration(v).map_err(|e| format!("{v:?} is not a duration (e.g. 5s, 1m30s, 500ms): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_case_and_parse_types() {
        let md = Metadata::new(
            "c",
            "app",
            "",
            [("redisDB".into(), "3".into()), ("enableTLS".into(), "True".into())],
        );
        assert_eq!(md.parse::<u32>("redisdb").unwrap(), Some(3));
        assert_eq!(md.bool("ENABLETLS").unwrap(), Some(true));
        assert_eq!(md.get("missing"), None);
        let bad = Metadata::new("c", "app", "", [("redisDB".into(), "x".into())]);
        let err = bad.parse::<u32>("redisDB").unwrap_err().to_string();
        assert!(err.contains("redisDB") && err.contains("\"x\""), "{err}");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
