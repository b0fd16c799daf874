//! Kafka for every component that talks to Kafka (`pubsub.kafka`, `bindings.kafka`): the metadata as Dapr names
//! it, parsed into one typed config; the librdkafka settings it becomes; a producer that waits for the broker's
//! acknowledgement ([`producer`]); and a consumer-group reader that commits an offset only once its message was
//! taken ([`consumer`]).

pub mod consumer;
pub mod producer;

use std::time::Duration;

use rdkafka::ClientConfig;

use super::{ComponentError, Metadata};
use crate::resiliency::{Backoff, Exponential, Retry};

/// Where a consumer group with no committed offset starts reading a partition (`initialOffset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialOffset {
    Newest,
    Oldest,
}

/// The typed metadata of a Kafka component (Dapr's names; defaults as in Dapr unless said otherwise).
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `brokers`: the bootstrap servers.
    pub brokers: Vec<String>,
    /// `consumerGroup` (for pub/sub, `consumerID` and then the app id when unset).
    pub consumer_group: Option<String>,
    /// `clientID` (`clientId`), Dapr's default `sarama` so broker quotas keyed by it keep applying.
    pub client_id: String,
    pub initial_offset: InitialOffset,
    /// `maxMessageBytes`: the largest message the producer sends (librdkafka's `message.max.bytes`).
    pub max_message_bytes: Option<u32>,
    /// `consumeRetryInterval`: the pause after a failed read before reading again.
    pub consume_retry_interval: Duration,
    /// How a message the handler failed is retried in place (`consumeRetryEnabled` with the `backOff*` policy);
    /// `None`: it is logged and passed over, as Dapr's bindings do by default.
    pub retry: Option<Retry>,
    pub heartbeat_interval: Duration,
    pub session_timeout: Duration,
    /// `version`: used only for brokers too old to tell their API versions (librdkafka asks the others).
    pub version: Option<String>,
    /// `compression`: librdkafka's `compression.codec`.
    pub compression: &'static str,
    /// `producerRequiredAcks`: librdkafka's `acks`.
    pub required_acks: &'static str,
    /// `producerRetryMax`.
    pub retry_max: u32,
    /// `consumerGroupRebalanceStrategy`: librdkafka's `partition.assignment.strategy`.
    pub rebalance_strategy: &'static str,
    /// `channelBufferSize`: messages read ahead per partition while one is with the app.
    pub channel_buffer_size: usize,
    /// `consumerFetchMin` (`fetch.min.bytes`) and `consumerFetchDefault` (`max.partition.fetch.bytes`).
    pub fetch_min: u32,
    pub fetch_default: u32,
    /// `clientConnectionTopicMetadataRefreshInterval`.
    pub metadata_refresh: Duration,
    /// `dialTimeout`, `readTimeout`, `writeTimeout` (a publish not acknowledged by then fails).
    pub dial_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `metadataTimeout`: how long start-up and topic look-ups wait for the brokers (0: 10 s).
    pub metadata_timeout: Duration,
    /// `escapeHeaders`: URL-escape the key and header values handed over as metadata.
    pub escape_headers: bool,
    /// `excludeHeaderMetaRegex`: metadata names not sent as headers, and header names not handed over.
    pub exclude_header_meta: Option<regex::Regex>,
}

/// Metadata that selects what tandem does not do yet: refused at start rather than silently ignored.
const UNSUPPORTED: [(&str, &str); 1] = [(
    "schemaRegistryURL",
    "Avro values through a schema registry are not supported by tandem yet",
)];

