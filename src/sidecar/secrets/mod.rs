//! The secrets building block: reading secrets through the app's secret scopes (Configuration
//! `spec.secrets.scopes`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::Configuration;
use crate::components::Kind;
use crate::components::secretstores::{Secret, SecretStore};
use crate::sidecar::components::{ComponentTable, Handle};
use crate::sidecar::error::{ApiError, ApiResult};

/// The secrets API over the loaded secret stores.
#[derive(Clone)]
pub struct Secrets {
    table: Arc<ComponentTable>,
    config: Arc<Configuration>,
}

impl Secrets {
    pub fn new(table: Arc<ComponentTable>, config: Arc<Configuration>) -> Self {
        Secrets { table, config }
    }

    fn store(&self, store: &str) -> ApiResult<Handle<dyn SecretStore>> {
        self.table.get::<dyn SecretStore>(store).ok_or_else(|| {
            if self.table.is_empty(Kind::SecretStore) {
                ApiError::secret_stores_not_configured()
            } else {
                ApiError::secret_store_not_found(store)
            }
        })
    }

    fn allowed(&self, store: &str, key: &str) -> bool {
        self.config.secret_scope(store).is_none_or(|s| s.is_allowed(key))
    }

    pub async fn get(&self, store: &str, key: &str, metadata: &BTreeMap<String, String>) -> ApiResult<Secret> {
        let s = self.store(store)?;
        if !self.allowed(store, key) {
            return Err(ApiError::secret_denied(key, store));
        }
        s.get(key, metadata)
            .await
            .map_err(|e| ApiError::secret_get(key, store, &e))
    }

    /// Every secret of `store` the app may read (denied names are left out, as Dapr does).
    pub async fn bulk(&self, store: &str, metadata: &BTreeMap<String, String>) -> ApiResult<BTreeMap<String, Secret>> {
        let s = self.store(store)?;
        let mut all = s
            .bulk_get(metadata)
            .await
            .map_err(|e| ApiError::bulk_secret_get(store, &e))?;
        all.retain(|name, _| self.allowed(store, name));
        Ok(all)
    }
}
