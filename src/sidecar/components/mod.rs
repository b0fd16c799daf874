//! The component table: every loaded component of every kind, by (kind, name), behind the kind's trait object.
//!
//! Lookups hand out a [`Handle`]; a component that is replaced or removed stays usable by the requests holding a
//! handle and is closed once they are done (or after [`DRAIN`]). Blocks with background work (subscribers, input
//! bindings, schedulers) follow [`ComponentTable::subscribe`] to start, restart and stop it.

pub mod loader;
pub mod references;

use std::any::Any;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::Component;
use crate::components::{ComponentKind, Instance, Kind, Metadata};

pub use loader::ComponentLoader;
pub use references::References;

/// How long a replaced or removed component waits for the requests still using it before it is closed anyway.
pub const DRAIN: Duration = Duration::from_secs(30);
/// Changes a follower may fall behind before it is told to re-read the table.
const FEED_CAPACITY: usize = 256;

/// One loaded component.
#[derive(Debug)]
pub struct Loaded {
    pub name: String,
    /// The Dapr type as written (`state.redis`).
    pub type_: String,
    pub version: String,
    /// The resource it was built from (hot reload compares it with what arrives).
    pub resource: Component,
    /// Its metadata after `secretKeyRef`/`envRef` resolution.
    pub metadata: Metadata,
    /// The backend as requests use it: with its resiliency layers.
    pub instance: Instance,
    /// The backend without resiliency layers: what secret references resolve through, as in Dapr.
    pub direct: Instance,
    /// What the kind's block worked out when it admitted the component (a state store's key prefix).
    settings: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Load order, kept across replacements, so listings keep the order components first loaded in.
    seq: u64,
}

impl Loaded {
    pub fn new(resource: Component, metadata: Metadata, instance: Instance) -> Self {
        Loaded {
            name: resource.name().to_owned(),
            type_: resource.spec.type_.clone(),
            version: resource.spec.version.clone(),
            resource,
            metadata,
            direct: instance.clone(),
            instance,
            settings: OnceLock::new(),
            seq: 0,
        }
    }

    /// The same component with `layered` (the backend wrapped in its resiliency layers) serving requests.
    pub fn with_layers(mut self, layered: Instance) -> Self {
        self.instance = layered;
        self
    }

    pub fn kind(&self) -> Kind {
        self.instance.kind()
    }

    /// Records what the kind's block worked out about this component (once; later calls are ignored).
    pub fn set_settings<T: Any + Send + Sync>(&self, settings: T) {
        let _ = self.settings.set(Box::new(settings));
    }

    /// What the kind's block recorded with [`Loaded::set_settings`].
    pub fn settings<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.settings.get()?.downcast_ref()
    }
}

/// A component of kind `K` in use: derefs to the kind's trait object and keeps the component from being closed.
pub struct Handle<K: ?Sized> {
    pub component: Arc<Loaded>,
    object: Arc<K>,
}

impl<K: ?Sized> Handle<K> {
    pub fn name(&self) -> &str {
        &self.component.name
    }

    pub fn metadata(&self) -> &Metadata {
        &self.component.metadata
    }
}

impl<K: ?Sized> Deref for Handle<K> {
    type Target = K;
    fn deref(&self) -> &K {
        &self.object
    }
}

/// What happened in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added {
        kind: Kind,
        name: String,
    },
    Replaced {
        kind: Kind,
        name: String,
    },
    Removed {
        kind: Kind,
        name: String,
    },
    /// The follower fell behind and missed changes: re-read the table.
    Resync,
}

/// A follower's view of the table's changes, from the moment it subscribed.
pub struct Changes {
    rx: broadcast::Receiver<Change>,
}

