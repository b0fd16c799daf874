//! Lock store conformance: every backend (in-memory, Redis on 127.0.0.1:6379) through the runtime's lock API, so
//! Dapr's checks, error codes and key scheme (`lock||<prefix>||<resourceId>`) are exercised with the store.

use std::sync::Arc;
use std::time::Duration;

use tandem::api::Component;
use tandem::components::Kind;
use tandem::components::lock::UnlockStatus;
use tandem::sidecar::components::ComponentTable;
use tandem::sidecar::lock::Locks;

fn component(backend: &str, name: &str, key_prefix: Option<&str>) -> Component {
    let mut md = vec![];
    if backend == "redis" {
        md.push(("redisHost", "127.0.0.1:6379"));
    }
    if let Some(p) = key_prefix {
        md.push(("keyPrefix", p));
    }
    let type_ = match backend {
        "memory" => "lock.in-memory",
        "redis" => "lock.redis",
        other => panic!("unknown backend {other}"),
    };
    Component::new(name, type_, &md)
}

/// The lock API of app `app_id` over `components` (loaded into a table of their own).
async fn locks_of(app_id: &str, table: Arc<ComponentTable>, components: &[Component]) -> Result<Locks, String> {
    super::loader(&table, app_id)
        .with_admission(Kind::Lock, tandem::sidecar::lock::admit)
        .load_all(components)
        .await?;
    Ok(Locks::new(table))
}

struct Ctx {
    backend: &'static str,
    /// Lock store `l` for a fresh app id.
    locks: Locks,
    app_id: String,
}

async fn ctx(backend: &'static str) -> Ctx {
    let app_id = unique("app");
    let locks = locks_of(
        &app_id,
        Arc::new(ComponentTable::default()),
        &[component(backend, "l", None)],
    )
    .await
    .unwrap_or_else(|e| panic!("{backend} lock store failed to start (is the server running?): {e}"));
    Ctx { backend, locks, app_id }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn acquire_and_contend(c: Ctx) {
    let r = unique("res");
    assert!(c.locks.try_lock("l", &r, "alice", 60).await.unwrap(), "{}", c.backend);
    assert!(!c.locks.try_lock("l", &r, "bob", 60).await.unwrap(), "held by alice");
    assert!(
        !c.locks.try_lock("l", &r, "alice", 60).await.unwrap(),
        "a lock is not re-entrant, even for its owner"
    );
    // Another resource is another lock.
    assert!(c.locks.try_lock("l", &unique("res"), "bob", 60).await.unwrap());
    assert_eq!(c.locks.unlock("l", &r, "alice").await.unwrap(), UnlockStatus::Success);
    assert!(
        c.locks.try_lock("l", &r, "bob", 60).await.unwrap(),
        "free again once released"
    );
    assert_eq!(c.locks.unlock("l", &r, "bob").await.unwrap(), UnlockStatus::Success);
}

async fn owner_is_checked_on_unlock(c: Ctx) {
    let r = unique("res");
    assert!(c.locks.try_lock("l", &r, "alice", 60).await.unwrap());
    assert_eq!(
        c.locks.unlock("l", &r, "bob").await.unwrap(),
        UnlockStatus::LockBelongsToOthers
    );
    assert!(!c.locks.try_lock("l", &r, "bob", 60).await.unwrap(), "still alice's");
    assert_eq!(c.locks.unlock("l", &r, "alice").await.unwrap(), UnlockStatus::Success);
    assert_eq!(
        c.locks.unlock("l", &r, "alice").await.unwrap(),
        UnlockStatus::LockDoesNotExist,
        "released once"
    );
}

async fn unlock_of_a_missing_lock(c: Ctx) {
    assert_eq!(
        c.locks.unlock("l", &unique("never"), "alice").await.unwrap(),
        UnlockStatus::LockDoesNotExist
    );
}

async fn expiry_releases_the_lock(c: Ctx) {
    let r = unique("res");
    assert!(c.locks.try_lock("l", &r, "alice", 1).await.unwrap());
    assert!(!c.locks.try_lock("l", &r, "bob", 60).await.unwrap());
    // Redis expires keys within a millisecond of their time; a generous margin keeps this from flaking.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        c.locks.unlock("l", &r, "alice").await.unwrap(),
        UnlockStatus::LockDoesNotExist,
        "{}: an expired lock is gone",
        c.backend
    );
    assert!(c.locks.try_lock("l", &r, "bob", 60).await.unwrap(), "free once expired");
    assert_eq!(
        c.locks.unlock("l", &r, "alice").await.unwrap(),
        UnlockStatus::LockBelongsToOthers,
        "the old owner cannot release the new owner's lock"
    );
    assert_eq!(c.locks.unlock("l", &r, "bob").await.unwrap(), UnlockStatus::Success);
}

