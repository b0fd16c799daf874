//! The dapr.io objects of every namespace, kept current by watches, with a broadcast of each change for the
//! watch streams of connected sidecars.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::broadcast;

use crate::control_plane::kinds::{DaprKind, DaprResource};
use crate::control_plane::wire::EventType;
use crate::operator::health::{Readiness, ReadyFlag};

/// Namespace, kind, name: objects of one namespace sit next to each other.
type Key = (String, DaprKind, String);

/// How many changes a slow watch stream may fall behind before it is closed (and its client re-lists).
const CHANGE_BUFFER: usize = 4096;

/// One change to a resource: `old` is absent for creations, `new` for deletions.
#[derive(Debug)]
pub struct Change {
    pub old: Option<Arc<DaprResource>>,
    pub new: Option<Arc<DaprResource>>,
}

impl Change {
    fn any(&self) -> &DaprResource {
        self.new
            .as_deref()
            .or(self.old.as_deref())
            .expect("a change has an old or a new object")
    }

    pub fn namespace(&self) -> &str {
        self.any().namespace()
    }

    /// The change as `app_id` sees it, following Dapr's filter (`[D] pkg/operator/api/informer/filter.go`): leaving
    /// an app's scope is a deletion, entering it a creation, and changes out of scope are not seen at all.
    pub fn for_app(&self, app_id: &str) -> Option<(EventType, Arc<DaprResource>)> {
        let in_old = self.old.as_ref().is_some_and(|o| o.in_scope(app_id));
        let in_new = self.new.as_ref().is_some_and(|n| n.in_scope(app_id));
        match (&self.old, &self.new) {
            (_, Some(new)) if in_new => Some((
                if in_old { EventType::Updated } else { EventType::Created },
                new.clone(),
            )),
            (Some(old), _) if in_old => Some((EventType::Deleted, old.clone())),
            _ => None,
        }
    }
}

/// The objects of the five dapr.io kinds, by namespace.
pub struct ResourceCache {
    objects: RwLock<BTreeMap<Key, Arc<DaprResource>>>,
    /// Objects listed since a watch (re)started, swapped in when the list is complete.
    relisting: Mutex<HashMap<DaprKind, BTreeMap<Key, Arc<DaprResource>>>>,
    changes: broadcast::Sender<Arc<Change>>,
    synced: BTreeMap<DaprKind, ReadyFlag>,
}

fn key_of(res: &DaprResource) -> Key {
    (res.namespace().to_owned(), res.kind(), res.name().to_owned())
}

impl ResourceCache {
    /// An empty cache whose kinds report to `readiness` until their first full list.
    pub fn new(readiness: &Readiness) -> Arc<Self> {
        let synced = DaprKind::ALL
            .into_iter()
            .map(|k| (k, readiness.register(format!("{k} cache"))))
            .collect();
        Arc::new(ResourceCache {
            objects: RwLock::default(),
            relisting: Mutex::default(),
            changes: broadcast::channel(CHANGE_BUFFER).0,
            synced,
        })
    }

    /// True once every kind has been listed.
    pub fn is_synced(&self) -> bool {
        self.synced.values().all(ReadyFlag::is_set)
    }

    /// How many watch streams are subscribed.
    pub fn watchers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// The objects of `namespace`, ordered by kind then name.
    pub fn namespace(&self, namespace: &str) -> Vec<Arc<DaprResource>> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        objects
            .range((namespace.to_owned(), DaprKind::ALL[0], String::new())..)
            .take_while(|((ns, _, _), _)| ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn get(&self, kind: DaprKind, namespace: &str, name: &str) -> Option<Arc<DaprResource>> {
        let key = (namespace.to_owned(), kind, name.to_owned());
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    fn emit(&self, old: Option<Arc<DaprResource>>, new: Option<Arc<DaprResource>>) {
        if old != new {
            let _ = self.changes.send(Arc::new(Change { old, new }));
        }
    }

    /// Adds or replaces an object; subscribers hear of it unless nothing changed.
    pub fn apply(&self, res: DaprResource) {
        let new = Arc::new(res);
        let old = self
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_of(&new), new.clone());
        self.emit(old, Some(new));
    }

    pub fn delete(&self, kind: DaprKind, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), kind, name.to_owned());
        let old = self.objects.write().unwrap_or_else(|p| p.into_inner()).remove(&key);
        if old.is_some() {
            self.emit(old, None);
        }
    }

    /// Replaces every object of `kind` by `listed`, telling subscribers what differs, and marks the kind synced.
    pub fn replace_kind(&self, kind: DaprKind, listed: BTreeMap<(String, String), DaprResource>) {
        let listed: BTreeMap<Key, Arc<DaprResource>> = listed
            .into_iter()
            .map(|((ns, name), r)| ((ns, kind, name), Arc::new(r)))
            .collect();
        let mut changes = vec![];
        {
            let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<Key> = objects
                .keys()
                .filter(|(_, k, _)| *k == kind)
                .filter(|key| !listed.contains_key(*key))
                .cloned()
                .collect();
            for key in gone {
                changes.push((objects.remove(&key), None));
            }
            for (key, new) in listed {
                let old = objects.insert(key, new.clone());
                changes.push((old, Some(new)));
            }
        }
        for (old, new) in changes {
            self.emit(old, new);
        }
        self.synced[&kind].set(true);
    }

    /// Applies one watch event of `kind`. An object that does not parse keeps its last good version (its status
    /// says what is wrong).
    fn on_event(&self, kind: DaprKind, event: watcher::Event<DynamicObject>) {
        let parse = |obj: &DynamicObject| match DaprResource::from_dynamic(kind, obj) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("ignoring the new version of {kind} {}: {e}", obj.name_any());
                None
            }
        };
        match event {
            watcher::Event::Apply(obj) => {
                if let Some(r) = parse(&obj) {
                    self.apply(r);
                }
            }
            watcher::Event::Delete(obj) => {
                self.delete(kind, &obj.namespace().unwrap_or_default(), &obj.name_any());
            }
            watcher::Event::Init => {
                self.relisting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(kind, BTreeMap::new());
            }
            watcher::Event::InitApply(obj) => {
                let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
                let res = parse(&obj).map(Arc::new).or_else(|| self.get(kind, &ns, &name));
                if let Some(res) = res {
                    let mut relisting = self.relisting.lock().unwrap_or_else(|p| p.into_inner());
                    relisting.entry(kind).or_default().insert((ns, kind, name), res);
                }
            }
            watcher::Event::InitDone => {
                let listed = self
                    .relisting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&kind)
                    .unwrap_or_default();
                let listed = listed
                    .into_iter()
                    .map(|((ns, _, name), r)| ((ns, name), Arc::unwrap_or_clone(r)))
                    .collect();
                self.replace_kind(kind, listed);
            }
        }
    }

    /// Keeps `kind` current across all namespaces until the task is dropped.
    pub async fn watch(self: Arc<Self>, client: Client, kind: DaprKind) {
        let api: Api<DynamicObject> = Api::all_with(client, &kind.api_resource());
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.on_event(kind, event),
                Err(e) => tracing::warn!(
                    "watching {kind} ({}) failed, retrying: {e}{}",
                    kind.crd(),
                    watch_hint(&e)
                ),
            }
        }
    }
}

