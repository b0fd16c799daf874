//! The subscriptions a sidecar runs: the app's (declarative Subscription resources and what the app lists at
//! `GET /dapr/subscribe` or `ListTopicSubscriptions`), started once the app listens, and streaming ones opened
//! by the app over gRPC. They follow the component table (a replaced pub/sub component is subscribed again, a
//! removed one stops) and the app's health (paused while it is unhealthy); shutdown stops taking messages and
//! waits, within the grace period, for the deliveries in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::Method;
use tokio_util::sync::CancellationToken;

use super::PubSubApi;
use super::delivery::{Deliverer, Sink};
use super::routes::{Bulk, Origin, Subscription};
use crate::components::Kind;
use crate::components::pubsub::{Handler, PubSub, SubscribeRequest};
use crate::resiliency::{Direction, Resiliency};
use crate::sidecar::app_channel::{AppChannel, AppProtocol};
use crate::sidecar::components::{Change, ComponentTable};
use crate::sidecar::metadata::{SidecarMetadata, SubscriptionInfo};

/// Most subscriptions a sidecar runs (the app's and streaming ones together).
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// A subscription that is running.
struct Running {
    id: u64,
    sub: Subscription,
    sink: Sink,
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    /// The app's subscriptions (declarative and programmatic), once the app is ready.
    app: Vec<Subscription>,
    app_ready: bool,
    app_healthy: bool,
    /// Streaming subscriptions, by id, with their sinks: they outlive component replacement.
    streams: Vec<(u64, Subscription, Sink)>,
    running: Vec<Running>,
    next_id: u64,
}

pub struct Subscriber {
    table: Arc<ComponentTable>,
    publisher: PubSubApi,
    resiliency: Arc<Resiliency>,
    metadata: Arc<SidecarMetadata>,
    app: Option<Arc<AppChannel>>,
    grace: Duration,
    /// Start and stop run one at a time (they await the broker); never held across anything but that.
    state: tokio::sync::Mutex<State>,
    in_flight: Arc<AtomicUsize>,
    closing: CancellationToken,
}

