//! `lock.redis`: Dapr's standalone Redis lock. A lock is the key holding its owner, taken with `SET NX EX`
//! and released by a Lua script that deletes it only for its owner. Connection metadata as `state.redis`
//! (`redisHost`, `redisPassword`, `redisDB`, `enableTLS`, ...). Like Dapr's, it refuses Redis Cluster and a
//! primary with replicas (a lock could be lost in a fail-over).

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{LockError, LockKey, LockStore, TryLockRequest, UnlockStatus};
use crate::components::state::redis::RedisConfig;
use crate::components::{ComponentError, Metadata};

/// Deletes KEYS[1] when it holds ARGV[1]: 1 when deleted, -1 when there is no such key, -2 when another owner
/// holds it.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call("GET", KEYS[1])
if not holder then return -1 end
if holder ~= ARGV[1] then return -2 end
return redis.call("DEL", KEYS[1])
"#,
    )
});

pub async fn build(md: Metadata) -> Result<Arc<dyn LockStore>, ComponentError> {
    if md.get("redisType").is_some_and(|t| t.eq_ignore_ascii_case("cluster")) {
        return Err(ComponentError::invalid(
            "redisType",
            "this component does not support connecting to Redis Cluster",
        ));
    }
    if md.bool("failover")?.unwrap_or(false) {
        return Err(ComponentError::invalid(
            "failover",
            "Redis Sentinel is not supported by tandem's lock.redis; point redisHost at the primary",
        ));
    }
    let cfg = RedisConfig::from_metadata(&md)?;
    let mut conn = cfg.connect(None).await?;
    let init = |e: redis::RedisError| ComponentError::Init(format!("error connecting to Redis: {e}"));
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map_err(init)?;
    // As Dapr: a server that does not answer INFO passes; one with replicas does not.
    let info = redis::cmd("INFO")
        .arg("replication")
        .query_async::<String>(&mut conn)
        .await;
    if info.is_ok_and(|info| connected_replicas(&info) > 0) {
        return Err(ComponentError::Init("replication is not supported".into()));
    }
    Ok(Arc::new(RedisLocks { conn }))
}

/// `connected_slaves` of an `INFO replication` answer (0 when absent).
fn connected_replicas(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

struct RedisLocks {
    conn: ConnectionManager,
}

fn fail(e: redis::RedisError) -> LockError {
    LockError(e.to_string())
}

#[async_trait]
impl LockStore for RedisLocks {
    async fn try_lock(&self, req: &TryLockRequest) -> Result<bool, LockError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&req.key.resource_id)
            .arg(&req.key.owner)
            .arg("NX")
            .arg("EX")
            .arg(req.expiry_seconds)
            .query_async(&mut conn)
            .await
            .map_err(fail)?;
        Ok(set.is_some())
    }

    async fn unlock(&self, key: &LockKey) -> Result<UnlockStatus, LockError> {
        let mut conn = self.conn.clone();
        let answer: i64 = UNLOCK
            .key(&key.resource_id)
            .arg(&key.owner)
            .invoke_async(&mut conn)
            .await
            .map_err(fail)?;
        Ok(match answer {
            n if n >= 0 => UnlockStatus::Success,
            -1 => UnlockStatus::LockDoesNotExist,
            -2 => UnlockStatus::LockBelongsToOthers,
            _ => UnlockStatus::InternalError,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nmaster_failover_state:no-failover\r\n";
        assert_eq!(connected_replicas(info), 2);
        assert_eq!(
            connected_replicas("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            0
        );
        assert_eq!(connected_replicas(""), 0);
    }

    #[tokio::test]
    async fn cluster_and_sentinel_are_refused_before_connecting() {
        for (k, v) in [("redisType", "cluster"), ("failover", "true")] {
            let md = Metadata::new(
                "l",
                "app",
                "",
                [("redisHost".into(), "127.0.0.1:1".into()), (k.into(), v.into())],
            );
            let err = build(md).await.err().expect("refused").to_string();
            assert!(err.contains(k), "{err}");
        }
    }
}
