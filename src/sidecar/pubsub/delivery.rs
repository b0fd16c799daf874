//! One delivered message, from the broker to the app: decode the CloudEvent (or wrap a raw payload), drop what has
//! expired, route it, deliver it over the app channel (HTTP POST or `OnTopicEvent`) or a streaming subscription
//! under the component's inbound Resiliency policy, read the app's verdict, and dead-letter what is dropped or
//! cannot be delivered. What the broker should do with the message is the answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as rt;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::PubSubApi;
use super::cloudevent;
use super::routes::{Route, Subscription};
use super::streaming::Stream;
use crate::components::pubsub::{Message, Nack};
use crate::resiliency::Policy;
use crate::sidecar::app_channel::{AppCallError, AppChannel, AppProtocol, CallFailure as Failure};

/// The app's answer to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Deliver again (RETRY, a failed call, an unexpected status).
    Retry(String),
    /// Do not deliver again (DROP, HTTP 404, gRPC Unimplemented): dead-lettered when the subscription has a topic.
    Drop,
}

/// Where a subscription's events go.
#[derive(Clone)]
pub enum Sink {
    App(Arc<AppChannel>),
    Stream(Arc<Stream>),
}

/// An event on its way to the app.
pub struct Event {
    pub cloud_event: Map<String, Value>,
    /// The CloudEvent as JSON, as an HTTP app gets it.
    pub body: Bytes,
    pub path: String,
    /// When the broker handed the message over.
    pub received: std::time::Instant,
}

/// A message made ready for delivery, or already settled (expired, unroutable, undecodable).
pub enum Prepared {
    Deliver(Event),
    Done(Result<(), Nack>),
}

/// The verdict an HTTP app's answer means (Dapr's rules): 2xx with no or an unreadable body, or status
/// SUCCESS or empty, is success; RETRY or an unknown status is retry; DROP drops; 404 drops; anything else retries.
pub fn http_verdict(status: u16, body: &[u8]) -> Verdict {
    if (200..300).contains(&status) {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            status: String,
        }
        return match serde_json::from_slice::<Answer>(body) {
            Err(_) => Verdict::Success,
            Ok(a) => match a.status.to_ascii_uppercase().as_str() {
                "" | "SUCCESS" => Verdict::Success,
                "DROP" => Verdict::Drop,
                "RETRY" => Verdict::Retry("the app answered RETRY".into()),
                other => Verdict::Retry(format!(
                    "the app answered an unknown status {:?}",
                    crate::echo::echo(other)
                )),
            },
        };
    }
    if status == 404 {
        return Verdict::Drop;
    }
    Verdict::Retry(format!(
        "the app answered {status}: {}",
        crate::echo::echo(&String::from_utf8_lossy(&body[..body.len().min(512)]))
    ))
}

/// The verdict a `TopicEventResponse` status means.
pub fn grpc_verdict(status: i32) -> Verdict {
    use rt::topic_event_response::TopicEventResponseStatus as S;
    match S::try_from(status) {
        Ok(S::Success) => Verdict::Success,
        Ok(S::Drop) => Verdict::Drop,
        Ok(S::Retry) => Verdict::Retry("the app answered RETRY".into()),
        Err(_) => Verdict::Retry(format!("the app answered an unknown status {status}")),
    }
}

/// The `TopicEventRequest` a gRPC app (or a streaming subscriber) gets for an event.
pub fn topic_event_request(
    ce: &Map<String, Value>,
    topic: &str,
    pubsub: &str,
    path: &str,
) -> Result<rt::TopicEventRequest, String> {
    let field = |k: &str| ce.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let data = cloudevent::data_bytes(ce)?;
    let mut extensions = prost_types::Struct::default();
    for (k, v) in ce {
        if matches!(
            k.as_str(),
            "id" | "source" | "datacontenttype" | "type" | "specversion" | "data" | "data_base64"
        ) {
            continue;
        }
        extensions.fields.insert(k.clone(), json_to_prost(v));
    }
    Ok(rt::TopicEventRequest {
        id: field("id"),
        source: field("source"),
        r#type: field("type"),
        spec_version: field("specversion"),
        data_content_type: field("datacontenttype"),
        data,
        topic: topic.to_owned(),
        pubsub_name: pubsub.to_owned(),
        path: path.to_owned(),
        extensions: Some(extensions),
    })
}

