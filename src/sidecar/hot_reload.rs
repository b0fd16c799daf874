//! Kubernetes mode: resources come from the tandem operator's sidecar API, and changes stream in and are applied
//! without a restart — components are closed and initialised again in place, subscriptions and HTTPEndpoints
//! replaced. Configuration and Resiliency changes are logged: like Dapr, they need a restart to apply.

use std::sync::Arc;

use futures::StreamExt;

use super::Mode;
use super::invoke::Invoker;
use super::processor;
use super::runtime::Runtime;
use crate::api::Component;
use crate::components::Registry;
use crate::control_plane::operator_client::{DaprResource, EventType, OperatorClient, SidecarResources};

/// The address as the client wants it: a bare `host:port` means plain HTTP.
pub fn operator_url(address: &str) -> String {
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// The secret store daprd registers by itself in Kubernetes mode.
pub fn builtin_kubernetes_secret_store() -> Component {
    Component::new("kubernetes", "secretstores.kubernetes", &[])
}

/// Applies the operator's changes to the running sidecar until the stream ends (it only ends on shutdown).
pub async fn follow(
    rt: Arc<Runtime>,
    invoker: Arc<Invoker>,
    client: OperatorClient,
    baseline: SidecarResources,
    mode: Mode,
) {
    let registry = Registry::builtin();
    let mut current = baseline.clone();
    let mut events = Box::pin(client.watch_from(&rt.app_id, baseline));
    loop {
        let next = tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            next = events.next() => next,
        };
        let Some(event) = next else { return };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("operator watch: {e}");
                continue;
            }
        };
        let deleted = event.event_type == EventType::Deleted;
        match event.resource {
            DaprResource::Component(c) => {
                let name = c.name().to_owned();
                current.components.retain(|x| x.name() != name);
                rt.remove_component(&name).await;
                if deleted {
                    tracing::info!(component = %name, "component deleted; closed it");
                } else {
                    match processor::load_component(&rt, &registry, &c, mode).await {
                        Ok(()) => tracing::info!(component = %name, "component (re)loaded"),
                        Err(e) => tracing::error!(component = %name, "reloading component failed: {e}"),
                    }
                    current.components.push(c);
                }
            }
            DaprResource::Subscription(s) => {
                let name = s.metadata.name.clone();
                current.subscriptions.retain(|x| x.metadata.name != name);
                if !deleted {
                    current.subscriptions.push(s);
                }
                rt.set_subscriptions(current.subscriptions.clone());
            }
            DaprResource::HttpEndpoint(e) => {
                let name = e.metadata.name.clone();
                current.http_endpoints.retain(|x| x.metadata.name != name);
                if !deleted {
                    current.http_endpoints.push(e);
                }
                rt.set_http_endpoints(current.http_endpoints.clone());
                match processor::resolve_endpoints(&rt, &current.http_endpoints, mode).await {
                    Ok(endpoints) => invoker.set_endpoints(endpoints),
                    Err(err) => tracing::error!("reloading HTTPEndpoints failed: {err}"),
                }
            }
            DaprResource::Configuration(c) => tracing::warn!(
                configuration = ?c.metadata.name,
                "Configuration changed; restart the pod for it to apply"
            ),
            DaprResource::Resiliency(r) => tracing::warn!(
                resiliency = ?r.metadata.name,
                "Resiliency changed; restart the pod for it to apply"
            ),
        }
    }
}
