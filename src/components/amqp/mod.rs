//! AMQP 0-9-1 plumbing shared by `pubsub.rabbitmq` and `bindings.rabbitmq`: the broker URL, one connection per
//! component that is dialled again when lost, and publishes that return only once the broker confirmed them.
//! Consuming is in `consume`, message properties and headers in `message`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod consume;
mod message;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use consume::{ConsumeSpec, Delivery, OnDelivery, Settle, Topology, consume};
pub use message::{expiration, flag, header_map, headers, lookup, number, properties, text};

use super::{ComponentError, Metadata};

/// How long dialling the broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish waits for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Publish attempts, each on a working channel, before a publish fails.
const PUBLISH_ATTEMPTS: u32 = 3;
/// First wait before subscribing again after a loss; it doubles up to the component's reconnect wait.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Exchanges a publisher remembers as declared before it forgets them all (and declares again on use).
const MAX_DECLARED: usize = 10_000;

/// Where the broker is: an `amqp://` or `amqps://` URL's parts.
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub vhost: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("vhost", &self.vhost)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Endpoint {
    /// `amqp[s]://[user[:password]@]host[:port][/vhost]` read as RabbitMQ's URI spec (and Go's amqp091 client)
    /// reads it: parts percent-encoded, `guest`/`guest` and `localhost` when left out, the default vhost `/`
    /// when the path is empty. The query (`?heartbeat=...`) is ignored.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        // The URL may hold a password: errors never repeat it.
        let bad = |why: &str| format!("not an AMQP URL: {why}");
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("write amqp://host:5672"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => false,
            "amqps" => true,
            _ => return Err(bad("the scheme must be amqp or amqps")),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |part: &str, what: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad(&format!("the {what} is not UTF-8 once decoded")))
        };
        let (mut username, mut password) = ("guest".to_owned(), "guest".to_owned());
        if let Some(u) = userinfo {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            username = decode(user, "user name")?;
            if let Some(p) = pass {
                password = decode(p, "password")?;
            }
        }
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = split_host_port(hostport, default_port).map_err(|why| bad(&why))?;
        let vhost = match decode(path, "vhost")? {
            v if v.is_empty() => "/".to_owned(),
            v => v,
        };
        short("vhost", &vhost).map_err(|why| bad(&why))?;
        Ok(Endpoint {
            tls,
            host,
            port,
            vhost,
            username,
            password,
        })
    }
}

/// `host[:port]` (`[::1]:5672` for IPv6): `localhost` when empty.
pub fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 host misses its closing ]".to_owned())?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("the port {p:?} is not a number from 1 to 65535")),
        },
    };
    let host = if host.is_empty() { "localhost" } else { host };
    Ok((host.to_owned(), port))
}

/// `value` if it fits an AMQP short string (at most 255 bytes), which names, routing keys and most properties are.
pub fn short<'a>(what: &str, value: &'a str) -> Result<&'a str, String> {
    if value.len() > 255 {
        Err(format!(
            "the {what} is {} bytes long; AMQP allows at most 255",
            value.len()
        ))
    } else {
        Ok(value)
    }
}

/// How a component reaches its broker.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub endpoint: Endpoint,
    pub heartbeat: Duration,
    pub client_name: Option<String>,
    /// The longest wait between attempts to subscribe again after a loss.
    pub reconnect_wait: Duration,
}

