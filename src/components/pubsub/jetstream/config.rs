//! `pubsub.jetstream` metadata: Dapr's names, parsed and range-checked into the settings the backend uses.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};

use crate::components::metadata::parse_duration;
use crate::components::pubsub::consumer_id;
use crate::components::{ComponentError, Metadata};

/// Dapr's connection name when `name` is not set.
const DEFAULT_NAME: &str = "dapr.io - pubsub.jetstream";
/// Messages handled at once with `concurrency: parallel` (Dapr does not bound them; the broker's
/// `maxAckPending` does).
pub const PARALLEL: usize = 100;
/// Longest duration any setting takes: the server keeps them as nanoseconds in an i64.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// How the connection authenticates.
#[derive(Clone, PartialEq)]
pub enum Auth {
    None,
    Token(String),
    /// PEM files: a client certificate and its key (Dapr's `tls_client_cert` / `tls_client_key` paths).
    ClientCert {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Typed `pubsub.jetstream` settings.
#[derive(Clone)]
pub struct JetStreamConfig {
    pub servers: Vec<ServerAddr>,
    /// The connection's name, as the server shows it.
    pub name: String,
    pub auth: Auth,
    /// The stream every topic lives in; unset, the stream holding the topic's subject is looked up.
    pub stream_name: Option<String>,
    /// The consumer group: `durableName` if set, else `consumerID` (the app id by default). Every subscriber of a
    /// group shares one durable consumer per topic.
    pub group: String,
    pub deliver_policy: DeliverPolicy,
    pub ack_policy: AckPolicy,
    pub ack_wait: Option<Duration>,
    /// At most this many deliveries of a message; `None` leaves the server's default (unlimited).
    pub max_deliver: Option<i64>,
    pub backoff: Vec<Duration>,
    pub max_ack_pending: Option<i64>,
    pub replicas: usize,
    pub memory_storage: bool,
    /// Bits per second; 0 is unlimited.
    pub rate_limit: u64,
    /// Idle heartbeat of the pull requests: a connection that stays silent this long is reopened.
    pub heartbeat: Duration,
    pub domain: Option<String>,
    pub api_prefix: Option<String>,
    /// Messages handled at once per subscription (1 for Dapr's `single`).
    pub concurrency: usize,
}

impl std::fmt::Debug for JetStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("{}://{}:{}", s.scheme(), s.host(), s.port()))
            .collect();
        let auth = match &self.auth {
            Auth::None => "none",
            Auth::Token(_) => "token (hidden)",
            Auth::ClientCert { .. } => "client certificate",
        };
        f.debug_struct("JetStreamConfig")
            .field("servers", &servers)
            .field("name", &self.name)
            .field("auth", &auth)
            .field("stream_name", &self.stream_name)
            .field("group", &self.group)
            .field("deliver_policy", &self.deliver_policy)
            .field("ack_policy", &self.ack_policy)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("backoff", &self.backoff)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl JetStreamConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let url = md
            .string("natsURL")
            .ok_or_else(|| ComponentError::invalid("natsURL", "is required (e.g. nats://localhost:4222)"))?;
        let (ack_wait, heartbeat) = (
            bounded("ackWait", md.duration("ackWait")?)?,
            bounded("heartbeat", md.duration("heartbeat")?)?,
        );
        let max_deliver = match md.parse::<i64>("maxDeliver")? {
            None | Some(0) => None,
            Some(n) if n == -1 || (1..=i64::from(i32::MAX)).contains(&n) => Some(n),
            Some(_) => {
                return Err(ComponentError::invalid(
                    "maxDeliver",
                    "must be -1 (unlimited) or from 1",
                ));
            }
        };
        let backoff = match md.string("backOff") {
            None => vec![],
            Some(v) => backoff(&v)?,
        };
        if let Some(n) = max_deliver.filter(|&n| n != -1 && !backoff.is_empty())
            && n <= backoff.len() as i64
        {
            return Err(ComponentError::invalid(
                "maxDeliver",
                format!("must be greater than the number of backOff values ({})", backoff.len()),
            ));
        }
        let max_ack_pending = match md.parse::<i64>("maxAckPending")? {
            None | Some(0) => None,
            Some(n) if n == -1 || (1..=i64::from(i32::MAX)).contains(&n) => Some(n),
            Some(_) => {
                return Err(ComponentError::invalid(
                    "maxAckPending",
                    "must be -1 (unlimited) or from 1",
                ));
            }
        };
        let replicas = md.parse::<usize>("replicas")?.unwrap_or(0);
        if replicas > 5 {
            return Err(ComponentError::invalid(
                "replicas",
                "must be from 0 (the stream's) to 5",
            ));
        }
        // Push-consumer settings a pull consumer has no use for; still checked, so a typo is not ignored.
        md.bool("flowControl")?;
        let (domain, api_prefix) = (md.string("domain"), md.string("apiPrefix"));
        if domain.is_some() && api_prefix.is_some() {
            return Err(ComponentError::invalid(
                "apiPrefix",
                "cannot be set together with domain",
            ));
        }
        Ok(JetStreamConfig {
            servers: servers(&url)?,
            name: md.string("name").unwrap_or_else(|| DEFAULT_NAME.to_owned()),
            auth: auth(md)?,
            stream_name: md.string("streamName").map(|s| s.trim().to_owned()),
            group: md.string("durableName").unwrap_or_else(|| consumer_id(md)),
            deliver_policy: deliver_policy(md)?,
            ack_policy: ack_policy(md)?,
            ack_wait: ack_wait.filter(|d| !d.is_zero()),
            max_deliver,
            backoff,
            max_ack_pending,
            replicas,
            memory_storage: md.bool("memoryStorage")?.unwrap_or(false),
            rate_limit: md.parse("rateLimit")?.unwrap_or(0),
            heartbeat: match heartbeat {
                None => Duration::from_secs(5),
                Some(d) if d < Duration::from_millis(100) => {
                    return Err(ComponentError::invalid("heartbeat", "must be at least 100ms"));
                }
                Some(d) => d,
            },
            domain,
            api_prefix,
            concurrency: concurrency(md)?,
        })
    }

    /// How long a message the handler asked to retry waits before it comes again: the consumer's `backOff` step
    /// for this delivery, else `ackWait` (Dapr naks with that delay), else a second.
    pub fn retry_delay(&self, delivered: i64) -> Duration {
        let step = usize::try_from(delivered.saturating_sub(1)).unwrap_or(0);
        match self.backoff.get(step).or(self.backoff.last()) {
            Some(&d) => d,
            None => self.ack_wait.unwrap_or(Duration::from_secs(1)),
        }
    }
}

