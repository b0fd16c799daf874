//! The configuration building block: reading items from configuration stores (`GET /v1.0/configuration/<store>`,
//! gRPC `GetConfiguration`) and subscriptions to their changes. A subscription made over HTTP delivers each
//! change to the app (`POST /configuration/<store>/<key>`, through the app channel: HTTP, or `OnInvoke` for a
//! gRPC app, as Dapr's app channel does); one made over gRPC streams its changes back on the call.
//!
//! This module owns every subscription: its id, the token that stops it, and the bound on how many exist. A
//! subscription ends on unsubscribe, when its component is replaced or removed, when its gRPC stream goes away,
//! and at shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use axum::body::Body;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::components::Kind;
use crate::components::configuration::{ChangeHandler, ConfigurationStore, Items, SubscribeRequest};
use crate::sidecar::app_channel::AppChannel;
use crate::sidecar::components::{Change, ComponentTable, Handle, Loaded};
use crate::sidecar::error::{ApiError, ApiResult};

/// The most subscriptions one sidecar (one app) holds at once.
pub const MAX_SUBSCRIPTIONS: usize = 512;
/// Changes a gRPC subscriber may fall behind before the store's watch waits for it.
const STREAM_BUFFER: usize = 64;

/// Characters a key cannot carry as they are in the path of the app's route.
const PATH_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A change as the app receives it (Dapr's `configuration.UpdateEvent`), and each message of a gRPC
/// subscription (the first carries only the id).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct UpdateEvent {
    pub id: String,
    pub items: Items,
}

/// Who made a subscription: the HTTP API (changes go to the app) or a gRPC stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    App,
    Stream,
}

struct Subscription {
    store: String,
    /// The component it watches; when the table holds another one under that name, the subscription ends.
    component: Weak<Loaded>,
    origin: Origin,
    stop: CancellationToken,
}

type Subscriptions = Arc<Mutex<HashMap<String, Subscription>>>;

fn lock(subs: &Subscriptions) -> std::sync::MutexGuard<'_, HashMap<String, Subscription>> {
    subs.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct ConfigurationApi {
    table: Arc<ComponentTable>,
    app: Option<Arc<AppChannel>>,
    subscriptions: Subscriptions,
    /// Cancelled at shutdown: every subscription's token is a child of it.
    closing: CancellationToken,
    limit: usize,
}

/// A gRPC subscription's messages: the id first, then each change. Dropping it ends the subscription.
pub type ConfigurationStream = BoxStream<'static, UpdateEvent>;

/// Ends a stream's subscription when the stream is dropped (the client went away).
struct StreamGuard {
    subscriptions: Subscriptions,
    id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.subscriptions).remove(&self.id) {
            s.stop.cancel();
        }
    }
}

impl ConfigurationApi {
    pub fn new(table: Arc<ComponentTable>, app: Option<Arc<AppChannel>>) -> Self {
        ConfigurationApi {
            table,
            app,
            subscriptions: Arc::default(),
            closing: CancellationToken::new(),
            limit: MAX_SUBSCRIPTIONS,
        }
    }

    /// The same API holding at most `limit` subscriptions.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Configuration store `name`, with Dapr's errors when there are none or it is not one of them.
    fn store(&self, name: &str) -> ApiResult<Handle<dyn ConfigurationStore>> {
        if self.table.is_empty(Kind::Configuration) {
            return Err(ApiError::configuration_stores_not_configured());
        }
        self.table
            .get::<dyn ConfigurationStore>(name)
            .ok_or_else(|| ApiError::configuration_store_not_found(name))
    }

    /// The items of `keys` in store `store` (every item when `keys` is empty).
    pub async fn get(&self, store: &str, keys: &[String], metadata: &BTreeMap<String, String>) -> ApiResult<Items> {
        let handle = self.store(store)?;
        handle
            .get(keys, metadata)
            .await
            .map_err(|e| ApiError::configuration_get(keys, store, e))
    }

