//! Configuration store conformance: every backend (Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432)
//! through the runtime's configuration API — get some keys and all, versions as each layout keeps them,
//! subscriptions that see sets, updates and deletes, and unsubscribing that ends delivery and the store's watch.
//! Each test writes its own keys (PostgreSQL: its own table, trigger and channel).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tandem::api::Component;
use tandem::components::Kind;
use tandem::components::Registry;
use tandem::components::configuration::{ChangeHandler, ConfigurationStore, Items, SubscribeRequest};
use tandem::sidecar::Mode;
use tandem::sidecar::components::{ComponentLoader, ComponentTable, References};
use tandem::sidecar::configuration::{ConfigurationApi, ConfigurationStream, UpdateEvent};
use tokio_util::sync::CancellationToken;

const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// Writes items the way a user of each backend does.
enum Writer {
    Redis(::redis::aio::MultiplexedConnection),
    Postgres {
        client: tokio_postgres::Client,
        table: String,
    },
}

impl Writer {
    async fn set(&mut self, key: &str, value: &str, version: &str) {
        match self {
            Writer::Redis(conn) => {
                ::redis::cmd("SET")
                    .arg(key)
                    .arg(format!("{value}||{version}"))
                    .query_async::<()>(conn)
                    .await
                    .unwrap();
            }
            Writer::Postgres { client, table } => {
                let updated = client
                    .execute(
                        &format!("UPDATE {table} SET value = $2, version = $3 WHERE key = $1"),
                        &[&key, &value, &version],
                    )
                    .await
                    .unwrap();
                if updated == 0 {
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {table} (key, value, version, metadata) VALUES ($1, $2, $3, '{{\"source\":\"test\"}}')"
                            ),
                            &[&key, &value, &version],
                        )
                        .await
                        .unwrap();
                }
            }
        }
    }

    async fn delete(&mut self, key: &str) {
        match self {
            Writer::Redis(conn) => {
                ::redis::cmd("DEL").arg(key).query_async::<()>(conn).await.unwrap();
            }
            Writer::Postgres { client, table } => {
                client
                    .execute(&format!("DELETE FROM {table} WHERE key = $1"), &[&key])
                    .await
                    .unwrap();
            }
        }
    }
}

struct Ctx {
    api: Arc<ConfigurationApi>,
    table: Arc<ComponentTable>,
    writer: Writer,
    /// This test's key prefix (keys of every test share a Redis database).
    p: String,
    backend: &'static str,
}

impl Ctx {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.p)
    }

    async fn get(&self, keys: &[&str]) -> Items {
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.api.get("cfg", &keys, &BTreeMap::new()).await.unwrap()
    }

    async fn subscribe(&self, keys: &[&str]) -> (String, ConfigurationStream) {
        let req = SubscribeRequest {
            keys: keys.iter().map(|k| self.key(k)).collect(),
            metadata: BTreeMap::new(),
        };
        let mut stream = self.api.subscribe_stream("cfg", req).await.unwrap();
        let first = next(&mut stream).await.expect("the first message");
        assert!(
            first.items.is_empty(),
            "{}: the first message carries only the id",
            self.backend
        );
        (first.id, stream)
    }

    fn store(&self) -> Arc<dyn ConfigurationStore> {
        self.table
            .loaded(Kind::Configuration, "cfg")
            .unwrap()
            .instance
            .get::<dyn ConfigurationStore>()
            .unwrap()
    }
}

async fn next(stream: &mut ConfigurationStream) -> Option<UpdateEvent> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a change within 10s")
}

/// A PostgreSQL table laid out as Dapr documents, with the notify trigger Dapr documents, on its own channel.
async fn pg_table(client: &tokio_postgres::Client, table: &str, channel: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (key VARCHAR NOT NULL, value VARCHAR NOT NULL, version VARCHAR NOT NULL, metadata JSON);
             CREATE OR REPLACE FUNCTION {table}_notify() RETURNS TRIGGER AS $$
             DECLARE data json; notification json;
             BEGIN
               IF (TG_OP = 'DELETE') THEN data = row_to_json(OLD); ELSE data = row_to_json(NEW); END IF;
               notification = json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data', data);
               PERFORM pg_notify('{channel}', notification::text);
               RETURN NULL;
             END;
             $$ LANGUAGE plpgsql;
             CREATE TRIGGER {table}_trigger AFTER INSERT OR UPDATE OR DELETE ON {table}
               FOR EACH ROW EXECUTE PROCEDURE {table}_notify();"
        ))
        .await
        .unwrap();
}

