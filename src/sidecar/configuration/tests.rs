//! The configuration block over a scripted store: Dapr's errors, subscription ids and streams, the bound, and
//! every way a subscription ends.

use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::api::Component;
use crate::components::configuration::{ConfigurationError, Item};
use crate::components::{Instance, Metadata};

/// A store whose items are fixed and whose changes the test emits.
#[derive(Default)]
struct Scripted {
    watches: Mutex<Vec<(SubscribeRequest, ChangeHandler, CancellationToken)>>,
    refuse: bool,
}

impl Scripted {
    /// Sends `key` = `value` to every live watch that covers it; how many got it.
    async fn emit(&self, key: &str, value: &str) -> usize {
        let live: Vec<ChangeHandler> = self
            .watches
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _, stop)| !stop.is_cancelled() && (r.keys.is_empty() || r.keys.iter().any(|k| k == key)))
            .map(|(_, h, _)| h.clone())
            .collect();
        for h in &live {
            let item = Item {
                value: value.into(),
                ..Default::default()
            };
            h(Items::from([(key.to_owned(), item)])).await;
        }
        live.len()
    }
}

#[async_trait]
impl ConfigurationStore for Scripted {
    async fn get(&self, keys: &[String], _: &BTreeMap<String, String>) -> Result<Items, ConfigurationError> {
        if keys.iter().any(|k| k == "boom") {
            return Err(ConfigurationError::new("the store failed"));
        }
        Ok(keys
            .iter()
            .filter(|k| k.as_str() != "missing")
            .map(|k| {
                let item = Item {
                    value: format!("value of {k}"),
                    version: "1".into(),
                    ..Default::default()
                };
                (k.clone(), item)
            })
            .collect())
    }

    async fn subscribe(
        &self,
        req: &SubscribeRequest,
        handler: ChangeHandler,
        stop: CancellationToken,
    ) -> Result<(), ConfigurationError> {
        if self.refuse {
            return Err(ConfigurationError::new("no notify channel"));
        }
        self.watches.lock().unwrap().push((req.clone(), handler, stop));
        Ok(())
    }
}

fn load(table: &ComponentTable, name: &str, store: Arc<Scripted>) {
    let store: Arc<dyn ConfigurationStore> = store;
    table.insert(Loaded::new(
        Component::new(name, "configuration.redis", &[]),
        Metadata::new(name, "app", "", []),
        Instance::new(store),
    ));
}

fn api_with(name: &str, store: Arc<Scripted>) -> (Arc<ComponentTable>, ConfigurationApi) {
    let table = Arc::new(ComponentTable::new(Duration::from_millis(50)));
    load(&table, name, store);
    let api = ConfigurationApi::new(table.clone(), None);
    (table, api)
}

fn keys(k: &[&str]) -> SubscribeRequest {
    SubscribeRequest {
        keys: k.iter().map(|s| s.to_string()).collect(),
        metadata: BTreeMap::new(),
    }
}

async fn next(stream: &mut ConfigurationStream) -> Option<UpdateEvent> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream answered in time")
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2s: {what}");
}