    /// Subscribes the app to changes of `req.keys` in `store` (HTTP API): each change is posted to the app.
    /// Answers the subscription id.
    pub async fn subscribe_app(&self, store: &str, req: SubscribeRequest) -> ApiResult<String> {
        let handle = self.store(store)?;
        let Some(app) = self.app.clone() else {
            return Err(ApiError::app_channel_nil("cannot subscribe to configuration updates"));
        };
        let store_name = store.to_owned();
        let (id, _) = self
            .start(handle, store, req, Origin::App, move |id, stop| {
                deliver_to_app(app, store_name, id, stop)
            })
            .await?;
        Ok(id)
    }

    /// Subscribes a gRPC caller to changes of `req.keys` in `store`: the stream's first message carries the
    /// id, the next ones the changes. The subscription ends when the stream is dropped.
    pub async fn subscribe_stream(&self, store: &str, req: SubscribeRequest) -> ApiResult<ConfigurationStream> {
        let handle = self.store(store)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<UpdateEvent>(STREAM_BUFFER);
        let (id, stop) = self
            .start(handle, store, req, Origin::Stream, move |id, stop| {
                Arc::new(move |items: Items| {
                    let (tx, stop, id) = (tx.clone(), stop.clone(), id.clone());
                    Box::pin(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tx.send(UpdateEvent { id, items }) => {}
                        }
                    })
                })
            })
            .await?;
        let guard = StreamGuard {
            subscriptions: self.subscriptions.clone(),
            id: id.clone(),
        };
        let first = UpdateEvent {
            id,
            items: Items::new(),
        };
        let changes = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = futures::stream::once(async move { first })
            .chain(changes)
            .take_until(stop.cancelled_owned())
            .map(move |event| {
                let _ = &guard;
                event
            });
        Ok(stream.boxed())
    }

    /// Registers a subscription within the limit and starts the store's watch.
    async fn start(
        &self,
        handle: Handle<dyn ConfigurationStore>,
        store: &str,
        req: SubscribeRequest,
        origin: Origin,
        handler: impl FnOnce(String, CancellationToken) -> ChangeHandler,
    ) -> ApiResult<(String, CancellationToken)> {
        let id = uuid::Uuid::new_v4().to_string();
        let stop = self.closing.child_token();
        {
            let mut subs = lock(&self.subscriptions);
            if subs.len() >= self.limit {
                return Err(ApiError::configuration_subscribe(
                    &req.keys,
                    store,
                    format!(
                        "this app already has {} configuration subscriptions, the most tandem allows: unsubscribe \
                         from some first",
                        self.limit
                    ),
                ));
            }
            subs.insert(
                id.clone(),
                Subscription {
                    store: store.to_owned(),
                    component: Arc::downgrade(&handle.component),
                    origin,
                    stop: stop.clone(),
                },
            );
        }
        let started = handle
            .subscribe(&req, handler(id.clone(), stop.clone()), stop.clone())
            .await;
        if let Err(e) = started {
            self.cancel(&id);
            return Err(ApiError::configuration_subscribe(&req.keys, store, e));
        }
        // The component may have been replaced or the sidecar begun to stop while the watch started.
        self.end_stale();
        if self.closing.is_cancelled() {
            self.cancel(&id);
        }
        Ok((id, stop))
    }

    /// Ends subscription `id` made over HTTP on `store` (`GET .../<id>/unsubscribe`).
    pub fn unsubscribe(&self, store: &str, id: &str) -> ApiResult<()> {
        self.store(store)?;
        let mut subs = lock(&self.subscriptions);
        match subs.get(id) {
            Some(s) if s.store == store => {
                if let Some(s) = subs.remove(id) {
                    s.stop.cancel();
                }
                Ok(())
            }
            _ => Err(ApiError::configuration_unsubscribe(
                id,
                format!("subscription with id {} does not exist", crate::echo::echo(id)),
            )),
        }
    }

    /// Ends the gRPC subscription `id` (gRPC `UnsubscribeConfiguration`: the id alone names it, as in Dapr);
    /// its stream ends. False when no gRPC subscription has that id.
    pub fn unsubscribe_stream(&self, id: &str) -> bool {
        let mut subs = lock(&self.subscriptions);
        if subs.get(id).is_some_and(|s| s.origin == Origin::Stream) {
            if let Some(s) = subs.remove(id) {
                s.stop.cancel();
            }
            return true;
        }
        false
    }

    /// How many subscriptions exist.
    pub fn subscription_count(&self) -> usize {
        lock(&self.subscriptions).len()
    }

    fn cancel(&self, id: &str) {
        if let Some(s) = lock(&self.subscriptions).remove(id) {
            s.stop.cancel();
        }
    }

    /// Ends every subscription whose component is no longer the one the table holds under its name.
    fn end_stale(&self) {
        let mut subs = lock(&self.subscriptions);
        subs.retain(|_, s| {
            let current = self
                .table
                .loaded(Kind::Configuration, &s.store)
                .is_some_and(|c| std::ptr::eq(Arc::as_ptr(&c), s.component.as_ptr()));
            if !current {
                s.stop.cancel();
            }
            current
        });
    }

    /// Follows the component table: a configuration store replaced or removed ends its subscriptions (the new
    /// component starts with none, as in Dapr, where a reload closes the store).
    /// Follows from the call on (the returned future need not have started to see a change).
    pub fn follow(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (_, changes) = self.table.subscribe();
        self.follow_changes(changes)
    }

    async fn follow_changes(self: Arc<Self>, mut changes: crate::sidecar::components::Changes) {
        loop {
            tokio::select! {
                _ = self.closing.cancelled() => return,
                change = changes.next() => match change {
                    None => return,
                    Some(Change::Replaced { kind: Kind::Configuration, .. })
                    | Some(Change::Removed { kind: Kind::Configuration, .. })
                    | Some(Change::Resync) => self.end_stale(),
                    Some(_) => {}
                },
            }
        }
    }

    /// Shutdown: ends every subscription (gRPC streams finish, so the servers can drain).
    pub fn shutdown(&self) {
        self.closing.cancel();
        let all: Vec<Subscription> = lock(&self.subscriptions).drain().map(|(_, s)| s).collect();
        for s in all {
            s.stop.cancel();
        }
    }
}

