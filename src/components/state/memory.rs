//! `state.in-memory`: a process-local store with etags, TTL, transactions and queries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::SystemTime;

use async_trait::async_trait;

use super::{
    DeleteRequest, Feature, Query, QueryItem, QueryResponse, SetRequest, StateError, StateItem, StateStore,
    TransactionOp, expiry,
};
use crate::components::{ComponentError, Metadata};

#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    items: HashMap<String, StateItem>,
    next_version: u64,
}

pub async fn build(_md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    Ok(Arc::new(MemoryStore::default()))
}

impl Inner {
    fn live(&self, key: &str, now: SystemTime) -> Option<&StateItem> {
        self.items.get(key).filter(|i| i.expires_at.is_none_or(|t| t > now))
    }

    fn apply(&mut self, op: &TransactionOp) {
        match op {
            TransactionOp::Set(r) => {
                self.next_version += 1;
                let item = StateItem {
                    data: r.value.clone(),
                    etag: Some(self.next_version.to_string()),
                    expires_at: expiry(r.ttl),
                };
                self.items.insert(r.key.clone(), item);
            }
            TransactionOp::Delete(r) => {
                self.items.remove(&r.key);
            }
        }
    }

    fn run(&mut self, ops: &[TransactionOp]) -> Result<(), StateError> {
        let now = SystemTime::now();
        // Validate against the state as each earlier op in the transaction leaves it.
        let mut shadow: HashMap<&str, Option<String>> = HashMap::new();
        for op in ops {
            let key = op.key();
            match shadow.get(key) {
                None => op.check(self.live(key, now).and_then(|i| i.etag.as_deref()))?,
                Some(cur) => op.check(cur.as_deref())?,
            }
            // An item written earlier in this transaction has no etag the caller could know.
            let after = match op {
                TransactionOp::Set(_) => Some("pending".to_owned()),
                TransactionOp::Delete(_) => None,
            };
            shadow.insert(key, after);
        }
        for op in ops {
            self.apply(op);
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Etag, Feature::Transactional, Feature::QueryApi, Feature::Ttl]
    }

    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        Ok(self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .live(key, SystemTime::now())
            .cloned())
    }

    async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .run(&[TransactionOp::Set(req.clone())])
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .run(&[TransactionOp::Delete(req.clone())])
    }

    async fn transact(&self, ops: &[TransactionOp]) -> Result<(), StateError> {
        // A panic while the lock was held leaves the map as the panicking request left it; later requests go on.
        self.inner.write().unwrap_or_else(|p| p.into_inner()).run(ops)
    }

    async fn query(&self, prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        let now = SystemTime::now();
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let rows = inner.items.iter().filter_map(|(k, i)| {
            let key = k.strip_prefix(prefix)?;
            inner.live(k, now)?;
            Some(QueryItem {
                key: key.to_owned(),
                data: i.data.clone(),
                etag: i.etag.clone(),
            })
        });
        query.run(rows).map_err(StateError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_holding_the_lock_leaves_the_store_usable() {
        let store = Arc::new(MemoryStore::default());
        let set = |key: &str| SetRequest {
            key: key.into(),
            value: bytes::Bytes::from_static(b"1"),
            ..Default::default()
        };
        store.set(&set("before")).await.unwrap();
        let poisoner = store.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.inner.write().unwrap();
            panic!("a request panicked while holding the lock");
        })
        .join();
        assert!(store.inner.is_poisoned());
        assert_eq!(store.get("before").await.unwrap().unwrap().data, "1");
        store.set(&set("after")).await.unwrap();
        assert!(store.get("after").await.unwrap().is_some());
    }
}
