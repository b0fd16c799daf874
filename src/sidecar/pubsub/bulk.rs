//! Bulk subscribe (`bulkSubscribe.enabled`): events of a subscription are gathered for up to `maxAwaitDurationMs`
//! or `maxMessagesCount`, grouped by route, and delivered in one call — an HTTP POST of Dapr's bulk envelope
//! (`{"id","type":"com.dapr.event.sent.bulk","topic","pubsubname","metadata","entries":[{entryId,event,
//! metadata,contentType}]}`) or gRPC `OnBulkTopicEvent` — whose per-entry statuses settle each message: a
//! missing or unknown status retries, DROP dead-letters, 404 for the whole batch drops it. Each message is then
//! settled as a single delivery would be. At most as many events gather as the broker has in flight for the
//! subscription (its `concurrency`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::http::Method;
use dapr::dapr::proto::runtime::v1 as rt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::cloudevent;
use super::delivery::{Deliverer, Event, Prepared, Verdict, grpc_verdict, topic_event_request};
use super::routes::Bulk;
use crate::components::pubsub::{Handler, Message, Nack};
use crate::sidecar::app_channel::{AppChannel, AppProtocol};

struct Pending {
    event: Arc<Event>,
    metadata: BTreeMap<String, String>,
    done: oneshot::Sender<Verdict>,
}

/// The handler a bulk subscription gives its broker: each message waits for its batch's verdict.
pub fn handler(deliverer: Arc<Deliverer>, bulk: Bulk, app: Arc<AppChannel>) -> Handler {
    let (tx, rx) = mpsc::channel::<Pending>(bulk.max_messages.max(1) * 2);
    tokio::spawn(gather(deliverer.clone(), bulk, app, rx));
    Arc::new(move |msg: Message| {
        let (deliverer, tx) = (deliverer.clone(), tx.clone());
        Box::pin(async move {
            let event = match deliverer.prepare(&msg).await {
                Prepared::Deliver(e) => Arc::new(e),
                Prepared::Done(answer) => return answer,
            };
            let (done, verdict) = oneshot::channel();
            let pending = Pending {
                event: event.clone(),
                metadata: msg.metadata.clone(),
                done,
            };
            if tx.send(pending).await.is_err() {
                return Err(Nack::Closing);
            }
            let verdict = tokio::select! {
                v = verdict => v.unwrap_or(Verdict::Retry("the batch was not delivered".into())),
                _ = async { deliverer.closing.cancelled().await; tokio::time::sleep(deliverer.grace).await } => {
                    return Err(Nack::Closing)
                }
            };
            deliverer.finish(&msg, &event, verdict).await
        })
    })
}

/// Gathers pending events into batches and delivers them, until the subscription closes.
async fn gather(deliverer: Arc<Deliverer>, bulk: Bulk, app: Arc<AppChannel>, mut rx: mpsc::Receiver<Pending>) {
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = deliverer.closing.cancelled() => return,
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + bulk.max_await;
        while batch.len() < bulk.max_messages {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_path: HashMap<String, Vec<Pending>> = HashMap::new();
        for p in batch {
            by_path.entry(p.event.path.clone()).or_default().push(p);
        }
        for (path, group) in by_path {
            let verdicts = deliver(&deliverer, &app, &path, &group).await;
            for (p, v) in group.into_iter().zip(verdicts) {
                let _ = p.done.send(v);
            }
        }
    }
}

