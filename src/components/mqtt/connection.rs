//! One MQTT 3.1.1 connection (rumqttc's event loop, polled by a task of its own) with what rumqttc leaves to its
//! user: a publish is confirmed only by its PUBACK; a received QoS 1 message is acknowledged only once a handler
//! took it, and never acknowledged twice; the connection comes back with backoff, and subscriptions come back
//! with it when the broker lost the session.
//!
//! rumqttc tells which packet id an outgoing request got only through its events, in the order the requests
//! entered its channel. So every tracked request (a QoS 1/2 publish, a SUBSCRIBE) is recorded in `sent` while the
//! state lock is held and handed to the channel without waiting (`try_*`); each `Outgoing` event then names the
//! oldest one. When the connection drops, rumqttc moves what was still in its channel to its `pending` list
//! (retransmitted first, and cleared when the broker lost the session), which the task counts into `drained`.
//!
//! Received messages are keyed by packet id and connection generation (see `inbound`): acknowledged once taken,
//! on the connection they came on, never twice; parked unacknowledged while no subscription takes them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS, Request, StateError, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inbound::InboundEntry;
use super::{BrokerUrl, Filter, Redelivery, check_topic};
use crate::components::pubsub::Nack;

/// Keep-alive interval (paho's, Dapr's client, default).
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long connecting, a publish and a subscribe wait for the broker (Dapr's `defaultWait`).
pub const WAIT: Duration = Duration::from_secs(20);
/// Requests queued for the event loop.
const CHANNEL_CAPACITY: usize = 64;
/// Largest packet sent or received.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Publishes waiting for the broker's confirmation at once, per connection.
const MAX_PUBLISHES: usize = 256;
/// Received messages with a handler at once, per connection (the broker's in-flight window is usually smaller).
const MAX_DELIVERIES: usize = 1024;
/// Received messages held for a subscription that does not exist (yet).
pub(super) const MAX_PARKED: usize = 256;
/// rumqttc's window of outgoing packet ids: wide, so ids are not reused while a publish waits.
const PACKET_IDS: u16 = 10_000;
/// A connection that lasted this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(30);

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: BrokerUrl,
    pub client_id: String,
    pub clean_session: bool,
    /// The QoS subscriptions ask for.
    pub subscribe_qos: QoS,
}

/// A message as the broker delivered it.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub retained: bool,
}

/// Hands one message to the app; `Ok` means it took it.
pub type Deliver = Arc<dyn Fn(Received) -> BoxFuture<'static, Result<(), Nack>> + Send + Sync>;

/// A subscription: its filter, where its messages go and how they are retried.
pub struct Route {
    pub filter: Filter,
    pub deliver: Deliver,
    pub redelivery: Redelivery,
    pub stop: CancellationToken,
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// A request handed to the event loop whose packet id an `Outgoing` event will tell.
enum Tracked {
    Publish(Waiter),
    Subscribe(Vec<String>),
}

#[derive(Default)]
pub(super) struct State {
    pub(super) connected: bool,
    /// Counts CONNACKs.
    pub(super) generation: u64,
    next_id: u64,
    /// Handed to the event loop's channel, no `Outgoing` event yet, oldest first.
    sent: VecDeque<Tracked>,
    /// Moved from the channel to rumqttc's `pending` list by a disconnection; go out before `sent`.
    drained: VecDeque<Tracked>,
    /// Publishes out, waiting for PUBACK (QoS 1) or PUBREC (QoS 2), by packet id.
    awaiting: HashMap<u16, Waiter>,
    /// A publish rumqttc holds back until the publish using its packet id is acknowledged.
    collided: Option<(u16, Waiter)>,
    /// SUBSCRIBEs out, waiting for SUBACK: their filters.
    subscribing: HashMap<u16, Vec<String>>,
    /// Filters whose SUBSCRIBE went out on a connection that dropped before the SUBACK.
    unconfirmed: Vec<String>,
    /// Callers waiting for a filter's SUBACK.
    sub_waiters: HashMap<String, Vec<Waiter>>,
    pub(super) routes: Vec<(u64, Arc<Route>)>,
    /// Received QoS 1/2 messages not acknowledged, by packet id.
    pub(super) inbound: HashMap<u16, InboundEntry>,
}

impl State {
    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn next_tracked(&mut self) -> Option<Tracked> {
        self.drained.pop_front().or_else(|| self.sent.pop_front())
    }