async fn ctx(backend: &'static str) -> Ctx {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (component, writer) = match backend {
        "redis" => {
            let client = ::redis::Client::open("redis://127.0.0.1:6379").unwrap();
            let conn = client.get_multiplexed_async_connection().await.unwrap();
            (
                Component::new("cfg", "configuration.redis", &[("redisHost", "127.0.0.1:6379")]),
                Writer::Redis(conn),
            )
        }
        "postgres" => {
            let (client, connection) = tokio_postgres::connect(PG, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let table = format!("cfg_{id}");
            let channel = format!("cfgch_{id}");
            pg_table(&client, &table, &channel).await;
            (
                Component::new(
                    "cfg",
                    "configuration.postgresql",
                    &[("connectionString", PG), ("table", &table), ("notifyChannel", &channel)],
                ),
                Writer::Postgres { client, table },
            )
        }
        other => panic!("unknown backend {other}"),
    };
    let table = Arc::new(ComponentTable::new(Duration::from_millis(100)));
    let references = References::new(table.clone(), "conf", "", Mode::Standalone);
    ComponentLoader::new(
        Registry::builtin(),
        table.clone(),
        references,
        Arc::default(),
        "conf",
        "",
    )
    .load_all(&[component])
    .await
    .unwrap_or_else(|e| panic!("{backend} store failed to start (is the server running?): {e}"));
    let api = Arc::new(ConfigurationApi::new(table.clone(), None));
    tokio::spawn(api.clone().follow());
    Ctx {
        api,
        table,
        writer,
        p: format!("t{id}."),
        backend,
    }
}

async fn get_some_and_all(mut c: Ctx) {
    let (a, b) = (c.key("a"), c.key("b"));
    c.writer.set(&a, "one", "1").await;
    c.writer.set(&b, "two", "2").await;
    let some = c.get(&["a", "absent"]).await;
    assert_eq!(
        some.keys().collect::<Vec<_>>(),
        [&a],
        "{}: only items that exist",
        c.backend
    );
    assert_eq!((some[&a].value.as_str(), some[&a].version.as_str()), ("one", "1"));

    let all = c.api.get("cfg", &[], &BTreeMap::new()).await.unwrap();
    assert_eq!(all[&a].value, "one", "{}", c.backend);
    assert_eq!(all[&b].value, "two", "{}", c.backend);
    assert_eq!(all[&b].version, "2", "{}", c.backend);

    let e = c.api.get("nope", &[], &BTreeMap::new()).await.unwrap_err();
    assert_eq!((e.status, e.code), (400, "ERR_CONFIGURATION_STORE_NOT_FOUND"));
}

/// Redis: Dapr's `value||version` layout read as Dapr reads it, and keys of other types left out.
async fn redis_layout(mut c: Ctx) {
    let (plain, hash, extra) = (c.key("plain"), c.key("hash"), c.key("extra"));
    let Writer::Redis(conn) = &mut c.writer else {
        unreachable!()
    };
    ::redis::cmd("SET")
        .arg(&plain)
        .arg("just a value")
        .query_async::<()>(conn)
        .await
        .unwrap();
    ::redis::cmd("SET")
        .arg(&extra)
        .arg("v||3||more")
        .query_async::<()>(conn)
        .await
        .unwrap();
    ::redis::cmd("HSET")
        .arg(&hash)
        .arg("data")
        .arg("x")
        .query_async::<()>(conn)
        .await
        .unwrap();
    let got = c.get(&["plain", "hash", "extra"]).await;
    assert_eq!(got.len(), 2, "a hash is not a configuration item: {got:?}");
    assert_eq!(
        (got[&plain].value.as_str(), got[&plain].version.as_str()),
        ("just a value", "")
    );
    assert_eq!((got[&extra].value.as_str(), got[&extra].version.as_str()), ("v", "3"));
    let all = c.api.get("cfg", &[], &BTreeMap::new()).await.unwrap();
    assert!(!all.contains_key(&hash));
    assert!(all.contains_key(&plain));
}

/// PostgreSQL: a key with several rows reads as its highest numeric version; metadata comes from the JSON
/// column; keys Dapr refuses are refused.
async fn postgres_layout(c: Ctx) {
    let Writer::Postgres { client, table } = &c.writer else {
        unreachable!()
    };
    let k = c.key("multi");
    for v in ["2", "10", "9", "x"] {
        client
            .execute(
                &format!(
                    "INSERT INTO {table} (key, value, version, metadata) VALUES ($1, $2, $3, '{{\"env\":\"prod\"}}')"
                ),
                &[&k, &format!("value {v}"), &v],
            )
            .await
            .unwrap();
    }
    let got = c.get(&["multi"]).await;
    assert_eq!(got[&k].value, "value 10");
    assert_eq!(got[&k].version, "10");
    assert_eq!(got[&k].metadata.get("env").map(String::as_str), Some("prod"));
    let e = c
        .api
        .get("cfg", &["bad key;".to_owned()], &BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code), (500, "ERR_CONFIGURATION_GET"));
    assert!(e.message.ends_with("invalid key : 'bad key;'"), "{}", e.message);
}

