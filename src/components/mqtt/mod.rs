//! MQTT 3.1.1, shared by `pubsub.mqtt3` and `bindings.mqtt3`: the broker URL and the metadata both read, topic
//! filters (`+`, `#`, `$share/<group>/`) and the redelivery policy; the connection itself is in [`connection`].

pub mod connection;
mod inbound;

use std::time::Duration;

pub use connection::{Connection, Received, Route};
pub use rumqttc::QoS;

use super::{ComponentError, Metadata};

/// Where the broker is and who we are to it, from a `url` such as `tcp://user:pass@host:1883`.
#[derive(Clone, PartialEq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl BrokerUrl {
    /// Parses Dapr's `url`: `tcp://` or `mqtt://` (port 1883 when left out), with optional percent-encoded
    /// `user:password@`. TLS schemes (`ssl://`, `mqtts://`, `tcps://`, `tls://`) are refused: tandem's MQTT
    /// components speak plain TCP only.
    pub fn parse(url: &str) -> Result<BrokerUrl, ComponentError> {
        let invalid = |why: &str| ComponentError::invalid("url", why.to_owned());
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("must look like tcp://host:port"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "tcp" | "mqtt" => {}
            "ssl" | "mqtts" | "tcps" | "tls" => {
                return Err(invalid(
                    "TLS brokers (ssl://) are not supported by tandem's MQTT components; use tcp:// or mqtt://",
                ));
            }
            other => return Err(invalid(&format!("unknown scheme {other:?}: use tcp:// or mqtt://"))),
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(invalid("must hold only user:password@host:port, no path or query"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| invalid("the user or password is not UTF-8 once percent-decoded"))
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(decode(user)?), Some(decode(pass)?).filter(|p| !p.is_empty())),
                None => (Some(decode(u)?), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 host must be closed by ]"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("has no host"));
        }
        let port = match port {
            None => 1883,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(&format!("port {p:?} is not a number from 1 to 65535")))?,
        };
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            username: username.filter(|u| !u.is_empty()),
            password,
        })
    }
}

/// What both MQTT components read alike: `url` (required), `retain` and `cleanSession` (false, as in Dapr).
#[derive(Clone, Debug)]
pub struct Common {
    pub url: BrokerUrl,
    pub retain: bool,
    pub clean_session: bool,
}

impl Common {
    pub fn from_metadata(md: &Metadata) -> Result<Common, ComponentError> {
        let url = md
            .string("url")
            .ok_or_else(|| ComponentError::invalid("url", "is required (e.g. tcp://host:1883)"))?;
        // Dapr's client uses certificates for ssl:// only; here they are never used.
        if ["caCert", "clientCert", "clientKey"]
            .iter()
            .any(|k| md.string(k).is_some())
        {
            tracing::warn!(component = %md.name, "caCert/clientCert/clientKey are ignored: tandem's MQTT components connect over plain TCP");
        }
        Ok(Common {
            url: BrokerUrl::parse(&url)?,
            retain: md.bool("retain")?.unwrap_or(false),
            clean_session: md.bool("cleanSession")?.unwrap_or(false),
        })
    }
}

/// How a message the handler did not take is handed to it again while its subscription lives: after `first`,
/// doubling up to `max`, at most `max_retries` times (`None`: until taken or the subscription stops). A message
/// out of retries stays unacknowledged, for the broker to send again on the next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redelivery {
    pub max_retries: Option<u32>,
    pub first: Duration,
    pub max: Duration,
}

impl Redelivery {
    /// The wait before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max)
    }
}

/// `backOffMaxRetries` as Dapr reads it: `-1` retries without end, `0` not at all, `n` n times.
pub fn back_off_max_retries(md: &Metadata, default: Option<u32>) -> Result<Option<u32>, ComponentError> {
    match md.parse::<i64>("backOffMaxRetries")? {
        None => Ok(default),
        Some(-1) => Ok(None),
        Some(n) if (0..=1_000_000).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(ComponentError::invalid(
            "backOffMaxRetries",
            format!("{n} is out of range: write -1 (retry without end) or 0 to 1000000"),
        )),
    }
}

/// `qos` as 0, 1 or 2.
pub fn qos(md: &Metadata, default: QoS) -> Result<QoS, ComponentError> {
    match md.parse::<i64>("qos")? {
        None => Ok(default),
        Some(0) => Ok(QoS::AtMostOnce),
        Some(1) => Ok(QoS::AtLeastOnce),
        Some(2) => Ok(QoS::ExactlyOnce),
        Some(n) => Err(ComponentError::invalid(
            "qos",
            format!("{n} is not an MQTT QoS: write 0, 1 or 2"),
        )),
    }
}

/// A client id the broker can take: not empty, and within MQTT's string length.
pub fn client_id(field: &str, id: &str) -> Result<String, ComponentError> {
    if id.is_empty() {
        return Err(ComponentError::invalid(field, "is required (the MQTT client id)"));
    }
    if id.len() > 65_535 || id.contains('\0') {
        return Err(ComponentError::invalid(
            field,
            "must be at most 65535 bytes, without NUL characters",
        ));
    }
    Ok(id.to_owned())
}

/// Checks a topic name to publish to: not empty, no wildcards, within MQTT's string length.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(format!(
            "topic {topic:?} is not a topic name: it holds a wildcard (+, #) or NUL"
        ));
    }
    if topic.len() > 65_535 {
        return Err("the topic is longer than 65535 bytes".into());
    }
    Ok(())
}

