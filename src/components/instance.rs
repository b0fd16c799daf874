//! A built component of any kind, type-erased so one table can hold every kind: the kind's trait object
//! (`Arc<dyn StateStore>`, ...) is taken back out with [`Instance::get`].

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::kind::{ComponentKind, Kind};

type Close = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// One initialised backend of some kind. Cheap to clone.
#[derive(Clone)]
pub struct Instance {
    kind: Kind,
    /// An `Arc<K>` for the kind's trait object `K`.
    object: Arc<dyn Any + Send + Sync>,
    capabilities: Arc<[String]>,
    close: Close,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("kind", &self.kind)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl Instance {
    pub fn new<K: ComponentKind + ?Sized>(component: Arc<K>) -> Instance {
        let capabilities = K::capabilities(&component).into();
        let for_close = component.clone();
        Instance {
            kind: K::KIND,
            object: Arc::new(component),
            capabilities,
            close: Arc::new(move || K::close(for_close.clone())),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The kind's trait object, when this instance is of kind `K`.
    pub fn get<K: ComponentKind + ?Sized>(&self) -> Option<Arc<K>> {
        self.object.downcast_ref::<Arc<K>>().cloned()
    }

    /// The same component seen through `wrap` (a layer around the trait object, e.g. resiliency policies); an
    /// instance of another kind is returned as it is.
    pub fn map<K: ComponentKind + ?Sized>(self, wrap: impl FnOnce(Arc<K>) -> Arc<K>) -> Instance {
        match self.get::<K>() {
            Some(inner) => Instance::new(wrap(inner)),
            None => self,
        }
    }

    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Closes the component (see [`ComponentKind::close`]).
    pub fn close(&self) -> BoxFuture<'static, ()> {
        (self.close)()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    trait Counter: Send + Sync {
        fn count(&self) -> usize;
    }

    struct Closes(Arc<AtomicUsize>);

    impl Counter for Closes {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl ComponentKind for dyn Counter {
        const KIND: Kind = Kind::Lock;
        fn capabilities(c: &Self) -> Vec<String> {
            vec![format!("N{}", c.count())]
        }
        fn close(c: Arc<Self>) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let _ = c.count();
            })
        }
    }

    struct Doubled(Arc<dyn Counter>);

    impl Counter for Doubled {
        fn count(&self) -> usize {
            self.0.count() * 2
        }
    }

    #[tokio::test]
    async fn holds_a_trait_object_and_gives_it_back_by_kind() {
        let n = Arc::new(AtomicUsize::new(3));
        let i = Instance::new::<dyn Counter>(Arc::new(Closes(n.clone())));
        assert_eq!(i.kind(), Kind::Lock);
        assert_eq!(i.capabilities(), ["N3"]);
        assert_eq!(i.get::<dyn Counter>().unwrap().count(), 3);
        assert!(i.get::<dyn crate::components::state::StateStore>().is_none());
        let wrapped = i.map::<dyn Counter>(|inner| Arc::new(Doubled(inner)));
        assert_eq!(wrapped.get::<dyn Counter>().unwrap().count(), 6);
        wrapped.close().await;
    }
}
