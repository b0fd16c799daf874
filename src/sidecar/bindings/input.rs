//! Input bindings: once the app listens, each binding the app wants (an HTTP app answers `OPTIONS /<route>` with
//! 2xx or 405, a gRPC app lists it in `ListInputBindings`, or the component's `direction` names `input`) is read,
//! and each event goes to the app — `POST /<route>` or `OnBindingEvent` — under the component's inbound Resiliency
//! policy. The app's answer may route data on: `storeName` + `state` saves state, `to` + `data` invokes output
//! bindings (`concurrency`: sequential or parallel). Reading follows the component table and the app's health
//! (paused while unhealthy); shutdown stops reading and waits, within the grace period, for events in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use dapr::dapr::proto::runtime::v1 as rt;
use tokio_util::sync::CancellationToken;

use super::BindingsApi;
use crate::components::Kind;
use crate::components::bindings::{Binding, Event, Handler, InvokeRequest};
use crate::resiliency::{Direction, Policy, Resiliency};
use crate::sidecar::app_channel::{AppChannel, AppProtocol, CallFailure};
use crate::sidecar::components::{Change, ComponentTable};
use crate::sidecar::metrics::Metrics;
use crate::sidecar::state::{SaveItem, State};

/// How long the app has to answer whether it wants a binding's events (Dapr's `--app-binding-options-timeout`).
const OPTIONS_TIMEOUT: Duration = Duration::from_secs(3);
/// Most output bindings one answer may route its data to.
const MAX_TARGETS: usize = 64;

#[derive(Default)]
struct Inner {
    app_ready: bool,
    app_healthy: bool,
    /// Bindings being read: (name, stop).
    running: Vec<(String, CancellationToken)>,
    /// What a gRPC app answered to `ListInputBindings` (asked once, as Dapr does).
    grpc_list: Option<Vec<String>>,
}

pub struct InputBindings {
    table: Arc<ComponentTable>,
    app: Option<Arc<AppChannel>>,
    resiliency: Arc<Resiliency>,
    metrics: Arc<Metrics>,
    output: BindingsApi,
    state: State,
    grace: Duration,
    inner: tokio::sync::Mutex<Inner>,
    in_flight: Arc<AtomicUsize>,
    closing: CancellationToken,
}

/// Counts an event in flight while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything delivering one binding's events needs.
struct Delivery {
    name: String,
    route: String,
    app: Arc<AppChannel>,
    policy: Option<Policy>,
    metrics: Arc<Metrics>,
    output: BindingsApi,
    state: State,
    closing: CancellationToken,
    grace: Duration,
    in_flight: Arc<AtomicUsize>,
}

impl InputBindings {
    pub fn new(
        table: Arc<ComponentTable>,
        app: Option<Arc<AppChannel>>,
        resiliency: Arc<Resiliency>,
        metrics: Arc<Metrics>,
        app_id: &str,
        grace: Duration,
    ) -> Self {
        InputBindings {
            output: BindingsApi::new(table.clone(), metrics.clone()),
            state: State::new(table.clone(), app_id),
            table,
            app,
            resiliency,
            metrics,
            grace,
            inner: tokio::sync::Mutex::new(Inner {
                app_healthy: true,
                ..Inner::default()
            }),
            in_flight: Arc::default(),
            closing: CancellationToken::new(),
        }
    }

    /// Once the app listens: starts reading every binding it wants.
    pub async fn app_ready(&self) {
        let mut inner = self.inner.lock().await;
        inner.app_ready = true;
        self.reconcile(&mut inner).await;
    }