/// One bulk call; a verdict per entry, in order.
async fn deliver(d: &Deliverer, app: &AppChannel, path: &str, group: &[Pending]) -> Vec<Verdict> {
    let sub = &d.sub;
    let ids: Vec<String> = (0..group.len()).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let all = |v: Verdict| vec![v; group.len()];
    let statuses: HashMap<String, i32> = match app.protocol {
        AppProtocol::Http => {
            let entries: Vec<Value> = group
                .iter()
                .zip(&ids)
                .map(|(p, id)| {
                    json!({
                        "entryId": id,
                        "event": Value::Object(p.event.cloud_event.clone()),
                        "metadata": p.metadata,
                        "contentType": cloudevent::CLOUDEVENT_CONTENT_TYPE,
                    })
                })
                .collect();
            let body = json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "type": cloudevent::BULK_EVENT_TYPE,
                "topic": sub.topic,
                "pubsubname": sub.pubsub,
                "metadata": {},
                "entries": entries,
            });
            let call = app.call_http(
                Method::POST,
                path,
                body.to_string().into(),
                "application/json",
                &[],
                true,
            );
            match call.await {
                Ok((status, body)) if (200..300).contains(&status) => match parse_statuses(&body) {
                    Some(s) => s,
                    None => return all(Verdict::Retry("the app's bulk answer has no statuses".into())),
                },
                Ok((404, _)) => return all(Verdict::Drop),
                Ok((status, _)) => return all(Verdict::Retry(format!("the app answered {status} to a bulk delivery"))),
                Err(e) => return all(Verdict::Retry(format!("delivering to the app: {e}"))),
            }
        }
        AppProtocol::Grpc => {
            let mut entries = vec![];
            for (p, id) in group.iter().zip(&ids) {
                let Ok(r) = topic_event_request(&p.event.cloud_event, &sub.topic, &sub.pubsub, path) else {
                    continue;
                };
                entries.push(rt::TopicEventBulkRequestEntry {
                    entry_id: id.clone(),
                    content_type: cloudevent::CLOUDEVENT_CONTENT_TYPE.into(),
                    metadata: p.metadata.clone().into_iter().collect(),
                    event: Some(rt::topic_event_bulk_request_entry::Event::CloudEvent(
                        rt::TopicEventCeRequest {
                            id: r.id,
                            source: r.source,
                            r#type: r.r#type,
                            spec_version: r.spec_version,
                            data_content_type: r.data_content_type,
                            data: r.data,
                            extensions: r.extensions,
                        },
                    )),
                });
            }
            let req = rt::TopicEventBulkRequest {
                id: uuid::Uuid::new_v4().to_string(),
                entries,
                metadata: Default::default(),
                topic: sub.topic.clone(),
                pubsub_name: sub.pubsub.clone(),
                r#type: cloudevent::BULK_EVENT_TYPE.into(),
                path: path.to_owned(),
            };
            let answer = app
                .callback(req, &[], true, |mut c, r| async move { c.on_bulk_topic_event(r).await })
                .await;
            match answer {
                Ok(Ok(resp)) => resp.statuses.into_iter().map(|s| (s.entry_id, s.status)).collect(),
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => return all(Verdict::Drop),
                Ok(Err(s)) => {
                    return all(Verdict::Retry(format!(
                        "the app answered {:?}: {}",
                        s.code(),
                        s.message()
                    )));
                }
                Err(e) => return all(Verdict::Retry(format!("delivering to the app: {e}"))),
            }
        }
    };
    ids.iter()
        .map(|id| match statuses.get(id) {
            Some(status) => grpc_verdict(*status),
            None => Verdict::Retry("the app gave no status for the entry".into()),
        })
        .collect()
}

/// `{"statuses":[{"entryId","status"}]}` as entry id -> TopicEventResponse status (`entryID` accepted too, as
/// Go's case-insensitive JSON reading does); an unknown status is retried.
fn parse_statuses(body: &[u8]) -> Option<HashMap<String, i32>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let statuses = v
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("statuses"))?
        .1
        .as_array()?;
    let mut out = HashMap::new();
    for s in statuses {
        let Some(o) = s.as_object() else { continue };
        let field = |name: &str| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
        };
        let Some(id) = field("entryId") else { continue };
        let status = match field("status").unwrap_or_default().to_ascii_uppercase().as_str() {
            "SUCCESS" => 0,
            "DROP" => 2,
            _ => 1,
        };
        out.insert(id.to_owned(), status);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_as_dapr_reads_them() {
        let s = parse_statuses(
            br#"{"statuses":[{"entryId":"a","status":"SUCCESS"},{"entryID":"b","status":"drop"},{"entryId":"c","status":"MAYBE"}]}"#,
        )
        .unwrap();
        assert_eq!(s["a"], 0);
        assert_eq!(s["b"], 2);
        assert_eq!(s["c"], 1);
        assert!(parse_statuses(b"nope").is_none());
    }
}
