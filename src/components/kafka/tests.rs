use std::collections::BTreeMap;

use super::*;

fn md(props: &[(&str, &str)]) -> Metadata {
    let mut all = vec![("brokers", "localhost:9092"), ("authType", "none")];
    all.retain(|(k, _)| !props.iter().any(|(p, _)| p.eq_ignore_ascii_case(k)));
    all.extend_from_slice(props);
    Metadata::new(
        "k",
        "orders",
        "",
        all.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
}

fn parse(props: &[(&str, &str)]) -> Result<KafkaConfig, ComponentError> {
    KafkaConfig::from_metadata(&md(props), true, Some("orders".into()))
}

/// The field an invalid value is reported against.
fn field_of(props: &[(&str, &str)]) -> String {
    match parse(props) {
        Err(ComponentError::InvalidMetadata { field, .. }) => field,
        other => panic!("{props:?}: expected invalid metadata, got {other:?}"),
    }
}

fn setting(c: &ClientConfig, key: &str) -> Option<String> {
    c.get(key).map(str::to_owned)
}

#[test]
fn defaults_are_daprs() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.brokers, ["localhost:9092"]);
    assert_eq!(c.consumer_group.as_deref(), Some("orders"));
    assert_eq!(c.client_id, "sarama");
    assert_eq!(c.initial_offset, InitialOffset::Newest);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
    assert_eq!(c.session_timeout, Duration::from_secs(10));
    assert_eq!(c.consume_retry_interval, Duration::from_millis(100));
    assert_eq!(c.required_acks, "all");
    assert_eq!(c.retry_max, 5);
    assert_eq!(c.channel_buffer_size, 256);
    let retry = c.retry.expect("pub/sub retries in place by default");
    assert_eq!(retry.backoff, Backoff::Constant(Duration::from_secs(5)));
    assert_eq!(retry.max_retries, None);
    // Bindings pass over a failed event unless told otherwise.
    let binding = KafkaConfig::from_metadata(&md(&[]), false, None).unwrap();
    assert!(binding.retry.is_none());
    assert!(binding.consumer_group.is_none());
}

#[test]
fn settings_become_librdkafka_settings() {
    let c = parse(&[
        ("brokers", " a:9092 , b:9093 ,"),
        ("consumerGroup", "workers"),
        ("clientID", "me"),
        ("initialOffset", "Oldest"),
        ("maxMessageBytes", "2048"),
        ("heartbeatInterval", "1s"),
        ("sessionTimeout", "6s"),
        ("producerRequiredAcks", "local"),
        ("compression", "GZIP"),
        ("version", "0.10.2.0"),
        ("consumerGroupRebalanceStrategy", "roundrobin"),
    ])
    .unwrap();
    assert_eq!(
        c.consumer_group.as_deref(),
        Some("workers"),
        "consumerGroup wins over consumerID"
    );
    let p = c.producer_config();
    assert_eq!(setting(&p, "bootstrap.servers").as_deref(), Some("a:9092,b:9093"));
    assert_eq!(setting(&p, "client.id").as_deref(), Some("me"));
    assert_eq!(setting(&p, "acks").as_deref(), Some("1"));
    assert_eq!(
        setting(&p, "partitioner").as_deref(),
        Some("fnv1a_random"),
        "Sarama's key hashing"
    );
    assert_eq!(setting(&p, "compression.codec").as_deref(), Some("gzip"));
    assert_eq!(setting(&p, "message.max.bytes").as_deref(), Some("2048"));
    assert_eq!(setting(&p, "broker.version.fallback").as_deref(), Some("0.10.2.0"));
    let g = c.consumer_config("workers");
    assert_eq!(setting(&g, "group.id").as_deref(), Some("workers"));
    assert_eq!(setting(&g, "auto.offset.reset").as_deref(), Some("earliest"));
    assert_eq!(setting(&g, "enable.auto.offset.store").as_deref(), Some("false"));
    assert_eq!(setting(&g, "session.timeout.ms").as_deref(), Some("6000"));
    assert_eq!(setting(&g, "heartbeat.interval.ms").as_deref(), Some("1000"));
    assert_eq!(
        setting(&g, "partition.assignment.strategy").as_deref(),
        Some("roundrobin")
    );
}

#[test]
fn consume_retry_interval_reads_numbers_as_milliseconds() {
    let c = parse(&[("consumeRetryInterval", "250")]).unwrap();
    assert_eq!(c.consume_retry_interval, Duration::from_millis(250));
    let c = parse(&[("consumeRetryInterval", "2s")]).unwrap();
    assert_eq!(c.consume_retry_interval, Duration::from_secs(2));
    assert_eq!(field_of(&[("consumeRetryInterval", "0")]), "consumeRetryInterval");
    assert_eq!(field_of(&[("consumeRetryInterval", "2h")]), "consumeRetryInterval");
}