impl LinkSettings {
    /// `heartBeat`, `clientName` and the reconnect wait (named `wait_key`: the pub/sub and the binding name it
    /// differently) for `endpoint`, read from `url_key`. TLS (`amqps://`, `caCert`, `clientCert`, `clientKey`) and
    /// SASL EXTERNAL are refused: tandem does not speak them to RabbitMQ yet.
    pub fn from_metadata(
        md: &Metadata,
        endpoint: Endpoint,
        url_key: &str,
        wait_key: &str,
        default_wait: Duration,
    ) -> Result<LinkSettings, ComponentError> {
        if endpoint.tls {
            return Err(ComponentError::invalid(
                url_key,
                "amqps:// (TLS) is not supported by tandem yet; use amqp://",
            ));
        }
        for key in ["caCert", "clientCert", "clientKey"] {
            if md.string(key).is_some() {
                return Err(ComponentError::invalid(
                    key,
                    "TLS is not supported by tandem's RabbitMQ components yet",
                ));
            }
        }
        for key in ["saslExternal", "externalSasl"] {
            if md.bool(key)? == Some(true) {
                return Err(ComponentError::invalid(
                    key,
                    "SASL EXTERNAL is not supported by tandem yet",
                ));
            }
        }
        let heartbeat = md.duration("heartBeat")?.unwrap_or(Duration::from_secs(10));
        if heartbeat < Duration::from_secs(1) || heartbeat > Duration::from_secs(u64::from(u16::MAX)) {
            return Err(ComponentError::invalid("heartBeat", "must be from 1s to 65535s"));
        }
        let reconnect_wait = md.duration(wait_key)?.unwrap_or(default_wait);
        if reconnect_wait.is_zero() || reconnect_wait > Duration::from_secs(3600) {
            return Err(ComponentError::invalid(wait_key, "must be above 0 and at most 1h"));
        }
        let client_name = md.string("clientName");
        if let Some(n) = &client_name {
            short("clientName", n).map_err(|e| ComponentError::invalid("clientName", e))?;
        }
        Ok(LinkSettings {
            endpoint,
            heartbeat,
            client_name,
            reconnect_wait,
        })
    }
}

/// The component's `ttlInSeconds` (or `ttl`): a Go duration or whole seconds, within what the broker takes.
pub fn component_ttl(md: &Metadata) -> Result<Option<Duration>, ComponentError> {
    let key = if md.string("ttlInSeconds").is_some() {
        "ttlInSeconds"
    } else {
        "ttl"
    };
    match md.duration(key)? {
        None => Ok(None),
        Some(d) => expiration(d)
            .map(|_| Some(d))
            .map_err(|e| ComponentError::invalid(key, e)),
    }
}

/// One connection shared by a component's publishes and consumers, dialled again when it was lost.
pub struct Link {
    settings: LinkSettings,
    live: tokio::sync::Mutex<Live>,
    closed: CancellationToken,
}

#[derive(Default)]
struct Live {
    conn: Option<Connection>,
    publisher: Option<Arc<Publisher>>,
}

