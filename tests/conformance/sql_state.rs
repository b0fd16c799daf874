//! SQL state stores beside the shared suite: rows laid out the way Dapr writes them read back through tandem,
//! rows tandem writes have Dapr's columns, Dapr's migration bookkeeping, and the background TTL sweep. PostgreSQL
//! on 127.0.0.1:5432 (user postgres, database test), MariaDB/MySQL on 127.0.0.1:3306 (root, database test).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use mysql_async::prelude::Queryable;
use tandem::api::Component;
use tandem::sidecar::state::{SaveItem, State};

use super::{item, runtime_with, unique};

const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
const MYSQL_DSN: &str = "root:@tcp(127.0.0.1:3306)/test?parseTime=true";

/// A table name of the test owning `dir`, the same for every runtime of that test.
pub fn table_for(dir: &tempfile::TempDir) -> String {
    let file = dir.path().join("sql-table");
    if let Ok(t) = std::fs::read_to_string(&file) {
        return t;
    }
    let t = format!("t{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&file, &t).unwrap();
    t
}

/// The component of a SQL backend whose tables are named after `table`.
pub fn component(backend: &str, table: &str) -> Component {
    let meta = format!("{table}_meta");
    match backend {
        "postgresql" => Component::new(
            "s",
            "state.postgresql",
            &[
                ("connectionString", PG),
                ("tableName", table),
                ("metadataTableName", &meta),
            ],
        ),
        "postgresql_v2" => {
            let prefix = format!("{table}_");
            let mut c = Component::new(
                "s",
                "state.postgres",
                &[
                    ("connectionString", PG),
                    ("tablePrefix", &prefix),
                    ("metadataTableName", &meta),
                ],
            );
            c.spec.version = "v2".into();
            c
        }
        "mysql" => Component::new(
            "s",
            "state.mysql",
            &[
                ("connectionString", MYSQL_DSN),
                ("schemaName", "test"),
                ("tableName", table),
                ("metadataTableName", &meta),
            ],
        ),
        other => panic!("not a SQL backend: {other}"),
    }
}

/// Drops the tables [`component`] names, from any context (a drop in an async test included).
pub fn drop_tables(backend: &str, table: &str) {
    let name = table.to_owned();
    let (backend, table) = (backend.to_owned(), table.to_owned());
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let meta = format!("{table}_meta");
            match backend.as_str() {
                "mysql" => {
                    let mut db = mysql().await;
                    db.query_drop(format!("DROP TABLE IF EXISTS {table}, {meta}"))
                        .await
                        .map_err(|e| e.to_string())
                }
                "postgresql_v2" => pg()
                    .await
                    .batch_execute(&format!("DROP TABLE IF EXISTS {table}_state, {meta}"))
                    .await
                    .map_err(|e| e.to_string()),
                _ => pg()
                    .await
                    .batch_execute(&format!("DROP TABLE IF EXISTS {table}, {meta}"))
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
    });
    if let Ok(Err(e)) = dropped.join() {
        eprintln!("dropping the test tables {name}: {e}");
    }
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

async fn mysql() -> mysql_async::Conn {
    mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 127.0.0.1:3306")
}

async fn start(c: Component, app: &str) -> State {
    runtime_with(c, app).await.expect("the store starts")
}

fn with_ttl(key: &str, value: &str, ttl: &str) -> SaveItem {
    SaveItem {
        metadata: BTreeMap::from([("ttlInSeconds".to_owned(), ttl.to_owned())]),
        ..item(key, value)
    }
}

async fn data(rt: &State, key: &str) -> Option<Bytes> {
    rt.get("s", key).await.unwrap().map(|i| i.data)
}

#[tokio::test]
async fn postgresql_v1_reads_and_writes_dapr_rows() {
    let db = pg().await;
    let t = unique("dv1").replace('-', "_");
    let meta = format!("{t}_meta");
    // The table as Dapr's three migrations leave it, with rows as Dapr writes them: JSON as jsonb, bytes as a
    // base64 JSON string with isbinary, one expired.
    db.batch_execute(&format!(
        "CREATE TABLE {meta} (key text NOT NULL PRIMARY KEY, value text NOT NULL);
         INSERT INTO {meta} VALUES ('migrations', '3');
         CREATE TABLE {t} (key text NOT NULL PRIMARY KEY, value jsonb NOT NULL, isbinary boolean NOT NULL,
           insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(), updatedate TIMESTAMP WITH TIME ZONE NULL);
         ALTER TABLE {t} ADD expiredate TIMESTAMP WITH TIME ZONE;
         ALTER TABLE {t} ADD COLUMN row_id BIGINT GENERATED BY DEFAULT AS IDENTITY;
         INSERT INTO {t} (key, value, isbinary) VALUES ('app||json', '{{\"n\": 1, \"s\": \"x\"}}', false);
         INSERT INTO {t} (key, value, isbinary) VALUES ('app||bin', '\"AAEC/w==\"', true);
         INSERT INTO {t} (key, value, isbinary, expiredate) VALUES ('app||old', '1', false, now() - interval '1 minute');
         INSERT INTO {t} (key, value, isbinary, expiredate) VALUES ('app||later', '2', false, now() + interval '1 hour');"
    ))
    .await
    .unwrap();
    let c = Component::new(
        "s",
        "state.postgresql",
        &[
            ("connectionString", PG),
            ("tableName", &t),
            ("metadataTableName", &meta),
        ],
    );
    let rt = start(c, "app").await;
    let got = rt.get("s", "json").await.unwrap().unwrap();
    assert_eq!(got.data, Bytes::from_static(br#"{"n": 1, "s": "x"}"#));
    let xmin: String = db
        .query_one(&format!("SELECT xmin::text FROM {t} WHERE key = 'app||json'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got.etag.as_deref(), Some(xmin.as_str()), "the etag is the row's xmin");
    assert_eq!(data(&rt, "bin").await, Some(Bytes::from_static(&[0, 1, 2, 255])));
    assert_eq!(data(&rt, "old").await, None, "expired rows are not returned");
    assert!(rt.get("s", "later").await.unwrap().unwrap().expires_at.is_some());
    // The query API sees Dapr's rows too.
    let q = rt.query("s", br#"{"filter":{"EQ":{"s":"x"}}}"#).await.unwrap();
    assert_eq!(q.results.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["json"]);

    // What tandem writes is what Dapr would have written.
    rt.save("s", &[item("doc", r#"{"a":[1,2]}"#), item("raw", "plain text")])
        .await
        .unwrap();
    rt.save("s", &[with_ttl("ttl", "3", "100")]).await.unwrap();
    let row = db
        .query_one(
            &format!("SELECT value::text, isbinary, updatedate IS NULL FROM {t} WHERE key = 'app||doc'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1), row.get::<_, bool>(2)),
        (r#"{"a": [1, 2]}"#.to_owned(), false, true)
    );
    let row = db
        .query_one(
            &format!("SELECT value #>> '{{}}', isbinary FROM {t} WHERE key = 'app||raw'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("cGxhaW4gdGV4dA==".to_owned(), true)
    );
    let ttl: f64 = db
        .query_one(
            &format!("SELECT extract(epoch FROM expiredate - now())::float8 FROM {t} WHERE key = 'app||ttl'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((90.0..=101.0).contains(&ttl), "expiredate is about 100 s away: {ttl}");
    // A write with the etag Dapr handed out (the xmin) is accepted; the level stays Dapr's.
    rt.save(
        "s",
        &[SaveItem {
            etag: Some(xmin),
            ..item("json", "5")
        }],
    )
    .await
    .unwrap();
    let level: String = db
        .query_one(&format!("SELECT value FROM {meta} WHERE key = 'migrations'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "3");
    db.batch_execute(&format!("DROP TABLE {t}; DROP TABLE {meta}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn postgresql_completes_an_old_dapr_table_and_records_the_migration_level() {
    let db = pg().await;
    let t = unique("old").replace('-', "_");
    let meta = format!("{t}_meta");
    // A table from Dapr's first migration only (no expiredate, no row_id), and no metadata table at all.
    db.batch_execute(&format!(
        "CREATE TABLE {t} (key text NOT NULL PRIMARY KEY, value jsonb NOT NULL, isbinary boolean NOT NULL,
           insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(), updatedate TIMESTAMP WITH TIME ZONE NULL);
         INSERT INTO {t} (key, value, isbinary) VALUES ('app||k', '7', false);"
    ))
    .await
    .unwrap();
    let c = || {
        Component::new(
            "s",
            "state.postgresql",
            &[
                ("connectionString", PG),
                ("tableName", &t),
                ("metadataTableName", &meta),
            ],
        )
    };
    let rt = start(c(), "app").await;
    assert_eq!(data(&rt, "k").await, Some(Bytes::from_static(b"7")));
    rt.save("s", &[with_ttl("k2", "1", "60")]).await.unwrap();
    let cols: Vec<String> = db
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&t],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        cols,
        [
            "key",
            "value",
            "isbinary",
            "insertdate",
            "updatedate",
            "expiredate",
            "row_id"
        ]
    );
    let level: String = db
        .query_one(&format!("SELECT value FROM {meta} WHERE key = 'migrations'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "3", "Dapr starting on this table must not redo a migration");
    // Starting again on a finished table changes nothing.
    let again = start(c(), "app").await;
    assert_eq!(data(&again, "k").await, Some(Bytes::from_static(b"7")));
    db.batch_execute(&format!("DROP TABLE {t}; DROP TABLE {meta}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn postgresql_v2_reads_and_writes_dapr_rows() {
    let db = pg().await;
    let prefix = format!("{}_", unique("dv2").replace('-', "_"));
    let t = format!("{prefix}state");
    let meta = format!("{prefix}meta");
    let etag = uuid::Uuid::new_v4();
    db.batch_execute(&format!(
        "CREATE TABLE {meta} (key text NOT NULL PRIMARY KEY, value text NOT NULL);
         INSERT INTO {meta} VALUES ('migrations-state-v2-{prefix}', '2');
         CREATE TABLE {t} (key text NOT NULL PRIMARY KEY, value bytea NOT NULL,
           etag uuid NOT NULL DEFAULT gen_random_uuid(), created_at timestamp with time zone NOT NULL DEFAULT now(),
           updated_at timestamp with time zone, expires_at timestamp with time zone);
         CREATE INDEX ON {t} (expires_at);
         ALTER TABLE {t} ADD COLUMN row_id BIGINT GENERATED BY DEFAULT AS IDENTITY;
         INSERT INTO {t} (key, value, etag) VALUES ('app||k', '\\x00ff', '{etag}');"
    ))
    .await
    .unwrap();
    let mut c = Component::new(
        "s",
        "state.postgresql",
        &[
            ("connectionString", PG),
            ("tablePrefix", &prefix),
            ("metadataTableName", &meta),
        ],
    );
    c.spec.version = "v2".into();
    let rt = start(c, "app").await;
    let got = rt.get("s", "k").await.unwrap().unwrap();
    assert_eq!((&got.data[..], got.etag), (&[0u8, 255][..], Some(etag.to_string())));
    rt.save(
        "s",
        &[SaveItem {
            etag: Some(etag.to_string()),
            ..item("k", r#"{"b":2}"#)
        }],
    )
    .await
    .unwrap();
    let row = db
        .query_one(
            &format!("SELECT value, etag::text, updated_at IS NOT NULL FROM {t} WHERE key = 'app||k'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Vec<u8>>(0),
        br#"{"b":2}"#,
        "v2 keeps the bytes as they came"
    );
    assert_ne!(row.get::<_, String>(1), etag.to_string(), "a write gives a new etag");
    assert!(row.get::<_, bool>(2));
    let err = rt
        .save(
            "s",
            &[SaveItem {
                etag: Some(etag.to_string()),
                ..item("k", "3")
            }],
        )
        .await
        .unwrap_err();
    assert_eq!((err.status, err.code), (409, "ERR_STATE_SAVE"));
    db.batch_execute(&format!("DROP TABLE {t}; DROP TABLE {meta}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn mysql_reads_and_writes_dapr_rows() {
    let mut db = mysql().await;
    let t = unique("dm").replace('-', "_");
    let meta = format!("{t}_meta");
    // Dapr's table, written by Dapr's statements.
    db.query_drop(format!(
        "CREATE TABLE {t} (id VARCHAR(255) NOT NULL PRIMARY KEY, value JSON NOT NULL, isbinary BOOLEAN NOT NULL,
           insertDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
           updateDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
           eTag VARCHAR(36) NOT NULL, expiredate TIMESTAMP NULL, INDEX expiredate_idx(expiredate))"
    ))
    .await
    .unwrap();
    db.query_drop(format!(
        "INSERT INTO {t} (id, value, eTag, isbinary, expiredate) VALUES
           ('app||json', '{{\"n\":1}}', 'e-1', false, NULL),
           ('app||bin', '\"AAEC/w==\"', 'e-2', true, NULL),
           ('app||old', '1', 'e-3', false, CURRENT_TIMESTAMP - INTERVAL 1 MINUTE)"
    ))
    .await
    .unwrap();
    let c = Component::new(
        "s",
        "state.mysql",
        &[
            (
                "connectionString",
                "root:@tcp(127.0.0.1:3306)/?allowNativePasswords=true",
            ),
            ("schemaName", "test"),
            ("tableName", &t),
            ("metadataTableName", &meta),
        ],
    );
    let rt = start(c, "app").await;
    let got = rt.get("s", "json").await.unwrap().unwrap();
    assert_eq!((&got.data[..], got.etag.as_deref()), (&br#"{"n":1}"#[..], Some("e-1")));
    assert_eq!(data(&rt, "bin").await, Some(Bytes::from_static(&[0, 1, 2, 255])));
    assert_eq!(data(&rt, "old").await, None);
    // The row_id column Dapr's later releases add is there now.
    let n: Option<i64> = db
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = 'test' AND table_name = ? AND column_name = 'row_id'",
            (t.as_str(),),
        )
        .await
        .unwrap();
    assert_eq!(n, Some(1));
    rt.save(
        "s",
        &[SaveItem {
            etag: Some("e-1".into()),
            ..item("json", "\"hi\"")
        }],
    )
    .await
    .unwrap();
    rt.save("s", &[item("raw", "plain text"), with_ttl("ttl", "1", "100")])
        .await
        .unwrap();
    let rows: Vec<(String, String, bool, String, Option<i64>)> = db
        .query(format!(
            "SELECT id, value, isbinary, eTag, TIMESTAMPDIFF(SECOND, CURRENT_TIMESTAMP, expiredate) FROM {t}
             WHERE id IN ('app||json', 'app||raw', 'app||ttl') ORDER BY id"
        ))
        .await
        .unwrap();
    assert_eq!(rows[0].0, "app||json");
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("\"hi\"", false));
    assert_ne!(rows[0].3, "e-1");
    assert!(
        uuid::Uuid::parse_str(&rows[0].3).is_ok(),
        "etags are UUIDs: {}",
        rows[0].3
    );
    assert_eq!((rows[1].1.as_str(), rows[1].2), ("\"cGxhaW4gdGV4dA==\"", true));
    assert!(matches!(rows[2].4, Some(90..=101)), "{:?}", rows[2].4);
    db.query_drop(format!("DROP TABLE {t}, {meta}")).await.unwrap();
}

/// Expired rows leave the table itself at `cleanupInterval`, not only the answers.
#[tokio::test]
async fn expired_rows_are_swept() {
    for backend in ["postgresql", "postgresql_v2", "mysql"] {
        let t = unique("sw").replace('-', "_");
        let mut c = component(backend, &t);
        c.spec.metadata.push(tandem::api::NameValuePair {
            name: "cleanupInterval".into(),
            value: Some("1s".into()),
            ..Default::default()
        });
        let rt = start(c, "app").await;
        rt.save("s", &[with_ttl("gone", "1", "1"), item("kept", "1")])
            .await
            .unwrap();
        let table = if backend == "postgresql_v2" {
            format!("{t}_state")
        } else {
            t.clone()
        };
        let mut left = 2;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = if backend == "mysql" {
                let mut db = mysql().await;
                let n: Option<i64> = db.query_first(format!("SELECT COUNT(*) FROM {table}")).await.unwrap();
                n.unwrap_or(0)
            } else {
                pg().await
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                    .await
                    .unwrap()
                    .get(0)
            };
            if left == 1 {
                break;
            }
        }
        assert_eq!(left, 1, "{backend}: the expired row was deleted, the other kept");
        assert!(data(&rt, "kept").await.is_some());
        drop_tables(backend, &t);
    }
}

#[tokio::test]
async fn bad_connection_settings_fail_at_start() {
    for (type_, md) in [
        (
            "state.postgresql",
            vec![(
                "connectionString",
                "host=127.0.0.1 port=1 user=postgres connect_timeout=2",
            )],
        ),
        (
            "state.postgresql",
            vec![("connectionString", PG), ("tableName", "bad name")],
        ),
        ("state.mysql", vec![("connectionString", "root:@tcp(127.0.0.1:1)/")]),
        ("state.mysql", vec![("connectionString", "not a dsn")]),
        (
            "state.mysql",
            vec![("connectionString", MYSQL_DSN), ("tableName", "x;y")],
        ),
    ] {
        let c = Component::new("s", type_, &md);
        let err = runtime_with(c, "app").await.err();
        assert!(err.is_some(), "{type_} {md:?} must not start");
    }
}