#[test]
fn back_off_policy_is_read_with_bounds() {
    let c = parse(&[("backOffDuration", "200ms"), ("backOffMaxRetries", "3")]).unwrap();
    let r = c.retry.unwrap();
    assert_eq!(r.backoff, Backoff::Constant(Duration::from_millis(200)));
    assert_eq!(r.max_retries, Some(3));
    let c = parse(&[("backOffPolicy", "exponential"), ("backOffMaxInterval", "2s")]).unwrap();
    match c.retry.unwrap().backoff {
        Backoff::Exponential(e) => assert_eq!(e.max_interval, Duration::from_secs(2)),
        other => panic!("{other:?}"),
    }
    let off = parse(&[("consumeRetryEnabled", "false")]).unwrap();
    assert!(off.retry.is_none());
    assert_eq!(field_of(&[("backOffPolicy", "sometimes")]), "backOffPolicy");
    assert_eq!(field_of(&[("backOffDuration", "0s")]), "backOffDuration");
    assert_eq!(
        field_of(&[("backOffPolicy", "exponential"), ("backOffMultiplier", "NaN")]),
        "backOffMultiplier"
    );
}

#[test]
fn hostile_values_are_refused_by_name() {
    for (props, field) in [
        (vec![("brokers", "")], "brokers"),
        (vec![("brokers", "nohost")], "brokers"),
        (vec![("brokers", "a:99999")], "brokers"),
        (vec![("brokers", "a b:9092")], "brokers"),
        (vec![("initialOffset", "middle")], "initialOffset"),
        (vec![("maxMessageBytes", "10")], "maxMessageBytes"),
        (vec![("maxMessageBytes", "-1")], "maxMessageBytes"),
        (vec![("maxMessageBytes", "99999999999")], "maxMessageBytes"),
        (vec![("heartbeatInterval", "20s")], "heartbeatInterval"),
        (vec![("sessionTimeout", "2h")], "sessionTimeout"),
        (vec![("version", "two")], "version"),
        (vec![("version", "1.2")], "version"),
        (vec![("compression", "brotli")], "compression"),
        (vec![("compression", "zstd")], "compression"),
        (vec![("producerRequiredAcks", "some")], "producerRequiredAcks"),
        (vec![("producerRetryMax", "-1")], "producerRetryMax"),
        (vec![("channelBufferSize", "0")], "channelBufferSize"),
        (vec![("consumerFetchMin", "0")], "consumerFetchMin"),
        (vec![("consumerFetchDefault", "2000000000")], "consumerFetchDefault"),
        (vec![("readTimeout", "10m")], "readTimeout"),
        (vec![("excludeHeaderMetaRegex", "(")], "excludeHeaderMetaRegex"),
        (vec![("schemaRegistryURL", "http://registry:8081")], "schemaRegistryURL"),
        (vec![("escapeHeaders", "maybe")], "escapeHeaders"),
    ] {
        assert_eq!(field_of(&props), field, "{props:?}");
    }
}

#[test]
fn only_auth_type_none_is_supported_yet() {
    let none = Metadata::new(
        "k",
        "a",
        "",
        [
            ("brokers".to_owned(), "b:1".to_owned()),
            ("authRequired".to_owned(), "false".to_owned()),
        ],
    );
    assert!(
        KafkaConfig::from_metadata(&none, true, None).is_ok(),
        "authRequired=false means none"
    );
    let missing = Metadata::new("k", "a", "", [("brokers".to_owned(), "b:1".to_owned())]);
    let err = KafkaConfig::from_metadata(&missing, true, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("authType") && err.contains("missing"), "{err}");
    let err = parse(&[("authType", "password")]).unwrap_err().to_string();
    assert!(err.contains("not supported by tandem yet"), "{err}");
    let err = parse(&[("authType", "kerberos")]).unwrap_err().to_string();
    assert!(err.contains("is not an auth type"), "{err}");
}

#[test]
fn topic_names_and_schema_types_are_checked() {
    assert!(check_topic("orders.v1_x-2").is_ok());
    for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250), "a\0b"] {
        assert!(check_topic(bad).is_err(), "{bad:?}");
    }
    let avro = BTreeMap::from([("valueSchemaType".to_owned(), "Avro".to_owned())]);
    assert!(check_schema_type(&avro).unwrap_err().contains("not supported"));
    let none = BTreeMap::from([("valueSchemaType".to_owned(), "None".to_owned())]);
    assert!(check_schema_type(&none).is_ok());
}