impl Link {
    /// Connects (so a component with a wrong address or credentials fails to start).
    pub async fn open(settings: LinkSettings) -> Result<Arc<Link>, String> {
        let link = Arc::new(Link {
            settings,
            live: tokio::sync::Mutex::default(),
            closed: CancellationToken::new(),
        });
        link.connection().await?;
        Ok(link)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    async fn dial(&self) -> Result<Connection, String> {
        let e = &self.settings.endpoint;
        if e.tls {
            return Err("amqps:// (TLS) is not supported by tandem yet; use amqp://".into());
        }
        let mut args = OpenConnectionArguments::new(&e.host, e.port, &e.username, &e.password);
        args.virtual_host(&e.vhost)
            .heartbeat(u16::try_from(self.settings.heartbeat.as_secs()).unwrap_or(u16::MAX));
        if let Some(name) = &self.settings.client_name {
            args.connection_name(name);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::open(&args)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(format!("connecting to {e} (vhost {:?}): {err}", e.vhost)),
            Err(_) => Err(format!("connecting to {e}: no answer within {CONNECT_TIMEOUT:?}")),
        }
    }

    /// The open connection, dialled again if it was lost.
    pub async fn connection(&self) -> Result<Connection, String> {
        if self.is_closed() {
            return Err("the component is closed".into());
        }
        let mut live = self.live.lock().await;
        if let Some(conn) = live.conn.as_ref().filter(|c| c.is_open()) {
            return Ok(conn.clone());
        }
        live.publisher = None;
        let conn = self.dial().await?;
        if self.is_closed() {
            // Closed while dialling: the new connection goes (dropping it closes it).
            return Err("the component is closed".into());
        }
        live.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn publisher(&self) -> Result<Arc<Publisher>, String> {
        let conn = self.connection().await?;
        let mut live = self.live.lock().await;
        if let Some(p) = live.publisher.as_ref().filter(|p| p.channel.is_open()) {
            return Ok(p.clone());
        }
        let publisher = Arc::new(Publisher::open(&conn).await?);
        live.publisher = Some(publisher.clone());
        Ok(publisher)
    }

    /// Publishes `out` and returns once the broker confirmed it (so it is queued, and stored when persistent and
    /// the queue durable). A lost channel or connection is replaced and the publish tried again, so a message
    /// may be stored twice: delivery is at least once.
    pub async fn publish(&self, out: &Outgoing<'_>) -> Result<(), String> {
        short("exchange name", out.exchange)?;
        short("routing key", out.routing_key)?;
        let mut last = String::new();
        for attempt in 0..PUBLISH_ATTEMPTS {
            if attempt > 0 {
                tokio::select! {
                    _ = self.closed.cancelled() => break,
                    _ = tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(attempt)) => {}
                }
            }
            let published = match self.publisher().await {
                Ok(p) => p.publish(out).await,
                Err(e) => Err(e),
            };
            match published {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if self.is_closed() {
                break;
            }
        }
        if self.is_closed() {
            return Err("the component is closed".into());
        }
        Err(last)
    }

    /// Declares `topology` on a channel of its own (what a component needs from the start), then closes it.
    pub async fn with_channel(&self, topology: &dyn Topology) -> Result<(), String> {
        let conn = self.connection().await?;
        let (channel, watch) = open_channel(&conn).await?;
        let declared = topology.declare(&channel).await.map_err(|e| watch.explain(e));
        let _ = channel.close().await;
        declared
    }

    /// Stops every consumer and closes the connection; what was delivered and not acknowledged returns to its queue.
    pub async fn close(&self) {
        self.closed.cancel();
        let conn = {
            let mut live = self.live.lock().await;
            live.publisher = None;
            live.conn.take()
        };
        if let Some(conn) = conn {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        }
    }
}

/// What a channel's callback learned: publishes awaiting their confirm, and why the channel closed.
#[derive(Default)]
struct ChannelState {
    waiting: BTreeMap<u64, oneshot::Sender<bool>>,
    closed: Option<String>,
}

/// A channel's view of its state, shared with the callback the channel's dispatcher holds.
#[derive(Clone, Default)]
struct Watch(Arc<Mutex<ChannelState>>);

impl Watch {
    fn state(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `err` with the broker's reason for closing the channel, when it gave one (the reason says what was wrong:
    /// `PRECONDITION_FAILED - inequivalent arg 'durable' ...`).
    fn explain(&self, err: impl std::fmt::Display) -> String {
        match &self.state().closed {
            Some(why) => format!("{err}: {why}"),
            None => err.to_string(),
        }
    }

    fn settle(&self, tag: u64, multiple: bool, taken: bool) {
        let mut s = self.state();
        if multiple {
            let later = s.waiting.split_off(&tag.saturating_add(1));
            for (_, tx) in std::mem::replace(&mut s.waiting, later) {
                let _ = tx.send(taken);
            }
        } else if let Some(tx) = s.waiting.remove(&tag) {
            let _ = tx.send(taken);
        }
    }
}

/// The callback a channel's dispatcher holds until the channel ends; dropping it fails the publishes still waiting.
struct WatchCallback(Watch);

impl Drop for WatchCallback {
    fn drop(&mut self) {
        let mut s = self.0.state();
        if s.closed.is_none() {
            s.closed = Some("the channel or its connection closed".into());
        }
        s.waiting.clear();
    }
}

#[async_trait]
impl ChannelCallback for WatchCallback {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        let why = format!(
            "the broker closed the channel: {} {}",
            close.reply_code(),
            close.reply_text()
        );
        tracing::debug!("{why}");
        self.0.state().closed = Some(why);
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        // The queue was deleted: the consumer's stream ends and it subscribes again (declaring the queue).
        tracing::warn!(consumer = %cancel.consumer_tag(), "the broker cancelled the consumer");
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        self.0.settle(ack.delivery_tag(), ack.mutiple(), true);
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        self.0.settle(nack.delivery_tag(), nack.multiple(), false);
    }

    async fn publish_return(&mut self, _channel: &Channel, ret: Return, _props: BasicProperties, _content: Vec<u8>) {
        tracing::debug!(exchange = %ret.exchange(), "the broker returned a message: {}", ret.reply_text());
    }
}

async fn open_channel(conn: &Connection) -> Result<(Channel, Watch), String> {
    let channel = conn
        .open_channel(None)
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    let watch = Watch::default();
    channel
        .register_callback(WatchCallback(watch.clone()))
        .await
        .map_err(|e| format!("opening a channel: {e}"))?;
    Ok((channel, watch))
}

/// An exchange as declared before publishing to it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeSpec {
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
}

/// One message to publish.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Declare the exchange (once per channel) before publishing to it.
    pub declare: Option<&'a ExchangeSpec>,
    pub properties: BasicProperties,
    pub body: &'a [u8],
}