    /// Our record of rumqttc's requests disagrees with its events: fail whatever waits, rather than confirm the
    /// wrong publish.
    fn lost_track(&mut self, event: &str) {
        tracing::error!(
            "mqtt: the {event} event matches no request handed to the client; failing the requests in flight"
        );
        self.fail_outgoing("the MQTT client lost track of the request; it may or may not have been sent");
    }

    fn fail_outgoing(&mut self, why: &str) {
        let tracked = self.drained.drain(..).chain(self.sent.drain(..)).collect::<Vec<_>>();
        for t in tracked {
            if let Tracked::Publish(w) = t {
                let _ = w.send(Err(why.to_owned()));
            }
        }
        for (_, w) in self.awaiting.drain() {
            let _ = w.send(Err(why.to_owned()));
        }
        if let Some((_, w)) = self.collided.take() {
            let _ = w.send(Err(why.to_owned()));
        }
    }
}

enum Status {
    Connecting(Option<String>),
    Connected,
    Closed,
}

pub(super) struct Shared {
    pub(super) client: AsyncClient,
    client_id: String,
    subscribe_qos: QoS,
    state: Mutex<State>,
    publishes: Semaphore,
    pub(super) deliveries: Arc<Semaphore>,
    pub(super) closed: CancellationToken,
}

/// An open connection; dropping it closes it.
pub struct Connection {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Connection {
    /// Connects, waiting up to [`WAIT`] for the broker to accept; reconnects by itself afterwards.
    pub async fn open(settings: Settings) -> Result<Connection, String> {
        let url = &settings.url;
        let mut options = MqttOptions::new(settings.client_id.clone(), url.host.clone(), url.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(settings.clean_session)
            .set_manual_acks(true)
            .set_inflight(PACKET_IDS)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(user) = &url.username {
            options.set_credentials(user.clone(), url.password.clone().unwrap_or_default());
        }
        let (client, mut eventloop) = AsyncClient::new(options, CHANNEL_CAPACITY);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(10);
        // Without it, a QoS 1 publish can wait for the delayed ACK of the one before (about 40 ms on Linux).
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let shared = Arc::new(Shared {
            client,
            client_id: settings.client_id.clone(),
            subscribe_qos: settings.subscribe_qos,
            state: Mutex::default(),
            publishes: Semaphore::new(MAX_PUBLISHES),
            deliveries: Arc::new(Semaphore::new(MAX_DELIVERIES)),
            closed: CancellationToken::new(),
        });
        let (status_tx, mut status) = watch::channel(Status::Connecting(None));
        let task = tokio::spawn(run(shared.clone(), eventloop, status_tx));
        let connection = Connection {
            shared,
            task: Mutex::new(Some(task)),
        };
        let connected = tokio::time::timeout(
            WAIT,
            status.wait_for(|s| matches!(s, Status::Connected | Status::Closed)),
        )
        .await
        .is_ok_and(|s| s.is_ok_and(|s| matches!(*s, Status::Connected)));
        if connected {
            return Ok(connection);
        }
        let why = match &*status.borrow() {
            Status::Connecting(Some(e)) => e.clone(),
            _ => format!("no answer within {WAIT:?}"),
        };
        connection.close().await;
        Err(format!(
            "failed to establish connection to broker {}:{} as client {:?}: {why}",
            url.host, url.port, settings.client_id
        ))
    }

    /// Publishes and, for QoS 1 and 2, waits for the broker to confirm (PUBACK, PUBREC) for up to [`WAIT`].
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Result<(), String> {
        check_topic(topic)?;
        if topic.len() + payload.len() + 16 > MAX_PACKET {
            return Err(format!(
                "the message is {} bytes; tandem's MQTT packets are limited to {MAX_PACKET} bytes",
                payload.len()
            ));
        }
        let sh = &self.shared;
        let deadline = Instant::now() + WAIT;
        let send = |c: &AsyncClient| c.try_publish(topic, qos, retain, payload.to_vec()).is_ok();
        if qos == QoS::AtMostOnce {
            return sh.send(None, send, Some(deadline)).await;
        }
        let _permit = tokio::time::timeout_at(deadline, sh.publishes.acquire())
            .await
            .map_err(|_| format!("{MAX_PUBLISHES} publishes are waiting for the broker already"))?;
        let (tx, rx) = oneshot::channel();
        sh.send(Some(Tracked::Publish(tx)), send, Some(deadline)).await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the connection closed before the broker confirmed the message".into()),
            Err(_) => Err(format!("the broker did not confirm the message within {WAIT:?}")),
        }
    }

