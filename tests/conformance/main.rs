//! State store conformance (pub/sub in pubsub.rs): every behaviour of the state API, run against every backend through the runtime
//! (so Dapr's key scheme is exercised too). Redis runs against the server on 127.0.0.1:6379, PostgreSQL (both
//! of Dapr's table layouts) on 127.0.0.1:5432 (database `test`) and MySQL/MariaDB on 127.0.0.1:3306 (database
//! `test`), each test in tables of its own.

/// One module per backend, one test per case: `case(ctx("backend").await)`, with the `ctx` and cases of the
/// module it is used in (defined before the suites' modules so each can use it).
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

mod bindings;
mod configuration;
mod conversation;
mod crypto;
mod jetstream;
mod lock;
mod pubsub;
mod sql_state;
mod subtle_crypto;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem::api::Component;
use tandem::components::Kind;
use tandem::components::Registry;
use tandem::components::state::Concurrency;
use tandem::sidecar::Mode;
use tandem::sidecar::components::{ComponentLoader, ComponentTable, References};
use tandem::sidecar::state::{DeleteItem, SaveItem, State, TxOp};

/// The state API of a fresh app id holding one state store `s` of the given backend.
async fn runtime(backend: &str, app_id: &str, dir: &tempfile::TempDir) -> State {
    let db = dir.path().join("state.db");
    let table = sql_state::table_for(dir);
    let component = match backend {
        "memory" => Component::new("s", "state.in-memory", &[]),
        "sqlite" => Component::new("s", "state.sqlite", &[("connectionString", db.to_str().unwrap())]),
        "redis" => Component::new("s", "state.redis", &[("redisHost", "127.0.0.1:6379")]),
        "postgresql" | "postgresql_v2" | "mysql" => sql_state::component(backend, &table),
        other => panic!("unknown backend {other}"),
    };
    runtime_with(component, app_id)
        .await
        .unwrap_or_else(|e| panic!("{backend} store failed to start (is the server running?): {e}"))
}

/// The state API of app `app_id` holding `component` (named `s`).
async fn runtime_with(component: Component, app_id: &str) -> Result<State, String> {
    let table = Arc::new(ComponentTable::default());
    loader(&table, app_id)
        .with_admission(Kind::State, tandem::sidecar::state::admit)
        .load_all(&[component])
        .await
        .map_err(|e| e.to_string())?;
    Ok(State::new(table, app_id))
}