    /// Whether the app wants `name`'s events at `route`.
    async fn wanted(&self, inner: &mut Inner, app: &AppChannel, name: &str, route: &str) -> bool {
        match app.protocol {
            AppProtocol::Http => {
                let probe = app.call_http(Method::OPTIONS, route, Bytes::new(), "application/json", &[], false);
                match tokio::time::timeout(OPTIONS_TIMEOUT, probe).await {
                    Ok(Ok((status, _))) if (200..300).contains(&status) || status == 405 => true,
                    Ok(Ok(_)) => {
                        tracing::info!(binding = %name, "app has not subscribed to binding {name}.");
                        false
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(binding = %name, "could not invoke OPTIONS method on input binding subscription endpoint {route:?}: {e}");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(binding = %name, "the app did not answer OPTIONS {route} within {OPTIONS_TIMEOUT:?}; not reading the binding");
                        false
                    }
                }
            }
            AppProtocol::Grpc => {
                if inner.grpc_list.is_none() {
                    let ask = app.callback((), &[], false, |mut c, r| async move { c.list_input_bindings(r).await });
                    let list = match tokio::time::timeout(OPTIONS_TIMEOUT, ask).await {
                        Ok(Ok(Ok(resp))) => resp.bindings,
                        Ok(Ok(Err(s))) if s.code() == tonic::Code::Unimplemented => vec![],
                        Ok(Ok(Err(s))) => {
                            tracing::warn!("ListInputBindings failed: {}", s.message());
                            vec![]
                        }
                        Ok(Err(e)) => {
                            tracing::warn!("ListInputBindings failed: {e}");
                            vec![]
                        }
                        Err(_) => {
                            tracing::warn!("the app did not answer ListInputBindings within {OPTIONS_TIMEOUT:?}");
                            vec![]
                        }
                    };
                    inner.grpc_list = Some(list);
                }
                let wanted = inner.grpc_list.as_ref().is_some_and(|l| l.iter().any(|b| b == name));
                if !wanted {
                    tracing::info!(binding = %name, "app has not subscribed to binding {name}.");
                }
                wanted
            }
        }
    }

    /// Starts reading every input binding the app wants that is not being read, while the app is ready and
    /// healthy.
    async fn reconcile(&self, inner: &mut Inner) {
        let Some(app) = self.app.clone() else { return };
        if !inner.app_ready || !inner.app_healthy || self.closing.is_cancelled() {
            return;
        }
        for loaded in self.table.of_kind(Kind::Bindings) {
            let name = loaded.name.clone();
            if inner.running.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let Some(handle) = self.table.get::<dyn Binding>(&name) else {
                continue;
            };
            if !handle.directions().input {
                continue;
            }
            let route = match handle.metadata().string("route") {
                Some(r) => format!("/{}", r.trim_start_matches('/')),
                None => format!("/{name}"),
            };
            if !handle.input_declared() && !self.wanted(inner, &app, &name, &route).await {
                continue;
            }
            let stop = self.closing.child_token();
            let delivery = Arc::new(Delivery {
                name: name.clone(),
                route,
                app: app.clone(),
                policy: self
                    .resiliency
                    .component_policy(&name, Kind::Bindings, Direction::Inbound),
                metrics: self.metrics.clone(),
                output: self.output.clone(),
                state: self.state.clone(),
                closing: stop.clone(),
                grace: self.grace,
                in_flight: self.in_flight.clone(),
            });
            let handler: Handler = Arc::new(move |event| Box::pin(delivery.clone().deliver(event)));
            match handle.read(handler, stop.clone()).await {
                Ok(()) => {
                    tracing::info!(binding = %name, "reading input binding");
                    inner.running.push((name, stop));
                }
                Err(e) => tracing::error!(binding = %name, "error reading from input binding {name}: {e}"),
            }
        }
    }

    fn stop_where(inner: &mut Inner, which: impl Fn(&str) -> bool) {
        inner.running.retain(|(name, stop)| {
            if which(name) {
                stop.cancel();
                false
            } else {
                true
            }
        });
    }

