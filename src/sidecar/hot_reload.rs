//! Kubernetes mode: resources come from the tandem operator's sidecar API, and changes stream in and are applied
//! without a restart. A changed component is built beside the running one and swapped in once ready (the old
//! one keeps serving meanwhile, and stays when the new one fails); subscriptions and HTTPEndpoints are replaced.
//! Configuration and Resiliency changes are logged: like Dapr, they need a restart to apply.

use std::sync::Arc;

use futures::StreamExt;

use super::components::ComponentLoader;
use super::components::loader::Applied;
use super::runtime::Runtime;
use crate::api::Component;
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
pub async fn follow(rt: Arc<Runtime>, loader: ComponentLoader, client: OperatorClient, baseline: SidecarResources) {
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
        if rt.shutdown.is_cancelled() {
            return;
        }
        let deleted = event.event_type == EventType::Deleted;
        match event.resource {
            DaprResource::Component(c) => {
                let name = c.name().to_owned();
                current.components.retain(|x| x.name() != name);
                if deleted {
                    loader.remove(&name);
                    tracing::info!(component = %name, "component deleted; closing it once its requests are done");
                } else {
                    match loader.apply(&c).await {
                        Ok(Applied::Loaded) => tracing::info!(component = %name, "component (re)loaded"),
                        Ok(Applied::Unchanged) => tracing::debug!(component = %name, "component unchanged"),
                        Err(e) => tracing::error!(
                            component = %name,
                            "reloading component failed: {e}; the running one keeps serving"
                        ),
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
                rt.subscriber.set_declarative(&current.subscriptions).await;
            }
            DaprResource::HttpEndpoint(e) => {
                let name = e.metadata.name.clone();
                current.http_endpoints.retain(|x| x.metadata.name != name);
                if !deleted {
                    current.http_endpoints.push(e);
                }
                if let Err(err) = rt
                    .invoker
                    .endpoints()
                    .load(&rt.references, &current.http_endpoints)
                    .await
                {
                    tracing::error!("reloading HTTPEndpoints failed: {err}; the running ones keep serving");
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
