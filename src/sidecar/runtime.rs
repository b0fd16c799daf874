//! The sidecar core: every Dapr operation as a plain async fn over the loaded components.
//! HTTP and gRPC adapters only decode, call these, and encode.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::error::{ApiError, ApiResult};
use crate::api::{Configuration, HttpEndpoint, Subscription};
use crate::components::secretstores::{Secret, SecretStore};
use crate::components::state::{
    Concurrency, DeleteRequest, Feature, Query, QueryResponse, SetRequest, StateError, StateItem, StateStore,
    TransactionOp,
};

pub const RUNTIME_VERSION: &str = concat!("tandem-", env!("CARGO_PKG_VERSION"));

/// One item of a save request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaveItem {
    pub key: String,
    pub value: Bytes,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub metadata: BTreeMap<String, String>,
}

/// One key of a delete request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeleteItem {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TxOp {
    Upsert(SaveItem),
    Delete(DeleteItem),
}

/// One key's answer in a bulk get.
#[derive(Clone, Debug, PartialEq)]
pub struct BulkItem {
    pub key: String,
    pub item: Option<StateItem>,
    pub error: Option<String>,
}

/// A loaded state store with its key prefix (`""` or `"<prefix>||"`).
pub struct StateEntry {
    pub name: String,
    pub store: Arc<dyn StateStore>,
    pub prefix: String,
}

impl StateEntry {
    fn key(&self, key: &str) -> ApiResult<String> {
        if key.contains("||") {
            return Err(ApiError::illegal_key(key).on_resource("state", &self.name));
        }
        Ok(format!("{}{key}", self.prefix))
    }
}

/// How a loaded component shows in the metadata API.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentInfo {
    pub name: String,
    pub type_: String,
    pub version: String,
    pub capabilities: Vec<String>,
}

/// What the metadata API says about the app channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppConnection {
    pub port: Option<u16>,
    pub protocol: String,
    pub channel_address: String,
    pub max_concurrency: Option<u32>,
    pub health: Option<AppHealthInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppHealthInfo {
    pub path: Option<String>,
    pub interval: String,
    pub timeout: String,
    pub threshold: u32,
}

/// A snapshot for GET /v1.0/metadata and gRPC GetMetadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataSnapshot {
    pub id: String,
    pub runtime_version: String,
    pub enabled_features: Vec<String>,
    pub components: Vec<ComponentInfo>,
    pub extended: BTreeMap<String, String>,
    pub subscriptions: Vec<Subscription>,
    pub http_endpoints: Vec<String>,
    pub app_connection: AppConnection,
}

/// Readiness flags behind /v1.0/healthz and /v1.0/healthz/outbound.
#[derive(Debug, Default)]
pub struct Health {
    outbound: AtomicBool,
    ready: AtomicBool,
}

