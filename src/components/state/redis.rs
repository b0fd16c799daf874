//! `state.redis`: Dapr's Redis layout (a hash per key with `data` and `version` fields; etag = version),
//! with etags, TTL and all-or-nothing transactions through Lua scripts.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};

use super::{DeleteRequest, EtagConflict, Feature, SetRequest, StateError, StateItem, StateStore, TransactionOp};
use crate::components::{ComponentError, Metadata};
use crate::echo::echo;

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
            default_ttl: match md.parse::<i64>("ttlInSeconds")? {
                Some(t) if !ttl_in_range(t) => {
                    return Err(ComponentError::invalid(
                        "ttlInSeconds",
                        format!("{t} is out of range: must be -1 or greater, and at most 2147483647"),
                    ));
                }
                t => t,
            },
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

impl RedisConfig {
    /// A client for connections the caller manages itself (pub/sub).
    pub fn client(&self) -> Result<redis::Client, ComponentError> {
        let init = |e: redis::RedisError| {
            ComponentError::Init(format!("connecting to redis at {}:{}: {e}", self.host, self.port))
        };
        redis::Client::open(self.connection_info().map_err(init)?).map_err(init)
    }

    /// A reconnecting connection; `response_timeout` bounds each command (`None`: the client's default), so a
    /// blocking read can be given a longer one than its block time.
    pub async fn connect(&self, response_timeout: Option<Duration>) -> Result<ConnectionManager, ComponentError> {
        let init = |e: redis::RedisError| {
            ComponentError::Init(format!("connecting to redis at {}:{}: {e}", self.host, self.port))
        };
        let client = self.client()?;
        let mut manager_cfg = ConnectionManagerConfig::new()
            .set_number_of_retries(self.max_retries)
            .set_connection_timeout(Some(self.dial_timeout));
        if response_timeout.is_some() {
            manager_cfg = manager_cfg.set_response_timeout(response_timeout);
        }
        ConnectionManager::new_with_config(client, manager_cfg)
            .await
            .map_err(init)
    }
}

pub async fn build(md: Metadata) -> Result<Arc<dyn StateStore>, ComponentError> {
    let cfg = RedisConfig::from_metadata(&md)?;
    let conn = cfg.connect(None).await?;
    Ok(Arc::new(RedisStore {
        conn,
        default_ttl: cfg.default_ttl,
    }))
}

/// ARGV per operation: op ("set"/"del"), etag, first-write flag, data, ttl. Checks every operation against the
/// state the earlier ones leave, and only then writes: nothing is written before every check has passed, so a
/// failed check (an error reply naming the operation's index and why) leaves every key as it was. A key of
/// another type (a plain string an older writer left) reads as missing, and a hash whose `version` is no
/// integer HINCRBY can raise keeps its etag for the check; both are replaced only in the write phase, so no
/// write command can fail once writing has begun.
static TRANSACTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local pending, foreign = {}, {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 5
  local cur = pending[key]
  if cur == nil then
    cur = redis.pcall("HGET", key, "version")
    if type(cur) == "table" and cur.err then foreign[key] = true; cur = false
    elseif cur and (not string.match(cur, "^%-?%d+$") or #cur > 18) then foreign[key] = true end
  end
  local etag = ARGV[a + 2]
  if etag ~= "" then
    if not cur then return redis.error_reply("ETAG_MISMATCH " .. i .. " missing") end
    if cur ~= etag then return redis.error_reply("ETAG_MISMATCH " .. i .. " mismatch") end
  elseif ARGV[a + 3] == "1" and cur then
    return redis.error_reply("ETAG_MISMATCH " .. i .. " exists")
  end
  if ARGV[a + 1] == "set" then pending[key] = "pending" else pending[key] = false end
end
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 5
  if ARGV[a + 1] == "set" then
    if foreign[key] then redis.call("DEL", key); foreign[key] = nil end
    redis.call("HSET", key, "data", ARGV[a + 4])
    redis.call("HINCRBY", key, "version", 1)
    local ttl = ARGV[a + 5]
    if ttl ~= "" and tonumber(ttl) > 0 then redis.call("EXPIRE", key, ttl) else redis.call("PERSIST", key) end
  else
    redis.call("DEL", key)
    foreign[key] = nil
  end
end
return #KEYS
"#,
    )
});

/// A TTL Redis can set: Dapr's range (-1 to 2^31-1 seconds); `EXPIRE` refuses some larger values, and a refusal
/// in the middle of the script would leave earlier writes applied.
fn ttl_in_range(ttl: i64) -> bool {
    (-1..=i64::from(i32::MAX)).contains(&ttl)
}