/// Counts a delivery in flight while alive.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Subscriber {
    pub fn new(
        table: Arc<ComponentTable>,
        publisher: PubSubApi,
        resiliency: Arc<Resiliency>,
        metadata: Arc<SidecarMetadata>,
        app: Option<Arc<AppChannel>>,
        grace: Duration,
    ) -> Self {
        Subscriber {
            table,
            publisher,
            resiliency,
            metadata,
            app,
            grace,
            state: tokio::sync::Mutex::new(State {
                app_healthy: true,
                ..State::default()
            }),
            in_flight: Arc::default(),
            closing: CancellationToken::new(),
        }
    }

    /// Starts one subscription on its component (when loaded) and records it.
    async fn start(&self, state: &mut State, sub: Subscription, sink: Sink) -> Result<(), String> {
        if state.running.len() >= MAX_SUBSCRIPTIONS {
            return Err(format!("this sidecar already runs {MAX_SUBSCRIPTIONS} subscriptions"));
        }
        let Some(handle) = self.table.get::<dyn PubSub>(&sub.pubsub) else {
            return Err(format!("pubsub {} is not found", sub.pubsub));
        };
        let scopes = handle
            .component
            .settings::<super::TopicScopes>()
            .cloned()
            .unwrap_or_default();
        if !scopes.may_subscribe(&sub.topic) {
            return Err(format!(
                "subscribing to topic {} of pubsub {} is not allowed by its subscriptionScopes",
                sub.topic, sub.pubsub
            ));
        }
        let stop = self.closing.child_token();
        let deliverer = Arc::new(Deliverer {
            sub: sub.clone(),
            sink: sink.clone(),
            policy: self
                .resiliency
                .component_policy(&sub.pubsub, Kind::PubSub, Direction::Inbound),
            publisher: self.publisher.clone(),
            closing: stop.clone(),
            grace: self.grace,
        });
        let inner: Handler = match (&sub.bulk, &sink) {
            (Some(bulk), Sink::App(app)) => super::bulk::handler(deliverer, *bulk, app.clone()),
            _ => Arc::new(move |msg| Box::pin(deliverer.clone().handle(msg))),
        };
        let in_flight = self.in_flight.clone();
        let handler: Handler = Arc::new(move |msg| {
            in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = InFlight(in_flight.clone());
            let delivery = inner(msg);
            Box::pin(async move {
                let _guard = guard;
                delivery.await
            })
        });
        let req = SubscribeRequest {
            topic: sub.topic.clone(),
            metadata: sub.metadata.clone(),
        };
        handle
            .subscribe(req, handler, stop.clone())
            .await
            .map_err(|e| format!("subscribing to topic {} of pubsub {}: {e}", sub.topic, sub.pubsub))?;
        tracing::info!(pubsub = %sub.pubsub, topic = %sub.topic, kind = sub.origin.as_str(), "subscribed");
        state.next_id += 1;
        state.running.push(Running {
            id: state.next_id,
            sub,
            sink,
            stop,
        });
        Ok(())
    }

    /// Stops every running subscription `which` selects.
    fn stop_where(state: &mut State, which: impl Fn(&Running) -> bool) {
        state.running.retain(|r| {
            if which(r) {
                r.stop.cancel();
                false
            } else {
                true
            }
        });
    }

    /// Starts what should run and is not running: the app's subscriptions while the app is ready and healthy,
    /// every streaming one — each when its component is loaded.
    async fn reconcile(&self, state: &mut State) {
        let deliver_to_app = state.app_ready && state.app_healthy;
        let wanted: Vec<(Option<u64>, Subscription, Sink)> = {
            let mut w = vec![];
            if let (true, Some(app)) = (deliver_to_app, &self.app) {
                for s in &state.app {
                    w.push((None, s.clone(), Sink::App(app.clone())));
                }
            }
            for (id, s, sink) in &state.streams {
                w.push((Some(*id), s.clone(), sink.clone()));
            }
            w
        };
        for (stream_id, sub, sink) in wanted {
            let running = state.running.iter().any(|r| {
                r.sub.pubsub == sub.pubsub
                    && r.sub.topic == sub.topic
                    && r.sub.origin == sub.origin
                    && match (&r.sink, &sink) {
                        (Sink::Stream(a), Sink::Stream(b)) => Arc::ptr_eq(a, b),
                        (Sink::App(_), Sink::App(_)) => true,
                        _ => false,
                    }
            });
            if running || self.table.get::<dyn PubSub>(&sub.pubsub).is_none() {
                continue;
            }
            if let Err(e) = self.start(state, sub, sink.clone()).await {
                tracing::warn!("{e}");
                if let (Some(_), Sink::Stream(stream)) = (stream_id, &sink) {
                    stream.fail(e);
                }
            }
        }
        self.publish_metadata(state);
    }

    fn publish_metadata(&self, state: &State) {
        let mut infos: Vec<SubscriptionInfo> = state
            .app
            .iter()
            .chain(state.streams.iter().map(|(_, s, _)| s))
            .map(info)
            .collect();
        infos.dedup();
        self.metadata.set_subscriptions(infos);
    }

    /// The declarative subscriptions (at start, and again on each hot reload).
    pub async fn set_declarative(&self, declared: &[crate::api::Subscription]) {
        let mut subs = vec![];
        for d in declared {
            match Subscription::declarative(d) {
                Ok(s) => subs.push(s),
                Err(e) => {
                    tracing::error!(subscription = %d.metadata.name.as_deref().unwrap_or_default(), "skipping the subscription: {e}")
                }
            }
        }
        let mut state = self.state.lock().await;
        let merged = merge(of_origin(&state.app, Origin::Programmatic), subs);
        if merged.len() != state.app.len() || merged.iter().zip(&state.app).any(|(a, b)| !same(a, b)) {
            Self::stop_where(&mut state, |r| matches!(r.sink, Sink::App(_)));
            state.app = merged;
        }
        self.reconcile(&mut state).await;
    }

    /// Once the app listens: asks it for its subscriptions, and starts delivering.
    pub async fn app_ready(&self) {
        let programmatic = match &self.app {
            Some(app) => programmatic(app, &self.closing).await,
            None => vec![],
        };
        let mut state = self.state.lock().await;
        state.app = merge(programmatic, of_origin(&state.app, Origin::Declarative));
        state.app_ready = true;
        self.reconcile(&mut state).await;
    }

    /// Follows the component table and the app's health until shutdown.
    pub async fn follow(self: Arc<Self>) {
        let (_, mut changes) = self.table.subscribe();
        let mut health = self.app.as_ref().map(|a| a.health_changes());
        loop {
            let health_changed = async {
                match &mut health {
                    Some(h) => h.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.closing.cancelled() => return,
                change = changes.next() => {
                    let Some(change) = change else { return };
                    let mut state = self.state.lock().await;
                    match change {
                        Change::Replaced { kind: Kind::PubSub, name } | Change::Removed { kind: Kind::PubSub, name } => {
                            Self::stop_where(&mut state, |r| r.sub.pubsub == name);
                        }
                        Change::Resync => Self::stop_where(&mut state, |_| true),
                        _ => {}
                    }
                    self.reconcile(&mut state).await;
                }
                ok = health_changed => {
                    if !ok {
                        health = None;
                        continue;
                    }
                    let healthy = health.as_ref().is_some_and(|h| *h.borrow());
                    let mut state = self.state.lock().await;
                    state.app_healthy = healthy;
                    if healthy {
                        tracing::info!("the app is healthy: resuming its subscriptions");
                        self.reconcile(&mut state).await;
                    } else {
                        tracing::warn!("the app is unhealthy: pausing its subscriptions");
                        Self::stop_where(&mut state, |r| matches!(r.sink, Sink::App(_)));
                    }
                }
            }
        }
    }

    /// Adds a streaming subscription and starts it; it runs until [`Subscriber::remove_stream`].
    pub async fn add_stream(&self, sub: Subscription, stream: Arc<super::streaming::Stream>) -> Result<u64, String> {
        let mut state = self.state.lock().await;
        if self.closing.is_cancelled() {
            return Err("the sidecar is shutting down".into());
        }
        if self.table.get::<dyn PubSub>(&sub.pubsub).is_none() {
            return Err(format!("pubsub {} is not found", sub.pubsub));
        }
        let sink = Sink::Stream(stream);
        self.start(&mut state, sub.clone(), sink.clone()).await?;
        let id = state.next_id;
        state.streams.push((id, sub, sink));
        self.publish_metadata(&state);
        Ok(id)
    }

    pub async fn remove_stream(&self, stream: &Arc<super::streaming::Stream>) {
        let mut state = self.state.lock().await;
        state
            .streams
            .retain(|(_, _, s)| !matches!(s, Sink::Stream(x) if Arc::ptr_eq(x, stream)));
        Self::stop_where(
            &mut state,
            |r| matches!(&r.sink, Sink::Stream(x) if Arc::ptr_eq(x, stream)),
        );
        self.publish_metadata(&state);
    }

    /// Stops taking messages and waits, for at most the grace period, for the deliveries in flight.
    pub async fn shutdown(&self) {
        self.closing.cancel();
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.in_flight.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                left,
                "grace period over with deliveries still in flight; their messages stay with the brokers"
            );
        }
    }

    /// Running subscriptions, for tests and diagnostics: (pubsub, topic, origin).
    pub async fn running(&self) -> Vec<(String, String, Origin, u64)> {
        let state = self.state.lock().await;
        state
            .running
            .iter()
            .map(|r| (r.sub.pubsub.clone(), r.sub.topic.clone(), r.sub.origin, r.id))
            .collect()
    }
}