fn json_to_prost(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_prost).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Metadata that travels to the app as headers: what the broker gave, bounded.
fn headers_of(md: &BTreeMap<String, String>, ce: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = md
        .iter()
        .filter(|(k, v)| k.len() <= 128 && v.len() <= 4096 && !k.eq_ignore_ascii_case("content-type"))
        .take(32)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for k in ["traceparent", "tracestate"] {
        if let Some(v) = ce.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()) {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

impl Sink {
    /// One attempt at delivering `event`.
    async fn deliver(
        &self,
        sub: &Subscription,
        event: &Event,
        md: &BTreeMap<String, String>,
    ) -> Result<Verdict, Failure> {
        let unreachable = |e: AppCallError| Failure {
            message: format!("delivering to the app: {e}"),
            http: None,
            grpc: None,
        };
        match self {
            Sink::App(app) if app.protocol == AppProtocol::Http => {
                let (status, body) = app
                    .call_http(
                        Method::POST,
                        &event.path,
                        event.body.clone(),
                        cloudevent::CLOUDEVENT_CONTENT_TYPE,
                        &headers_of(md, &event.cloud_event),
                        true,
                    )
                    .await
                    .map_err(unreachable)?;
                match http_verdict(status, &body) {
                    Verdict::Retry(message) => Err(Failure {
                        message,
                        http: Some(status),
                        grpc: None,
                    }),
                    v => Ok(v),
                }
            }
            Sink::App(app) => {
                let req = topic_event_request(&event.cloud_event, &sub.topic, &sub.pubsub, &event.path).map_err(
                    |message| Failure {
                        message,
                        http: None,
                        grpc: None,
                    },
                )?;
                let answer = app
                    .callback(req, &headers_of(md, &event.cloud_event), true, |mut c, r| async move {
                        c.on_topic_event(r).await
                    })
                    .await
                    .map_err(unreachable)?;
                match answer {
                    Ok(resp) => match grpc_verdict(resp.status) {
                        Verdict::Retry(message) => Err(Failure {
                            message,
                            http: None,
                            grpc: None,
                        }),
                        v => Ok(v),
                    },
                    Err(s) if s.code() == tonic::Code::Unimplemented => Ok(Verdict::Drop),
                    Err(s) => Err(Failure {
                        message: format!("the app answered {:?}: {}", s.code(), s.message()),
                        http: None,
                        grpc: Some(s.code()),
                    }),
                }
            }
            Sink::Stream(stream) => {
                let req = topic_event_request(&event.cloud_event, &sub.topic, &sub.pubsub, "/").map_err(|message| {
                    Failure {
                        message,
                        http: None,
                        grpc: None,
                    }
                })?;
                match stream.deliver(req).await {
                    Ok(status) => match grpc_verdict(status) {
                        Verdict::Retry(message) => Err(Failure {
                            message,
                            http: None,
                            grpc: None,
                        }),
                        v => Ok(v),
                    },
                    Err(message) => Err(Failure {
                        message,
                        http: None,
                        grpc: None,
                    }),
                }
            }
        }
    }
}

/// What delivering a subscription's messages needs.
pub struct Deliverer {
    pub sub: Subscription,
    pub sink: Sink,
    /// The component's inbound Resiliency policy, if any.
    pub policy: Option<Policy>,
    pub publisher: PubSubApi,
    /// Cancelled when the subscription stops: nothing new is delivered, and what could not be is left with the broker.
    pub closing: CancellationToken,
    /// How long a delivery under way may go on once the subscription is closing.
    pub grace: Duration,
}

impl Deliverer {
    /// Handles one message from the broker.
    pub async fn handle(self: Arc<Self>, msg: Message) -> Result<(), Nack> {
        let event = match self.prepare(&msg).await {
            Prepared::Deliver(e) => e,
            Prepared::Done(answer) => return answer,
        };
        let sub = &self.sub;
        let attempt = || self.sink.deliver(sub, &event, &msg.metadata);
        let run = async {
            match &self.policy {
                Some(policy) => policy.run(|_: &Verdict| None, attempt).await.map_err(|e| e.to_string()),
                None => attempt().await.map_err(|e| e.to_string()),
            }
        };
        // A delivery (and its retries) under way when the subscription closes gets the grace period to finish;
        // then the message is left with the broker.
        let outcome = tokio::select! {
            o = run => o,
            _ = async { self.closing.cancelled().await; tokio::time::sleep(self.grace).await } => return Err(Nack::Closing),
        };
        self.finish(&msg, &event, outcome.unwrap_or_else(Verdict::Retry)).await
    }

    /// Records what became of one delivery (Dapr's `pubsub_ingress` metrics).
    fn observe(&self, verdict: &Verdict, elapsed: Duration) {
        let status = match verdict {
            Verdict::Success => "success",
            Verdict::Retry(_) => "retry",
            Verdict::Drop => "drop",
        };
        self.publisher
            .metrics
            .pubsub_ingress(&self.sub.pubsub, &self.sub.topic, status, elapsed);
    }

    /// Decodes, checks expiry and routes `msg`: the event to deliver, or what the broker should do already.
    pub async fn prepare(&self, msg: &Message) -> Prepared {
        if self.closing.is_cancelled() {
            return Prepared::Done(Err(Nack::Closing));
        }
        let sub = &self.sub;
        let event = match self.decode(msg) {
            Ok(e) => e,
            Err(why) => {
                tracing::error!(pubsub = %sub.pubsub, topic = %sub.topic, "{why}");
                return Prepared::Done(self.dead_letter_or_retry(msg, why).await);
            }
        };
        if cloudevent::has_expired(&event.cloud_event) {
            tracing::warn!(pubsub = %sub.pubsub, topic = %sub.topic, id = ?event.cloud_event.get("id"), "dropping an expired event");
            self.dead_letter_quietly(msg).await;
            return Prepared::Done(Ok(()));
        }
        match sub.route(&event.cloud_event) {
            Ok(Route::Path(path)) => Prepared::Deliver(Event { path, ..event }),
            Ok(Route::NoMatch) => {
                tracing::debug!(pubsub = %sub.pubsub, topic = %sub.topic, "no route matches the event; skipping it");
                self.dead_letter_quietly(msg).await;
                Prepared::Done(Ok(()))
            }
            Err(why) => {
                tracing::error!(pubsub = %sub.pubsub, topic = %sub.topic, "routing the event: {why}");
                Prepared::Done(self.dead_letter_or_retry(msg, why).await)
            }
        }
    }

    /// What the broker should do with `msg` after the app's verdict on it.
    pub async fn finish(&self, msg: &Message, event: &Event, verdict: Verdict) -> Result<(), Nack> {
        self.observe(&verdict, event.received.elapsed());
        let sub = &self.sub;
        match verdict {
            Verdict::Success => Ok(()),
            Verdict::Drop => {
                tracing::warn!(pubsub = %sub.pubsub, topic = %sub.topic, id = ?event.cloud_event.get("id"), "the app dropped the event");
                match &sub.dead_letter_topic {
                    Some(dlt) => match self.publisher.forward(&sub.pubsub, &dead_letter(msg, dlt)).await {
                        Ok(()) => Ok(()),
                        Err(e) => Err(Nack::Retry(format!("dead-lettering a dropped event failed: {e}"))),
                    },
                    None => Ok(()),
                }
            }
            Verdict::Retry(why) => {
                // Shutting down is no reason to give up on a message: it stays with the broker.
                if self.closing.is_cancelled() {
                    return Err(Nack::Closing);
                }
                tracing::warn!(pubsub = %sub.pubsub, topic = %sub.topic, "delivery failed: {why}");
                self.dead_letter_or_retry(msg, why).await
            }
        }
    }

    /// The event in `msg`, per the subscription's `rawPayload` and the message's content type.
    fn decode(&self, msg: &Message) -> Result<Event, String> {
        let sub = &self.sub;
        let raw = super::raw_payload(&sub.metadata)?;
        let content_type = msg
            .content_type
            .clone()
            .or_else(|| msg.metadata.get("content-type").cloned())
            .unwrap_or_default();
        let ce = if raw {
            cloudevent::from_raw_payload(&msg.data, &sub.topic, &sub.pubsub, &msg.metadata)
        } else if cloudevent::is_binary(&content_type) {
            let mut ce: Map<String, Value> = msg
                .metadata
                .iter()
                .filter_map(|(k, v)| {
                    k.to_ascii_lowercase()
                        .strip_prefix("ce_")
                        .map(|f| (f.to_owned(), Value::String(v.clone())))
                })
                .collect();
            ce.insert(
                "data_base64".into(),
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &msg.data).into(),
            );
            ce.insert("datacontenttype".into(), content_type.clone().into());
            ce
        } else {
            let mut ce: Map<String, Value> = serde_json::from_slice(&msg.data)
                .map_err(|e| format!("the event is not a CloudEvent (rawPayload is not set): {e}"))?;
            for k in ["traceid", "traceparent", "tracestate"] {
                if !ce.contains_key(k)
                    && let Some(v) = msg.metadata.get(k)
                {
                    ce.insert(k.into(), v.as_str().into());
                }
            }
            ce
        };
        let body = if raw || cloudevent::is_binary(&content_type) {
            Bytes::from(serde_json::to_vec(&ce).map_err(|e| e.to_string())?)
        } else {
            msg.data.clone()
        };
        Ok(Event {
            cloud_event: ce,
            body,
            path: String::new(),
            received: std::time::Instant::now(),
        })
    }

    /// To the dead-letter topic when there is one (then the broker may forget the message), else back to the
    /// broker for redelivery.
    async fn dead_letter_or_retry(&self, msg: &Message, why: String) -> Result<(), Nack> {
        if let Some(dlt) = &self.sub.dead_letter_topic {
            match tokio::time::timeout(
                Duration::from_secs(30),
                self.publisher.forward(&self.sub.pubsub, &dead_letter(msg, dlt)),
            )
            .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => tracing::warn!(topic = %dlt, "dead-lettering failed: {e}"),
                Err(_) => tracing::warn!(topic = %dlt, "dead-lettering timed out"),
            }
        }
        Err(Nack::Retry(why))
    }

    async fn dead_letter_quietly(&self, msg: &Message) {
        if let Some(dlt) = &self.sub.dead_letter_topic
            && let Err(e) = self.publisher.forward(&self.sub.pubsub, &dead_letter(msg, dlt)).await
        {
            tracing::warn!(topic = %dlt, "dead-lettering failed: {e}");
        }
    }
}