/// The route a change of `key` in `store` is posted to.
fn app_route(store: &str, key: &str) -> String {
    format!(
        "/configuration/{}/{}",
        percent_encoding::utf8_percent_encode(store, PATH_UNSAFE),
        percent_encoding::utf8_percent_encode(key, PATH_UNSAFE)
    )
}

/// Posts each change to the app, once per key it touched, with the whole event as the body (as Dapr does); an
/// answer other than 200 is logged.
fn deliver_to_app(app: Arc<AppChannel>, store: String, id: String, stop: CancellationToken) -> ChangeHandler {
    Arc::new(move |items: Items| {
        let (app, store, stop) = (app.clone(), store.clone(), stop.clone());
        let event = UpdateEvent { id: id.clone(), items };
        Box::pin(async move {
            let body = match serde_json::to_vec(&event) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => {
                    tracing::error!("encoding a configuration update: {e}");
                    return;
                }
            };
            for key in event.items.keys() {
                let req = axum::http::Request::post(app_route(&store, key))
                    .header("content-type", "application/json")
                    .body(Body::from(body.clone()));
                let req = match req {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(
                            "building the configuration update for key {}: {e}",
                            crate::echo::echo(key)
                        );
                        continue;
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    answer = app.invoke_method(req) => match answer {
                        Ok(resp) if resp.status() == axum::http::StatusCode::OK => {}
                        Ok(resp) => tracing::error!(
                            "error sending configuration item to the app: error sending configuration item to application, status {}",
                            resp.status().as_u16()
                        ),
                        Err(e) => tracing::error!("error sending configuration item to the app: {e}"),
                    },
                }
            }
        })
    })
}

#[cfg(test)]
mod tests;
