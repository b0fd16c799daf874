//! The component table: lookups by kind, atomic replacement, draining before close, the change feed, close-all.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::*;
use crate::components::secretstores::SecretStore;
use crate::components::state::memory::MemoryStore;
use crate::components::state::{DeleteRequest, Feature, SetRequest, StateError, StateItem, StateStore};

/// A state store that counts its closes.
struct Closing {
    inner: MemoryStore,
    closed: Arc<AtomicUsize>,
}

#[async_trait]
impl StateStore for Closing {
    fn features(&self) -> &'static [Feature] {
        self.inner.features()
    }
    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        self.inner.get(key).await
    }
    async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
        self.inner.set(req).await
    }
    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
        self.inner.delete(req).await
    }
    async fn close(&self) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

fn state(name: &str, closed: &Arc<AtomicUsize>) -> Loaded {
    let store: Arc<dyn StateStore> = Arc::new(Closing {
        inner: MemoryStore::default(),
        closed: closed.clone(),
    });
    Loaded::new(
        Component::new(name, "state.in-memory", &[]),
        Metadata::new(name, "app", "", []),
        Instance::new(store),
    )
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2s: {what}");
}

#[tokio::test]
async fn lookups_are_by_kind_and_name() {
    let table = ComponentTable::default();
    let closed = Arc::new(AtomicUsize::new(0));
    assert!(table.is_empty(Kind::State));
    table.insert(state("s", &closed));
    assert!(table.get::<dyn StateStore>("s").is_some());
    assert!(
        table.get::<dyn SecretStore>("s").is_none(),
        "a state store is no secret store"
    );
    assert!(table.get::<dyn StateStore>("t").is_none());
    assert!(!table.is_empty(Kind::State) && table.is_empty(Kind::SecretStore));
}

#[tokio::test]
async fn a_replaced_component_serves_its_requests_then_closes() {
    let table = ComponentTable::new(Duration::from_secs(30));
    let (old_closed, new_closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    table.insert(state("s", &old_closed));
    let in_flight = table.get::<dyn StateStore>("s").unwrap();
    table.insert(state("s", &new_closed));
    // New lookups get the new store at once; the request holding the old one keeps a working store.
    let now = table.get::<dyn StateStore>("s").unwrap();
    assert!(!Arc::ptr_eq(&now.component, &in_flight.component));
    assert_eq!(in_flight.get("k").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(old_closed.load(Ordering::SeqCst), 0, "closed while a request held it");
    drop(in_flight);
    eventually("the old store closed", || old_closed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(new_closed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn listings_keep_load_order_across_replacements() {
    let table = ComponentTable::default();
    let closed = Arc::new(AtomicUsize::new(0));
    for n in ["b", "a", "c"] {
        table.insert(state(n, &closed));
    }
    table.insert(state("b", &closed));
    let names: Vec<String> = table.list().iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["b", "a", "c"]);
}

#[tokio::test]
async fn followers_see_every_change() {
    let table = ComponentTable::default();
    let closed = Arc::new(AtomicUsize::new(0));
    table.insert(state("before", &closed));
    let (now, mut feed) = table.subscribe();
    assert_eq!(now.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["before"]);
    table.insert(state("s", &closed));
    table.insert(state("s", &closed));
    assert!(table.remove(Kind::State, "s"));
    assert!(!table.remove(Kind::State, "s"));
    let (kind, name) = (Kind::State, "s".to_owned());
    assert_eq!(
        feed.next().await,
        Some(Change::Added {
            kind,
            name: name.clone()
        })
    );
    assert_eq!(
        feed.next().await,
        Some(Change::Replaced {
            kind,
            name: name.clone()
        })
    );
    assert_eq!(feed.next().await, Some(Change::Removed { kind, name }));
}

#[tokio::test]
async fn a_follower_that_falls_behind_is_told_to_resync() {
    let table = ComponentTable::default();
    let closed = Arc::new(AtomicUsize::new(0));
    let (_, mut feed) = table.subscribe();
    for i in 0..(FEED_CAPACITY + 10) {
        table.insert(state(&format!("s{i}"), &closed));
    }
    assert_eq!(feed.next().await, Some(Change::Resync));
}

#[tokio::test]
async fn close_all_closes_every_component_and_the_retiring_ones() {
    let table = ComponentTable::new(Duration::from_secs(3600));
    let closed = Arc::new(AtomicUsize::new(0));
    table.insert(state("a", &closed));
    table.insert(state("b", &closed));
    let held = table.get::<dyn StateStore>("a").unwrap();
    table.insert(state("a", &closed));
    let (_, mut feed) = table.subscribe();
    // The replaced `a` waits for `held` (for up to an hour); shutdown does not.
    table.close_all(Duration::from_secs(5)).await;
    assert_eq!(closed.load(Ordering::SeqCst), 3);
    assert!(table.list().is_empty());
    let mut removed = vec![];
    for _ in 0..2 {
        match feed.next().await {
            Some(Change::Removed { name, .. }) => removed.push(name),
            other => panic!("expected a removal, got {other:?}"),
        }
    }
    removed.sort();
    assert_eq!(removed, ["a", "b"], "followers are told to stop");
    // A component finished building after shutdown began (a hot reload in flight) is closed, not served.
    table.insert(state("late", &closed));
    assert!(table.list().is_empty());
    eventually("the late component closed", || closed.load(Ordering::SeqCst) == 4).await;
    drop(held);
}
