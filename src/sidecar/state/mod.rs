//! The state building block: Dapr's state API (get, bulk get, save, delete, bulk delete, transactions, query) over
//! the loaded state stores, with Dapr's key scheme (`<keyPrefix>||<key>`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::components::state::{
    Concurrency, DeleteRequest, Feature, Query, QueryResponse, SetRequest, StateError, StateItem, StateStore,
    TransactionOp,
};
use crate::components::{Kind, Metadata, metadata::parse_bool};
use crate::echo::echo;
use crate::sidecar::components::{ComponentTable, Handle, Loaded};
use crate::sidecar::error::{ApiError, ApiResult};

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

/// The state API over the loaded state stores.
#[derive(Clone)]
pub struct State {
    table: Arc<ComponentTable>,
    app_id: String,
}

/// A state store in use.
pub struct Store {
    handle: Handle<dyn StateStore>,
}

/// The prefix a state store's keys are stored under (`""` or `"<prefix>||"`), worked out when it is admitted.
struct KeyPrefix(String);

impl std::ops::Deref for Store {
    type Target = dyn StateStore;
    fn deref(&self) -> &Self::Target {
        &*self.handle
    }
}

impl Store {
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// The prefix its keys are stored under (`""` or `"<prefix>||"`).
    pub fn prefix(&self) -> &str {
        self.handle
            .component
            .settings::<KeyPrefix>()
            .map(|p| p.0.as_str())
            .unwrap_or_default()
    }

    fn key(&self, key: &str) -> ApiResult<String> {
        if key.contains("||") {
            return Err(ApiError::illegal_key(key).on_resource("state", self.name()));
        }
        Ok(format!("{}{key}", self.prefix()))
    }
}

/// The key prefix of a state store with Dapr's `keyPrefix` strategy (`appid` default, `name`, `namespace`,
/// `none` or a literal): `""` or `"<prefix>||"`.
pub fn key_prefix(md: &Metadata) -> Result<String, String> {
    let given = md.get("keyPrefix");
    let strategy = given.unwrap_or("appid").to_ascii_lowercase();
    let prefix = match strategy.as_str() {
        "" | "appid" => md.app_id.clone(),
        "name" => md.name.clone(),
        "none" => String::new(),
        "namespace" if !md.namespace.is_empty() && !md.app_id.is_empty() => {
            format!("{}.{}", md.namespace, md.app_id)
        }
        "namespace" => md.app_id.clone(),
        _ => given.unwrap_or_default().to_owned(),
    };
    if prefix.contains("||") {
        return Err(format!("keyPrefix {prefix:?} can't contain '||'"));
    }
    Ok(if prefix.is_empty() {
        prefix
    } else {
        format!("{prefix}||")
    })
}

/// What a state store must satisfy before it is loaded: a valid `keyPrefix`, and at most one store with
/// `actorStateStore: true` (a store replacing itself is fine).
pub fn admit(table: &ComponentTable, candidate: &Loaded) -> Result<(), String> {
    candidate.set_settings(KeyPrefix(key_prefix(&candidate.metadata)?));
    if is_actor_store(candidate)
        && let Some(other) = table
            .of_kind(Kind::State)
            .into_iter()
            .find(|o| o.name != candidate.name && is_actor_store(o))
    {
        return Err(format!(
            "detected duplicate actor state store: {} and {}",
            other.name, candidate.name
        ));
    }
    Ok(())
}

fn is_actor_store(c: &Loaded) -> bool {
    c.metadata.get("actorStateStore").and_then(parse_bool) == Some(true)
}

/// `ttlInSeconds` from request metadata: an integer from -1 to 2^31-1 (Dapr's range; longer would reach past
/// the dates a timestamp can hold).
pub fn ttl(metadata: &BTreeMap<String, String>) -> Result<Option<i64>, StateError> {
    match metadata.get("ttlInSeconds") {
        None => Ok(None),
        Some(v) => match v.trim().parse::<i64>() {
            Ok(t) if (-1..=i64::from(i32::MAX)).contains(&t) => Ok(Some(t)),
            Ok(_) => Err(StateError::Backend(
                "incorrect value for metadata 'ttlInSeconds': must be -1 or greater".into(),
            )),
            Err(e) => Err(StateError::Backend(format!(
                "incorrect value for metadata 'ttlInSeconds': {:?}: {e}",
                echo(v)
            ))),
        },
    }
}

/// The most lookups one bulk get runs at a time.
pub const MAX_PARALLELISM: usize = 100;

