//! `state.redis`: Dapr's Redis layout (a hash per key with `data` and `version` fields; etag = version),
//! with etags, TTL and all-or-nothing transactions through Lua scripts.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};

use super::{DeleteRequest, Feature, SetRequest, StateError, StateItem, StateStore, TransactionOp};
use crate::components::{ComponentError, Metadata};

/// Typed `state.redis` metadata (Dapr's names). `Debug` hides the password.
#[derive(Clone)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    pub enable_tls: bool,
    pub insecure_skip_verify: bool,
    /// Applied to writes that carry no TTL of their own.
    pub default_ttl: Option<i64>,
    pub max_retries: usize,
    pub dial_timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("enable_tls", &self.enable_tls)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let addr = md
            .string("redisHost")
            .ok_or_else(|| ComponentError::invalid("redisHost", "is required (host:port)"))?;
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                p.parse()
                    .map_err(|_| ComponentError::invalid("redisHost", format!("{addr:?} has no valid port")))?,
            ),
            None => (addr.clone(), 6379),
        };
        Ok(RedisConfig {
            host,
            port,
            username: md.string("redisUsername"),
            password: md.string("redisPassword"),
            db: md.parse("redisDB")?.unwrap_or(0),
            enable_tls: md.bool("enableTLS")?.unwrap_or(false),
            insecure_skip_verify: md.bool("insecureSkipVerify")?.unwrap_or(false),
            default_ttl: md.parse("ttlInSeconds")?,
            max_retries: md.parse("maxRetries")?.unwrap_or(3),
            dial_timeout: md.duration("dialTimeout")?.unwrap_or(Duration::from_secs(5)),
        })
    }

    fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        let addr = if self.enable_tls {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: self.insecure_skip_verify,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut settings = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        Ok(addr.into_connection_info()?.set_redis_settings(settings))
    }
}

pub struct RedisStore {
    conn: ConnectionManager,
    default_ttl: Option<i64>,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    let cfg = RedisConfig::from_metadata(&md)?;
    let init =
        |e: redis::RedisError| ComponentError::Init(format!("connecting to redis at {}:{}: {e}", cfg.host, cfg.port));
    let client = redis::Client::open(cfg.connection_info().map_err(init)?).map_err(init)?;
    let manager_cfg = ConnectionManagerConfig::new()
        .set_number_of_retries(cfg.max_retries)
        .set_connection_timeout(Some(cfg.dial_timeout));
    let conn = ConnectionManager::new_with_config(client, manager_cfg)
        .await
        .map_err(init)?;
    Ok(Arc::new(RedisStore {
        conn,
        default_ttl: cfg.default_ttl,
    }))
}

/// Shared prologue: `cur` is the current version of KEYS[i] or false; a plain string left by older
/// writers is replaced.
const CURRENT: &str = r#"
local function current(key)
  local v = redis.pcall("HGET", key, "version")
  if type(v) == "table" and v.err then redis.call("DEL", key); return false end
  return v
end
local function check(key, cur, etag, first_write)
  if etag ~= "" then
    if not cur or cur ~= etag then return "ETAG_MISMATCH etag does not match for key " .. key end
  elseif first_write == "1" and cur then
    return "ETAG_MISMATCH item " .. key .. " already exists and no etag was given with first-write concurrency"
  end
  return nil
end
local function write(key, data, ttl)
  redis.call("HSET", key, "data", data)
  redis.call("HINCRBY", key, "version", 1)
  if ttl ~= "" and tonumber(ttl) > 0 then redis.call("EXPIRE", key, ttl) else redis.call("PERSIST", key) end
end
"#;

/// ARGV per operation: op ("set"/"del"), etag, first-write flag, data, ttl. Validates all, then applies all.
static TRANSACTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{CURRENT}
local pending = {{}}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 5
  local cur
  if pending[key] ~= nil then cur = pending[key] else cur = current(key) end
  local err = check(key, cur, ARGV[a + 2], ARGV[a + 3])
  if err then return redis.error_reply(err) end
  if ARGV[a + 1] == "set" then pending[key] = "pending" else pending[key] = false end