async fn subscribe_sees_set_update_delete(mut c: Ctx) {
    let (a, b) = (c.key("a"), c.key("b"));
    let (id, mut stream) = c.subscribe(&["a"]).await;

    c.writer.set(&a, "first", "1").await;
    let e = next(&mut stream).await.unwrap();
    assert_eq!(e.id, id);
    assert_eq!(e.items.keys().collect::<Vec<_>>(), [&a], "{}", c.backend);
    assert_eq!(
        (e.items[&a].value.as_str(), e.items[&a].version.as_str()),
        ("first", "1")
    );

    // A key the subscription does not name is not delivered: the next change is a's.
    c.writer.set(&b, "other", "1").await;
    c.writer.set(&a, "second", "2").await;
    let e = next(&mut stream).await.unwrap();
    assert_eq!(e.items.keys().collect::<Vec<_>>(), [&a], "{}", c.backend);
    assert_eq!(
        (e.items[&a].value.as_str(), e.items[&a].version.as_str()),
        ("second", "2")
    );

    c.writer.delete(&a).await;
    let e = next(&mut stream).await.unwrap();
    assert_eq!(
        e.items.keys().collect::<Vec<_>>(),
        [&a],
        "{}: a delete is a change",
        c.backend
    );
    match c.backend {
        // Dapr's Redis store reads the key again: a deleted key comes as an empty item.
        "redis" => assert_eq!(e.items[&a], Default::default()),
        // Dapr's documented trigger sends the deleted row.
        _ => assert_eq!(e.items[&a].value, "second"),
    }
}

async fn subscribe_to_every_key(mut c: Ctx) {
    let (_, mut stream) = c.subscribe(&[]).await;
    let k = c.key("any");
    c.writer.set(&k, "v", "7").await;
    // Other tests write to the same Redis database: skip their changes.
    loop {
        let e = next(&mut stream).await.unwrap();
        if let Some(item) = e.items.get(&k) {
            assert_eq!((item.value.as_str(), item.version.as_str()), ("v", "7"));
            break;
        }
    }
}

async fn unsubscribe_stops_delivery(mut c: Ctx) {
    let (id, mut stream) = c.subscribe(&["u"]).await;
    let u = c.key("u");
    c.writer.set(&u, "1", "1").await;
    assert_eq!(next(&mut stream).await.unwrap().items[&u].value, "1");
    assert!(c.api.unsubscribe_stream(&id));
    assert!(next(&mut stream).await.is_none(), "{}: the stream ends", c.backend);
    assert_eq!(c.api.subscription_count(), 0);
    assert!(!c.api.unsubscribe_stream(&id), "an id ends once");

    // Under the runtime: a cancelled watch lets go of its handler (its task has ended), and changes after it
    // reach no one.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Items>(8);
    let handler: ChangeHandler = Arc::new(move |items| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(items).await;
        })
    });
    let stop = CancellationToken::new();
    let req = SubscribeRequest {
        keys: vec![u.clone()],
        metadata: BTreeMap::new(),
    };
    c.store().subscribe(&req, handler, stop.clone()).await.unwrap();
    c.writer.set(&u, "2", "2").await;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[&u].value, "2");
    stop.cancel();
    c.writer.set(&u, "3", "3").await;
    let after = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
    assert!(after.is_none(), "{}: the stopped watch delivered {after:?}", c.backend);
}

async fn removing_the_component_ends_subscriptions(c: Ctx) {
    let (_, mut stream) = c.subscribe(&["r"]).await;
    assert!(c.table.remove(Kind::Configuration, "cfg"));
    assert!(next(&mut stream).await.is_none(), "{}", c.backend);
    drop(stream);
    assert_eq!(c.api.subscription_count(), 0);
    let e = c.api.get("cfg", &[], &BTreeMap::new()).await.unwrap_err();
    assert_eq!((e.status, e.code), (500, "ERR_CONFIGURATION_STORE_NOT_CONFIGURED"));
}

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::ctx(stringify!($backend)).await).await;
                }
            )*
        }
    };
}

suite!(redis: get_some_and_all, redis_layout, subscribe_sees_set_update_delete, subscribe_to_every_key,
    unsubscribe_stops_delivery, removing_the_component_ends_subscriptions);
suite!(postgres: get_some_and_all, postgres_layout, subscribe_sees_set_update_delete, subscribe_to_every_key,
    unsubscribe_stops_delivery, removing_the_component_ends_subscriptions);
