//! Where workflow instances are kept: the state store marked `actorStateStore: true`, one key per instance
//! (`<appid>||dapr.workflow||<instance>`, so a step is one write) and one key listing the running instances (to
//! resume them when the sidecar starts).

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{Instance, Result, WorkflowError};
use crate::components::Kind;
use crate::components::metadata::parse_bool;
use crate::components::state::{DeleteRequest, SetRequest, StateStore};
use crate::sidecar::components::{ComponentTable, Handle};

pub struct InstanceStore {
    table: Arc<ComponentTable>,
    app_id: String,
    /// The running instances as last read or written (None: not read yet).
    running: Mutex<Option<BTreeSet<String>>>,
}

fn store_error(e: impl std::fmt::Display) -> WorkflowError {
    WorkflowError::Store(e.to_string())
}

impl InstanceStore {
    pub fn new(table: Arc<ComponentTable>, app_id: &str) -> Self {
        InstanceStore {
            table,
            app_id: app_id.to_owned(),
            running: Mutex::new(None),
        }
    }

    fn handle(&self) -> Result<Handle<dyn StateStore>> {
        let actor = self
            .table
            .of_kind(Kind::State)
            .into_iter()
            .find(|c| c.metadata.get("actorStateStore").and_then(parse_bool) == Some(true))
            .ok_or(WorkflowError::NoStore)?;
        self.table
            .get::<dyn StateStore>(&actor.name)
            .ok_or(WorkflowError::NoStore)
    }

    /// Fails with [`WorkflowError::NoStore`] when there is no actor state store.
    pub fn check(&self) -> Result<()> {
        self.handle().map(|_| ())
    }

    fn key(&self, id: &str) -> String {
        format!("{}||dapr.workflow||{id}", self.app_id)
    }

    fn index_key(&self) -> String {
        format!("{}||dapr.workflow.running", self.app_id)
    }

    pub async fn load(&self, id: &str) -> Result<Option<Instance>> {
        let store = self.handle()?;
        let Some(item) = store.get(&self.key(id)).await.map_err(store_error)? else {
            return Ok(None);
        };
        serde_json::from_slice(&item.data)
            .map(Some)
            .map_err(|e| store_error(format!("instance {id:?} is stored in a form tandem cannot read: {e}")))
    }

    pub async fn save(&self, inst: &Instance) -> Result<()> {
        let store = self.handle()?;
        let value = serde_json::to_vec(inst).map_err(store_error)?;
        store
            .set(&SetRequest {
                key: self.key(&inst.id),
                value: Bytes::from(value),
                ..Default::default()
            })
            .await
            .map_err(store_error)
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        let store = self.handle()?;
        store
            .delete(&DeleteRequest {
                key: self.key(id),
                ..Default::default()
            })
            .await
            .map_err(store_error)
    }

    async fn read_running(&self, store: &Handle<dyn StateStore>) -> Result<BTreeSet<String>> {
        Ok(match store.get(&self.index_key()).await.map_err(store_error)? {
            Some(item) => serde_json::from_slice(&item.data).unwrap_or_default(),
            None => BTreeSet::new(),
        })
    }

    /// The instances recorded as running.
    pub async fn running(&self) -> Result<Vec<String>> {
        let store = self.handle()?;
        let mut cached = self.running.lock().await;
        if cached.is_none() {
            *cached = Some(self.read_running(&store).await?);
        }
        Ok(cached.iter().flatten().cloned().collect())
    }

    /// Records instance `id` as running or not.
    pub async fn mark_running(&self, id: &str, running: bool) -> Result<()> {
        let store = self.handle()?;
        let mut cached = self.running.lock().await;
        if cached.is_none() {
            *cached = Some(self.read_running(&store).await?);
        }
        let Some(set) = cached.as_mut() else { return Ok(()) };
        let changed = if running {
            set.insert(id.to_owned())
        } else {
            set.remove(id)
        };
        if !changed {
            return Ok(());
        }
        let value = serde_json::to_vec(&*set).map_err(store_error)?;
        let written = store
            .set(&SetRequest {
                key: self.index_key(),
                value: Bytes::from(value),
                ..Default::default()
            })
            .await
            .map_err(store_error);
        if written.is_err() {
            *cached = None;
        }
        written
    }
}