fn bounded(field: &str, d: Option<Duration>) -> Result<Option<Duration>, ComponentError> {
    match d {
        Some(d) if d > LONGEST => Err(ComponentError::invalid(field, "must be at most a year")),
        d => Ok(d),
    }
}

/// `natsURL`: one server or several, comma-separated, as Dapr (the Go client) takes them.
fn servers(url: &str) -> Result<Vec<ServerAddr>, ComponentError> {
    let mut out = vec![];
    for one in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr: ServerAddr = one
            .parse()
            .map_err(|e| ComponentError::invalid("natsURL", format!("{one:?}: {e}")))?;
        if addr.is_websocket() {
            return Err(ComponentError::invalid(
                "natsURL",
                format!("{one:?}: websocket connections are not supported; use nats:// or tls://"),
            ));
        }
        out.push(addr);
    }
    if out.is_empty() {
        return Err(ComponentError::invalid("natsURL", "names no server"));
    }
    Ok(out)
}

fn auth(md: &Metadata) -> Result<Auth, ComponentError> {
    let (jwt, seed) = (md.string("jwt"), md.string("seedKey"));
    match (&jwt, &seed) {
        (Some(_), None) => return Err(ComponentError::invalid("seedKey", "is required with jwt")),
        (None, Some(_)) => return Err(ComponentError::invalid("jwt", "is required with seedKey")),
        (Some(_), Some(_)) => {
            return Err(ComponentError::invalid(
                "jwt",
                "JWT/nkey authentication is not supported by tandem's pubsub.jetstream; use token or \
                 tls_client_cert/tls_client_key",
            ));
        }
        (None, None) => {}
    }
    let (cert, key) = (md.string("tls_client_cert"), md.string("tls_client_key"));
    match (cert, key) {
        (Some(_), None) => Err(ComponentError::invalid(
            "tls_client_key",
            "is required with tls_client_cert",
        )),
        (None, Some(_)) => Err(ComponentError::invalid(
            "tls_client_cert",
            "is required with tls_client_key",
        )),
        (Some(cert), Some(key)) => {
            if cert.trim_start().starts_with("-----BEGIN") || key.trim_start().starts_with("-----BEGIN") {
                return Err(ComponentError::invalid(
                    "tls_client_cert",
                    "takes the path of a PEM file (as Dapr does), not the PEM text",
                ));
            }
            Ok(Auth::ClientCert {
                cert: cert.into(),
                key: key.into(),
            })
        }
        (None, None) => Ok(md.string("token").map(Auth::Token).unwrap_or(Auth::None)),
    }
}