async fn exactly_one_of_many_racers_wins(c: Ctx) {
    let r = unique("race");
    let locks = Arc::new(c.locks);
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (locks, r) = (locks.clone(), r.clone());
        racers.spawn(async move { (i, locks.try_lock("l", &r, &format!("owner-{i}"), 60).await.unwrap()) });
    }
    let mut winners = vec![];
    while let Some(done) = racers.join_next().await {
        let (i, won) = done.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "{}: winners {winners:?}", c.backend);
    let winner = format!("owner-{}", winners[0]);
    assert_eq!(locks.unlock("l", &r, &winner).await.unwrap(), UnlockStatus::Success);
}

async fn apps_have_their_own_locks_unless_the_prefix_is_shared(c: Ctx) {
    let r = unique("res");
    let other_table = Arc::new(ComponentTable::default());
    let other_app = locks_of(&unique("app"), other_table, &[component(c.backend, "l", None)])
        .await
        .unwrap();
    assert!(c.locks.try_lock("l", &r, "alice", 60).await.unwrap());
    let local = c.backend == "memory";
    // A memory store is its sidecar's own; a Redis store is shared, but keyed by app id by default.
    assert!(
        other_app.try_lock("l", &r, "bob", 60).await.unwrap(),
        "another app's resource"
    );
    assert_eq!(c.locks.unlock("l", &r, "alice").await.unwrap(), UnlockStatus::Success);
    assert_eq!(other_app.unlock("l", &r, "bob").await.unwrap(), UnlockStatus::Success);

    // The same app id in another sidecar (a replica) shares its locks through a shared store.
    let replica = locks_of(
        &c.app_id,
        Arc::new(ComponentTable::default()),
        &[component(c.backend, "l", None)],
    )
    .await
    .unwrap();
    assert!(c.locks.try_lock("l", &r, "alice", 60).await.unwrap());
    assert_eq!(
        replica.try_lock("l", &r, "bob", 60).await.unwrap(),
        local,
        "{}: a replica sees the lock when the store is shared",
        c.backend
    );
    assert_eq!(c.locks.unlock("l", &r, "alice").await.unwrap(), UnlockStatus::Success);
    if local {
        assert_eq!(replica.unlock("l", &r, "bob").await.unwrap(), UnlockStatus::Success);
    }

    // keyPrefix `none`: every app using the store shares the resource.
    for prefix in ["none", "Team-A"] {
        let shared = |app: String| {
            let components = [component(c.backend, "l", Some(prefix))];
            async move {
                locks_of(&app, Arc::new(ComponentTable::default()), &components)
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (shared(unique("app")).await, shared(unique("app")).await);
        assert!(a.try_lock("l", &r, "alice", 60).await.unwrap());
        assert_eq!(
            b.try_lock("l", &r, "bob", 60).await.unwrap(),
            local,
            "keyPrefix {prefix}"
        );
        assert_eq!(a.unlock("l", &r, "alice").await.unwrap(), UnlockStatus::Success);
        if local {
            assert_eq!(b.unlock("l", &r, "bob").await.unwrap(), UnlockStatus::Success);
        }
    }
}

/// Dapr's checks and answers, in its order, whatever the backend.
async fn daprs_checks(c: Ctx) {
    let code = |e: tandem::sidecar::error::ApiError| (e.status, e.grpc, e.code, e.message);
    use tonic::Code::*;
    // The expiry is checked first, even before the store.
    for expiry in [0, -1, i32::MIN] {
        assert_eq!(
            code(c.locks.try_lock("nope", "r", "o", expiry).await.unwrap_err()),
            (
                400,
                InvalidArgument,
                "ERR_MALFORMED_REQUEST",
                "ExpiryInSeconds is not positive in lock store nope".into()
            )
        );
    }
    assert_eq!(
        code(c.locks.try_lock("l", "", "o", 5).await.unwrap_err()),
        (
            400,
            InvalidArgument,
            "ERR_MALFORMED_REQUEST",
            "ResourceId is empty in lock store l".into()
        )
    );
    assert_eq!(
        code(c.locks.unlock("l", "r", "").await.unwrap_err()),
        (
            400,
            InvalidArgument,
            "ERR_MALFORMED_REQUEST",
            "LockOwner is empty in lock store l".into()
        )
    );
    for e in [
        c.locks.try_lock("nope", "r", "o", 5).await.unwrap_err(),
        c.locks.unlock("nope", "r", "o").await.unwrap_err(),
    ] {
        assert_eq!(
            code(e),
            (
                400,
                InvalidArgument,
                "ERR_LOCK_STORE_NOT_FOUND",
                "lock store nope not found".into()
            )
        );
    }
    // The key separator in a resource id: Dapr's code and message (with 400, as it is the request's fault).
    assert_eq!(
        code(c.locks.try_lock("l", "a||b", "o", 5).await.unwrap_err()),
        (
            400,
            InvalidArgument,
            "ERR_TRY_LOCK",
            "failed to try acquiring lock: input key/keyPrefix 'a||b' can't contain '||'".into()
        )
    );
    assert_eq!(
        code(c.locks.unlock("l", "a||b", "o").await.unwrap_err()),
        (
            400,
            InvalidArgument,
            "ERR_UNLOCK",
            "failed to release lock: input key/keyPrefix 'a||b' can't contain '||'".into()
        )
    );
    // With no lock store at all.
    let none = Locks::new(Arc::new(ComponentTable::default()));
    for e in [
        none.try_lock("l", "r", "o", 5).await.unwrap_err(),
        none.unlock("l", "", "").await.unwrap_err(),
    ] {
        assert_eq!(
            code(e),
            (
                500,
                FailedPrecondition,
                "ERR_LOCK_STORE_NOT_CONFIGURED",
                "lock store is not configured".into()
            )
        );
    }
    // A keyPrefix holding the separator keeps the store from loading, as in Dapr.
    let err = locks_of(
        "app",
        Arc::new(ComponentTable::default()),
        &[component(c.backend, "bad", Some("a||b"))],
    )
    .await
    .err()
    .expect("refused");
    assert!(err.contains("can't contain '||'"), "{err}");
}

/// The Redis layout is Dapr's: the key `lock||<app id>||<resource>` holds the owner, with the expiry as its TTL,
/// so tandem and daprd sidecars of one app can share a lock store.
async fn redis_layout_is_daprs(c: Ctx) {
    let r = unique("res");
    assert!(c.locks.try_lock("l", &r, "alice", 60).await.unwrap());
    let client = ::redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("lock||{}||{r}", c.app_id);
    let owner: Option<String> = ::redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!(owner.as_deref(), Some("alice"));
    let ttl: i64 = ::redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    // A lock daprd took (same key) is seen as held.
    let theirs = unique("res");
    let _: () = ::redis::cmd("SET")
        .arg(format!("lock||{}||{theirs}", c.app_id))
        .arg("daprd-owner")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!c.locks.try_lock("l", &theirs, "alice", 60).await.unwrap());
    assert_eq!(
        c.locks.unlock("l", &theirs, "daprd-owner").await.unwrap(),
        UnlockStatus::Success
    );
    assert_eq!(c.locks.unlock("l", &r, "alice").await.unwrap(), UnlockStatus::Success);
    let gone: Option<String> = ::redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!(gone, None);
}

suite!(memory: acquire_and_contend, owner_is_checked_on_unlock, unlock_of_a_missing_lock, expiry_releases_the_lock,
    exactly_one_of_many_racers_wins, apps_have_their_own_locks_unless_the_prefix_is_shared, daprs_checks);
suite!(redis: acquire_and_contend, owner_is_checked_on_unlock, unlock_of_a_missing_lock, expiry_releases_the_lock,
    exactly_one_of_many_racers_wins, apps_have_their_own_locks_unless_the_prefix_is_shared, daprs_checks,
    redis_layout_is_daprs);