impl KafkaConfig {
    /// Parses the metadata. `retry_by_default` is Dapr's `consumeRetryEnabled` default (pub/sub: true,
    /// bindings: false); `default_group` is the consumer group when `consumerGroup` is unset.
    pub fn from_metadata(
        md: &Metadata,
        retry_by_default: bool,
        default_group: Option<String>,
    ) -> Result<Self, ComponentError> {
        let brokers = brokers(md)?;
        auth_type(md)?;
        for (field, why) in UNSUPPORTED {
            if md.string(field).is_some() {
                return Err(ComponentError::invalid(field, why));
            }
        }
        let initial_offset = match md
            .string("initialOffset")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("newest") => InitialOffset::Newest,
            Some("oldest") => InitialOffset::Oldest,
            Some(other) => {
                return Err(ComponentError::invalid(
                    "initialOffset",
                    format!("{other:?} is not an initial offset: write newest or oldest"),
                ));
            }
        };
        let max_message_bytes = match md.parse::<u32>("maxMessageBytes")? {
            None | Some(0) => None,
            Some(n) => Some(in_range("maxMessageBytes", n, 1000, 1_000_000_000)?),
        };
        let consumer_group = md
            .string("consumerGroup")
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .or(default_group);
        let heartbeat_interval = positive_duration("heartbeatInterval", md, Duration::from_secs(3))?;
        let session_timeout = positive_duration("sessionTimeout", md, Duration::from_secs(10))?;
        if heartbeat_interval >= session_timeout {
            return Err(ComponentError::invalid(
                "heartbeatInterval",
                format!("must be shorter than sessionTimeout ({session_timeout:?})"),
            ));
        }
        let version = match md.string("version") {
            None => None,
            Some(v) if kafka_version(v.trim()) => Some(v.trim().to_owned()),
            Some(v) => {
                return Err(ComponentError::invalid(
                    "version",
                    format!("{v:?} is not a Kafka version (e.g. 2.0.0 or 0.10.2.0)"),
                ));
            }
        };
        let exclude_header_meta = match md.string("excludeHeaderMetaRegex") {
            None => None,
            Some(r) => Some(
                regex::RegexBuilder::new(&r)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ComponentError::invalid("excludeHeaderMetaRegex", e.to_string()))?,
            ),
        };
        let write_timeout = duration_or_default("writeTimeout", md, Duration::from_secs(30), HOUR)?;
        Ok(KafkaConfig {
            brokers,
            consumer_group,
            client_id: md
                .string("clientID")
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "sarama".to_owned()),
            initial_offset,
            max_message_bytes,
            consume_retry_interval: consume_retry_interval(md)?,
            retry: if md.bool("consumeRetryEnabled")?.unwrap_or(retry_by_default) {
                Some(back_off(md)?)
            } else {
                None
            },
            heartbeat_interval,
            session_timeout,
            version,
            compression: compression(md)?,
            required_acks: match md
                .string("producerRequiredAcks")
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref()
            {
                None | Some("all") => "all",
                Some("local") => "1",
                Some("none") => {
                    tracing::warn!(
                        component = %md.name,
                        "producerRequiredAcks is none: a publish succeeds without the broker's acknowledgement and may be lost"
                    );
                    "0"
                }
                Some(other) => {
                    return Err(ComponentError::invalid(
                        "producerRequiredAcks",
                        format!("{other:?} is not valid: write all, local or none"),
                    ));
                }
            },
            retry_max: in_range(
                "producerRetryMax",
                md.parse::<u32>("producerRetryMax")?.unwrap_or(5),
                0,
                i32::MAX as u32,
            )?,
            rebalance_strategy: rebalance_strategy(md),
            channel_buffer_size: in_range(
                "channelBufferSize",
                md.parse::<u32>("channelBufferSize")?.unwrap_or(256),
                1,
                100_000,
            )? as usize,
            fetch_min: in_range(
                "consumerFetchMin",
                md.parse::<u32>("consumerFetchMin")?.unwrap_or(1),
                1,
                100_000_000,
            )?,
            fetch_default: in_range(
                "consumerFetchDefault",
                md.parse::<u32>("consumerFetchDefault")?.unwrap_or(1024 * 1024),
                1,
                1_000_000_000,
            )?,
            metadata_refresh: duration_or_default(
                "clientConnectionTopicMetadataRefreshInterval",
                md,
                Duration::from_secs(8 * 60),
                HOUR,
            )?,
            dial_timeout: duration_or_default("dialTimeout", md, Duration::from_secs(30), HOUR)?,
            read_timeout: duration_or_default("readTimeout", md, Duration::from_secs(30), Duration::from_secs(300))?,
            write_timeout,
            metadata_timeout: duration_or_default(
                "metadataTimeout",
                md,
                Duration::from_secs(10),
                Duration::from_secs(300),
            )?,
            escape_headers: md.bool("escapeHeaders")?.unwrap_or(false),
            exclude_header_meta,
        })
    }

    /// The settings every client of this component shares.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id)
            .set("security.protocol", "plaintext")
            // As Go's net package (and so Sarama) does: no Nagle delay on requests.
            .set("socket.nagle.disable", "true")
            .set(
                "socket.connection.setup.timeout.ms",
                millis(self.dial_timeout).max(1000).to_string(),
            )
            .set("socket.timeout.ms", millis(self.read_timeout).max(10).to_string())
            .set(
                "topic.metadata.refresh.interval.ms",
                millis(self.metadata_refresh).to_string(),
            );
        if let Some(v) = &self.version {
            c.set("broker.version.fallback", v);
        }
        c
    }

    /// Producer settings: the broker acknowledges each message as `producerRequiredAcks` says before a publish
    /// succeeds; a message not acknowledged within `writeTimeout` fails. Keys pick partitions as Sarama's hash
    /// partitioner does (FNV-1a; no key: a random partition), so Dapr and tandem sidecars sharing a topic keep a
    /// key's messages on one partition.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("acks", self.required_acks)
            .set("compression.codec", self.compression)
            .set("message.send.max.retries", self.retry_max.to_string())
            .set("message.timeout.ms", millis(self.write_timeout).max(1).to_string())
            .set("partitioner", "fnv1a_random")
            .set("linger.ms", "0");
        if let Some(max) = self.max_message_bytes {
            c.set("message.max.bytes", max.to_string());
        }
        c
    }

    /// Consumer settings for `group`: offsets are stored only once a message was taken and committed from there
    /// every second and when the consumer leaves or loses a partition.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.initial_offset {
                    InitialOffset::Newest => "latest",
                    InitialOffset::Oldest => "earliest",
                },
            )
            .set("session.timeout.ms", millis(self.session_timeout).to_string())
            .set("heartbeat.interval.ms", millis(self.heartbeat_interval).to_string())
            .set("partition.assignment.strategy", self.rebalance_strategy)
            .set("fetch.min.bytes", self.fetch_min.to_string())
            .set("max.partition.fetch.bytes", self.fetch_default.to_string());
        c
    }

    /// Whether the metadata (a message's, or a header) named `name` stays out of headers and handed-over metadata.
    pub fn excluded(&self, name: &str) -> bool {
        self.exclude_header_meta.as_ref().is_some_and(|r| r.is_match(name))
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn in_range(field: &str, v: u32, min: u32, max: u32) -> Result<u32, ComponentError> {
    if v < min || v > max {
        return Err(ComponentError::invalid(field, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

/// A duration within 1ms..=1h (librdkafka takes whole milliseconds).
fn positive_duration(field: &str, md: &Metadata, default: Duration) -> Result<Duration, ComponentError> {
    let d = md.duration(field)?.unwrap_or(default);
    if d < Duration::from_millis(1) || d > HOUR {
        return Err(ComponentError::invalid(field, format!("{d:?} is outside 1ms..=1h")));
    }
    Ok(d)
}

/// A timeout where zero means the default, as in Dapr.
fn duration_or_default(
    field: &str,
    md: &Metadata,
    default: Duration,
    max: Duration,
) -> Result<Duration, ComponentError> {
    match md.duration(field)? {
        None => Ok(default),
        Some(d) if d.is_zero() => Ok(default),
        Some(d) if d > max => Err(ComponentError::invalid(field, format!("{d:?} is longer than {max:?}"))),
        Some(d) => Ok(d),
    }
}

/// `brokers`: a comma-separated list of `host:port`.
fn brokers(md: &Metadata) -> Result<Vec<String>, ComponentError> {
    let raw = md
        .string("brokers")
        .ok_or_else(|| ComponentError::invalid("brokers", "missing: write a comma-separated list of host:port"))?;
    let mut out = vec![];
    for b in raw.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let port = b.rsplit_once(':').map(|(_, p)| p);
        if b.chars().any(|c| c.is_whitespace() || c.is_control()) || port.and_then(|p| p.parse::<u16>().ok()).is_none()
        {
            return Err(ComponentError::invalid("brokers", format!("{b:?} is not host:port")));
        }
        out.push(b.to_owned());
    }
    if out.is_empty() {
        return Err(ComponentError::invalid("brokers", "no broker given"));
    }
    Ok(out)
}

/// `authType` (or the legacy `authRequired`). Only `none` (plaintext, no authentication) is supported yet.
fn auth_type(md: &Metadata) -> Result<(), ComponentError> {
    let auth = match md.string("authType") {
        Some(a) => a.trim().to_ascii_lowercase(),
        None => match md.string("authRequired") {
            None => {
                return Err(ComponentError::invalid(
                    "authType",
                    "missing: set authType (none is the one tandem supports yet)",
                ));
            }
            Some(r) => match super::metadata::parse_bool(&r) {
                Some(false) => "none".to_owned(),
                Some(true) => "password or mtls (from authRequired)".to_owned(),
                None => {
                    return Err(ComponentError::invalid(
                        "authRequired",
                        format!("{r:?} is not a boolean"),
                    ));
                }
            },
        },
    };
    match auth.as_str() {
        "none" => Ok(()),
        "password"
        | "oidc"
        | "oidc_private_key_jwt"
        | "mtls"
        | "certificate"
        | "awsiam"
        | "password or mtls (from authRequired)" => Err(ComponentError::invalid(
            "authType",
            format!("{auth} is not supported by tandem yet (no TLS or SASL): use none"),
        )),
        other => Err(ComponentError::invalid(
            "authType",
            format!(
                "{other:?} is not an auth type: write none, password, oidc, oidc_private_key_jwt, mtls, certificate or awsiam"
            ),
        )),
    }
}

/// `consumeRetryInterval`: a Go duration, or a whole number of milliseconds (Dapr's reading).
fn consume_retry_interval(md: &Metadata) -> Result<Duration, ComponentError> {
    let field = "consumeRetryInterval";
    let d = match md.string(field) {
        None => Duration::from_millis(100),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(ms) => Duration::from_millis(ms.into()),
            Err(_) => super::metadata::parse_duration(&v).map_err(|e| ComponentError::invalid(field, e))?,
        },
    };
    if d.is_zero() || d > HOUR {
        return Err(ComponentError::invalid(field, format!("{d:?} is outside 1ms..=1h")));
    }
    Ok(d)
}

/// The in-place retry of a failed message: Dapr's `backOff*` metadata (dapr/kit's retry config, default a
/// constant 5 s, forever).
fn back_off(md: &Metadata) -> Result<Retry, ComponentError> {
    let positive = |field: &str, default: Duration| positive_duration(field, md, default);
    let backoff = match md
        .string("backOffPolicy")
        .map(|p| p.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("constant") => Backoff::Constant(positive("backOffDuration", Duration::from_secs(5))?),
        Some("exponential") => {
            let d = Exponential::default();
            let multiplier = md.parse::<f64>("backOffMultiplier")?.unwrap_or(d.multiplier);
            if !(1.0..=100.0).contains(&multiplier) {
                return Err(ComponentError::invalid(
                    "backOffMultiplier",
                    "must be between 1 and 100",
                ));
            }
            let randomization_factor = md
                .parse::<f64>("backOffRandomizationFactor")?
                .unwrap_or(d.randomization_factor);
            if !(0.0..=1.0).contains(&randomization_factor) {
                return Err(ComponentError::invalid(
                    "backOffRandomizationFactor",
                    "must be between 0 and 1",
                ));
            }
            let max_elapsed = match md.duration("backOffMaxElapsedTime")? {
                None => d.max_elapsed,
                Some(e) if e.is_zero() => None,
                Some(e) => Some(e),
            };
            Backoff::Exponential(Exponential {
                initial_interval: positive("backOffInitialInterval", d.initial_interval)?,
                randomization_factor,
                multiplier,
                max_interval: positive("backOffMaxInterval", d.max_interval)?,
                max_elapsed,
            })
        }
        Some(other) => {
            return Err(ComponentError::invalid(
                "backOffPolicy",
                format!("{other:?} is not a policy: write constant or exponential"),
            ));
        }
    };
    // -1 (or any negative): forever.
    let max_retries = md
        .parse::<i64>("backOffMaxRetries")?
        .and_then(|n| u64::try_from(n).ok());
    Ok(Retry {
        backoff,
        max_retries,
        matching: Default::default(),
    })
}

/// `compression`: the codecs librdkafka is built with here.
fn compression(md: &Metadata) -> Result<&'static str, ComponentError> {
    match md
        .string("compression")
        .map(|c| c.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("none") => Ok("none"),
        Some("gzip") => Ok("gzip"),
        Some("snappy") => Ok("snappy"),
        Some("lz4") => Ok("lz4"),
        Some("zstd") => Err(ComponentError::invalid(
            "compression",
            "zstd is not supported by tandem yet: use none, gzip, snappy or lz4",
        )),
        Some(other) => Err(ComponentError::invalid(
            "compression",
            format!("{other:?} is not a codec: write none, gzip, snappy or lz4"),
        )),
    }
}

/// `consumerGroupRebalanceStrategy`; an unknown one falls back to `range` with a warning, as in Dapr.
fn rebalance_strategy(md: &Metadata) -> &'static str {
    match md
        .string("consumerGroupRebalanceStrategy")
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("range") => "range",
        Some("roundrobin") => "roundrobin",
        Some(other) => {
            tracing::warn!(
                component = %md.name,
                "consumerGroupRebalanceStrategy {other:?} is not supported (range and roundrobin are); using range"
            );
            "range"
        }
    }
}

/// Sarama's version spellings: `x.y.z` for 1.0 and later, `0.x.y.z` before.
fn kafka_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 4 && p.chars().all(|c| c.is_ascii_digit()));
    numeric && (parts.len() == 3 || (parts.len() == 4 && parts[0] == "0"))
}

/// `valueSchemaType` of a message or subscription: only `None` (the bytes as they are) is supported yet.
pub fn check_schema_type(md: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    match md.iter().find(|(k, _)| k.eq_ignore_ascii_case("valueSchemaType")) {
        Some((_, v)) if !v.trim().eq_ignore_ascii_case("none") && !v.trim().is_empty() => Err(format!(
            "valueSchemaType {v:?} is not supported by tandem yet (no schema registry): the value travels as it is"
        )),
        _ => Ok(()),
    }
}

/// A topic name Kafka accepts: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || topic == "." || topic == ".." || !topic.chars().all(legal) {
        return Err(format!(
            "{topic:?} is not a Kafka topic name: 1 to 249 characters of letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