impl Health {
    pub fn set_outbound_ready(&self) {
        self.outbound.store(true, Ordering::Release);
    }
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
    pub fn outbound_ready(&self) -> bool {
        self.outbound.load(Ordering::Acquire)
    }
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub struct Runtime {
    pub app_id: String,
    pub namespace: String,
    pub config: Configuration,
    pub health: Health,
    pub app_connection: AppConnection,
    /// Cancelled to begin a graceful shutdown (signal or POST /v1.0/shutdown).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Why the sidecar is stopping on its own, if it is (a component that could not start).
    fatal: std::sync::OnceLock<String>,
    state: RwLock<HashMap<String, Arc<StateEntry>>>,
    secrets: RwLock<HashMap<String, Arc<dyn SecretStore>>>,
    components: RwLock<Vec<ComponentInfo>>,
    extended: RwLock<BTreeMap<String, String>>,
    subscriptions: RwLock<Vec<Subscription>>,
    http_endpoints: RwLock<Vec<HttpEndpoint>>,
}

/// `ttlInSeconds` from request metadata: an integer of -1 or more.
fn ttl(metadata: &BTreeMap<String, String>) -> Result<Option<i64>, StateError> {
    match metadata.get("ttlInSeconds") {
        None => Ok(None),
        Some(v) => match v.trim().parse::<i64>() {
            Ok(t) if t >= -1 => Ok(Some(t)),
            Ok(_) => Err(StateError::Backend(
                "incorrect value for metadata 'ttlInSeconds': must be -1 or greater".into(),
            )),
            Err(e) => Err(StateError::Backend(format!(
                "incorrect value for metadata 'ttlInSeconds': {v:?}: {e}"
            ))),
        },
    }
}

/// Several per-item failures as one: an etag failure only when every failure was one.
fn combine(errors: Vec<StateError>) -> StateError {
    let text = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    if errors
        .iter()
        .all(|e| matches!(e, StateError::EtagMismatch(_) | StateError::EtagInvalid(_)))
    {
        if errors.iter().any(|e| matches!(e, StateError::EtagInvalid(_))) {
            StateError::EtagInvalid(text)
        } else {
            StateError::EtagMismatch(text)
        }
    } else {
        StateError::Backend(text)
    }
}

impl Runtime {
    pub fn new(app_id: &str, namespace: &str, config: Configuration, app_connection: AppConnection) -> Self {
        Runtime {
            app_id: app_id.into(),
            namespace: namespace.into(),
            config,
            health: Health::default(),
            app_connection,
            shutdown: Default::default(),
            fatal: Default::default(),
            state: Default::default(),
            secrets: Default::default(),
            components: Default::default(),
            extended: Default::default(),
            subscriptions: Default::default(),
            http_endpoints: Default::default(),
        }
    }

    /// Stops the sidecar because of `error`; `Sidecar::wait` then reports it and the process exits non-zero.
    pub fn fail(&self, error: String) {
        let _ = self.fatal.set(error);
        self.shutdown.cancel();
    }

    pub fn fatal_error(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    // ---- registration (used while loading components) ----

    /// Registers a state store under `name` with Dapr's `keyPrefix` strategy (appid, name, namespace, none or a literal).
    pub fn add_state_store(
        &self,
        info: ComponentInfo,
        store: Arc<dyn StateStore>,
        key_prefix: Option<&str>,
    ) -> Result<(), String> {
        let strategy = key_prefix.unwrap_or("appid").to_ascii_lowercase();
        let prefix = match strategy.as_str() {
            "" | "appid" => self.app_id.clone(),
            "name" => info.name.clone(),
            "none" => String::new(),
            "namespace" if !self.namespace.is_empty() && !self.app_id.is_empty() => {
                format!("{}.{}", self.namespace, self.app_id)
            }
            "namespace" => self.app_id.clone(),
            _ => key_prefix.unwrap_or_default().to_owned(),
        };
        if prefix.contains("||") {
            return Err(format!("keyPrefix {prefix:?} can't contain '||'"));
        }
        let prefix = if prefix.is_empty() {
            prefix
        } else {
            format!("{prefix}||")
        };
        self.state.write().expect("lock").insert(
            info.name.clone(),
            Arc::new(StateEntry {
                name: info.name.clone(),
                store,
                prefix,
            }),
        );
        self.components.write().expect("lock").push(info);
        Ok(())
    }

    pub fn add_secret_store(&self, info: ComponentInfo, store: Arc<dyn SecretStore>) {
        self.secrets.write().expect("lock").insert(info.name.clone(), store);
        self.components.write().expect("lock").push(info);
    }

    /// Unregisters component `name` (if loaded) and closes it.
    pub async fn remove_component(&self, name: &str) {
        let state = self.state.write().expect("lock").remove(name);
        self.secrets.write().expect("lock").remove(name);
        self.components.write().expect("lock").retain(|c| c.name != name);
        if let Some(entry) = state {
            entry.store.close().await;
        }
    }

    pub fn secret_store(&self, name: &str) -> Option<Arc<dyn SecretStore>> {
        self.secrets.read().expect("lock").get(name).cloned()
    }

    pub fn set_subscriptions(&self, subs: Vec<Subscription>) {
        *self.subscriptions.write().expect("lock") = subs;
    }

    pub fn set_http_endpoints(&self, endpoints: Vec<HttpEndpoint>) {
        *self.http_endpoints.write().expect("lock") = endpoints;
    }

    /// Every state store, for closing on shutdown.
    pub fn state_stores(&self) -> Vec<Arc<dyn StateStore>> {
        self.state
            .read()
            .expect("lock")
            .values()
            .map(|e| e.store.clone())
            .collect()
    }

    // ---- state ----

    pub fn state_store(&self, name: &str) -> ApiResult<Arc<StateEntry>> {
        let stores = self.state.read().expect("lock");
        if stores.is_empty() {
            return Err(ApiError::state_stores_not_configured(name).for_app(&self.app_id));
        }
        stores
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::state_store_not_found(name).for_app(&self.app_id))
    }