fn of_origin(subs: &[Subscription], origin: Origin) -> Vec<Subscription> {
    subs.iter().filter(|s| s.origin == origin).cloned().collect()
}

fn same(a: &Subscription, b: &Subscription) -> bool {
    a.pubsub == b.pubsub
        && a.topic == b.topic
        && a.metadata == b.metadata
        && a.dead_letter_topic == b.dead_letter_topic
        && a.bulk == b.bulk
        && a.rules.len() == b.rules.len()
        && a.rules
            .iter()
            .zip(&b.rules)
            .all(|(x, y)| x.source == y.source && x.path == y.path)
}

/// The app's subscriptions: programmatic first; a second subscription to the same pubsub and topic is skipped.
fn merge(programmatic: Vec<Subscription>, declarative: Vec<Subscription>) -> Vec<Subscription> {
    let mut out: Vec<Subscription> = vec![];
    for s in programmatic.into_iter().chain(declarative) {
        if out.iter().any(|o| o.pubsub == s.pubsub && o.topic == s.topic) {
            tracing::warn!(pubsub = %s.pubsub, topic = %s.topic, "the app subscribes to this topic twice; keeping the first subscription");
            continue;
        }
        out.push(s);
    }
    out.truncate(MAX_SUBSCRIPTIONS);
    out
}