/// A channel in confirm mode.
struct Publisher {
    channel: Channel,
    watch: Watch,
    /// Held from choosing a publish's sequence number until it is sent, so numbers follow the order on the wire.
    order: tokio::sync::Mutex<Order>,
}

#[derive(Default)]
struct Order {
    next: u64,
    declared: HashSet<String>,
}

impl Publisher {
    async fn open(conn: &Connection) -> Result<Publisher, String> {
        let (channel, watch) = open_channel(conn).await?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(|e| format!("turning on publisher confirms: {}", watch.explain(e)))?;
        Ok(Publisher {
            channel,
            watch,
            order: tokio::sync::Mutex::default(),
        })
    }

    async fn publish(&self, out: &Outgoing<'_>) -> Result<(), String> {
        let confirmed = {
            let mut order = self.order.lock().await;
            if let Some(spec) = out.declare.filter(|_| !order.declared.contains(out.exchange)) {
                let args = ExchangeDeclareArguments::new(out.exchange, &spec.kind)
                    .durable(spec.durable)
                    .auto_delete(spec.auto_delete)
                    .finish();
                self.channel
                    .exchange_declare(args)
                    .await
                    .map_err(|e| format!("declaring exchange {:?}: {}", out.exchange, self.watch.explain(e)))?;
                if order.declared.len() >= MAX_DECLARED {
                    order.declared.clear();
                }
                order.declared.insert(out.exchange.to_owned());
            }
            let (tx, rx) = oneshot::channel();
            {
                let mut s = self.watch.state();
                if let Some(why) = &s.closed {
                    return Err(why.clone());
                }
                order.next += 1;
                s.waiting.insert(order.next, tx);
            }
            let args = BasicPublishArguments::new(out.exchange, out.routing_key);
            if let Err(e) = self
                .channel
                .basic_publish(out.properties.clone(), out.body.to_vec(), args)
                .await
            {
                // Sequence numbers no longer match the broker's: this channel is done.
                let mut s = self.watch.state();
                s.closed = Some(format!("publishing failed: {e}"));
                s.waiting.clear();
                return Err(format!("publishing: {e}"));
            }
            rx
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirmed).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err("the broker did not take the message (basic.nack)".into()),
            Ok(Err(_)) => Err(self.watch.explain("no confirm for the message")),
            Err(_) => Err(format!(
                "the broker did not confirm the message within {CONFIRM_TIMEOUT:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_as_rabbitmq_reads_them() {
        let e = Endpoint::parse("amqp://user:p%40ss@rabbit.local:5673/prod%2Fv1").unwrap();
        assert_eq!(
            (
                e.tls,
                e.host.as_str(),
                e.port,
                e.vhost.as_str(),
                e.username.as_str(),
                e.password.as_str()
            ),
            (false, "rabbit.local", 5673, "prod/v1", "user", "p@ss")
        );
        let e = Endpoint::parse("amqps://[::1]").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.vhost.as_str()),
            (true, "::1", 5671, "/")
        );
        let e = Endpoint::parse("amqp://localhost:5672/").unwrap();
        assert_eq!(
            (e.username.as_str(), e.password.as_str(), e.vhost.as_str()),
            ("guest", "guest", "/")
        );
        for bad in [
            "localhost:5672",
            "http://x",
            "amqp://h:0",
            "amqp://h:99999",
            "amqp://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let long = format!("amqp://h/{}", "v".repeat(300));
        assert!(Endpoint::parse(&long).unwrap_err().contains("255"));
        assert!(!format!("{:?}", Endpoint::parse("amqp://u:secret@h").unwrap()).contains("secret"));
    }

    #[test]
    fn confirms_settle_one_or_many() {
        let watch = Watch::default();
        let mut rxs = vec![];
        for tag in 1..=4 {
            let (tx, rx) = oneshot::channel();
            watch.state().waiting.insert(tag, tx);
            rxs.push(rx);
        }
        watch.settle(2, true, true);
        watch.settle(3, false, false);
        assert_eq!(rxs[0].try_recv(), Ok(true));
        assert_eq!(rxs[1].try_recv(), Ok(true));
        assert_eq!(rxs[2].try_recv(), Ok(false));
        assert!(rxs[3].try_recv().is_err(), "tag 4 still waits");
        drop(WatchCallback(watch.clone()));
        assert!(rxs[3].try_recv().is_err(), "a closed channel fails what waits");
        assert!(watch.state().closed.is_some());
    }
}