    pub async fn get_state(&self, store: &str, key: &str) -> ApiResult<Option<StateItem>> {
        let entry = self.state_store(store)?;
        let full = entry.key(key)?;
        entry
            .store
            .get(&full)
            .await
            .map_err(|e| ApiError::state_get(key, store, &e))
    }

    pub async fn get_bulk_state(&self, store: &str, keys: &[String], parallelism: usize) -> ApiResult<Vec<BulkItem>> {
        let entry = self.state_store(store)?;
        let full = keys.iter().map(|k| entry.key(k)).collect::<ApiResult<Vec<_>>>()?;
        let results = entry.store.bulk_get(&full, parallelism).await;
        Ok(keys
            .iter()
            .zip(results)
            .map(|(key, r)| match r {
                Ok(item) => BulkItem {
                    key: key.clone(),
                    item,
                    error: None,
                },
                Err(e) => BulkItem {
                    key: key.clone(),
                    item: None,
                    error: Some(e.to_string()),
                },
            })
            .collect())
    }

    fn set_request(&self, entry: &StateEntry, item: &SaveItem) -> ApiResult<Result<SetRequest, StateError>> {
        let key = entry.key(&item.key)?;
        Ok(ttl(&item.metadata).map(|ttl| SetRequest {
            key,
            value: item.value.clone(),
            etag: item.etag.clone().filter(|e| !e.is_empty()),
            concurrency: item.concurrency,
            ttl,
        }))
    }

    pub async fn save_state(&self, store: &str, items: &[SaveItem]) -> ApiResult<()> {
        let entry = self.state_store(store)?;
        let mut requests = Vec::with_capacity(items.len());
        for item in items {
            match self.set_request(&entry, item)? {
                Ok(r) => requests.push(r),
                Err(e) => return Err(ApiError::state_save(store, &e)),
            }
        }
        let results = futures::future::join_all(requests.iter().map(|r| entry.store.set(r))).await;
        let errors: Vec<StateError> = results.into_iter().filter_map(Result::err).collect();
        match errors.len() {
            0 => Ok(()),
            1 if items.len() == 1 => Err(ApiError::state_save(store, &errors.into_iter().next().expect("one"))),
            _ => Err(ApiError::state_save(store, &combine(errors))),
        }
    }

    fn delete_request(entry: &StateEntry, item: &DeleteItem) -> ApiResult<DeleteRequest> {
        Ok(DeleteRequest {
            key: entry.key(&item.key)?,
            etag: item.etag.clone().filter(|e| !e.is_empty()),
            concurrency: item.concurrency,
        })
    }

    pub async fn delete_state(&self, store: &str, item: &DeleteItem) -> ApiResult<()> {
        let entry = self.state_store(store)?;
        let req = Self::delete_request(&entry, item)?;
        entry
            .store
            .delete(&req)
            .await
            .map_err(|e| ApiError::state_delete(&item.key, &e))
    }