/// `deliverPolicy` (`all` by default), with `startSequence` or `startTime` for `sequence` and `time`. Either
/// start alone implies its policy; `deliverAll: true` (older Dapr) means `all`.
fn deliver_policy(md: &Metadata) -> Result<DeliverPolicy, ComponentError> {
    let seq = md.parse::<u64>("startSequence")?.filter(|&s| s > 0);
    let time =
        match md.parse::<i64>("startTime")? {
            None => None,
            Some(secs) => Some(time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| {
                ComponentError::invalid("startTime", format!("{secs} is not a time in Unix seconds: {e}"))
            })?),
        };
    let policy = md.string("deliverPolicy").map(|p| p.trim().to_ascii_lowercase());
    let policy = match (policy.as_deref(), md.bool("deliverAll")?) {
        (None, Some(true)) => Some("all"),
        (Some(p), Some(true)) if p != "all" => {
            return Err(ComponentError::invalid(
                "deliverAll",
                format!("contradicts deliverPolicy {p:?}"),
            ));
        }
        (p, _) => p,
    };
    let wrong = |field: &str, p: &str| ComponentError::invalid(field, format!("does not go with deliverPolicy {p:?}"));
    match (policy, seq, time) {
        (_, Some(_), Some(_)) => Err(ComponentError::invalid(
            "startTime",
            "cannot be set together with startSequence",
        )),
        (None | Some("sequence"), Some(start_sequence), None) => Ok(DeliverPolicy::ByStartSequence { start_sequence }),
        (None | Some("time"), None, Some(start_time)) => Ok(DeliverPolicy::ByStartTime { start_time }),
        (Some("sequence"), None, _) => Err(ComponentError::invalid(
            "startSequence",
            "is required for deliverPolicy sequence",
        )),
        (Some("time"), _, None) => Err(ComponentError::invalid(
            "startTime",
            "is required for deliverPolicy time",
        )),
        (Some(p), Some(_), None) => Err(wrong("startSequence", p)),
        (Some(p), None, Some(_)) => Err(wrong("startTime", p)),
        (None | Some("all"), None, None) => Ok(DeliverPolicy::All),
        (Some("last"), None, None) => Ok(DeliverPolicy::Last),
        (Some("new"), None, None) => Ok(DeliverPolicy::New),
        (Some(p), ..) => Err(ComponentError::invalid(
            "deliverPolicy",
            format!("{p:?} is not one of: all, last, new, sequence, time"),
        )),
    }
}

fn ack_policy(md: &Metadata) -> Result<AckPolicy, ComponentError> {
    match md.string("ackPolicy").map(|p| p.trim().to_ascii_lowercase()).as_deref() {
        None | Some("explicit") => Ok(AckPolicy::Explicit),
        Some("all") => Ok(AckPolicy::All),
        Some("none") => Ok(AckPolicy::None),
        Some(p) => Err(ComponentError::invalid(
            "ackPolicy",
            format!("{p:?} is not one of: explicit, all, none"),
        )),
    }
}

/// `concurrencyMode` (Dapr's key) or `concurrency`: `single` (the default: one message at a time, in order),
/// `parallel`, or a number of messages at once.
fn concurrency(md: &Metadata) -> Result<usize, ComponentError> {
    let (field, value) = match (md.string("concurrencyMode"), md.string("concurrency")) {
        (Some(v), _) => ("concurrencyMode", v),
        (None, Some(v)) => ("concurrency", v),
        (None, None) => return Ok(1),
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "single" => Ok(1),
        "parallel" => Ok(PARALLEL),
        n => match n.parse::<usize>() {
            Ok(n @ 1..=10_000) => Ok(n),
            _ => Err(ComponentError::invalid(
                field,
                format!("{value:?} is not single, parallel or a number from 1 to 10000"),
            )),
        },
    }
}

/// `backOff`: redelivery delays, comma-separated, optionally in brackets (`500ms, 2s, 10s` or `[1s, 2s]`).
fn backoff(v: &str) -> Result<Vec<Duration>, ComponentError> {
    let list = v.trim().trim_start_matches('[').trim_end_matches(']');
    let mut out = vec![];
    for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let d = parse_duration(d).map_err(|e| ComponentError::invalid("backOff", e))?;
        if d.is_zero() {
            return Err(ComponentError::invalid("backOff", "every delay must be greater than 0"));
        }
        bounded("backOff", Some(d))?;
        out.push(d);
    }
    if out.len() > 100 {
        return Err(ComponentError::invalid("backOff", "takes at most 100 delays"));
    }
    Ok(out)
}