end
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 5
  if ARGV[a + 1] == "set" then write(key, ARGV[a + 4], ARGV[a + 5]) else redis.call("DEL", key) end
end
return #KEYS
"#
    ))
});

fn redis_err(e: redis::RedisError) -> StateError {
    match e.detail() {
        Some(d) if e.code() == Some("ETAG_MISMATCH") => StateError::EtagMismatch(d.to_owned()),
        _ if e.to_string().contains("ETAG_MISMATCH") => StateError::EtagMismatch(e.to_string()),
        _ => StateError::Backend(format!("redis: {e}")),
    }
}

impl RedisStore {
    async fn run(&self, ops: &[TransactionOp]) -> Result<(), StateError> {
        if let Some(e) = ops
            .iter()
            .filter_map(TransactionOp::etag)
            .find(|e| !e.is_empty() && e.parse::<u64>().is_err())
        {
            return Err(StateError::EtagInvalid(format!(
                "{e:?} is not an etag this store issued"
            )));
        }
        let mut inv = TRANSACTION.prepare_invoke();
        for op in ops {
            match op {
                TransactionOp::Set(r) => {
                    let ttl = r.ttl.or(self.default_ttl).map(|t| t.to_string()).unwrap_or_default();
                    inv.key(&r.key)
                        .arg("set")
                        .arg(r.etag.as_deref().unwrap_or(""))
                        .arg(first_write(r.concurrency))
                        .arg(&r.value[..])
                        .arg(ttl);
                }
                TransactionOp::Delete(r) => {
                    inv.key(&r.key)
                        .arg("del")
                        .arg(r.etag.as_deref().unwrap_or(""))
                        .arg(first_write(r.concurrency))
                        .arg("")
                        .arg("");
                }
            }
        }
        let mut conn = self.conn.clone();
        inv.invoke_async::<i64>(&mut conn).await.map(|_| ()).map_err(redis_err)
    }
}

fn first_write(c: super::Concurrency) -> &'static str {
    if c == super::Concurrency::FirstWrite { "1" } else { "0" }
}

#[async_trait]
impl StateStore for RedisStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Etag, Feature::Transactional, Feature::Ttl]
    }

    async fn get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<((Option<Vec<u8>>, Option<String>), i64)> = redis::pipe()
            .cmd("HMGET")
            .arg(key)
            .arg("data")
            .arg("version")
            .cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await;
        let ((data, version), pttl) = match reply {
            Ok(r) => r,
            // A plain string written by another client: read it as it is.
            Err(e) if e.code() == Some("WRONGTYPE") => {
                let data: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err)?;
                return Ok(data.map(|d| StateItem {
                    data: Bytes::from(d),
                    etag: None,
                    expires_at: None,
                }));
            }
            Err(e) => return Err(redis_err(e)),
        };
        Ok(data.map(|d| StateItem {
            data: Bytes::from(d),
            etag: version,
            expires_at: (pttl > 0).then(|| SystemTime::now() + Duration::from_millis(pttl as u64)),
        }))
    }

    async fn set(&self, req: &SetRequest) -> Result<(), StateError> {
        self.run(&[TransactionOp::Set(req.clone())]).await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<(), StateError> {
        self.run(&[TransactionOp::Delete(req.clone())]).await
    }

    /// Dapr's Redis store answers queries only with the RedisJSON/RediSearch modules, which tandem does not use.
    async fn query(&self, _prefix: &str, _query: &super::Query) -> Result<super::QueryResponse, StateError> {
        Err(StateError::Backend(
            "redis-json server support is required for query capability".into(),
        ))
    }

    async fn transact(&self, ops: &[TransactionOp]) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.run(ops).await
    }
}