    pub async fn delete_bulk_state(&self, store: &str, items: &[DeleteItem]) -> ApiResult<()> {
        let entry = self.state_store(store)?;
        let requests = items
            .iter()
            .map(|i| Self::delete_request(&entry, i))
            .collect::<ApiResult<Vec<_>>>()?;
        let results = futures::future::join_all(requests.iter().map(|r| entry.store.delete(r))).await;
        let errors: Vec<StateError> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::state_bulk_delete(store, &combine(errors)))
        }
    }

    pub async fn transact(&self, store: &str, ops: &[TxOp]) -> ApiResult<()> {
        let entry = self.state_store(store)?;
        if !entry.store.features().contains(&Feature::Transactional) {
            return Err(ApiError::transactions_not_supported(store));
        }
        let mut requests = Vec::with_capacity(ops.len());
        for op in ops {
            requests.push(match op {
                TxOp::Upsert(item) => match self.set_request(&entry, item)? {
                    Ok(r) => TransactionOp::Set(r),
                    Err(e) => return Err(ApiError::state_transaction(&e)),
                },
                TxOp::Delete(item) => TransactionOp::Delete(Self::delete_request(&entry, item)?),
            });
        }
        if requests.is_empty() {
            return Ok(());
        }
        entry
            .store
            .transact(&requests)
            .await
            .map_err(|e| ApiError::state_transaction(&e))
    }

    /// Runs a query (the request body's JSON) over this app's keys.
    pub async fn query_state(&self, store: &str, query: &[u8]) -> ApiResult<QueryResponse> {
        let entry = self.state_store(store)?;
        let parsed = serde_json::from_slice(query)
            .map_err(|e| e.to_string())
            .and_then(|v| Query::parse(&v))
            .map_err(|e| ApiError::state_query(store, format!("failed to parse JSON query body: {e}")))?;
        entry.store.query(&entry.prefix, &parsed).await.map_err(|e| match e {
            StateError::NotSupported(_) => ApiError::query_not_supported(),
            e => ApiError::state_query(store, e),
        })
    }

    // ---- secrets ----

    fn secret_store_checked(&self, store: &str) -> ApiResult<Arc<dyn SecretStore>> {
        let stores = self.secrets.read().expect("lock");
        if stores.is_empty() {
            return Err(ApiError::secret_stores_not_configured());
        }
        stores
            .get(store)
            .cloned()
            .ok_or_else(|| ApiError::secret_store_not_found(store))
    }

    fn secret_allowed(&self, store: &str, key: &str) -> bool {
        self.config.secret_scope(store).is_none_or(|s| s.is_allowed(key))
    }

    pub async fn get_secret(&self, store: &str, key: &str, metadata: &BTreeMap<String, String>) -> ApiResult<Secret> {
        let s = self.secret_store_checked(store)?;
        if !self.secret_allowed(store, key) {
            return Err(ApiError::secret_denied(key, store));
        }
        s.get(key, metadata)
            .await
            .map_err(|e| ApiError::secret_get(key, store, &e))
    }

    /// Every secret of `store` the app may read (denied names are left out, as Dapr does).
    pub async fn get_bulk_secret(
        &self,
        store: &str,
        metadata: &BTreeMap<String, String>,
    ) -> ApiResult<BTreeMap<String, Secret>> {
        let s = self.secret_store_checked(store)?;
        let mut all = s
            .bulk_get(metadata)
            .await
            .map_err(|e| ApiError::bulk_secret_get(store, &e))?;
        all.retain(|name, _| self.secret_allowed(store, name));
        Ok(all)
    }

    // ---- metadata ----

    pub fn metadata(&self) -> MetadataSnapshot {
        let mut extended = self.extended.read().expect("lock").clone();
        extended.insert("daprRuntimeVersion".into(), RUNTIME_VERSION.into());
        MetadataSnapshot {
            id: self.app_id.clone(),
            runtime_version: RUNTIME_VERSION.into(),
            enabled_features: self.config.enabled_features(),
            components: self.components.read().expect("lock").clone(),
            extended,
            subscriptions: self.subscriptions.read().expect("lock").clone(),
            http_endpoints: self
                .http_endpoints
                .read()
                .expect("lock")
                .iter()
                .map(|e| e.metadata.name.clone().unwrap_or_default())
                .collect(),
            app_connection: self.app_connection.clone(),
        }
    }

    pub fn set_metadata(&self, key: &str, value: &str) {
        if !key.is_empty() {
            self.extended.write().expect("lock").insert(key.into(), value.into());
        }
    }
}

