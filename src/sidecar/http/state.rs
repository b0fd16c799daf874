//! HTTP state handlers: decode Dapr's JSON shapes, call the runtime, encode the answer.

use std::collections::BTreeMap;
use tracing::instrument;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiState, DaprPath, json_data, json_response, query_metadata, query_param, read_body};
use crate::components::state::{Concurrency, StateError};
use crate::echo::echo;
use crate::sidecar::error::{ApiError, ApiResult};
use crate::sidecar::state::{DeleteItem, SaveItem, TxOp, bulk_parallelism, item_metadata};

type Params = Query<Vec<(String, String)>>;

#[derive(Deserialize)]
struct ItemOptions {
    #[serde(default, alias = "Concurrency")]
    concurrency: Option<String>,
    #[serde(default, alias = "Consistency")]
    consistency: Option<String>,
}

impl ItemOptions {
    fn concurrency(options: Option<&Self>) -> Result<Concurrency, StateError> {
        let Some(o) = options else {
            return Ok(Concurrency::Unspecified);
        };
        consistency(o.consistency.as_deref())?;
        concurrency(o.concurrency.as_deref())
    }
}

/// One state item as Dapr's HTTP API writes it.
#[derive(Deserialize)]
struct HttpItem {
    #[serde(default, alias = "Key", alias = "KEY")]
    key: String,
    #[serde(default, alias = "Value", alias = "VALUE")]
    value: Option<Box<RawValue>>,
    #[serde(default, alias = "Etag", alias = "ETag", alias = "eTag", alias = "ETAG")]
    etag: Option<String>,
    #[serde(default, alias = "Metadata")]
    metadata: BTreeMap<String, String>,
    #[serde(default, alias = "Options")]
    options: Option<ItemOptions>,
}

/// Parses Dapr's concurrency names; anything else is the error Dapr's stores give (components-contrib
/// `state/request_options.go`), which daprd answers with the operation's code and a 500.
pub(crate) fn concurrency(v: Option<&str>) -> Result<Concurrency, StateError> {
    match v.unwrap_or_default() {
        "" => Ok(Concurrency::Unspecified),
        "first-write" => Ok(Concurrency::FirstWrite),
        "last-write" => Ok(Concurrency::LastWrite),
        other => Err(StateError::Backend(format!(
            "unrecognized concurrency model '{}'",
            echo(other)
        ))),
    }
}

/// Checks a consistency name (`strong`, `eventual` or none). tandem's stores are all strongly consistent, so
/// the value changes nothing, but an unknown one is refused on writes as Dapr's stores refuse it.
pub(crate) fn consistency(v: Option<&str>) -> Result<(), StateError> {
    match v.unwrap_or_default() {
        "" | "strong" | "eventual" => Ok(()),
        other => Err(StateError::Backend(format!(
            "unrecognized consistency model '{}'",
            echo(other)
        ))),
    }
}

/// Compacts a JSON value the way Dapr re-marshals it before storing.
fn stored_value(v: Option<&RawValue>) -> Bytes {
    match v {
        None => Bytes::from_static(b"null"),
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(value) => Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises")),
            Err(_) => Bytes::from(raw.get().to_owned()),
        },
    }
}

/// What a bad option value in an item is answered with: the code of the operation it came in.
type OptionError<'a> = &'a dyn Fn(&StateError) -> ApiError;