    /// Follows the component table and the app's health until shutdown.
    pub async fn follow(self: Arc<Self>) {
        let (_, mut changes) = self.table.subscribe();
        let mut health = self.app.as_ref().map(|a| a.health_changes());
        loop {
            let health_changed = async {
                match &mut health {
                    Some(h) => h.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.closing.cancelled() => return,
                change = changes.next() => {
                    let Some(change) = change else { return };
                    let mut inner = self.inner.lock().await;
                    match change {
                        Change::Replaced { kind: Kind::Bindings, name } | Change::Removed { kind: Kind::Bindings, name } => {
                            Self::stop_where(&mut inner, |n| n == name);
                        }
                        Change::Resync => Self::stop_where(&mut inner, |_| true),
                        _ => {}
                    }
                    self.reconcile(&mut inner).await;
                }
                ok = health_changed => {
                    if !ok {
                        health = None;
                        continue;
                    }
                    let healthy = health.as_ref().is_some_and(|h| *h.borrow());
                    let mut inner = self.inner.lock().await;
                    inner.app_healthy = healthy;
                    if healthy {
                        tracing::info!("the app is healthy: reading its input bindings again");
                        self.reconcile(&mut inner).await;
                    } else {
                        tracing::warn!("the app is unhealthy: pausing its input bindings");
                        Self::stop_where(&mut inner, |_| true);
                    }
                }
            }
        }
    }

    /// Stops reading and waits, for at most the grace period, for the events in flight.
    pub async fn shutdown(&self) {
        self.closing.cancel();
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bindings being read, for tests and diagnostics.
    pub async fn running(&self) -> Vec<String> {
        self.inner.lock().await.running.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Headers an event's metadata becomes on its way to an HTTP app, as Dapr sends them: names in lower case;
/// content headers, hop-by-hop headers and binary (`-bin`) values left out; `grpc-*` renamed `dapr-grpc-*`.
fn event_headers(md: &BTreeMap<String, String>) -> Vec<(String, String)> {
    const SKIP: [&str; 13] = [
        "content-type",
        "content-length",
        "destination-app-id",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
    ];
    let mut out = vec![];
    for (k, v) in md {
        let k = k.to_ascii_lowercase();
        if SKIP.contains(&k.as_str()) || k.ends_with("-bin") {
            continue;
        }
        let k = match k.strip_prefix("grpc-") {
            Some(rest) => format!("dapr-grpc-{rest}"),
            None => k,
        };
        if axum::http::HeaderName::try_from(k.as_str()).is_err()
            || axum::http::HeaderValue::try_from(v.as_str()).is_err()
        {
            continue;
        }
        out.push((k, v.clone()));
    }
    out
}

/// Where an app's answer sends data on.
#[derive(Default)]
struct Routing {
    store: String,
    state: Vec<SaveItem>,
    to: Vec<String>,
    data: Bytes,
    parallel: bool,
}

/// An HTTP app's answer, when it is the routing object the Dapr reference describes.
fn http_routing(body: &[u8]) -> Option<Routing> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        #[serde(default)]
        store_name: String,
        #[serde(default)]
        state: Vec<StateJson>,
        #[serde(default)]
        to: Vec<String>,
        #[serde(default)]
        data: Option<serde_json::Value>,
        #[serde(default)]
        concurrency: String,
    }
    #[derive(serde::Deserialize)]
    struct StateJson {
        key: String,
        #[serde(default)]
        value: serde_json::Value,
        #[serde(default)]
        metadata: BTreeMap<String, String>,
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    if (a.store_name.is_empty() || a.state.is_empty()) && a.to.is_empty() {
        return None;
    }
    Some(Routing {
        store: a.store_name,
        state: a
            .state
            .into_iter()
            .map(|s| SaveItem {
                key: s.key,
                value: serde_json::to_vec(&s.value).unwrap_or_default().into(),
                metadata: s.metadata,
                ..SaveItem::default()
            })
            .collect(),
        to: a.to,
        data: a
            .data
            .map(|d| serde_json::to_vec(&d).unwrap_or_default().into())
            .unwrap_or_default(),
        parallel: a.concurrency.eq_ignore_ascii_case("parallel"),
    })
}

fn grpc_routing(resp: rt::BindingEventResponse) -> Option<Routing> {
    use rt::binding_event_response::BindingEventConcurrency as C;
    if (resp.store_name.is_empty() || resp.states.is_empty()) && resp.to.is_empty() {
        return None;
    }
    Some(Routing {
        store: resp.store_name,
        state: resp
            .states
            .into_iter()
            .map(|s| SaveItem {
                key: s.key,
                value: s.value.into(),
                metadata: s.metadata.into_iter().collect(),
                ..SaveItem::default()
            })
            .collect(),
        to: resp.to,
        data: resp.data.into(),
        parallel: resp.concurrency == C::Parallel as i32,
    })
}

impl Delivery {
    /// One attempt at handing `event` to the app; the answer's body and where it routes data.
    async fn attempt(&self, event: &Event) -> Result<(Bytes, Option<Routing>), CallFailure> {
        let unreachable =
            |e: crate::sidecar::app_channel::AppCallError| CallFailure::new(format!("error invoking app: {e}"));
        match self.app.protocol {
            AppProtocol::Http => {
                let (status, body) = self
                    .app
                    .call_http(
                        Method::POST,
                        &self.route,
                        event.data.clone(),
                        "application/json",
                        &event_headers(&event.metadata),
                        true,
                    )
                    .await
                    .map_err(unreachable)?;
                if !(200..300).contains(&status) {
                    return Err(CallFailure {
                        message: format!(
                            "fails to send binding event to http app channel, status code: {status} body: {}",
                            crate::echo::echo(&String::from_utf8_lossy(&body[..body.len().min(512)]))
                        ),
                        http: Some(status),
                        grpc: None,
                    });
                }
                let routing = http_routing(&body);
                Ok((body, routing))
            }
            AppProtocol::Grpc => {
                let req = rt::BindingEventRequest {
                    name: self.name.clone(),
                    data: event.data.to_vec(),
                    metadata: event.metadata.clone().into_iter().collect(),
                };
                let answer = self
                    .app
                    .callback(req, &[], true, |mut c, r| async move { c.on_binding_event(r).await })
                    .await
                    .map_err(unreachable)?;
                match answer {
                    Ok(resp) => {
                        let data = Bytes::from(resp.data.clone());
                        Ok((data, grpc_routing(resp)))
                    }
                    Err(s) => Err(CallFailure {
                        message: format!("error invoking app: {:?}: {}", s.code(), s.message()),
                        http: None,
                        grpc: Some(s.code()),
                    }),
                }
            }
        }
    }

    async fn deliver(self: Arc<Self>, event: Event) -> Result<Bytes, String> {
        if self.closing.is_cancelled() {
            return Err("input binding is closed".into());
        }
        let _guard = InFlight::new(&self.in_flight);
        let started = Instant::now();
        let run = async {
            let attempt = || self.attempt(&event);
            match &self.policy {
                Some(policy) => policy
                    .run(|_: &(Bytes, Option<Routing>)| None, attempt)
                    .await
                    .map_err(|e| e.to_string()),
                None => attempt().await.map_err(|e| e.to_string()),
            }
        };
        // An event under way when reading stops gets the grace period to finish.
        let outcome = tokio::select! {
            o = run => o,
            _ = async { self.closing.cancelled().await; tokio::time::sleep(self.grace).await } => {
                Err("input binding is closed".to_owned())
            }
        };
        self.metrics
            .input_binding(&self.name, outcome.is_ok(), started.elapsed());
        let (body, routing) = outcome?;
        if let Some(routing) = routing {
            self.route_on(routing).await;
        }
        Ok(body)
    }

    /// Saves the answer's state and sends its data to its output bindings; failures are logged, the event
    /// itself was handled.
    async fn route_on(&self, r: Routing) {
        if !r.store.is_empty()
            && !r.state.is_empty()
            && let Err(e) = self.state.save(&r.store, &r.state).await
        {
            tracing::warn!(binding = %self.name, "error executing app response: saving state to {}: {}", r.store, e.message);
        }
        let targets: Vec<String> = r.to.into_iter().take(MAX_TARGETS).collect();
        let send = |to: String| {
            let req = InvokeRequest {
                operation: "create".into(),
                data: r.data.clone(),
                metadata: BTreeMap::new(),
            };
            let output = self.output.clone();
            async move { (output.invoke(&to, req).await, to) }
        };
        if r.parallel {
            for (result, to) in futures::future::join_all(targets.into_iter().map(send)).await {
                if let Err(e) = result {
                    tracing::warn!(binding = %self.name, "error executing app response: {to}: {}", e.error.message);
                }
            }
        } else {
            for to in targets {
                if let (Err(e), to) = send(to).await {
                    tracing::warn!(binding = %self.name, "error executing app response: {to}: {}", e.error.message);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_becomes_headers_as_dapr_sends_them() {
        let md: BTreeMap<String, String> = [
            ("timeZone", "Local"),
            ("Content-Type", "text/plain"),
            ("grpc-timeout", "1s"),
            ("trace-bin", "x"),
            ("bad header", "v"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let h = event_headers(&md);
        assert_eq!(
            h,
            vec![
                ("dapr-grpc-timeout".to_owned(), "1s".to_owned()),
                ("timezone".to_owned(), "Local".to_owned())
            ]
        );
    }

    #[test]
    fn an_answer_routes_only_when_it_names_a_target() {
        assert!(http_routing(br#"{"success": true}"#).is_none());
        assert!(http_routing(b"Finished processing batch").is_none());
        let r = http_routing(
            br#"{"storeName":"s","state":[{"key":"k","value":{"a":1}}],"to":["q"],"data":"x","concurrency":"parallel"}"#,
        )
        .unwrap();
        assert_eq!(r.store, "s");
        assert_eq!(&r.state[0].value[..], br#"{"a":1}"#);
        assert_eq!(r.to, ["q"]);
        assert_eq!(&r.data[..], br#""x""#);
        assert!(r.parallel);
    }
}
