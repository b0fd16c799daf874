//! Hands orchestrator and activity work items to the workers connected by `GetWorkItems` streams: one shared
//! bounded queue, items in flight remembered per stream, and a stream that goes away puts its unfinished items
//! back at the front of the queue for another worker.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use dapr_durabletask_proto as pb;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// The most work items waiting for a worker; past it new work waits in the store (see `Workflows::kick`).
pub const MAX_QUEUE: usize = 50_000;

#[derive(Default)]
struct Queues {
    waiting: VecDeque<pb::WorkItem>,
    /// Items handed to a stream and not yet completed: token -> (stream, item).
    in_flight: HashMap<String, (u64, pb::WorkItem)>,
    next_stream: u64,
    streams: usize,
}

#[derive(Default)]
pub struct Dispatcher {
    queues: Mutex<Queues>,
    ready: Notify,
}

fn lock(m: &Mutex<Queues>) -> std::sync::MutexGuard<'_, Queues> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatcher {
    /// Queues `item` unless an item with its token is already queued or in flight; false when the queue is full.
    pub fn push(&self, item: pb::WorkItem) -> bool {
        let mut q = lock(&self.queues);
        if q.in_flight.contains_key(&item.completion_token)
            || q.waiting.iter().any(|w| w.completion_token == item.completion_token)
        {
            return true;
        }
        if q.waiting.len() >= MAX_QUEUE {
            return false;
        }
        q.waiting.push_back(item);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Forgets the item with `token` (it was completed); true when it was in flight or waiting.
    pub fn complete(&self, token: &str) -> bool {
        let mut q = lock(&self.queues);
        let was_in_flight = q.in_flight.remove(token).is_some();
        let before = q.waiting.len();
        q.waiting.retain(|w| w.completion_token != token);
        was_in_flight || q.waiting.len() != before
    }

    fn take(&self, stream: u64) -> Option<pb::WorkItem> {
        let mut q = lock(&self.queues);
        let item = q.waiting.pop_front()?;
        q.in_flight
            .insert(item.completion_token.clone(), (stream, item.clone()));
        Some(item)
    }

    fn open(&self) -> u64 {
        let mut q = lock(&self.queues);
        q.next_stream += 1;
        q.streams += 1;
        q.next_stream
    }

    /// Puts the unfinished items of `stream` back at the front of the queue.
    fn close(&self, stream: u64) {
        let mut q = lock(&self.queues);
        q.streams = q.streams.saturating_sub(1);
        let tokens: Vec<String> = q
            .in_flight
            .iter()
            .filter(|(_, (s, _))| *s == stream)
            .map(|(t, _)| t.clone())
            .collect();
        let mut back = 0;
        for t in tokens {
            if let Some((_, item)) = q.in_flight.remove(&t) {
                q.waiting.push_front(item);
                back += 1;
            }
        }
        drop(q);
        if back > 0 {
            tracing::info!(
                back,
                "a workflow worker disconnected; its unfinished work items are queued again"
            );
            self.ready.notify_one();
        }
    }

    /// Feeds work items to one connected worker through `tx` until the worker goes away or `shutdown`.
    pub async fn serve(&self, tx: mpsc::Sender<Result<pb::WorkItem, tonic::Status>>, shutdown: CancellationToken) {
        let stream = self.open();
        'outer: loop {
            let permit = tokio::select! {
                p = tx.reserve() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let item = loop {
                let ready = self.ready.notified();
                tokio::pin!(ready);
                ready.as_mut().enable();
                if let Some(item) = self.take(stream) {
                    break item;
                }
                tokio::select! {
                    _ = ready => {}
                    _ = tx.closed() => break 'outer,
                    _ = shutdown.cancelled() => break 'outer,
                }
            };
            permit.send(Ok(item));
            // Another item may be waiting for another worker.
            self.ready.notify_one();
        }
        self.close(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn item(token: &str) -> pb::WorkItem {
        pb::WorkItem {
            completion_token: token.into(),
            request: Some(pb::work_item::Request::HealthPing(pb::HealthPing {})),
        }
    }

    #[tokio::test]
    async fn a_worker_that_leaves_gives_its_items_to_the_next_worker() {
        let d = Arc::new(Dispatcher::default());
        assert!(d.push(item("a")));
        assert!(d.push(item("a")), "a duplicate token is accepted once");
        assert!(d.push(item("b")));
        let (tx, mut rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let first = tokio::spawn({
            let d = d.clone();
            let stop = stop.clone();
            async move { d.serve(tx, stop).await }
        });
        assert_eq!(rx.recv().await.unwrap().unwrap().completion_token, "a");
        drop(rx);
        first.await.unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn({
            let d = d.clone();
            async move { d.serve(tx, stop).await }
        });
        let mut got = vec![
            rx.recv().await.unwrap().unwrap().completion_token,
            rx.recv().await.unwrap().unwrap().completion_token,
        ];
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert!(d.complete("a"));
        assert!(!d.complete("a"), "a completed item is forgotten");
    }
}
