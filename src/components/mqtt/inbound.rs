//! The received side of a connection: messages by packet id and connection generation, handed to their
//! subscription (again while it asks to retry), acknowledged once taken on the connection they came on, and
//! parked, unacknowledged, when no subscription takes them.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Publish, QoS};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::connection::{MAX_PARKED, Received, Route, Shared, State};
use crate::components::pubsub::Nack;

pub(super) enum Inbound {
    /// With a handler.
    Running,
    /// The handler took it while the connection it came on was down: acknowledged when it comes again.
    Taken,
    /// Not taken by anyone (yet); unacknowledged.
    Parked(Publish),
}

pub(super) struct InboundEntry {
    id: u64,
    generation: u64,
    qos: QoS,
    state: Inbound,
}

impl State {
    /// The subscription for `topic`: one subscribed to exactly it, else the first whose filter matches.
    pub(super) fn route_for(&self, topic: &str) -> Option<Arc<Route>> {
        let live = || self.routes.iter().filter(|(_, r)| !r.stop.is_cancelled());
        live()
            .find(|(_, r)| r.filter.matcher == topic)
            .or_else(|| live().find(|(_, r)| r.filter.matches(topic)))
            .map(|(_, r)| r.clone())
    }

    fn parked(&self) -> usize {
        self.inbound
            .values()
            .filter(|e| matches!(e.state, Inbound::Parked(_)))
            .count()
    }

    /// Holds `p` unacknowledged for a later subscription, unless too many are held already (then it stays
    /// with the broker only, sent again on the next connection).
    pub(super) fn park(&mut self, id: u64, generation: u64, p: Publish) {
        if self.parked() >= MAX_PARKED {
            tracing::warn!(topic = %p.topic, "{MAX_PARKED} received messages wait for a subscription already; this one stays unacknowledged until the next connection");
            self.inbound.remove(&p.pkid);
            return;
        }
        self.inbound.insert(
            p.pkid,
            InboundEntry {
                id,
                generation,
                qos: p.qos,
                state: Inbound::Parked(p),
            },
        );
    }
}

impl Shared {
    /// A message arrived.
    pub(super) async fn incoming(self: &Arc<Self>, p: Publish) {
        let Ok(permit) = self.deliveries.clone().acquire_owned().await else {
            return;
        };
        if p.qos == QoS::AtMostOnce {
            match self.lock().route_for(&p.topic) {
                Some(route) => {
                    tokio::spawn(self.clone().deliver(route, None, p, permit));
                }
                None => tracing::debug!(topic = %p.topic, "no subscription takes this QoS 0 message; dropped"),
            }
            return;
        }
        let mut s = self.lock();
        let generation = s.generation;
        if p.dup
            && let Some(e) = s.inbound.get_mut(&p.pkid)
        {
            // The broker sends again a message we hold: it is acknowledged on this connection.
            e.generation = generation;
            match &mut e.state {
                Inbound::Running => {}
                Inbound::Parked(old) => *old = p,
                Inbound::Taken => {
                    let (sh, id) = (self.clone(), e.id);
                    tokio::spawn(async move { sh.finish(p.pkid, id, None).await });
                }
            }
            return;
        }
        let id = s.next_id();
        match s.route_for(&p.topic) {
            Some(route) => {
                s.inbound.insert(
                    p.pkid,
                    InboundEntry {
                        id,
                        generation,
                        qos: p.qos,
                        state: Inbound::Running,
                    },
                );
                drop(s);
                tokio::spawn(self.clone().deliver(route, Some(id), p, permit));
            }
            None => s.park(id, generation, p),
        }
    }

    /// Hands the messages parked for lack of a subscription to `route`, when it matches them.
    pub(super) fn hand_parked_to(self: &Arc<Self>, route: &Arc<Route>) {
        let mut s = self.lock();
        let mut taken = vec![];
        for e in s.inbound.values_mut() {
            if let Inbound::Parked(p) = &e.state
                && route.filter.matches(&p.topic)
            {
                let Inbound::Parked(p) = std::mem::replace(&mut e.state, Inbound::Running) else {
                    continue;
                };
                taken.push((e.id, p));
            }
        }
        drop(s);
        for (id, p) in taken {
            let (sh, route) = (self.clone(), route.clone());
            tokio::spawn(async move {
                if let Ok(permit) = sh.deliveries.clone().acquire_owned().await {
                    sh.deliver(route, Some(id), p, permit).await;
                }
            });
        }
    }

    /// Gives `p` to the route's handler, again while it asks to retry, then acknowledges or parks it.
    async fn deliver(self: Arc<Self>, route: Arc<Route>, id: Option<u64>, p: Publish, permit: OwnedSemaphorePermit) {
        let msg = Received {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            retained: p.retain,
        };
        let taken = hand_over(&route, msg, &self.closed).await;
        drop(permit);
        if let Some(id) = id {
            self.finish(p.pkid, id, (!taken).then_some(p)).await;
        }
    }

    /// The end of delivery `id` of packet `pkid`: acknowledged if taken (`left` is `None`) on the connection it
    /// came on, otherwise parked. A packet id that now names a newer message is left alone.
    async fn finish(&self, pkid: u16, id: u64, mut left: Option<Publish>) {
        loop {
            {
                let mut s = self.lock();
                let (connected, generation) = (s.connected, s.generation);
                let Some(e) = s.inbound.get_mut(&pkid) else { return };
                if e.id != id {
                    return;
                }
                if let Some(p) = left.take() {
                    let (id, generation) = (e.id, e.generation);
                    s.inbound.remove(&pkid);
                    s.park(id, generation, p);
                    return;
                }
                if !connected || e.generation != generation {
                    e.state = Inbound::Taken;
                    return;
                }
                let mut ack = Publish::new("", e.qos, Vec::new());
                ack.pkid = pkid;
                if self.client.try_ack(&ack).is_ok() {
                    s.inbound.remove(&pkid);
                    return;
                }
            }
            // The event loop's channel is full: try again shortly.
            if self.closed.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Hands `msg` to the route's handler until it takes it, the retries run out or the subscription stops; answers
/// whether it was taken.
async fn hand_over(route: &Route, msg: Received, closed: &CancellationToken) -> bool {
    let mut attempt = 0u32;
    loop {
        if route.stop.is_cancelled() || closed.is_cancelled() {
            return false;
        }
        match (route.deliver)(msg.clone()).await {
            Ok(()) => return true,
            Err(Nack::Closing) => return false,
            Err(Nack::Retry(why)) => {
                if route.redelivery.max_retries.is_some_and(|max| attempt >= max) {
                    tracing::warn!(topic = %msg.topic, "the message was not taken after {attempt} retries ({why}); it stays unacknowledged until the next connection");
                    return false;
                }
                let delay = route.redelivery.delay(attempt);
                attempt += 1;
                tracing::debug!(topic = %msg.topic, %why, "handing the message over again in {delay:?}");
                tokio::select! {
                    _ = route.stop.cancelled() => return false,
                    _ = closed.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
