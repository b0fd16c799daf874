//! Streaming subscriptions (`SubscribeTopicEventsAlpha1`, what the Python SDK's `subscribe()` opens): the first
//! message names the pubsub and topic, the sidecar answers `initial_response` once subscribed, then sends events
//! and matches the app's `event_processed` answers to them by id; any number may be in flight. Closing the
//! stream ends the subscription, and what was not answered stays with the broker — a stream opened later (here or
//! in another sidecar of the app) gets it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dapr::dapr::proto::runtime::v1 as rt;
use futures::{Stream as FuturesStream, StreamExt};
use rt::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use rt::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::routes::{Origin, Subscription};
use super::subscriber::Subscriber;

/// Events sent ahead of the app's answers, at most.
const OUTBOX: usize = 256;
/// Answers awaited at once, at most; more deliveries wait.
const MAX_PENDING: usize = 4096;

type Out = Result<rt::SubscribeTopicEventsResponseAlpha1, tonic::Status>;

/// One open stream: where its events go and the answers it awaits.
pub struct Stream {
    tx: mpsc::Sender<Out>,
    pending: Mutex<HashMap<String, oneshot::Sender<i32>>>,
    /// Cancelled once `initial_response` went out: no event goes before it.
    started: CancellationToken,
    closed: CancellationToken,
}

impl Stream {
    /// Sends the event and waits for the app's status for it.
    pub async fn deliver(&self, event: rt::TopicEventRequest) -> Result<i32, String> {
        tokio::select! {
            _ = self.started.cancelled() => {}
            _ = self.closed.cancelled() => return Err("the stream closed".into()),
        }
        let id = event.id.clone();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING {
                return Err("too many events await the app's answer".into());
            }
            if pending.contains_key(&id) {
                return Err(format!("event {id} is already awaiting the app's answer"));
            }
            pending.insert(id.clone(), tx);
        }
        let message = rt::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(RespType::EventMessage(event)),
        };
        let answer = tokio::select! {
            sent = self.tx.send(Ok(message)) => match sent {
                Ok(()) => tokio::select! {
                    a = rx => a.map_err(|_| "the stream closed".to_owned()),
                    _ = self.closed.cancelled() => Err("the stream closed".into()),
                },
                Err(_) => Err("the stream closed".into()),
            },
            _ = self.closed.cancelled() => Err("the stream closed".into()),
        };
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        answer
    }

    /// Ends the stream with an error.
    pub fn fail(&self, why: String) {
        let _ = self.tx.try_send(Err(tonic::Status::internal(why)));
        self.closed.cancel();
    }

    fn answer(&self, id: &str, status: i32) {
        if let Some(tx) = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
            let _ = tx.send(status);
        }
    }
}

/// Serves one `SubscribeTopicEventsAlpha1` call: reads the initial request, subscribes, and returns the stream of
/// events; answers are read in the background until the app closes its side.
pub async fn open<S>(
    subscriber: Arc<Subscriber>,
    mut incoming: S,
) -> Result<impl FuturesStream<Item = Out> + Send + 'static, tonic::Status>
where
    S: FuturesStream<Item = Result<rt::SubscribeTopicEventsRequestAlpha1, tonic::Status>> + Send + Unpin + 'static,
{
    let first = match incoming.next().await {
        Some(Ok(m)) => m,
        Some(Err(s)) => return Err(s),
        None => {
            return Err(tonic::Status::invalid_argument(
                "the stream closed before its initial request",
            ));
        }
    };
    let Some(ReqType::InitialRequest(init)) = first.subscribe_topic_events_request_type else {
        return Err(tonic::Status::invalid_argument(
            "initial request is required: the first message must be an initial_request",
        ));
    };
    if init.pubsub_name.is_empty() {
        return Err(tonic::Status::invalid_argument("pubsubName is required"));
    }
    if init.topic.is_empty() {
        return Err(tonic::Status::invalid_argument("topic is required"));
    }
    let sub = Subscription {
        pubsub: init.pubsub_name.clone(),
        topic: init.topic.clone(),
        metadata: init.metadata.into_iter().collect(),
        rules: Subscription::rules([], "/").map_err(tonic::Status::internal)?,
        dead_letter_topic: init.dead_letter_topic.filter(|t| !t.is_empty()),
        bulk: None,
        origin: Origin::Streaming,
    };
    let (tx, rx) = mpsc::channel(OUTBOX);
    let stream = Arc::new(Stream {
        tx,
        pending: Mutex::default(),
        started: CancellationToken::new(),
        closed: CancellationToken::new(),
    });
    subscriber
        .add_stream(sub, stream.clone())
        .await
        .map_err(tonic::Status::invalid_argument)?;
    let initial = rt::SubscribeTopicEventsResponseAlpha1 {
        subscribe_topic_events_response_type: Some(RespType::InitialResponse(
            rt::SubscribeTopicEventsResponseInitialAlpha1 {},
        )),
    };
    if stream.tx.send(Ok(initial)).await.is_err() {
        subscriber.remove_stream(&stream).await;
        return Err(tonic::Status::cancelled("the stream closed"));
    }
    stream.started.cancel();
    tracing::info!(pubsub = %init.pubsub_name, topic = %init.topic, "streaming subscription opened");
    let reader = stream.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                n = incoming.next() => n,
                _ = reader.closed.cancelled() => None,
            };
            match next {
                Some(Ok(m)) => match m.subscribe_topic_events_request_type {
                    Some(ReqType::EventProcessed(p)) => {
                        let status = p.status.map(|s| s.status).unwrap_or_default();
                        reader.answer(&p.id, status);
                    }
                    Some(ReqType::InitialRequest(_)) => {
                        reader.fail("duplicate initial request received".into());
                        break;
                    }
                    None => {}
                },
                Some(Err(_)) | None => break,
            }
        }
        reader.closed.cancel();
        subscriber.remove_stream(&reader).await;
        tracing::info!(pubsub = %init.pubsub_name, topic = %init.topic, "streaming subscription closed");
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