/// The original bytes, content type and metadata, to the dead-letter topic.
fn dead_letter(msg: &Message, topic: &str) -> Message {
    Message {
        topic: topic.to_owned(),
        ..msg.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_mean_what_they_mean_in_dapr() {
        assert_eq!(http_verdict(200, b""), Verdict::Success);
        assert_eq!(http_verdict(204, b"not json"), Verdict::Success);
        assert_eq!(http_verdict(200, br#"{"status":"SUCCESS"}"#), Verdict::Success);
        assert_eq!(http_verdict(200, br#"{"status":""}"#), Verdict::Success);
        assert_eq!(http_verdict(200, br#"{"status":"DROP"}"#), Verdict::Drop);
        assert!(matches!(http_verdict(200, br#"{"status":"RETRY"}"#), Verdict::Retry(_)));
        assert!(matches!(http_verdict(200, br#"{"status":"MAYBE"}"#), Verdict::Retry(_)));
        assert_eq!(http_verdict(404, b""), Verdict::Drop);
        assert!(matches!(http_verdict(500, b"boom"), Verdict::Retry(_)));
        assert!(matches!(http_verdict(400, b""), Verdict::Retry(_)));
    }

    #[test]
    fn grpc_request_carries_the_event() {
        let ce = cloudevent::envelope(
            &cloudevent::Publication {
                source: "a",
                topic: "t",
                pubsub: "p",
                content_type: "application/json",
                data: br#"{"x":1}"#,
                traceparent: "tp",
                tracestate: "",
            },
            &BTreeMap::new(),
        )
        .unwrap();
        let r = topic_event_request(&ce, "t", "p", "/orders").unwrap();
        assert_eq!(r.data, br#"{"x":1}"#);
        assert_eq!(r.r#type, cloudevent::EVENT_TYPE);
        assert_eq!(r.path, "/orders");
        let ext = r.extensions.unwrap();
        assert!(ext.fields.contains_key("traceparent") && ext.fields.contains_key("topic"));
        assert!(!ext.fields.contains_key("data"));
    }
}