/// What to check when a watch fails with `e`: the CRD for a 404, RBAC for a 403.
pub fn watch_hint(e: &watcher::Error) -> &'static str {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    match status {
        Some(404) => "; is the CRD installed (`tandem crds | kubectl apply -f -`)?",
        Some(403) => "; the operator's ServiceAccount may not list and watch it: check its ClusterRole",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn component(name: &str, scopes: &[&str], host: &str) -> DaprResource {
        DaprResource::from_json(
            DaprKind::Component,
            json!({"metadata": {"name": name, "namespace": "ns"}, "scopes": scopes,
                "spec": {"type": "state.in-memory", "version": "v1", "metadata": [{"name": "h", "value": host}]}}),
        )
        .unwrap()
    }

    fn change(old: Option<DaprResource>, new: Option<DaprResource>) -> Change {
        Change {
            old: old.map(Arc::new),
            new: new.map(Arc::new),
        }
    }

    #[test]
    fn scope_changes_become_creations_and_deletions() {
        let kind_of = |c: Change| c.for_app("a").map(|(t, r)| (t, r.scopes().to_vec()));
        let all = || component("c", &[], "1");
        let only_b = || component("c", &["b"], "1");
        assert_eq!(kind_of(change(None, Some(all()))).unwrap().0, EventType::Created);
        assert_eq!(kind_of(change(Some(all()), Some(all()))).unwrap().0, EventType::Updated);
        let (t, scopes) = kind_of(change(Some(all()), Some(only_b()))).unwrap();
        assert_eq!(
            (t, scopes),
            (EventType::Deleted, vec![]),
            "the deletion carries the old object"
        );
        assert_eq!(
            kind_of(change(Some(only_b()), Some(all()))).unwrap().0,
            EventType::Created
        );
        assert_eq!(kind_of(change(Some(only_b()), Some(only_b()))), None);
        assert_eq!(kind_of(change(Some(all()), None)).unwrap().0, EventType::Deleted);
        assert_eq!(kind_of(change(Some(only_b()), None)), None);
    }

    #[tokio::test]
    async fn relists_report_only_differences_and_mark_the_kind_synced() {
        let readiness = Readiness::default();
        let cache = ResourceCache::new(&readiness);
        let mut rx = cache.subscribe();
        cache.apply(component("keep", &[], "1"));
        cache.apply(component("gone", &[], "1"));
        cache.apply(component("keep", &[], "1"));
        assert_eq!(rx.recv().await.unwrap().new.as_ref().unwrap().name(), "keep");
        assert_eq!(rx.recv().await.unwrap().new.as_ref().unwrap().name(), "gone");
        assert!(
            rx.try_recv().is_err(),
            "re-applying an unchanged object is not a change"
        );

        assert!(!cache.is_synced());
        let listed = [("keep", "1"), ("new", "2")]
            .into_iter()
            .map(|(n, h)| (("ns".to_string(), n.to_string()), component(n, &[], h)))
            .collect();
        cache.replace_kind(DaprKind::Component, listed);
        let gone = rx.recv().await.unwrap();
        assert_eq!((gone.old.as_ref().unwrap().name(), gone.new.is_none()), ("gone", true));
        let new = rx.recv().await.unwrap();
        assert_eq!((new.old.is_none(), new.new.as_ref().unwrap().name()), (true, "new"));
        assert!(rx.try_recv().is_err());
        let names: Vec<String> = cache.namespace("ns").iter().map(|r| r.name().to_owned()).collect();
        assert_eq!(names, ["keep", "new"]);
        assert!(cache.namespace("other").is_empty());
        assert_eq!(readiness.pending().len(), 4, "{:?}", readiness.pending());
    }

    #[test]
    fn watch_failures_point_at_the_crd_or_rbac() {
        let api = |code| {
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        assert!(watch_hint(&api(404)).contains("tandem crds"));
        assert!(watch_hint(&api(403)).contains("ClusterRole"));
        assert_eq!(watch_hint(&api(500)), "");
    }
}