#[tokio::test]
async fn stores_are_looked_up_with_daprs_errors() {
    let api = ConfigurationApi::new(Arc::new(ComponentTable::default()), None);
    let e = api.get("s", &[], &BTreeMap::new()).await.unwrap_err();
    assert_eq!((e.status, e.code), (500, "ERR_CONFIGURATION_STORE_NOT_CONFIGURED"));
    assert_eq!(e.grpc, tonic::Code::FailedPrecondition);

    let (_t, api) = api_with("s", Arc::default());
    let e = api.get("other", &[], &BTreeMap::new()).await.unwrap_err();
    assert_eq!((e.status, e.code), (400, "ERR_CONFIGURATION_STORE_NOT_FOUND"));
    assert_eq!(e.message, "configuration store other not found");

    let e = api.get("s", &["boom".into()], &BTreeMap::new()).await.unwrap_err();
    assert_eq!((e.status, e.code), (500, "ERR_CONFIGURATION_GET"));
    assert_eq!(
        e.message,
        "failed to get [boom] from Configuration store s: the store failed"
    );

    let items = api
        .get("s", &["a".into(), "missing".into()], &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(items.keys().collect::<Vec<_>>(), ["a"]);
}

#[tokio::test]
async fn a_stream_carries_its_id_then_the_changes_until_unsubscribed() {
    let store = Arc::new(Scripted::default());
    let (_t, api) = api_with("s", store.clone());
    let mut stream = api.subscribe_stream("s", keys(&["a"])).await.unwrap();
    let first = next(&mut stream).await.unwrap();
    assert!(!first.id.is_empty());
    assert!(first.items.is_empty());
    assert_eq!(api.subscription_count(), 1);

    assert_eq!(store.emit("a", "1").await, 1);
    let change = next(&mut stream).await.unwrap();
    assert_eq!(change.id, first.id);
    assert_eq!(change.items["a"].value, "1");
    assert_eq!(store.emit("b", "x").await, 0, "b is not subscribed");

    assert!(!api.unsubscribe_stream("nope"));
    assert!(api.unsubscribe_stream(&first.id));
    assert!(next(&mut stream).await.is_none(), "the stream ends");
    assert_eq!(api.subscription_count(), 0);
    assert_eq!(store.emit("a", "2").await, 0, "the watch is stopped");
}

#[tokio::test]
async fn dropping_a_stream_ends_its_subscription() {
    let store = Arc::new(Scripted::default());
    let (_t, api) = api_with("s", store.clone());
    let stream = api.subscribe_stream("s", keys(&[])).await.unwrap();
    assert_eq!(api.subscription_count(), 1);
    drop(stream);
    assert_eq!(api.subscription_count(), 0);
    assert_eq!(store.emit("a", "1").await, 0);
}

#[tokio::test]
async fn subscriptions_are_bounded() {
    let store = Arc::new(Scripted::default());
    let (_t, api) = api_with("s", store);
    let api = api.with_limit(2);
    let _a = api.subscribe_stream("s", keys(&["a"])).await.unwrap();
    let _b = api.subscribe_stream("s", keys(&["b"])).await.unwrap();
    let e = api.subscribe_stream("s", keys(&["c", "d"])).await.err().unwrap();
    assert_eq!((e.status, e.code), (500, "ERR_CONFIGURATION_SUBSCRIBE"));
    assert!(
        e.message
            .starts_with("failed to subscribe [c d] from Configuration store s: "),
        "{}",
        e.message
    );
    assert_eq!(api.subscription_count(), 2);
}

#[tokio::test]
async fn a_store_refusing_a_subscription_leaves_none_behind() {
    let store = Arc::new(Scripted {
        refuse: true,
        ..Default::default()
    });
    let (_t, api) = api_with("s", store);
    let e = api.subscribe_stream("s", keys(&["a"])).await.err().unwrap();
    assert_eq!(e.code, "ERR_CONFIGURATION_SUBSCRIBE");
    assert_eq!(e.grpc, tonic::Code::InvalidArgument);
    assert_eq!(api.subscription_count(), 0);
}

#[tokio::test]
async fn replacing_or_removing_the_store_ends_its_subscriptions() {
    let first = Arc::new(Scripted::default());
    let (table, api) = api_with("s", first.clone());
    let api = Arc::new(api);
    tokio::spawn(api.clone().follow());
    tokio::task::yield_now().await;
    let mut stream = api.subscribe_stream("s", keys(&["a"])).await.unwrap();
    next(&mut stream).await.unwrap();

    let second = Arc::new(Scripted::default());
    load(&table, "s", second.clone());
    assert!(next(&mut stream).await.is_none(), "the replaced store's stream ends");
    eventually("the subscription is gone", || api.subscription_count() == 0).await;

    let mut stream = api.subscribe_stream("s", keys(&["a"])).await.unwrap();
    next(&mut stream).await.unwrap();
    assert_eq!(second.emit("a", "1").await, 1, "the new store is watched");
    assert_eq!(next(&mut stream).await.unwrap().items["a"].value, "1");
    table.remove(Kind::Configuration, "s");
    assert!(next(&mut stream).await.is_none(), "the removed store's stream ends");
    eventually("the subscription is gone", || api.subscription_count() == 0).await;
}

#[tokio::test]
async fn shutdown_ends_every_stream() {
    let (_t, api) = api_with("s", Arc::default());
    let mut a = api.subscribe_stream("s", keys(&["a"])).await.unwrap();
    next(&mut a).await.unwrap();
    api.shutdown();
    assert!(next(&mut a).await.is_none());
    assert_eq!(api.subscription_count(), 0);
    let e = api.subscribe_stream("s", keys(&["a"])).await;
    assert!(
        e.is_ok_and(|_| api.subscription_count() == 0),
        "nothing subscribes after shutdown"
    );
}

#[tokio::test]
async fn http_subscriptions_need_an_app_and_unsubscribe_by_store_and_id() {
    let (_t, api) = api_with("s", Arc::default());
    let e = api.subscribe_app("s", keys(&["a"])).await.unwrap_err();
    assert_eq!((e.status, e.code), (500, "ERR_APP_CHANNEL_NIL"));
    assert_eq!(
        e.message,
        "app channel is not initialized. cannot subscribe to configuration updates"
    );
    let e = api.subscribe_app("nope", keys(&["a"])).await.unwrap_err();
    assert_eq!(
        e.code, "ERR_CONFIGURATION_STORE_NOT_FOUND",
        "the store is checked first"
    );

    let e = api.unsubscribe("s", "some-id").unwrap_err();
    assert_eq!((e.status, e.code), (500, "ERR_CONFIGURATION_UNSUBSCRIBE"));
    assert_eq!(
        e.message,
        "failed to unsubscribe to configuration request some-id: subscription with id some-id does not exist"
    );
    assert_eq!(
        api.unsubscribe("x", "id").unwrap_err().code,
        "ERR_CONFIGURATION_STORE_NOT_FOUND"
    );
}

#[test]
fn app_routes_escape_what_a_path_cannot_carry() {
    assert_eq!(app_route("store", "my.key"), "/configuration/store/my.key");
    assert_eq!(app_route("store", "a b?c"), "/configuration/store/a%20b%3Fc");
}

#[test]
fn update_events_serialise_as_daprs() {
    let e = UpdateEvent {
        id: "1".into(),
        items: Items::from([(
            "k".to_owned(),
            Item {
                value: "v".into(),
                version: "2".into(),
                ..Default::default()
            },
        )]),
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"id":"1","items":{"k":{"value":"v","version":"2"}}}"#
    );
}
