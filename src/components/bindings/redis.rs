//! `bindings.redis`: an output binding over one Redis key per call (`key` metadata), with the connection
//! metadata of `state.redis`. Operations as Dapr's: `create` (SET, then EXPIRE when `ttlInSeconds` is given),
//! `get` (GET, or GETDEL with `delete: "true"`; a missing key answers an empty body), `delete` (DEL) and
//! `increment` (INCR, with the optional EXPIRE).

use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{Binding, BindingError, Directions, InvokeRequest, InvokeResponse};
use crate::components::state::redis::RedisConfig;
use crate::components::{ComponentError, Metadata};

pub async fn build(md: Metadata) -> Result<Arc<dyn Binding>, ComponentError> {
    let cfg = RedisConfig::from_metadata(&md)?;
    let conn = cfg.connect(None).await?;
    super::directed(&md, Arc::new(RedisBinding { conn }))
}

struct RedisBinding {
    conn: ConnectionManager,
}

fn key(req: &InvokeRequest) -> Result<&str, BindingError> {
    req.metadata
        .get("key")
        .map(String::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| BindingError::new("redis binding: missing key in request metadata"))
}

#[async_trait]
impl Binding for RedisBinding {
    fn directions(&self) -> Directions {
        Directions::OUTPUT
    }

    fn operations(&self) -> &[&'static str] {
        &["create", "delete", "get", "increment"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<Option<InvokeResponse>, BindingError> {
        let key = key(&req)?;
        let mut conn = self.conn.clone();
        let fail = |e: redis::RedisError| BindingError::new(e);
        match req.operation.as_str() {
            "create" | "increment" => {
                let ttl = super::request_ttl(&req)?;
                let mut pipe = redis::pipe();
                pipe.atomic();
                if req.operation == "create" {
                    pipe.cmd("SET").arg(key).arg(&req.data[..]).ignore();
                } else {
                    pipe.cmd("INCR").arg(key).ignore();
                }
                if let Some(ttl) = ttl {
                    pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
                }
                pipe.query_async::<()>(&mut conn).await.map_err(fail)?;
                Ok(None)
            }
            "get" => {
                let cmd = if req.metadata.get("delete").map(String::as_str) == Some("true") {
                    "GETDEL"
                } else {
                    "GET"
                };
                let value: Option<Vec<u8>> = redis::cmd(cmd).arg(key).query_async(&mut conn).await.map_err(fail)?;
                Ok(Some(InvokeResponse {
                    data: value.unwrap_or_default().into(),
                    ..Default::default()
                }))
            }
            "delete" => {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(fail)?;
                Ok(None)
            }
            other => Err(BindingError::new(format!("invalid operation type: {other}"))),
        }
    }
}