    /// Subscribes and returns once the broker confirmed (SUBACK). Messages go to `route` until its `stop` is
    /// cancelled; then they are left unacknowledged, and with `unsubscribe_on_stop` an UNSUBSCRIBE is sent.
    pub async fn subscribe(&self, route: Route, unsubscribe_on_stop: bool) -> Result<(), String> {
        let sh = &self.shared;
        if sh.closed.is_cancelled() {
            return Err("the connection is closed".into());
        }
        // A token of our own, so a failed subscribe can retire the route without touching the caller's.
        let stop = route.stop.child_token();
        let route = Arc::new(Route {
            stop: stop.clone(),
            ..route
        });
        let filter = route.filter.subscribed.clone();
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut s = sh.lock();
            let id = s.next_id();
            s.routes.push((id, route.clone()));
            s.sub_waiters.entry(filter.clone()).or_default().push(tx);
            id
        };
        let confirmed = async {
            sh.send_subscribe(vec![filter.clone()], Some(Instant::now() + WAIT))
                .await?;
            match tokio::time::timeout(WAIT, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err("the connection closed before the broker confirmed the subscription".into()),
                Err(_) => Err(format!("the broker did not confirm the subscription within {WAIT:?}")),
            }
        }
        .await;
        if let Err(e) = confirmed {
            stop.cancel();
            sh.lock().routes.retain(|(i, _)| *i != id);
            return Err(format!("subscribing to {filter:?}: {e}"));
        }
        sh.hand_parked_to(&route);
        let sh = sh.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = sh.closed.cancelled() => return,
            }
            let last = {
                let mut s = sh.lock();
                s.routes.retain(|(i, _)| *i != id);
                !s.routes.iter().any(|(_, r)| r.filter.subscribed == filter)
            };
            if unsubscribe_on_stop && last {
                let _ = sh
                    .send(
                        None,
                        |c| c.try_unsubscribe(filter.clone()).is_ok(),
                        Some(Instant::now() + WAIT),
                    )
                    .await;
            }
        });
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Disconnects (the broker keeps a persistent session, with what was not acknowledged) and stops.
    pub async fn close(&self) {
        self.shared.closed.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a request to the event loop without waiting in its channel: `tracked` is recorded and `send` tried
    /// under the state lock, so the record and the channel keep one order. A full channel is tried again.
    async fn send(
        &self,
        mut tracked: Option<Tracked>,
        send: impl Fn(&AsyncClient) -> bool,
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        loop {
            if self.closed.is_cancelled() {
                return Err("the connection is closed".into());
            }
            {
                let mut s = self.lock();
                let recorded = match tracked.take() {
                    Some(t) => {
                        s.sent.push_back(t);
                        true
                    }
                    None => false,
                };
                if send(&self.client) {
                    return Ok(());
                }
                if recorded {
                    tracked = s.sent.pop_back();
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err("the MQTT client's request queue stayed full".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn send_subscribe(&self, filters: Vec<String>, deadline: Option<Instant>) -> Result<(), String> {
        let request: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), self.subscribe_qos))
            .collect();
        self.send(
            Some(Tracked::Subscribe(filters)),
            |c| c.try_subscribe_many(request.clone()).is_ok(),
            deadline,
        )
        .await
    }

    /// Records what an event says about tracked requests.
    fn track(&self, event: Event) {
        let mut s = self.lock();
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if s.awaiting.contains_key(&pkid) {
                    return; // sent again after a reconnection
                }
                if let Some((p, w)) = s.collided.take() {
                    if p == pkid {
                        s.awaiting.insert(p, w);
                        return;
                    }
                    s.collided = Some((p, w));
                }
                match s.next_tracked() {
                    Some(Tracked::Publish(w)) => {
                        s.awaiting.insert(pkid, w);
                    }
                    _ => s.lost_track("publish"),
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => match s.next_tracked() {
                Some(Tracked::Publish(w)) => s.collided = Some((pkid, w)),
                _ => s.lost_track("held-back publish"),
            },
            Event::Outgoing(Outgoing::Subscribe(pkid)) => match s.next_tracked() {
                Some(Tracked::Subscribe(filters)) => {
                    s.subscribing.insert(pkid, filters);
                }
                _ => s.lost_track("subscribe"),
            },
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(w) = s.awaiting.remove(&ack.pkid) {
                    let _ = w.send(Ok(()));
                }
            }
            Event::Incoming(Packet::PubRec(rec)) => {
                if let Some(w) = s.awaiting.remove(&rec.pkid) {
                    let _ = w.send(Ok(()));
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let Some(filters) = s.subscribing.remove(&ack.pkid) else {
                    return;
                };
                for (i, filter) in filters.iter().enumerate() {
                    let result = match ack.return_codes.get(i) {
                        Some(SubscribeReasonCode::Success(_)) => Ok(()),
                        _ => Err(format!("the broker refused the subscription to {filter:?}")),
                    };
                    for w in s.sub_waiters.remove(filter).unwrap_or_default() {
                        let _ = w.send(result.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// CONNACK: a new generation; without the session, what was in flight is gone and every subscription is made
    /// again, with it, SUBSCRIBEs the last connection left unconfirmed are sent again.
    fn connected(self: &Arc<Self>, session_present: bool) {
        let resend = {
            let mut s = self.lock();
            s.connected = true;
            s.generation += 1;
            let mut resend = std::mem::take(&mut s.unconfirmed);
            if !session_present {
                let lost = std::mem::take(&mut s.drained);
                for t in lost {
                    if let Tracked::Publish(w) = t {
                        let _ = w.send(Err("the broker lost the session before taking the message".into()));
                    }
                }
                for (_, w) in s.awaiting.drain() {
                    let _ = w.send(Err(
                        "the broker lost the session before confirming the message; it may or may not have been published"
                            .into(),
                    ));
                }
                s.inbound.clear();
                resend = s.routes.iter().map(|(_, r)| r.filter.subscribed.clone()).collect();
            }
            resend.sort();
            resend.dedup();
            resend
        };
        if !resend.is_empty() {
            let sh = self.clone();
            tokio::spawn(async move {
                if let Err(e) = sh.send_subscribe(resend, None).await {
                    tracing::warn!(client = %sh.client_id, "subscribing again after reconnecting failed: {e}");
                }
            });
        }
    }

    /// The connection dropped: rumqttc moved its channel's requests to `pending`; count the tracked ones.
    fn disconnected(&self, eventloop: &mut EventLoop) {
        let mut s = self.lock();
        s.connected = false;
        let unconfirmed: Vec<String> = s.subscribing.drain().flat_map(|(_, f)| f).collect();
        s.unconfirmed.extend(unconfirmed);
        // A held-back publish is not in `pending`: it was never sent; its caller learns so.
        if eventloop.state.collision.take().is_some()
            && let Some((_, w)) = s.collided.take()
        {
            let _ = w.send(Err("the connection dropped before the message could be sent".into()));
        }
        let unsent = eventloop
            .pending
            .iter()
            .filter(|r| match r {
                Request::Publish(p) => p.qos != QoS::AtMostOnce && p.pkid == 0,
                Request::Subscribe(_) => true,
                _ => false,
            })
            .count();
        let new = unsent.checked_sub(s.drained.len());
        match new {
            Some(n) if n <= s.sent.len() => {
                for _ in 0..n {
                    if let Some(t) = s.sent.pop_front() {
                        s.drained.push_back(t);
                    }
                }
            }
            _ => s.lost_track("disconnect"),
        }
    }

    /// The task ended: nothing in flight will be confirmed.
    fn shut_down(&self) {
        let mut s = self.lock();
        s.connected = false;
        s.fail_outgoing("the connection is closed");
        s.sub_waiters.clear();
        s.routes.clear();
    }
}

/// Polls the event loop until the connection is closed, reconnecting with backoff.
async fn run(sh: Arc<Shared>, mut eventloop: EventLoop, status: watch::Sender<Status>) {
    let (mut failures, mut kicked) = (0u32, 0u32);
    let mut connected_at: Option<Instant> = None;
    let mut closing: Option<Instant> = None;
    loop {
        let polled = match closing {
            None => tokio::select! {
                _ = sh.closed.cancelled() => {
                    if connected_at.is_none() {
                        break;
                    }
                    // DISCONNECT goes out after what is queued (acknowledgements included).
                    let _ = sh.client.try_disconnect();
                    closing = Some(Instant::now() + Duration::from_secs(2));
                    continue;
                }
                polled = eventloop.poll() => polled,
            },
            Some(deadline) => match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(polled) => polled,
                Err(_) => break,
            },
        };
        match polled {
            Ok(Event::Outgoing(Outgoing::Disconnect)) if closing.is_some() => break,
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Some(Instant::now());
                sh.connected(ack.session_present);
                tracing::debug!(client = %sh.client_id, session_present = ack.session_present, "connected to the MQTT broker");
                status.send_replace(Status::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if closing.is_none() {
                    sh.incoming(p).await;
                }
            }
            Ok(event) => sh.track(event),
            Err(e) => {
                if closing.is_some() {
                    break;
                }
                sh.disconnected(&mut eventloop);
                let lived = connected_at.take().map(|t| t.elapsed());
                if lived.is_some_and(|l| l >= STABLE) {
                    (failures, kicked) = (0, 0);
                }
                match lived {
                    Some(l) if l < STABLE && closed_by_broker(&e) => kicked += 1,
                    Some(_) => kicked = 0,
                    None => {}
                }
                failures = failures.saturating_add(1);
                let delay = reconnect_delay(failures, kicked >= 2);
                let why = describe(&e);
                if kicked >= 2 {
                    tracing::warn!(client = %sh.client_id, "the broker keeps closing the connection soon after accepting it: most likely another client connects with the same client id (MQTT allows one connection per id; give each replica its own consumerID). Reconnecting in {delay:?}");
                } else if lived.is_some() {
                    tracing::warn!(client = %sh.client_id, "connection to the MQTT broker lost ({why}); reconnecting in {delay:?}");
                } else {
                    tracing::debug!(client = %sh.client_id, "connecting to the MQTT broker failed ({why}); retrying in {delay:?}");
                }
                status.send_replace(Status::Connecting(Some(why)));
                tokio::select! {
                    _ = sh.closed.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    sh.shut_down();
    status.send_replace(Status::Closed);
}

/// 250 ms doubling per failure, up to 30 s — or up to 2 min while another client takes the id over and over.
fn reconnect_delay(failures: u32, contended: bool) -> Duration {
    let cap = if contended {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    };
    Duration::from_millis(250)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(cap)
}

fn closed_by_broker(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadClientId => "the broker refused the client id".into(),
            ConnectReturnCode::BadUserNamePassword => "the broker refused the user name or password".into(),
            ConnectReturnCode::NotAuthorized => "the broker refused: not authorized".into(),
            ConnectReturnCode::ServiceUnavailable => "the broker is unavailable".into(),
            ConnectReturnCode::RefusedProtocolVersion => "the broker does not speak MQTT 3.1.1".into(),
            ConnectReturnCode::Success => "connection refused".into(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_to_a_ceiling() {
        assert_eq!(reconnect_delay(1, false), Duration::from_millis(250));
        assert_eq!(reconnect_delay(3, false), Duration::from_secs(1));
        assert_eq!(reconnect_delay(40, false), Duration::from_secs(30));
        assert_eq!(reconnect_delay(40, true), Duration::from_secs(120));
    }

    #[test]
    fn a_closed_socket_reads_as_the_broker_closing() {
        assert!(closed_by_broker(&ConnectionError::MqttState(
            StateError::ConnectionAborted
        )));
        assert!(!closed_by_broker(&ConnectionError::NetworkTimeout));
    }
}
