//! The component kinds of Dapr (its categories: `state`, `pubsub`, ...), listed once, and the trait that ties a
//! kind's Rust trait (`dyn StateStore`, ...) to its kind.

use std::sync::Arc;

use futures::future::BoxFuture;

/// A Dapr component category: the part of a component type before the first dot (`state` in `state.redis`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    SecretStore,
    State,
    PubSub,
    Bindings,
    Configuration,
    Lock,
    Crypto,
    Conversation,
    Workflow,
    WorkflowBackend,
    Middleware,
    NameResolution,
}

impl Kind {
    /// Every category Dapr knows (`[D] pkg/components/category.go`), whether tandem has backends for it or not.
    pub const ALL: [Kind; 12] = [
        Kind::SecretStore,
        Kind::State,
        Kind::PubSub,
        Kind::Bindings,
        Kind::Configuration,
        Kind::Lock,
        Kind::Crypto,
        Kind::Conversation,
        Kind::Workflow,
        Kind::WorkflowBackend,
        Kind::Middleware,
        Kind::NameResolution,
    ];

    /// The kind's position in [`Kind::ALL`], for tables indexed by kind.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The category as it starts a component type (`state`, `secretstores`, `pubsub`, ...).
    pub fn category(self) -> &'static str {
        match self {
            Kind::SecretStore => "secretstores",
            Kind::State => "state",
            Kind::PubSub => "pubsub",
            Kind::Bindings => "bindings",
            Kind::Configuration => "configuration",
            Kind::Lock => "lock",
            Kind::Crypto => "crypto",
            Kind::Conversation => "conversation",
            Kind::Workflow => "workflow",
            Kind::WorkflowBackend => "workflowbackend",
            Kind::Middleware => "middleware",
            Kind::NameResolution => "nameresolution",
        }
    }

    /// The kind of a component type (`state.redis` → `State`), by its category (written in lower case, as
    /// Dapr requires); `None` for no Dapr category.
    pub fn of_type(type_: &str) -> Option<Kind> {
        let (category, name) = type_.trim().split_once('.')?;
        if name.is_empty() {
            return None;
        }
        Kind::ALL.into_iter().find(|k| k.category() == category)
    }

    /// Every category, comma-separated, for error messages.
    pub fn categories() -> String {
        Kind::ALL.map(Kind::category).join(", ")
    }

    /// The word Dapr's default component policies use for this kind (`DefaultStatestoreComponentOutboundRetryPolicy`),
    /// for the kinds Resiliency covers.
    pub fn resiliency_name(self) -> Option<&'static str> {
        Some(match self {
            Kind::State => "Statestore",
            Kind::SecretStore => "Secretstore",
            Kind::PubSub => "Pubsub",
            Kind::Bindings => "Binding",
            Kind::Configuration => "Configuration",
            Kind::Lock => "Lock",
            Kind::Crypto => "Crypto",
            Kind::Conversation => "Conversation",
            _ => return None,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.category())
    }
}

/// Implemented for a kind's trait object (`dyn StateStore`): which kind it is, and what every loaded component
/// of that kind answers, whatever its backend — the capabilities the metadata API reports, and how it closes.
pub trait ComponentKind: Send + Sync + 'static {
    const KIND: Kind;

    /// Capability names for the metadata API (e.g. `ETAG`, `TRANSACTIONAL`).
    fn capabilities(component: &Self) -> Vec<String> {
        let _ = component;
        vec![]
    }

    /// Stops background work and releases connections; called once, when nothing uses the component any more.
    fn close(component: Arc<Self>) -> BoxFuture<'static, ()> {
        drop(component);
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_to_their_category() {
        assert_eq!(Kind::of_type("state.redis"), Some(Kind::State));
        assert_eq!(Kind::of_type("secretstores.local.file"), Some(Kind::SecretStore));
        assert_eq!(Kind::of_type("bindings.kafka"), Some(Kind::Bindings));
        assert_eq!(
            Kind::of_type("State.redis"),
            None,
            "categories are lower case, as in Dapr"
        );
        assert_eq!(Kind::of_type("workflowbackend.actors"), Some(Kind::WorkflowBackend));
        assert_eq!(Kind::of_type("pubsubs.kafka"), None);
        assert_eq!(Kind::of_type("state"), None);
        assert_eq!(Kind::of_type("state."), None);
        assert_eq!(Kind::of_type(""), None);
    }

    #[test]
    fn every_kind_is_at_its_index() {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i, "{k}");
        }
    }

    #[test]
    fn every_category_is_listed_once() {
        let mut seen: Vec<&str> = Kind::ALL.map(Kind::category).to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), Kind::ALL.len());
        assert!(Kind::categories().starts_with("secretstores, state, pubsub"));
    }
}