fn info(s: &Subscription) -> SubscriptionInfo {
    SubscriptionInfo {
        pubsub: s.pubsub.clone(),
        topic: s.topic.clone(),
        metadata: s.metadata.clone(),
        rules: s.rules.iter().map(|r| (r.source.clone(), r.path.clone())).collect(),
        dead_letter_topic: s.dead_letter_topic.clone().unwrap_or_default(),
        type_: s.origin.as_str(),
    }
}

/// What an HTTP app answers at `GET /dapr/subscribe` (Dapr's `SubscriptionJSON`).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionJson {
    #[serde(default)]
    pubsubname: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    route: String,
    #[serde(default)]
    routes: RoutesJson,
    #[serde(default)]
    dead_letter_topic: String,
    #[serde(default)]
    bulk_subscribe: Option<BulkJson>,
}

#[derive(serde::Deserialize, Default)]
struct RoutesJson {
    #[serde(default)]
    rules: Vec<RuleJson>,
    #[serde(default)]
    default: String,
}

#[derive(serde::Deserialize)]
struct RuleJson {
    #[serde(default, rename = "match")]
    match_: String,
    #[serde(default)]
    path: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkJson {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    max_messages_count: i64,
    #[serde(default)]
    max_await_duration_ms: i64,
}

/// Parses the app's `/dapr/subscribe` answer; subscriptions without a route are skipped, as in Dapr.
pub fn parse_programmatic(body: &[u8]) -> Result<Vec<Subscription>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![]);
    }
    let items: Vec<SubscriptionJson> =
        serde_json::from_slice(body).map_err(|e| format!("error deserializing the app's subscriptions: {e}"))?;
    let mut out = vec![];
    for i in items {
        let default = if i.routes.default.is_empty() {
            i.route
        } else {
            i.routes.default
        };
        let rules = Subscription::rules(i.routes.rules.into_iter().map(|r| (r.match_, r.path)), &default)?;
        if rules.is_empty() {
            tracing::warn!(topic = %i.topic, "the app's subscription has no route; skipping it");
            continue;
        }
        out.push(Subscription {
            pubsub: i.pubsubname,
            topic: i.topic,
            metadata: i.metadata,
            rules,
            dead_letter_topic: Some(i.dead_letter_topic).filter(|t| !t.is_empty()),
            bulk: i
                .bulk_subscribe
                .filter(|b| b.enabled)
                .map(|b| Bulk::new(b.max_messages_count, b.max_await_duration_ms)),
            origin: Origin::Programmatic,
        });
    }
    Ok(out)
}