/// The error a failed script call means: an etag conflict on operation `i` (1-based) names that key.
fn redis_err(e: redis::RedisError, ops: &[TransactionOp]) -> StateError {
    let text = e.to_string();
    let conflict = match e.code() {
        Some("ETAG_MISMATCH") => e.detail(),
        _ => text.split_once("ETAG_MISMATCH ").map(|(_, detail)| detail),
    };
    if let Some(detail) = conflict {
        let mut words = detail.split_whitespace();
        let op = words
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| ops.get(i.checked_sub(1)?));
        let why = match words.next() {
            Some("missing") => EtagConflict::Missing,
            Some("exists") => EtagConflict::Exists,
            _ => EtagConflict::Mismatch,
        };
        return why.error(op.map(TransactionOp::key).unwrap_or_default());
    }
    StateError::Backend(format!("redis: {e}"))
}

/// Whether a command (alone or in a pipeline) met a key of another type.
fn is_wrong_type(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, s)| s.code() == "WRONGTYPE"))
}

/// Dapr reads a Redis etag as a decimal integer (`strconv.Atoi`: an optional sign, then digits), so `+7` is
/// version 7; anything else is an invalid etag (400), not a mismatch.
fn parse_version(etag: &str) -> Result<String, StateError> {
    etag.parse::<i64>()
        .map(|v| v.to_string())
        .map_err(|_| StateError::EtagInvalid(format!("{:?} is not an etag this store issued", echo(etag))))
}

impl RedisStore {
    async fn run(&self, ops: &[TransactionOp]) -> Result<(), StateError> {
        let mut inv = TRANSACTION.prepare_invoke();
        for op in ops {
            let etag = match op.etag().filter(|e| !e.is_empty()) {
                Some(e) => parse_version(e)?,
                None => String::new(),
            };
            let name = if matches!(op, TransactionOp::Set(_)) {
                "set"
            } else {
                "del"
            };
            inv.key(op.key()).arg(name).arg(etag).arg(first_write(op.concurrency()));
            match op {
                TransactionOp::Set(r) => {
                    let ttl = r.ttl.or(self.default_ttl).map(|t| t.to_string()).unwrap_or_default();
                    inv.arg(&r.value[..]).arg(ttl);
                }
                TransactionOp::Delete(_) => {
                    inv.arg("").arg("");
                }
            }
        }
        let mut conn = self.conn.clone();
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| redis_err(e, ops))
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
            Err(e) if is_wrong_type(&e) => {
                let data: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| redis_err(e, &[]))?;
                return Ok(data.map(|d| StateItem {
                    data: Bytes::from(d),
                    etag: None,
                    expires_at: None,
                }));
            }
            Err(e) => return Err(redis_err(e, &[])),
        };
        Ok(data.map(|d| StateItem {
            data: Bytes::from(d),
            etag: version,
            expires_at: u64::try_from(pttl)
                .ok()
                .filter(|ms| *ms > 0)
                .and_then(|ms| SystemTime::now().checked_add(Duration::from_millis(ms))),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ttl: &str) -> Result<RedisConfig, ComponentError> {
        let props = [("redisHost", "127.0.0.1:6379"), ("ttlInSeconds", ttl)].map(|(k, v)| (k.to_owned(), v.to_owned()));
        RedisConfig::from_metadata(&Metadata::new("s", "app", "", props))
    }

    #[test]
    fn the_default_ttl_is_in_daprs_range() {
        assert_eq!(config("-1").unwrap().default_ttl, Some(-1));
        assert_eq!(config("2147483647").unwrap().default_ttl, Some(2147483647));
        for bad in ["-2", "2147483648", "9223372036854775807"] {
            let err = config(bad).unwrap_err().to_string();
            assert!(
                err.contains("ttlInSeconds") && err.contains("out of range"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn etags_are_read_as_daprs_integers() {
        assert_eq!(parse_version("+7").unwrap(), "7");
        assert_eq!(parse_version("-3").unwrap(), "-3");
        for bad in ["", "x", "1.5", " 1", "99999999999999999999"] {
            assert!(matches!(parse_version(bad), Err(StateError::EtagInvalid(_))), "{bad:?}");
        }
        let huge = "x".repeat(1 << 20);
        let StateError::EtagInvalid(message) = parse_version(&huge).unwrap_err() else {
            panic!("invalid")
        };
        assert!(message.len() < 1024, "{} bytes", message.len());
    }
}