/// A loader of app `app_id`'s components into `table`, as the sidecar's (without resiliency policies).
fn loader(table: &Arc<ComponentTable>, app_id: &str) -> ComponentLoader {
    let references = References::new(table.clone(), app_id, "", Mode::Standalone);
    ComponentLoader::new(
        Registry::builtin(),
        table.clone(),
        references,
        Arc::default(),
        app_id,
        "",
    )
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn item(key: &str, value: &str) -> SaveItem {
    SaveItem {
        key: key.into(),
        value: Bytes::from(value.to_owned()),
        ..Default::default()
    }
}

fn with_etag(mut i: SaveItem, etag: &str) -> SaveItem {
    i.etag = Some(etag.into());
    i
}

fn delete(key: &str, etag: Option<&str>) -> DeleteItem {
    DeleteItem {
        key: key.into(),
        etag: etag.map(Into::into),
        ..Default::default()
    }
}

struct Ctx {
    rt: State,
    _dir: tempfile::TempDir,
    backend: &'static str,
}

impl Drop for Ctx {
    /// A SQL backend's tables go with the test that made them.
    fn drop(&mut self) {
        if matches!(self.backend, "postgresql" | "postgresql_v2" | "mysql") {
            sql_state::drop_tables(self.backend, &sql_state::table_for(&self._dir));
        }
    }
}

async fn ctx(backend: &'static str) -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(backend, &unique("conf"), &dir).await;
    Ctx { rt, _dir: dir, backend }
}

async fn etag_of(c: &Ctx, key: &str) -> String {
    c.rt.get("s", key)
        .await
        .unwrap()
        .expect("item exists")
        .etag
        .expect("backend issues etags")
}

async fn set_get_roundtrip(c: Ctx) {
    c.rt.save("s", &[item("a", r#"{"x":1}"#)]).await.unwrap();
    let got = c.rt.get("s", "a").await.unwrap().unwrap();
    if c.backend == "postgresql" {
        // A jsonb column gives JSON back in PostgreSQL's spelling, as Dapr's v1 store does.
        assert_eq!(got.data, Bytes::from_static(br#"{"x": 1}"#));
    } else {
        assert_eq!(got.data, Bytes::from_static(br#"{"x":1}"#));
    }
    let first = got.etag.clone().expect("etag");
    c.rt.save("s", &[item("a", "2")]).await.unwrap();
    let second = etag_of(&c, "a").await;
    assert_ne!(first, second, "{}: etag must change on every write", c.backend);
    assert!(c.rt.get("s", "missing").await.unwrap().is_none());
}

async fn binary_values_roundtrip(c: Ctx) {
    let bytes = Bytes::from(vec![0u8, 159, 146, 150, 255]);
    let it = SaveItem {
        key: "bin".into(),
        value: bytes.clone(),
        ..Default::default()
    };
    c.rt.save("s", &[it]).await.unwrap();
    assert_eq!(c.rt.get("s", "bin").await.unwrap().unwrap().data, bytes);
}

async fn etag_rules(c: Ctx) {
    c.rt.save("s", &[item("k", "1")]).await.unwrap();
    let etag = etag_of(&c, "k").await;
    c.rt.save("s", &[with_etag(item("k", "2"), &etag)]).await.unwrap();
    let stale = c.rt.save("s", &[with_etag(item("k", "3"), &etag)]).await.unwrap_err();
    assert_eq!(
        (stale.status, stale.code),
        (409, "ERR_STATE_SAVE"),
        "{}: {stale}",
        c.backend
    );
    let invalid =
        c.rt.save("s", &[with_etag(item("k", "3"), "not-a-version")])
            .await
            .unwrap_err();
    // Redis etags are version numbers and PostgreSQL v1 etags transaction ids, so a malformed one is invalid
    // (400); the other stores, like Dapr's, only know whether an etag matches (409).
    let expected = if matches!(c.backend, "redis" | "postgresql") {
        400
    } else {
        409
    };
    assert_eq!(
        (invalid.status, invalid.code),
        (expected, "ERR_STATE_SAVE"),
        "{}: {invalid}",
        c.backend
    );
    let on_missing = c.rt.save("s", &[with_etag(item("nope", "3"), "1")]).await.unwrap_err();
    assert_eq!(
        on_missing.status, 409,
        "{}: an etag on a missing key conflicts",
        c.backend
    );
    assert_eq!(
        c.rt.get("s", "k").await.unwrap().unwrap().data,
        Bytes::from_static(b"2")
    );
}

async fn first_write(c: Ctx) {
    let fw = |k: &str, v: &str| SaveItem {
        concurrency: Concurrency::FirstWrite,
        ..item(k, v)
    };
    c.rt.save("s", &[fw("f", "1")]).await.unwrap();
    let err = c.rt.save("s", &[fw("f", "2")]).await.unwrap_err();
    assert_eq!(
        err.status, 409,
        "{}: first-write without etag may only create",
        c.backend
    );
    let etag = etag_of(&c, "f").await;
    c.rt.save("s", &[with_etag(fw("f", "3"), &etag)]).await.unwrap();
    let last = SaveItem {
        concurrency: Concurrency::LastWrite,
        ..item("f", "4")
    };
    c.rt.save("s", &[last]).await.unwrap();
    assert_eq!(
        c.rt.get("s", "f").await.unwrap().unwrap().data,
        Bytes::from_static(b"4")
    );
}

async fn delete_rules(c: Ctx) {
    c.rt.save("s", &[item("d", "1")]).await.unwrap();
    let err = c.rt.delete("s", &delete("d", Some("12345"))).await.unwrap_err();
    assert_eq!((err.status, err.code), (409, "ERR_STATE_DELETE"), "{}", c.backend);
    let etag = etag_of(&c, "d").await;
    c.rt.delete("s", &delete("d", Some(&etag))).await.unwrap();
    assert!(c.rt.get("s", "d").await.unwrap().is_none());
    c.rt.delete("s", &delete("never-existed", None)).await.unwrap();
    c.rt.save("s", &[item("b1", "1"), item("b2", "2")]).await.unwrap();
    c.rt.bulk_delete("s", &[delete("b1", None), delete("b2", None)])
        .await
        .unwrap();
    assert!(c.rt.get("s", "b2").await.unwrap().is_none());
}

async fn bulk_get(c: Ctx) {
    c.rt.save("s", &[item("x", "1"), item("y", "2")]).await.unwrap();
    let keys = vec!["y".to_owned(), "missing".to_owned(), "x".to_owned()];
    let got = c.rt.bulk_get("s", &keys, 2).await.unwrap();
    let summary: Vec<(&str, Option<&[u8]>)> = got
        .iter()
        .map(|b| (b.key.as_str(), b.item.as_ref().map(|i| &i.data[..])))
        .collect();
    assert_eq!(
        summary,
        [("y", Some(&b"2"[..])), ("missing", None), ("x", Some(&b"1"[..]))],
        "{}",
        c.backend
    );
}

async fn transactions_are_all_or_nothing(c: Ctx) {
    c.rt.save("s", &[item("t1", "1"), item("t2", "2")]).await.unwrap();
    let ok = [TxOp::Upsert(item("t3", "3")), TxOp::Delete(delete("t1", None))];
    c.rt.transact("s", &ok).await.unwrap();
    assert!(c.rt.get("s", "t1").await.unwrap().is_none());
    assert!(c.rt.get("s", "t3").await.unwrap().is_some());
    let failing = [
        TxOp::Upsert(item("t4", "4")),
        TxOp::Delete(delete("t2", None)),
        TxOp::Upsert(with_etag(item("t3", "x"), "999")),
    ];
    let err = c.rt.transact("s", &failing).await.unwrap_err();
    assert_eq!((err.status, err.code), (500, "ERR_STATE_TRANSACTION"), "{}", c.backend);
    assert!(
        c.rt.get("s", "t4").await.unwrap().is_none(),
        "{}: nothing of a failed transaction applies",
        c.backend
    );
    assert!(c.rt.get("s", "t2").await.unwrap().is_some(), "{}", c.backend);
}

async fn ttl(c: Ctx) {
    let md = |t: &str| BTreeMap::from([("ttlInSeconds".to_owned(), t.to_owned())]);
    c.rt.save(
        "s",
        &[SaveItem {
            metadata: md("1"),
            ..item("ttl", "1")
        }],
    )
    .await
    .unwrap();
    c.rt.save(
        "s",
        &[SaveItem {
            metadata: md("-1"),
            ..item("forever", "1")
        }],
    )
    .await
    .unwrap();
    let got = c.rt.get("s", "ttl").await.unwrap().unwrap();
    assert!(
        got.expires_at.is_some(),
        "{}: items with a TTL report when they expire",
        c.backend
    );
    assert!(c.rt.get("s", "forever").await.unwrap().unwrap().expires_at.is_none());
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.rt.get("s", "ttl").await.unwrap().is_none() {
            gone = true;
            break;
        }
    }
    assert!(gone, "{}: an item with ttlInSeconds=1 must expire", c.backend);
    assert!(c.rt.get("s", "forever").await.unwrap().is_some());
    // Rewriting without a TTL removes the expiry.
    c.rt.save(
        "s",
        &[SaveItem {
            metadata: md("100"),
            ..item("re", "1")
        }],
    )
    .await
    .unwrap();
    c.rt.save("s", &[item("re", "2")]).await.unwrap();
    assert!(
        c.rt.get("s", "re").await.unwrap().unwrap().expires_at.is_none(),
        "{}",
        c.backend
    );
}

async fn apps_do_not_see_each_others_keys(c: Ctx) {
    c.rt.save("s", &[item("shared-name", "mine")]).await.unwrap();
    let other = runtime(c.backend, &unique("other"), &c._dir).await;
    assert!(other.get("s", "shared-name").await.unwrap().is_none(), "{}", c.backend);
}

async fn optimistic_concurrency_under_contention(c: Ctx) {
    c.rt.save("s", &[item("race", "0")]).await.unwrap();
    let etag = etag_of(&c, "race").await;
    let writes = (0..8).map(|i| {
        let rt = c.rt.clone();
        let it = with_etag(item("race", &i.to_string()), &etag);
        tokio::spawn(async move { rt.save("s", &[it]).await })
    });
    let results = futures::future::join_all(writes).await;
    let won = results.into_iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    assert_eq!(
        won, 1,
        "{}: exactly one writer holding the same etag may win",
        c.backend
    );
}

async fn query(c: Ctx) {
    let people = [
        ("1", r#"{"person":{"org":"Dev Ops","id":1036},"state":"CA"}"#),
        ("2", r#"{"person":{"org":"Hardware","id":1028},"state":"WA"}"#),
        ("3", r#"{"person":{"org":"Finance","id":1071},"state":"NY"}"#),
        ("4", r#"{"person":{"org":"Dev Ops","id":1042},"state":"WA"}"#),
    ];
    let items: Vec<SaveItem> = people.iter().map(|(k, v)| item(k, v)).collect();
    c.rt.save("s", &items).await.unwrap();
    let q =
        br#"{"filter":{"EQ":{"person.org":"Dev Ops"}},"sort":[{"key":"person.id","order":"DESC"}],"page":{"limit":1}}"#;
    let page = c.rt.query("s", q).await.unwrap();
    assert_eq!(
        page.results.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["4"],
        "{}",
        c.backend
    );
    assert!(page.results[0].etag.is_some());
    let token = page.token.expect("more results");
    let q2 = format!(
        r#"{{"filter":{{"EQ":{{"person.org":"Dev Ops"}}}},"sort":[{{"key":"person.id","order":"DESC"}}],"page":{{"limit":1,"token":"{token}"}}}}"#
    );
    let next = c.rt.query("s", q2.as_bytes()).await.unwrap();
    assert_eq!(next.results.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["1"]);
    let err = c.rt.query("s", b"{not json").await.unwrap_err();
    assert_eq!((err.status, err.code), (500, "ERR_STATE_QUERY"));
}

async fn query_unsupported(c: Ctx) {
    let err = c.rt.query("s", b"{}").await.unwrap_err();
    // Redis has a query engine that needs RedisJSON; the others have none, and Dapr says so with its own code.
    let (expected, code) = if c.backend == "redis" {
        ("redis-json server support is required", "ERR_STATE_QUERY")
    } else {
        ("state store does not support querying", "ERR_STATE_STORE_NOT_SUPPORTED")
    };
    assert!(err.message.contains(expected), "{}", err.message);
    assert_eq!((err.status, err.code), (500, code), "{}", c.backend);
}

/// A key named more than once in one save, bulk delete or transaction ends as its last write leaves it, on every
/// store, every time.
async fn duplicate_keys_last_write_wins(c: Ctx) {
    for round in 0..10 {
        let key = format!("dup{round}");
        let items: Vec<SaveItem> = (1..=5).map(|v| item(&key, &v.to_string())).collect();
        c.rt.save("s", &items).await.unwrap();
        assert_eq!(
            value(&c, &key).await.as_deref(),
            Some("5"),
            "{}: round {round}",
            c.backend
        );
    }
    c.rt.transact("s", &[TxOp::Upsert(item("t", "1")), TxOp::Upsert(item("t", "2"))])
        .await
        .unwrap();
    assert_eq!(value(&c, "t").await.as_deref(), Some("2"), "{}", c.backend);
    c.rt.transact("s", &[TxOp::Upsert(item("u", "1")), TxOp::Delete(delete("u", None))])
        .await
        .unwrap();
    assert_eq!(value(&c, "u").await, None, "{}", c.backend);
    c.rt.transact("s", &[TxOp::Delete(delete("t", None)), TxOp::Upsert(item("t", "3"))])
        .await
        .unwrap();
    assert_eq!(value(&c, "t").await.as_deref(), Some("3"), "{}", c.backend);
    c.rt.bulk_delete("s", &[delete("t", None), delete("t", None)])
        .await
        .unwrap();
    assert_eq!(value(&c, "t").await, None, "{}", c.backend);
    // Both writes carry the key's current etag: the first one changes it, so the second conflicts, and the
    // request, all or nothing, changes nothing.
    let etag = etag_of(&c, "dup0").await;
    let twice = [with_etag(item("dup0", "a"), &etag), with_etag(item("dup0", "b"), &etag)];
    let err = c.rt.save("s", &twice).await.unwrap_err();
    assert_eq!((err.status, err.code), (409, "ERR_STATE_SAVE"), "{}: {err}", c.backend);
    assert_eq!(value(&c, "dup0").await.as_deref(), Some("5"), "{}", c.backend);
    // A bulk get names the key as often as it was asked for.
    let got =
        c.rt.bulk_get("s", &["dup1".to_owned(), "dup1".to_owned()], 2)
            .await
            .unwrap();
    let data: Vec<Option<&[u8]>> = got.iter().map(|b| b.item.as_ref().map(|i| &i.data[..])).collect();
    assert_eq!(data, [Some(&b"5"[..]), Some(&b"5"[..])], "{}", c.backend);
}

/// A bulk save, bulk delete or transaction of five keys whose third write conflicts leaves all five as they were.
async fn a_write_failing_halfway_applies_nothing(c: Ctx) {
    c.rt.save("s", &[item("h1", "old"), item("h3", "old"), item("h5", "old")])
        .await
        .unwrap();
    let before = [
        ("h1", Some("old")),
        ("h2", None),
        ("h3", Some("old")),
        ("h4", None),
        ("h5", Some("old")),
    ];
    let unchanged = |what: &'static str| {
        let c = &c;
        async move {
            for (key, expected) in before {
                assert_eq!(value(c, key).await.as_deref(), expected, "{}: {what} {key}", c.backend);
            }
        }
    };
    let stale = "999999";
    let save = [
        item("h1", "new"),
        item("h2", "new"),
        with_etag(item("h3", "new"), stale),
        item("h4", "new"),
        item("h5", "new"),
    ];
    let err = c.rt.save("s", &save).await.unwrap_err();
    assert_eq!((err.status, err.code), (409, "ERR_STATE_SAVE"), "{}: {err}", c.backend);
    unchanged("bulk save").await;

    let deletes = [
        delete("h1", None),
        delete("h2", None),
        delete("h3", Some(stale)),
        delete("h4", None),
        delete("h5", None),
    ];
    let err = c.rt.bulk_delete("s", &deletes).await.unwrap_err();
    assert_eq!(
        (err.status, err.code),
        (409, "ERR_STATE_BULK_DELETE"),
        "{}: {err}",
        c.backend
    );
    unchanged("bulk delete").await;

    let tx = [
        TxOp::Upsert(item("h1", "new")),
        TxOp::Delete(delete("h5", None)),
        TxOp::Upsert(with_etag(item("h3", "new"), stale)),
        TxOp::Upsert(item("h4", "new")),
        TxOp::Upsert(item("h2", "new")),
    ];
    let err = c.rt.transact("s", &tx).await.unwrap_err();
    assert_eq!(
        (err.status, err.code),
        (500, "ERR_STATE_TRANSACTION"),
        "{}: {err}",
        c.backend
    );
    unchanged("transaction").await;

    // Without the conflict, all five apply.
    let etag = etag_of(&c, "h3").await;
    let mut fixed = save;
    fixed[2].etag = Some(etag);
    c.rt.save("s", &fixed).await.unwrap();
    for key in ["h1", "h2", "h3", "h4", "h5"] {
        assert_eq!(value(&c, key).await.as_deref(), Some("new"), "{}: {key}", c.backend);
    }
}

/// Redis: a key another client left as a plain string is replaced by a write, but a failed transaction leaves it
/// as it was; and etags are read as Dapr reads them, as decimal integers.
async fn redis_failed_writes_leave_foreign_keys_and_etags_are_integers(c: Ctx) {
    let full = format!("{}legacy", c.rt.store("s").unwrap().prefix());
    let client = ::redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("SET")
        .arg(&full)
        .arg("plain")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let failing = [
        TxOp::Upsert(item("legacy", "new")),
        TxOp::Upsert(with_etag(item("absent", "x"), "7")),
    ];
    c.rt.transact("s", &failing).await.unwrap_err();
    assert_eq!(value(&c, "legacy").await.as_deref(), Some("plain"));
    c.rt.save("s", &[item("legacy", "new")]).await.unwrap();
    assert_eq!(value(&c, "legacy").await.as_deref(), Some("new"));
    let _: () = ::redis::cmd("DEL").arg(&full).query_async(&mut conn).await.unwrap();

    // A hash another writer left with a `version` Redis cannot increment: checked by its etag like any key, and
    // replaced whole by a write, never half-written.
    let odd = format!("{}odd", c.rt.store("s").unwrap().prefix());
    let _: () = ::redis::cmd("HSET")
        .arg(&odd)
        .arg("data")
        .arg("theirs")
        .arg("version")
        .arg("v1.0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let stale = [
        TxOp::Upsert(item("first", "1")),
        TxOp::Upsert(with_etag(item("odd", "x"), "1")),
    ];
    c.rt.transact("s", &stale).await.unwrap_err();
    assert_eq!(value(&c, "first").await, None);
    c.rt.transact(
        "s",
        &[TxOp::Upsert(item("first", "1")), TxOp::Upsert(item("odd", "mine"))],
    )
    .await
    .unwrap();
    assert_eq!(value(&c, "first").await.as_deref(), Some("1"));
    assert_eq!(value(&c, "odd").await.as_deref(), Some("mine"));
    assert_eq!(etag_of(&c, "odd").await, "1");
    let _: () = ::redis::cmd("DEL").arg(&odd).query_async(&mut conn).await.unwrap();

    c.rt.save("s", &[item("v", "1")]).await.unwrap();
    let etag = etag_of(&c, "v").await;
    c.rt.save("s", &[with_etag(item("v", "2"), &format!("+{etag}"))])
        .await
        .unwrap();
    assert_eq!(value(&c, "v").await.as_deref(), Some("2"));
    for (etag, status) in [("-1", 409), ("99999999999999999999", 400), ("1.0", 400), (" 1", 400)] {
        let err = c.rt.save("s", &[with_etag(item("v", "3"), etag)]).await.unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (status, "ERR_STATE_SAVE"),
            "etag {etag:?}: {err}"
        );
    }
}

async fn value(c: &Ctx, key: &str) -> Option<String> {
    c.rt.get("s", key)
        .await
        .unwrap()
        .map(|i| String::from_utf8_lossy(&i.data).into_owned())
}

suite!(memory: set_get_roundtrip, binary_values_roundtrip, etag_rules, first_write, delete_rules, bulk_get,
    transactions_are_all_or_nothing, ttl, apps_do_not_see_each_others_keys, optimistic_concurrency_under_contention, query,
    duplicate_keys_last_write_wins, a_write_failing_halfway_applies_nothing);
suite!(sqlite: set_get_roundtrip, binary_values_roundtrip, etag_rules, first_write, delete_rules, bulk_get,
    transactions_are_all_or_nothing, ttl, apps_do_not_see_each_others_keys, optimistic_concurrency_under_contention, query,
    duplicate_keys_last_write_wins, a_write_failing_halfway_applies_nothing);
suite!(redis: set_get_roundtrip, binary_values_roundtrip, etag_rules, first_write, delete_rules, bulk_get,
    transactions_are_all_or_nothing, ttl, apps_do_not_see_each_others_keys, optimistic_concurrency_under_contention,
    query_unsupported, duplicate_keys_last_write_wins, a_write_failing_halfway_applies_nothing,
    redis_failed_writes_leave_foreign_keys_and_etags_are_integers);
suite!(postgresql: set_get_roundtrip, binary_values_roundtrip, etag_rules, first_write, delete_rules, bulk_get,
    transactions_are_all_or_nothing, ttl, apps_do_not_see_each_others_keys, optimistic_concurrency_under_contention, query,
    duplicate_keys_last_write_wins, a_write_failing_halfway_applies_nothing);
suite!(postgresql_v2: set_get_roundtrip, binary_values_roundtrip, etag_rules, first_write, delete_rules, bulk_get,
    transactions_are_all_or_nothing, ttl, apps_do_not_see_each_others_keys, optimistic_concurrency_under_contention,
    query_unsupported, duplicate_keys_last_write_wins, a_write_failing_halfway_applies_nothing);
suite!(mysql: set_get_roundtrip, binary_values_roundtrip, etag_rules, first_write, delete_rules, bulk_get,
    transactions_are_all_or_nothing, ttl, apps_do_not_see_each_others_keys, optimistic_concurrency_under_contention,
    query_unsupported, duplicate_keys_last_write_wins, a_write_failing_halfway_applies_nothing);