/// A subscription's topic filter: what is sent to the broker (`$share/<group>/<filter>` included) and what
/// incoming topics are matched against (the filter without the `$share/<group>/` prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub subscribed: String,
    pub matcher: String,
}

impl Filter {
    pub fn parse(filter: &str) -> Result<Filter, String> {
        if filter.len() > 65_535 || filter.contains('\0') {
            return Err("the topic filter is longer than 65535 bytes or holds NUL".into());
        }
        let matcher = match filter.strip_prefix("$share/") {
            Some(rest) => {
                let (group, inner) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("{filter:?}: a shared subscription is $share/<group>/<filter>"))?;
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(format!("{filter:?}: the share group must be a plain non-empty name"));
                }
                inner
            }
            None => filter,
        };
        if !valid_filter(matcher) {
            return Err(format!(
                "{filter:?} is not an MQTT topic filter: + must fill a whole level and # must be the last level"
            ));
        }
        Ok(Filter {
            subscribed: filter.to_owned(),
            matcher: matcher.to_owned(),
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        topic_matches(&self.matcher, topic)
    }
}

/// A filter as MQTT 3.1.1 §4.7 allows them: not empty, `+` alone in its level, `#` alone in the last level.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether topic name `topic` matches `filter` (MQTT 3.1.1 §4.7; topics starting with `$` are not matched by a
/// filter starting with a wildcard).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(props: &[(&str, &str)]) -> Metadata {
        Metadata::new(
            "m",
            "app",
            "",
            props.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn urls_as_dapr_writes_them() {
        let u = BrokerUrl::parse("tcp://127.0.0.1:1883").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.username, u.password),
            ("127.0.0.1", 1883, None, None)
        );
        let u = BrokerUrl::parse("mqtt://us%40er:p%3Ass@broker.local").unwrap();
        assert_eq!(u.host, "broker.local");
        assert_eq!(u.port, 1883);
        assert_eq!(u.username.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert!(!format!("{u:?}").contains("p:ss"), "Debug hides the password");
        let u = BrokerUrl::parse("tcp://[::1]:1884/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        for bad in [
            "127.0.0.1:1883",
            "http://h:1",
            "tcp://:1883",
            "tcp://h:0",
            "tcp://h:99999",
            "tcp://h:1/path",
            "tcp://[::1",
        ] {
            let err = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains("\"url\""), "{bad}: {err}");
        }
        let err = BrokerUrl::parse("ssl://h:8883").unwrap_err().to_string();
        assert!(err.contains("TLS"), "{err}");
    }

    #[test]
    fn qos_and_retries_are_range_checked() {
        assert_eq!(qos(&md(&[]), QoS::AtLeastOnce).unwrap(), QoS::AtLeastOnce);
        assert_eq!(qos(&md(&[("qos", "2")]), QoS::AtLeastOnce).unwrap(), QoS::ExactlyOnce);
        for bad in ["3", "-1", "x", "256"] {
            let err = qos(&md(&[("qos", bad)]), QoS::AtLeastOnce).unwrap_err().to_string();
            assert!(err.contains("\"qos\""), "{bad}: {err}");
        }
        assert_eq!(back_off_max_retries(&md(&[]), Some(0)).unwrap(), Some(0));
        assert_eq!(
            back_off_max_retries(&md(&[("backOffMaxRetries", "-1")]), Some(0)).unwrap(),
            None
        );
        assert_eq!(
            back_off_max_retries(&md(&[("backOffMaxRetries", "3")]), None).unwrap(),
            Some(3)
        );
        assert!(back_off_max_retries(&md(&[("backOffMaxRetries", "-2")]), None).is_err());
        assert!(back_off_max_retries(&md(&[("backOffMaxRetries", "lots")]), None).is_err());
    }

    #[test]
    fn redelivery_backs_off_to_its_ceiling() {
        let r = Redelivery {
            max_retries: None,
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(r.delay(0), Duration::from_millis(100));
        assert_eq!(r.delay(3), Duration::from_millis(800));
        assert_eq!(r.delay(10), Duration::from_secs(5));
        assert_eq!(r.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(topic_matches("sport/#", "sport"));
        assert!(topic_matches("sport/#", "sport/tennis/player1"));
        assert!(topic_matches("sport/+", "sport/"));
        assert!(topic_matches("+/+", "/finance"));
        assert!(!topic_matches("+", "/finance"));
        assert!(!topic_matches("sport/+", "sport/tennis/player1"));
        assert!(!topic_matches("sport/tennis", "sport/tennis/x"));
        assert!(!topic_matches("#", "$SYS/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/uptime"));
        // Broker data is hostile: multi-byte topics must not panic.
        assert!(!topic_matches("+/x", "é"));
        assert!(topic_matches("#", "é/ü"));
    }

    #[test]
    fn shared_subscriptions_match_their_inner_filter() {
        let f = Filter::parse("$share/workers/orders/+").unwrap();
        assert_eq!(f.subscribed, "$share/workers/orders/+");
        assert!(f.matches("orders/eu"));
        assert!(!f.matches("$share/workers/orders/eu"));
        for bad in [
            "",
            "a/#/b",
            "a+",
            "sport/tennis#",
            "$share/orders",
            "$share//orders",
            "$share/g+/orders",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic("a/b").is_ok());
        assert!(check_topic("a/+").is_err());
        assert!(check_topic("").is_err());
        assert!(client_id("consumerID", "").is_err());
    }
}