/// Capabilities a state store reports: its features, plus `ACTOR` when it has both etags and transactions (as Dapr does).
pub fn state_capabilities(features: &[Feature]) -> Vec<String> {
    let mut caps: Vec<String> = features.iter().map(|f| f.as_str().to_owned()).collect();
    if features.contains(&Feature::Etag)
        && features.contains(&Feature::Transactional)
        && !features.contains(&Feature::Actor)
    {
        caps.push(Feature::Actor.as_str().to_owned());
    }
    caps
}

/// `ttlExpireTime` response metadata for items saved with a TTL.
pub fn item_metadata(item: &StateItem) -> BTreeMap<String, String> {
    item.expires_at
        .map(|t| {
            BTreeMap::from([(
                "ttlExpireTime".to_owned(),
                humantime::format_rfc3339_seconds(t).to_string(),
            )])
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::state::memory::MemoryStore;

    fn runtime_with(prefix: Option<&str>) -> Runtime {
        let rt = Runtime::new("app1", "prod", Configuration::default(), AppConnection::default());
        let info = ComponentInfo {
            name: "s".into(),
            type_: "state.in-memory".into(),
            version: "v1".into(),
            capabilities: vec![],
        };
        rt.add_state_store(info, Arc::new(MemoryStore::default()), prefix)
            .unwrap();
        rt
    }

    fn save(key: &str, v: &str) -> SaveItem {
        SaveItem {
            key: key.into(),
            value: Bytes::from(v.to_owned()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn key_prefix_strategies() {
        for (strategy, expected) in [
            (None, "app1||"),
            (Some("name"), "s||"),
            (Some("namespace"), "prod.app1||"),
            (Some("none"), ""),
            (Some("custom"), "custom||"),
        ] {
            let rt = runtime_with(strategy);
            assert_eq!(rt.state_store("s").unwrap().prefix, expected, "{strategy:?}");
        }
    }

    #[tokio::test]
    async fn keys_with_separator_are_rejected() {
        let rt = runtime_with(None);
        let err = rt.save_state("s", &[save("a||b", "1")]).await.unwrap_err();
        assert_eq!((err.status, err.code), (400, "ERR_MALFORMED_REQUEST"));
    }

    #[tokio::test]
    async fn unknown_and_missing_stores() {
        let rt = runtime_with(None);
        assert_eq!(
            rt.get_state("nope", "k").await.unwrap_err().code,
            "ERR_STATE_STORE_NOT_FOUND"
        );
        let empty = Runtime::new("a", "", Configuration::default(), AppConnection::default());
        let err = empty.get_state("s", "k").await.unwrap_err();
        assert_eq!((err.status, err.code), (500, "ERR_STATE_STORE_NOT_CONFIGURED"));
    }

    #[tokio::test]
    async fn bulk_save_reports_etag_conflicts_as_409() {
        let rt = runtime_with(None);
        rt.save_state("s", &[save("a", "1"), save("b", "2")]).await.unwrap();
        let stale = SaveItem {
            etag: Some("999".into()),
            ..save("a", "3")
        };
        let err = rt.save_state("s", &[stale.clone(), stale]).await.unwrap_err();
        assert_eq!((err.status, err.code), (409, "ERR_STATE_SAVE"));
    }

    #[tokio::test]
    async fn bad_ttl_is_an_error() {
        let rt = runtime_with(None);
        let item = SaveItem {
            metadata: BTreeMap::from([("ttlInSeconds".into(), "soon".into())]),
            ..save("a", "1")
        };
        let err = rt.save_state("s", &[item]).await.unwrap_err();
        assert_eq!(err.status, 500);
        assert!(err.message.contains("ttlInSeconds"), "{}", err.message);
    }

    #[test]
    fn actor_capability_follows_etag_and_transactions() {
        assert_eq!(
            state_capabilities(&[Feature::Etag, Feature::Transactional]),
            ["ETAG", "TRANSACTIONAL", "ACTOR"]
        );
        assert_eq!(state_capabilities(&[Feature::Etag]), ["ETAG"]);
    }
}
