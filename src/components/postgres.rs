//! PostgreSQL connections for every component that talks to PostgreSQL: the connection string as Dapr takes it
//! (`connectionString`, or its alias `url`; a libpq `key=value` string or a `postgres://` URL, with pgx's
//! `pool_*` settings understood) and a small pool of pipelined connections that reconnect when broken.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use super::{ComponentError, Metadata};

/// Connections a pool opens unless `maxConns`/`pool_max_conns` says otherwise. Each is pipelined, so a few
/// carry many concurrent calls.
const DEFAULT_CONNECTIONS: usize = 4;
const MAX_CONNECTIONS: usize = 64;

/// A parsed connection string.
#[derive(Clone)]
pub struct PgConfig {
    pub config: Config,
    pub connections: usize,
    pub timeout: Duration,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field("password", &self.config.get_password().map(|_| "<redacted>"))
            .field("connections", &self.connections)
            .finish()
    }
}

impl PgConfig {
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let raw = md
            .string("connectionString")
            .or_else(|| md.string("url"))
            .ok_or_else(|| ComponentError::invalid("connectionString", "the connection string must be set"))?;
        let (cleaned, pool_max) = strip_pool_settings(&raw);
        let mut config: Config = cleaned.parse().map_err(|e| {
            ComponentError::invalid("connectionString", format!("the connection string is not valid: {e}"))
        })?;
        if let Some(h) = md.string("host") {
            config.host(&h);
        }
        if let Some(p) = md.parse::<u16>("port")? {
            config.port(p);
        }
        if let Some(d) = md.string("database") {
            config.dbname(&d);
        }
        if let Some(u) = md.string("user") {
            config.user(&u);
        }
        if let Some(p) = md.string("password") {
            config.password(p);
        }
        let timeout = md
            .duration("timeout")?
            .or(md.duration("timeoutInSeconds")?)
            .unwrap_or(Duration::from_secs(20));
        if timeout < Duration::from_secs(1) {
            return Err(ComponentError::invalid(
                "timeout",
                "invalid value for 'timeout': must be greater than 1s",
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let connections = md
            .parse::<usize>("maxConns")?
            .filter(|n| *n > 1)
            .or(pool_max)
            .unwrap_or(DEFAULT_CONNECTIONS)
            .clamp(1, MAX_CONNECTIONS);
        Ok(PgConfig {
            config,
            connections,
            timeout,
        })
    }
}

/// The connection string without pgx's pool settings (`pool_max_conns=10`, `?pool_min_conns=1`), which libpq
/// and tokio-postgres do not know, and `pool_max_conns` if given.
fn strip_pool_settings(raw: &str) -> (String, Option<usize>) {
    let mut max = None;
    let mut keep = |k: &str, v: &str| {
        if k == "pool_max_conns" {
            max = v.parse().ok();
        }
        !k.starts_with("pool_")
    };
    let raw = raw.trim();
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        let Some((base, query)) = raw.split_once('?') else {
            return (raw.to_owned(), None);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                keep(k, v)
            })
            .collect();
        let s = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (s, max);
    }
    let kept: Vec<&str> = raw
        .split_whitespace()
        .filter(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            keep(k.trim(), v.trim())
        })
        .collect();
    (kept.join(" "), max)
}

/// A few pipelined connections, used round-robin; a broken one is replaced on its next use.
pub struct PgPool {
    config: PgConfig,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

impl PgPool {
    /// Connects one connection now (so a wrong address or database fails at start) and the rest when needed.
    pub async fn connect(config: PgConfig) -> Result<PgPool, ComponentError> {
        let pool = PgPool {
            slots: (0..config.connections).map(|_| tokio::sync::Mutex::new(None)).collect(),
            config,
            next: AtomicUsize::new(0),
        };
        let client = pool
            .client()
            .await
            .map_err(|e| ComponentError::Init(format!("unable to connect to the DB: {e}")))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| ComponentError::Init(format!("failed to ping the DB: {e}")))?;
        Ok(pool)
    }

    /// A connection that was open when handed out.
    pub async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, connection) = self.config.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("a PostgreSQL connection ended: {e}");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops every connection (their background tasks end with them).
    pub async fn close(&self) {
        for s in &self.slots {
            s.lock().await.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgx_pool_settings_are_taken_out() {
        let (s, max) = strip_pool_settings(
            "user=postgres password=docker host=localhost port=5432 dbname=orders pool_min_conns=1 pool_max_conns=10",
        );
        assert_eq!(
            s,
            "user=postgres password=docker host=localhost port=5432 dbname=orders"
        );
        assert_eq!(max, Some(10));
        let (s, max) = strip_pool_settings("postgres://u@h/db?sslmode=disable&pool_max_conns=3");
        assert_eq!(s, "postgres://u@h/db?sslmode=disable");
        assert_eq!(max, Some(3));
        let (s, _) = strip_pool_settings("postgres://u@h/db?pool_max_conns=3");
        assert_eq!(s, "postgres://u@h/db");
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let md = Metadata::new(
            "p",
            "app",
            "",
            [("url".to_owned(), "host=localhost user=u password=hunter2".to_owned())],
        );
        let cfg = PgConfig::from_metadata(&md).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(cfg.connections, DEFAULT_CONNECTIONS);
    }
}
