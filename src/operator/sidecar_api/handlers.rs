//! The sidecar API's endpoints: list what applies to an app, get a Configuration, watch for changes, and sign the
//! app's workload certificate.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, instrument};

use super::cache::Change;
use super::{ApiError, ApiState, Caller};
use crate::control_plane::identity::SpiffeId;
use crate::control_plane::kinds::{DaprKind, DaprResource};
use crate::control_plane::wire::{
    CertificateRequest, CertificateResponse, EventType, ResourceEvent, SidecarResources, heartbeat_line,
};
use crate::operator::ca;
use crate::operator::secrets;

#[derive(Debug, Deserialize)]
pub struct AppQuery {
    #[serde(rename = "appId")]
    app_id: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct NamespaceQuery {
    namespace: Option<String>,
}

impl AppQuery {
    fn app_id(&self) -> Result<&str, ApiError> {
        self.app_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ApiError::bad_request("query parameter appId is required (the id of the calling app)"))
    }
}

/// Authenticates, checks the caller may see `app_id` in the requested namespace, and that the cache is complete.
async fn admit(
    st: &ApiState,
    headers: &HeaderMap,
    app_id: Option<&str>,
    namespace: Option<&str>,
) -> Result<Caller, ApiError> {
    let caller = st.auth.authenticate(headers).await?;
    caller.authorize(app_id, namespace)?;
    if !st.cache.is_synced() {
        return Err(ApiError::not_ready());
    }
    Ok(caller)
}

async fn resolve(st: &ApiState, res: &DaprResource) -> Result<DaprResource, ApiError> {
    secrets::resolve_with(&st.client, res.clone())
        .await
        .map_err(|e| ApiError::secrets(e.to_string()))
}

/// `GET /v1/resources?appId=<id>`: the Components, Subscriptions, HTTPEndpoints and Resiliencies of the caller's
/// namespace that are in scope for the app, secrets resolved.
#[instrument(skip_all, fields(app_id = q.app_id))]
pub async fn resources(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<AppQuery>,
) -> Result<Json<SidecarResources>, ApiError> {
    let app_id = q.app_id()?;
    let caller = admit(&st, &headers, Some(app_id), q.namespace.as_deref()).await?;
    let mut out = SidecarResources::default();
    for res in st.cache.namespace(&caller.namespace) {
        if res.kind() == DaprKind::Configuration || !res.in_scope(app_id) {
            continue;
        }
        out.push(resolve(&st, &res).await?);
    }
    Ok(Json(out))
}

/// `GET /v1/configurations/<name>`: the Configuration of that name in the caller's namespace.
#[instrument(skip_all, fields(name))]
pub async fn configuration(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let caller = admit(&st, &headers, None, q.namespace.as_deref()).await?;
    match st.cache.get(DaprKind::Configuration, &caller.namespace, &name) {
        Some(res) => Ok(Json(res.to_json()).into_response()),
        None => Err(ApiError::not_found(
            "ERR_CONFIGURATION_NOT_FOUND",
            format!(
                "configuration {name} not found in namespace {}; create it or correct the dapr.io/config annotation",
                caller.namespace
            ),
        )),
    }
}

/// `GET /v1/watch?appId=<id>`: an NDJSON stream of the changes the app sees, with heartbeats.
#[instrument(skip_all, fields(app_id = q.app_id))]
pub async fn watch(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<AppQuery>,
) -> Result<Response, ApiError> {
    let app_id = q.app_id()?.to_owned();
    let caller = admit(&st, &headers, Some(&app_id), q.namespace.as_deref()).await?;
    // Subscribe before answering: once the client has the response headers, it sees every later change.
    let changes = st.cache.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let span = tracing::info_span!("watch_stream", namespace = caller.namespace, app_id);
    tokio::spawn(pump(st, caller.namespace, app_id, changes, tx).instrument(span));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Forwards the app's changes into its stream until the client leaves, falls behind or the server stops.
async fn pump(
    st: ApiState,
    namespace: String,
    app_id: String,
    mut changes: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    tracing::debug!("sidecar connected for updates");
    let mut heartbeat = tokio::time::interval(st.heartbeat);
    loop {
        let line = tokio::select! {
            _ = st.shutdown.cancelled() => break,
            _ = tx.closed() => break,
            _ = heartbeat.tick() => heartbeat_line(),
            change = changes.recv() => match change {
                Ok(change) => match event_line(&st, &change, &namespace, &app_id).await {
                    Some(line) => line,
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("the stream fell {n} changes behind; closing it so the sidecar reconnects and re-lists");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if tx.send(Ok(Bytes::from(line))).await.is_err() {
            break;
        }
    }
    tracing::debug!("sidecar disconnected from updates");
}

/// The line for `change` as `app_id` in `namespace` sees it, if it sees it at all.
async fn event_line(st: &ApiState, change: &Change, namespace: &str, app_id: &str) -> Option<String> {
    if change.namespace() != namespace {
        return None;
    }
    let (event_type, res) = change.for_app(app_id)?;
    let resource = if event_type == EventType::Deleted {
        (*res).clone()
    } else {
        match resolve(st, &res).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("not sending the change of {} {}: {}", res.kind(), res.name(), e.message);
                return None;
            }
        }
    };
    Some(ResourceEvent { event_type, resource }.to_line())
}

/// `POST /v1/certificate`: a workload certificate for the app of the pod the caller's token is bound to, in the
/// trust domain of that pod's Configuration, valid as long as the `daprsystem` Configuration says. What the
/// request asks for besides its public key is ignored: the identity is the pod's, never the caller's claim.
#[instrument(skip_all)]
pub async fn certificate(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CertificateResponse>, ApiError> {
    let Some(authority) = st.ca.clone() else {
        return Err(ApiError::not_found(
            "ERR_CA_DISABLED",
            "this operator does not issue certificates (mTLS is disabled in the chart)",
        ));
    };
    let caller = st.auth.authenticate(&headers).await?;
    let app_id = caller.own_app_id()?.to_owned();
    let req: CertificateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a certificate request {{\"csr\": PEM}}: {e}")))?;
    if !st.cache.is_synced() {
        return Err(ApiError::not_ready());
    }
    let trust_domain = match caller.config.as_deref() {
        None => "public".to_owned(),
        Some(name) => match st
            .cache
            .get(DaprKind::Configuration, &caller.namespace, name)
            .as_deref()
        {
            Some(DaprResource::Configuration(c)) => c
                .spec
                .access_control
                .as_ref()
                .map(|a| a.trust_domain.trim().to_owned())
                .filter(|td| !td.is_empty())
                .unwrap_or_else(|| "public".into()),
            _ => "public".to_owned(),
        },
    };
    let id = SpiffeId::new(&trust_domain, &caller.namespace, &app_id).map_err(ApiError::bad_request)?;
    let system = st
        .cache
        .get(DaprKind::Configuration, &st.system_namespace, ca::SYSTEM_CONFIGURATION);
    let settings = ca::mtls_settings(match system.as_deref() {
        Some(DaprResource::Configuration(c)) => Some(c),
        _ => None,
    });
    let issued = authority
        .sign(&req.csr, &id, settings.workload_cert_ttl, settings.allowed_clock_skew)
        .map_err(ApiError::bad_request)?;
    tracing::info!(%id, pod = caller.pod.as_deref().unwrap_or_default(), "issued a workload certificate");
    Ok(Json(CertificateResponse {
        spiffe_id: id.to_string(),
        certificate_chain: issued.chain_pem,
        trust_bundle: issued.trust_bundle_pem,
        valid_until: issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }))
}