impl Changes {
    /// The next change; `None` once the table is closed.
    pub async fn next(&mut self) -> Option<Change> {
        match self.rx.recv().await {
            Ok(c) => Some(c),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

pub struct ComponentTable {
    /// One map per kind, by name, at `kind.index()`.
    entries: RwLock<[HashMap<String, Arc<Loaded>>; Kind::ALL.len()]>,
    next_seq: AtomicU64,
    changes: broadcast::Sender<Change>,
    /// Components taken out of the table, waiting for their users before they close.
    retiring: Mutex<JoinSet<()>>,
    /// Cancelled by `close_all`: retiring components stop waiting.
    closing: CancellationToken,
    drain: Duration,
}

impl Default for ComponentTable {
    fn default() -> Self {
        ComponentTable::new(DRAIN)
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl ComponentTable {
    /// A table whose replaced components wait at most `drain` for their users before closing.
    pub fn new(drain: Duration) -> Self {
        ComponentTable {
            entries: RwLock::default(),
            next_seq: AtomicU64::new(1),
            changes: broadcast::channel(FEED_CAPACITY).0,
            retiring: Mutex::default(),
            closing: CancellationToken::new(),
            drain,
        }
    }

    /// Component `name` of kind `K`.
    pub fn get<K: ComponentKind + ?Sized>(&self, name: &str) -> Option<Handle<K>> {
        let component = self.loaded(K::KIND, name)?;
        let object = component.instance.get::<K>()?;
        Some(Handle { component, object })
    }

    /// Component `name` of `kind`.
    pub fn loaded(&self, kind: Kind, name: &str) -> Option<Arc<Loaded>> {
        read(&self.entries)[kind.index()].get(name).cloned()
    }

    /// True when no component of `kind` is loaded.
    pub fn is_empty(&self, kind: Kind) -> bool {
        read(&self.entries)[kind.index()].is_empty()
    }

    /// Every loaded component, in the order they first loaded.
    pub fn list(&self) -> Vec<Arc<Loaded>> {
        let mut all: Vec<Arc<Loaded>> = read(&self.entries).iter().flat_map(|m| m.values().cloned()).collect();
        all.sort_by_key(|l| l.seq);
        all
    }

    /// Every loaded component of `kind`, in load order.
    pub fn of_kind(&self, kind: Kind) -> Vec<Arc<Loaded>> {
        let mut all: Vec<Arc<Loaded>> = read(&self.entries)[kind.index()].values().cloned().collect();
        all.sort_by_key(|l| l.seq);
        all
    }

    /// Puts `loaded` in under (its kind, its name), atomically replacing the component there: requests from
    /// now on get the new one, and the old one closes once the requests holding it are done. Once the table
    /// is closing (shutdown), `loaded` is closed instead.
    pub fn insert(&self, mut loaded: Loaded) {
        let (kind, name) = (loaded.kind(), loaded.name.clone());
        let old = {
            let mut entries = write(&self.entries);
            if self.closing.is_cancelled() {
                drop(entries);
                self.retire(Arc::new(loaded));
                return;
            }
            let of_kind = &mut entries[kind.index()];
            loaded.seq = match of_kind.get(&name) {
                Some(old) => old.seq,
                None => self.next_seq.fetch_add(1, Ordering::Relaxed),
            };
            of_kind.insert(name.clone(), Arc::new(loaded))
        };
        let change = match old {
            Some(old) => {
                self.retire(old);
                Change::Replaced { kind, name }
            }
            None => Change::Added { kind, name },
        };
        let _ = self.changes.send(change);
    }

    /// Takes component `name` of `kind` out; it closes once the requests holding it are done. False when there
    /// was none.
    pub fn remove(&self, kind: Kind, name: &str) -> bool {
        let old = write(&self.entries)[kind.index()].remove(name);
        match old {
            Some(old) => {
                self.retire(old);
                let _ = self.changes.send(Change::Removed {
                    kind,
                    name: name.to_owned(),
                });
                true
            }
            None => false,
        }
    }

    /// Every component loaded now, and every change from then on: a change made while the snapshot is taken is
    /// in the snapshot, in the feed, or both (handle changes idempotently).
    pub fn subscribe(&self) -> (Vec<Arc<Loaded>>, Changes) {
        let entries = read(&self.entries);
        let rx = self.changes.subscribe();
        let mut now: Vec<Arc<Loaded>> = entries.iter().flat_map(|m| m.values().cloned()).collect();
        drop(entries);
        now.sort_by_key(|l| l.seq);
        (now, Changes { rx })
    }

    /// Closes `old` once nothing else holds it, after `drain` at the latest, or at once when the table closes.
    fn retire(&self, old: Arc<Loaded>) {
        let (drain, closing) = (self.drain, self.closing.clone());
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        while retiring.try_join_next().is_some() {}
        let span = tracing::debug_span!("retire", component = %old.name);
        let task = async move {
            let idle = async {
                while Arc::strong_count(&old) > 1 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(drain, idle) => {}
                _ = closing.cancelled() => {}
            }
            old.instance.close().await;
            tracing::debug!("closed the replaced component");
        };
        retiring.spawn(tracing::Instrument::instrument(task, span));
    }

    /// Shutdown: takes every component out (followers see them removed) and closes them all, and those still
    /// retiring, concurrently, for at most `within`. Components inserted afterwards are closed at once.
    pub async fn close_all(&self, within: Duration) {
        let all: Vec<Arc<Loaded>> = {
            let mut entries = write(&self.entries);
            self.closing.cancel();
            entries.iter_mut().flat_map(|m| m.drain().map(|(_, c)| c)).collect()
        };
        for c in &all {
            let _ = self.changes.send(Change::Removed {
                kind: c.kind(),
                name: c.name.clone(),
            });
        }
        let mut retiring = std::mem::take(&mut *self.retiring.lock().unwrap_or_else(|p| p.into_inner()));
        let closes = futures::future::join_all(all.iter().map(|c| c.instance.close()));
        let retired = async { while retiring.join_next().await.is_some() {} };
        if tokio::time::timeout(within, futures::future::join(closes, retired))
            .await
            .is_err()
        {
            tracing::warn!(?within, "components did not close in time");
        }
    }
}

#[cfg(test)]
mod tests;