/// Asks the app for its subscriptions, retrying a few times while it cannot be reached.
async fn programmatic(app: &AppChannel, closing: &CancellationToken) -> Vec<Subscription> {
    for attempt in 0..5 {
        let ask = async {
            match app.protocol {
                AppProtocol::Http => match app
                    .call_http(
                        Method::GET,
                        "/dapr/subscribe",
                        bytes::Bytes::new(),
                        "application/json",
                        &[],
                        false,
                    )
                    .await
                {
                    Ok((200, body)) => parse_programmatic(&body),
                    Ok((404, _)) => Ok(vec![]),
                    Ok((status, _)) => {
                        tracing::error!(
                            status,
                            "app returned http status code {status} from subscription endpoint"
                        );
                        Ok(vec![])
                    }
                    Err(e) => Err(e.to_string()),
                },
                AppProtocol::Grpc => match app
                    .callback(
                        (),
                        &[],
                        false,
                        |mut c, r| async move { c.list_topic_subscriptions(r).await },
                    )
                    .await
                {
                    Ok(Ok(resp)) => grpc_subscriptions(resp),
                    Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Ok(vec![]),
                    Ok(Err(s)) => Err(format!("ListTopicSubscriptions: {}", s.message())),
                    Err(e) => Err(e.to_string()),
                },
            }
        };
        let got = match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(got) => got,
            Err(_) => Err("the app did not answer within 5s".to_owned()),
        };
        match got {
            Ok(subs) => return subs,
            Err(e) if attempt < 4 => {
                tracing::warn!("getting the app's subscriptions failed, trying again: {e}");
                tokio::select! {
                    _ = closing.cancelled() => return vec![],
                    _ = tokio::time::sleep(Duration::from_millis(500 << attempt)) => {}
                }
            }
            Err(e) => tracing::error!("getting the app's subscriptions failed: {e}"),
        }
    }
    vec![]
}

fn grpc_subscriptions(
    resp: dapr::dapr::proto::runtime::v1::ListTopicSubscriptionsResponse,
) -> Result<Vec<Subscription>, String> {
    let mut out = vec![];
    for s in resp.subscriptions {
        let (rules, default) = match s.routes {
            Some(r) => (
                r.rules.into_iter().map(|r| (r.r#match, r.path)).collect::<Vec<_>>(),
                r.default,
            ),
            None => (vec![], String::new()),
        };
        let mut rules = Subscription::rules(rules, &default)?;
        if rules.is_empty() {
            // A gRPC app that gives no route gets its events at "" (OnTopicEvent tells them apart by topic).
            rules = Subscription::rules([], "/")?;
            if let Some(r) = rules.first_mut() {
                r.path = String::new();
            }
        }
        out.push(Subscription {
            pubsub: s.pubsub_name,
            topic: s.topic,
            metadata: s.metadata.into_iter().collect(),
            rules,
            dead_letter_topic: Some(s.dead_letter_topic).filter(|t| !t.is_empty()),
            bulk: s
                .bulk_subscribe
                .filter(|b| b.enabled)
                .map(|b| Bulk::new(b.max_messages_count.into(), b.max_await_duration_ms.into())),
            origin: Origin::Programmatic,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_sdks_answer_at_dapr_subscribe() {
        let body = br#"[
            {"pubsubname":"pubsub","topic":"orders","route":"/orders"},
            {"pubsubname":"pubsub","topic":"a","routes":{"rules":[{"match":"event.type == \"x\"","path":"/x"}],"default":"/a"},
             "deadLetterTopic":"dead","metadata":{"rawPayload":"true"},"bulkSubscribe":{"enabled":true,"maxMessagesCount":5}},
            {"pubsubname":"pubsub","topic":"noroute"}
        ]"#;
        let subs = parse_programmatic(body).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].rules[0].path, "/orders");
        assert_eq!(subs[1].rules.len(), 2);
        assert_eq!(subs[1].dead_letter_topic.as_deref(), Some("dead"));
        assert_eq!(subs[1].bulk.unwrap().max_messages, 5);
        assert!(parse_programmatic(b"").unwrap().is_empty());
        assert!(parse_programmatic(b"{").is_err());
    }
}