/// The durable consumer of `group` on `topic`. A JetStream consumer reads one filter subject, so each topic of a
/// group has its own: `{group}-{topic}` with the characters names cannot hold (`.`, `*`, `>`, spaces, slashes)
/// replaced by `_`, cut short, and a hash of the exact pair appended, so two pairs never share a consumer.
pub fn durable_name(group: &str, topic: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .take(48)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes().chain([0]).chain(topic.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{}-{}-{hash:016x}", clean(group), clean(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(props: &[(&str, &str)]) -> Metadata {
        let mut all = vec![("natsURL".to_owned(), "nats://127.0.0.1:4222".to_owned())];
        all.extend(props.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Metadata::new("js", "orders", "ns", all)
    }

    fn err(props: &[(&str, &str)]) -> String {
        JetStreamConfig::from_metadata(&md(props)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_dapr() {
        let c = JetStreamConfig::from_metadata(&md(&[])).unwrap();
        assert_eq!(c.name, "dapr.io - pubsub.jetstream");
        assert_eq!(c.group, "orders", "the group is the app id");
        assert_eq!(c.deliver_policy, DeliverPolicy::All);
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.concurrency, 1, "Dapr's default is single");
        assert_eq!((c.ack_wait, c.max_deliver, c.max_ack_pending), (None, None, None));
        assert!(c.auth == Auth::None);
        assert_eq!(c.retry_delay(1), Duration::from_secs(1));
        let missing = JetStreamConfig::from_metadata(&Metadata::new("js", "a", "", [])).unwrap_err();
        assert!(missing.to_string().contains("natsURL"), "{missing}");
    }

    #[test]
    fn reads_every_dapr_setting() {
        let c = JetStreamConfig::from_metadata(&md(&[
            ("natsURL", "nats://a:4222, tls://b:4443"),
            ("name", "mine"),
            ("streamName", "ORDERS"),
            ("durableName", "billing"),
            ("queueGroupName", "ignored"),
            ("startSequence", "5"),
            ("deliverPolicy", "Sequence"),
            ("flowControl", "true"),
            ("ackWait", "2s"),
            ("maxDeliver", "10"),
            ("backOff", "[500ms, 2s, 10s]"),
            ("maxAckPending", "5000"),
            ("replicas", "3"),
            ("memoryStorage", "true"),
            ("rateLimit", "20000"),
            ("heartbeat", "1s"),
            ("ackPolicy", "all"),
            ("apiPrefix", "HUB"),
            ("concurrencyMode", "parallel"),
            ("token", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(c.servers.len(), 2);
        assert!(c.servers[1].tls_required());
        assert_eq!(c.name, "mine");
        assert_eq!(c.stream_name.as_deref(), Some("ORDERS"));
        assert_eq!(c.group, "billing", "durableName names the group");
        assert_eq!(c.deliver_policy, DeliverPolicy::ByStartSequence { start_sequence: 5 });
        assert_eq!(c.ack_wait, Some(Duration::from_secs(2)));
        assert_eq!(c.max_deliver, Some(10));
        assert_eq!(c.backoff, [500, 2000, 10_000].map(Duration::from_millis));
        assert_eq!((c.max_ack_pending, c.replicas, c.memory_storage), (Some(5000), 3, true));
        assert_eq!((c.rate_limit, c.heartbeat), (20_000, Duration::from_secs(1)));
        assert_eq!(c.ack_policy, AckPolicy::All);
        assert_eq!(c.api_prefix.as_deref(), Some("HUB"));
        assert_eq!(c.concurrency, PARALLEL);
        assert!(c.auth == Auth::Token("s3cret".into()));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug hides the token");
        // Retries wait for the backOff step of their delivery, the last one beyond.
        assert_eq!(c.retry_delay(1), Duration::from_millis(500));
        assert_eq!(c.retry_delay(3), Duration::from_secs(10));
        assert_eq!(c.retry_delay(99), Duration::from_secs(10));
        assert_eq!(c.retry_delay(-4), Duration::from_millis(500));
    }

    #[test]
    fn start_positions() {
        let at = |props: &[(&str, &str)]| JetStreamConfig::from_metadata(&md(props)).map(|c| c.deliver_policy);
        assert_eq!(
            at(&[("startTime", "1629328511")]).unwrap(),
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp(1_629_328_511).unwrap()
            }
        );
        assert_eq!(at(&[("deliverPolicy", "new")]).unwrap(), DeliverPolicy::New);
        assert_eq!(at(&[("deliverPolicy", "last")]).unwrap(), DeliverPolicy::Last);
        assert_eq!(at(&[("deliverAll", "true")]).unwrap(), DeliverPolicy::All);
        assert_eq!(
            at(&[("startSequence", "0")]).unwrap(),
            DeliverPolicy::All,
            "0 is unset, as in Dapr"
        );
        for (props, field) in [
            (&[("deliverPolicy", "sequence")][..], "startSequence"),
            (&[("deliverPolicy", "time")][..], "startTime"),
            (&[("deliverPolicy", "all"), ("startSequence", "3")][..], "startSequence"),
            (&[("deliverPolicy", "new"), ("startTime", "100")][..], "startTime"),
            (&[("startSequence", "3"), ("startTime", "100")][..], "startTime"),
            (&[("deliverPolicy", "sometimes")][..], "deliverPolicy"),
            (&[("deliverPolicy", "new"), ("deliverAll", "true")][..], "deliverAll"),
            (&[("startTime", "99999999999999999")][..], "startTime"),
            (&[("startSequence", "-1")][..], "startSequence"),
        ] {
            let e = err(props);
            assert!(e.contains(field), "{props:?}: {e}");
        }
    }

    #[test]
    fn hostile_values_are_refused_by_name() {
        for (props, field) in [
            (&[("natsURL", "http://x:1")][..], "natsURL"),
            (&[("natsURL", "ws://x:1")][..], "natsURL"),
            (&[("natsURL", " , ")][..], "natsURL"),
            (&[("maxDeliver", "-2")][..], "maxDeliver"),
            (&[("maxDeliver", "99999999999")][..], "maxDeliver"),
            (&[("maxDeliver", "2"), ("backOff", "1s,2s")][..], "maxDeliver"),
            (&[("maxAckPending", "-5")][..], "maxAckPending"),
            (&[("replicas", "6")][..], "replicas"),
            (&[("replicas", "-1")][..], "replicas"),
            (&[("ackWait", "soon")][..], "ackWait"),
            (&[("ackWait", "9999999999s")][..], "ackWait"),
            (&[("heartbeat", "1ms")][..], "heartbeat"),
            (&[("backOff", "1s, 0s")][..], "backOff"),
            (&[("backOff", "1s, x")][..], "backOff"),
            (&[("ackPolicy", "sometimes")][..], "ackPolicy"),
            (&[("concurrencyMode", "many")][..], "concurrencyMode"),
            (&[("concurrency", "0")][..], "concurrency"),
            (&[("flowControl", "maybe")][..], "flowControl"),
            (&[("memoryStorage", "2")][..], "memoryStorage"),
            (&[("rateLimit", "-1")][..], "rateLimit"),
            (&[("domain", "hub"), ("apiPrefix", "X")][..], "apiPrefix"),
            (&[("jwt", "eyJ")][..], "seedKey"),
            (&[("seedKey", "SU")][..], "jwt"),
            (&[("jwt", "eyJ"), ("seedKey", "SU")][..], "jwt"),
            (&[("tls_client_cert", "/c.pem")][..], "tls_client_key"),
            (&[("tls_client_key", "/k.pem")][..], "tls_client_cert"),
            (
                &[
                    ("tls_client_cert", "-----BEGIN CERTIFICATE-----"),
                    ("tls_client_key", "/k"),
                ][..],
                "tls_client_cert",
            ),
        ] {
            let e = err(props);
            assert!(e.contains(field), "{props:?}: {e}");
        }
        let c = JetStreamConfig::from_metadata(&md(&[
            ("tls_client_cert", "/etc/c.pem"),
            ("tls_client_key", "/etc/k.pem"),
            ("maxDeliver", "-1"),
            ("backOff", "1s,2s"),
            ("concurrency", "7"),
            ("consumerID", "{namespace}-{appID}"),
        ]))
        .unwrap();
        assert!(matches!(c.auth, Auth::ClientCert { .. }));
        assert_eq!((c.max_deliver, c.concurrency), (Some(-1), 7));
        assert_eq!(c.group, "ns-orders", "consumerID names the group without durableName");
    }

    #[test]
    fn durable_names_are_valid_and_distinct() {
        let a = durable_name("orders", "shop.created");
        assert!(a.starts_with("orders-shop_created-"), "{a}");
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
        assert_eq!(a, durable_name("orders", "shop.created"), "stable");
        assert_ne!(a, durable_name("orders", "shop_created"));
        assert_ne!(durable_name("a-b", "c"), durable_name("a", "b-c"));
        let long = durable_name(&"g".repeat(500), &"t.>*/ \\".repeat(100));
        assert!(long.len() <= 48 * 2 + 18, "{}", long.len());
        assert!(!long.contains(['.', '>', '*', '/', '\\', ' ']));
    }
}