/// How many lookups a bulk get runs at a time for the `parallelism` a request asks for. Dapr runs every key at
/// once for 0 or a negative value (components-contrib `state/bulk.go`), and as many as asked otherwise; tandem
/// does the same up to [`MAX_PARALLELISM`], so no value (negative, zero or huge) is an error or a burden.
pub fn bulk_parallelism(requested: i64) -> usize {
    match usize::try_from(requested) {
        Ok(n) if n > 0 => n.min(MAX_PARALLELISM),
        _ => MAX_PARALLELISM,
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

/// The writes of one bulk save or bulk delete, in request order. On a transactional store they are one
/// transaction: every write or none (an etag conflict on the third of five keys leaves all five as they were),
/// and a key named twice ends as its last write leaves it, on every backend. Dapr hands bulk writes to the store
/// one by one in parallel, so a duplicate key's outcome is a race and a conflict leaves the other writes
/// applied; tandem keeps Dapr's answers (the same codes and statuses) and makes the outcome deterministic.
/// A store without transactions gets the writes one at a time, in order, and every failure is reported.
async fn write_all(entry: &Store, ops: Vec<TransactionOp>) -> Result<(), StateError> {
    if ops.is_empty() {
        return Ok(());
    }
    if entry.features().contains(&Feature::Transactional) {
        return entry.transact(&ops).await;
    }
    let mut errors = vec![];
    for op in &ops {
        let done = match op {
            TransactionOp::Set(r) => entry.set(r).await,
            TransactionOp::Delete(r) => entry.delete(r).await,
        };
        errors.extend(done.err());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(combine(errors))
    }
}

impl State {
    pub fn new(table: Arc<ComponentTable>, app_id: &str) -> Self {
        State {
            table,
            app_id: app_id.to_owned(),
        }
    }

    /// State store `name`: 400 ERR_STATE_STORE_NOT_FOUND, or 500 ERR_STATE_STORE_NOT_CONFIGURED when there is none.
    pub fn store(&self, name: &str) -> ApiResult<Store> {
        let handle = self.table.get::<dyn StateStore>(name).ok_or_else(|| {
            if self.table.is_empty(Kind::State) {
                ApiError::state_stores_not_configured(name).for_app(&self.app_id)
            } else {
                ApiError::state_store_not_found(name).for_app(&self.app_id)
            }
        })?;
        if handle.component.settings::<KeyPrefix>().is_none() {
            // Put in the table without being admitted (tests do): work the prefix out now, and refuse a bad one
            // rather than store keys unprefixed.
            let prefix = key_prefix(handle.metadata())
                .map_err(|e| ApiError::state_get("", name, &StateError::Backend(format!("state store {name}: {e}"))))?;
            handle.component.set_settings(KeyPrefix(prefix));
        }
        Ok(Store { handle })
    }

    pub async fn get(&self, store: &str, key: &str) -> ApiResult<Option<StateItem>> {
        let entry = self.store(store)?;
        let full = entry.key(key)?;
        entry.get(&full).await.map_err(|e| ApiError::state_get(key, store, &e))
    }

    pub async fn bulk_get(&self, store: &str, keys: &[String], parallelism: usize) -> ApiResult<Vec<BulkItem>> {
        let entry = self.store(store)?;
        let full = keys.iter().map(|k| entry.key(k)).collect::<ApiResult<Vec<_>>>()?;
        let results = entry.bulk_get(&full, parallelism).await;
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

    fn set_request(&self, entry: &Store, item: &SaveItem) -> ApiResult<Result<SetRequest, StateError>> {
        let key = entry.key(&item.key)?;
        Ok(ttl(&item.metadata).map(|ttl| SetRequest {
            key,
            value: item.value.clone(),
            etag: item.etag.clone().filter(|e| !e.is_empty()),
            concurrency: item.concurrency,
            ttl,
        }))
    }

    pub async fn save(&self, store: &str, items: &[SaveItem]) -> ApiResult<()> {
        let entry = self.store(store)?;
        let mut requests = Vec::with_capacity(items.len());
        for item in items {
            match self.set_request(&entry, item)? {
                Ok(r) => requests.push(r),
                Err(e) => return Err(ApiError::state_save(store, &e)),
            }
        }
        let written = if let [one] = requests.as_slice() {
            entry.set(one).await
        } else {
            write_all(&entry, requests.into_iter().map(TransactionOp::Set).collect()).await
        };
        written.map_err(|e| ApiError::state_save(store, &e))
    }

    fn delete_request(entry: &Store, item: &DeleteItem) -> ApiResult<DeleteRequest> {
        Ok(DeleteRequest {
            key: entry.key(&item.key)?,
            etag: item.etag.clone().filter(|e| !e.is_empty()),
            concurrency: item.concurrency,
        })
    }

    pub async fn delete(&self, store: &str, item: &DeleteItem) -> ApiResult<()> {
        let entry = self.store(store)?;
        let req = Self::delete_request(&entry, item)?;
        entry
            .delete(&req)
            .await
            .map_err(|e| ApiError::state_delete(&item.key, &e))
    }

    pub async fn bulk_delete(&self, store: &str, items: &[DeleteItem]) -> ApiResult<()> {
        let entry = self.store(store)?;
        let ops = items
            .iter()
            .map(|i| Self::delete_request(&entry, i).map(TransactionOp::Delete))
            .collect::<ApiResult<Vec<_>>>()?;
        write_all(&entry, ops)
            .await
            .map_err(|e| ApiError::state_bulk_delete(store, &e))
    }

    pub async fn transact(&self, store: &str, ops: &[TxOp]) -> ApiResult<()> {
        let entry = self.store(store)?;
        if !entry.features().contains(&Feature::Transactional) {
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
            .transact(&requests)
            .await
            .map_err(|e| ApiError::state_transaction(&e))
    }

    /// Runs a query (the request body's JSON) over this app's keys.
    pub async fn query(&self, store: &str, query: &[u8]) -> ApiResult<QueryResponse> {
        let entry = self.store(store)?;
        let parsed = serde_json::from_slice(query)
            .map_err(|e| e.to_string())
            .and_then(|v| Query::parse(&v))
            .map_err(|e| ApiError::state_query(store, format!("failed to parse JSON query body: {e}")))?;
        entry.query(entry.prefix(), &parsed).await.map_err(|e| match e {
            StateError::NotSupported(_) => ApiError::query_not_supported(),
            e => ApiError::state_query(store, e),
        })
    }
}

/// `ttlExpireTime` response metadata for items saved with a TTL.
pub fn item_metadata(item: &StateItem) -> BTreeMap<String, String> {
    item.expires_at
        .and_then(rfc3339)
        .map(|t| BTreeMap::from([("ttlExpireTime".to_owned(), t)]))
        .unwrap_or_default()
}

/// `t` as RFC 3339 (UTC, seconds), or `None` for an instant outside the years 1970–9999 (a store may hold any
/// number; formatting one out of range must not fail the read).
fn rfc3339(t: std::time::SystemTime) -> Option<String> {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (secs <= LAST).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Component;
    use crate::components::Registry;

    async fn state_with(prefix: Option<&str>) -> State {
        let table = Arc::new(ComponentTable::default());
        let mut props = vec![];
        if let Some(p) = prefix {
            props.push(("keyPrefix".to_owned(), p.to_owned()));
        }
        let md = Metadata::new("s", "app1", "prod", props);
        let instance = Registry::builtin()
            .build("state.in-memory", "v1", md.clone())
            .await
            .unwrap();
        table.insert(Loaded::new(Component::new("s", "state.in-memory", &[]), md, instance));
        State::new(table, "app1")
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
            let state = state_with(strategy).await;
            assert_eq!(state.store("s").unwrap().prefix(), expected, "{strategy:?}");
        }
        let bad = Metadata::new("s", "a", "", [("keyPrefix".to_owned(), "x||y".to_owned())]);
        assert!(key_prefix(&bad).unwrap_err().contains("can't contain '||'"));
    }

    #[tokio::test]
    async fn keys_with_separator_are_rejected() {
        let state = state_with(None).await;
        let err = state.save("s", &[save("a||b", "1")]).await.unwrap_err();
        assert_eq!((err.status, err.code), (400, "ERR_MALFORMED_REQUEST"));
    }

    #[tokio::test]
    async fn unknown_and_missing_stores() {
        let state = state_with(None).await;
        assert_eq!(
            state.get("nope", "k").await.unwrap_err().code,
            "ERR_STATE_STORE_NOT_FOUND"
        );
        let empty = State::new(Arc::new(ComponentTable::default()), "a");
        let err = empty.get("s", "k").await.unwrap_err();
        assert_eq!((err.status, err.code), (500, "ERR_STATE_STORE_NOT_CONFIGURED"));
    }

    #[tokio::test]
    async fn bulk_save_reports_etag_conflicts_as_409() {
        let state = state_with(None).await;
        state.save("s", &[save("a", "1"), save("b", "2")]).await.unwrap();
        let stale = SaveItem {
            etag: Some("999".into()),
            ..save("a", "3")
        };
        let err = state.save("s", &[stale.clone(), stale]).await.unwrap_err();
        assert_eq!((err.status, err.code), (409, "ERR_STATE_SAVE"));
    }

    #[tokio::test]
    async fn bad_ttl_is_an_error() {
        let state = state_with(None).await;
        let item = SaveItem {
            metadata: BTreeMap::from([("ttlInSeconds".into(), "soon".into())]),
            ..save("a", "1")
        };
        let err = state.save("s", &[item]).await.unwrap_err();
        assert_eq!(err.status, 500);
        assert!(err.message.contains("ttlInSeconds"), "{}", err.message);
    }
}