impl HttpItem {
    fn into_save(self, query_md: &BTreeMap<String, String>, bad_option: OptionError<'_>) -> ApiResult<SaveItem> {
        if self.key.is_empty() {
            return Err(ApiError::empty_key_http());
        }
        let concurrency = ItemOptions::concurrency(self.options.as_ref()).map_err(|e| bad_option(&e))?;
        let mut metadata = self.metadata;
        metadata.extend(query_md.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(SaveItem {
            value: stored_value(self.value.as_deref()),
            key: self.key,
            etag: self.etag,
            concurrency,
            metadata,
        })
    }

    fn into_delete(self, query_md: &BTreeMap<String, String>, bad_option: OptionError<'_>) -> ApiResult<DeleteItem> {
        let concurrency = ItemOptions::concurrency(self.options.as_ref()).map_err(|e| bad_option(&e))?;
        let mut metadata = self.metadata;
        metadata.extend(query_md.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(DeleteItem {
            key: self.key,
            etag: self.etag,
            concurrency,
            metadata,
        })
    }
}

async fn json_body(st: &ApiState, body: Body) -> ApiResult<Bytes> {
    read_body(body, st.max_body).await.map_err(ApiError::malformed_request)
}

/// Decodes a save body (`[{"key","value","etag","metadata","options"}]`) into the items to save, with the
/// request's `metadata.*` query parameters merged into each item's metadata.
pub fn decode_save(store: &str, body: &[u8], query_md: &BTreeMap<String, String>) -> ApiResult<Vec<SaveItem>> {
    let items: Vec<HttpItem> = serde_json::from_slice(body).map_err(ApiError::malformed_request)?;
    items
        .into_iter()
        .map(|i| i.into_save(query_md, &|e| ApiError::state_save(store, e)))
        .collect()
}

/// Decodes a bulk-get body (`{"keys", "parallelism"}`): the keys and the parallelism as Dapr applies it.
pub fn decode_bulk_get(body: &[u8]) -> ApiResult<(Vec<String>, usize)> {
    let req: BulkGetRequest = serde_json::from_slice(body).map_err(ApiError::malformed_request)?;
    let parallelism = bulk_parallelism(req.parallelism);
    Ok((req.keys, parallelism))
}

/// Decodes a transaction body (`{"operations": [{"operation", "request"}], "metadata"}`) into its operations,
/// with the body's and the query's metadata merged into each item's.
pub fn decode_transaction(_store: &str, body: &[u8], query_md: &BTreeMap<String, String>) -> ApiResult<Vec<TxOp>> {
    let req: TransactionRequest = serde_json::from_slice(body).map_err(ApiError::malformed_request)?;
    let mut md = req.metadata;
    md.extend(query_md.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut ops = Vec::with_capacity(req.operations.len());
    // Dapr hands option values to the store's transaction, which refuses an unknown one as a failed transaction.
    let bad_option: OptionError<'_> = &ApiError::state_transaction;
    for op in req.operations {
        if op.request.key.contains("||") {
            return Err(ApiError::illegal_key(&op.request.key));
        }
        ops.push(match op.operation.as_str() {
            "upsert" => TxOp::Upsert(op.request.into_save(&md, bad_option)?),
            "delete" => TxOp::Delete(op.request.into_delete(&md, bad_option)?),
            other => return Err(ApiError::unsupported_operation(other)),
        });
    }
    Ok(ops)
}

#[instrument(level = "debug", name = "http.state.save", skip_all, fields(store = %echo(path.store())))]
pub async fn save(
    State(st): State<ApiState>,
    path: DaprPath,
    Query(params): Params,
    body: Body,
) -> ApiResult<StatusCode> {
    let store = path.store().to_owned();
    st.rt.state.store(&store)?;
    let items = decode_save(&store, &json_body(&st, body).await?, &query_metadata(&params))?;
    if !items.is_empty() {
        st.rt.state.save(&store, &items).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[instrument(level = "debug", name = "http.state.get", skip_all, fields(store = %echo(path.store())))]
pub async fn get(
    State(st): State<ApiState>,
    path: DaprPath,
    uri: axum::http::Uri,
    Query(_params): Params,
) -> ApiResult<Response> {
    let (store, key) = (path.store().to_owned(), path.key(&uri));
    let Some(item) = st.rt.state.get(&store, &key).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(etag) = item.etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    for (k, v) in item_metadata(&item) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(format!("metadata.{k}")), HeaderValue::from_str(&v)) {
            headers.insert(name, value);
        }
    }
    Ok((StatusCode::OK, headers, item.data).into_response())
}

#[instrument(level = "debug", name = "http.state.delete", skip_all, fields(store = %echo(path.store())))]
pub async fn delete(
    State(st): State<ApiState>,
    path: DaprPath,
    uri: axum::http::Uri,
    Query(params): Params,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let (store, key) = (path.store().to_owned(), path.key(&uri));
    let etag = headers
        .get(header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let concurrency = consistency(query_param(&params, "consistency"))
        .and_then(|()| concurrency(query_param(&params, "concurrency")))
        .map_err(|e| ApiError::state_delete(&key, &e))?;
    let item = DeleteItem {
        key,
        etag,
        concurrency,
        metadata: query_metadata(&params),
    };
    st.rt.state.delete(&store, &item).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct BulkGetRequest {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    parallelism: i64,
}

#[derive(Serialize)]
struct BulkGetItem {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[instrument(level = "debug", name = "http.state.bulk_get", skip_all, fields(store = %echo(path.store())))]
pub async fn bulk_get(State(st): State<ApiState>, path: DaprPath, body: Body) -> ApiResult<Response> {
    let store = path.store().to_owned();
    st.rt.state.store(&store)?;
    let (keys, parallelism) = decode_bulk_get(&json_body(&st, body).await?)?;
    let items = st.rt.state.bulk_get(&store, &keys, parallelism).await?;
    let out: Vec<BulkGetItem> = items
        .into_iter()
        .map(|b| match (b.item, b.error) {
            (_, Some(error)) => BulkGetItem {
                key: b.key,
                data: None,
                etag: None,
                metadata: BTreeMap::new(),
                error: Some(error),
            },
            (Some(item), None) => BulkGetItem {
                key: b.key,
                data: Some(json_data(&item.data)),
                metadata: item_metadata(&item),
                etag: item.etag,
                error: None,
            },
            (None, None) => BulkGetItem {
                key: b.key,
                data: None,
                etag: None,
                metadata: BTreeMap::new(),
                error: None,
            },
        })
        .collect();
    Ok(json_response(StatusCode::OK, out))
}

#[derive(Deserialize)]
struct TransactionRequest {
    #[serde(default)]
    operations: Vec<TransactionOperation>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TransactionOperation {
    operation: String,
    request: HttpItem,
}

#[instrument(level = "debug", name = "http.state.transaction", skip_all, fields(store = %echo(path.store())))]
pub async fn transaction(
    State(st): State<ApiState>,
    path: DaprPath,
    Query(params): Params,
    body: Body,
) -> ApiResult<StatusCode> {
    let store = path.store().to_owned();
    st.rt.state.store(&store)?;
    let ops = decode_transaction(&store, &json_body(&st, body).await?, &query_metadata(&params))?;
    st.rt.state.transact(&store, &ops).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct QueryResult {
    key: String,
    data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
}

#[derive(Serialize)]
struct QueryBody {
    results: Vec<QueryResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[instrument(level = "debug", name = "http.state.query", skip_all, fields(store = %echo(path.store())))]
pub async fn query(State(st): State<ApiState>, path: DaprPath, body: Body) -> ApiResult<Response> {
    let store = path.store().to_owned();
    st.rt.state.store(&store)?;
    let bytes = read_body(body, st.max_body).await.map_err(ApiError::body_read)?;
    let resp = st.rt.state.query(&store, &bytes).await?;
    if resp.results.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let results = resp
        .results
        .into_iter()
        .map(|r| QueryResult {
            data: json_data(&r.data),
            key: r.key,
            etag: r.etag,
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        QueryBody {
            results,
            token: resp.token,
        },
    ))
}
