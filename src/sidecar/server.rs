//! How every listener of the sidecar serves (HTTP API, gRPC API, internal, public, metrics): HTTP/1.1 and h2c
//! on one port, the peer address for handlers, and bounds no client can push past — a connection limit, a
//! deadline for a new connection's first bytes and for a request's headers (slowloris), HTTP/2 keep-alive pings
//! that drop dead peers — then a graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::control_plane::identity::SpiffeId;

/// The bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// A new connection must send its first bytes within this.
    pub first_bytes: Duration,
    /// An HTTP/1 request's headers must arrive within this; an HTTP/1 keep-alive connection idle this long is
    /// closed (clients reconnect, as they do after any server's idle timeout).
    pub headers: Duration,
}

impl Limits {
    /// The API ports and the internal port.
    pub const API: Limits = Limits {
        max_connections: 4096,
        first_bytes: Duration::from_secs(10),
        headers: Duration::from_secs(30),
    };
    /// Health and metrics ports: a few scrapers and probes.
    pub const PROBES: Limits = Limits {
        max_connections: 64,
        first_bytes: Duration::from_secs(10),
        headers: Duration::from_secs(10),
    };
}

/// Serves `service` on `listener` until `shutdown`, then lets the open connections finish (the caller bounds
/// how long by aborting this task).
pub async fn serve<S>(listener: TcpListener, service: S, shutdown: CancellationToken, limits: Limits)
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    serve_with(listener, service, shutdown, limits, None).await
}

/// The identity a request's peer proved with its client certificate (mutual TLS); absent on plain listeners.
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub SpiffeId);

/// [`serve`], over TLS when `tls` is given: the handshake must finish within the first-bytes deadline, and the
/// peer's certificate identity (if it presented one) reaches handlers as a [`PeerIdentity`] extension.
pub async fn serve_with<S>(
    listener: TcpListener,
    service: S,
    shutdown: CancellationToken,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut refused = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    limit = limits.max_connections,
                    refused,
                    "connection limit reached; closing new connections"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let io = FirstBytes::new(tcp, limits.first_bytes);
            let result = match acceptor {
                None => serve_connection(&builder, watcher, TokioIo::new(io), service, peer, None).await,
                Some(acceptor) => match tokio::time::timeout(limits.first_bytes, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let id = crate::control_plane::mtls::peer_identity(stream.get_ref().1.peer_certificates());
                        serve_connection(&builder, watcher, TokioIo::new(stream), service, peer, id).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        Ok(())
                    }
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
            CLOSED_SINCE_TRIM.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection's requests, each with the peer's address (and proven identity) attached.
async fn serve_connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: TokioIo<I>,
    service: S,
    peer: std::net::SocketAddr,
    identity: Option<SpiffeId>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let handler = TowerToHyperService::new(tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(id) = &identity {
            req.extensions_mut().insert(PeerIdentity(id.clone()));
        }
        service.clone().oneshot(req)
    }));
    watcher
        .watch(builder.serve_connection_with_upgrades(io, handler).into_owned())
        .await
}

/// A connection that must send its first bytes before a deadline: a client that connects and stays silent (a
/// slowloris, or a port scan) is cut off instead of holding a connection slot for good.
struct FirstBytes {
    tcp: TcpStream,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl FirstBytes {
    fn new(tcp: TcpStream, within: Duration) -> Self {
        FirstBytes {
            tcp,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl AsyncRead for FirstBytes {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut() {
                Some(deadline) => {
                    ready!(deadline.as_mut().poll(cx));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing in time",
                    )))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for FirstBytes {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Connections closed since the memory was last trimmed.
static CLOSED_SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);
/// How many closed connections make a trim worth it.
const TRIM_AFTER_CLOSED: usize = 256;

/// Hands the memory of closed connections back to the system every few seconds after many have closed. glibc keeps
/// freed blocks in its per-thread arenas, so without this a burst of connections (a slowloris attack, a load
/// test) would leave the sidecar's RSS raised for good. Idle sidecars never trim.
pub fn spawn_memory_trimmer(shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if CLOSED_SINCE_TRIM.load(Ordering::Relaxed) >= TRIM_AFTER_CLOSED {
                CLOSED_SINCE_TRIM.store(0, Ordering::Relaxed);
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of glibc's own heaps; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Raises this process's open-file limit to the hard limit, as Go programs (daprd among them) do at start, so
/// the connection limits above are what bounds connections, not an accidental 1024.
pub fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own; no other memory is touched.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, router, shutdown.clone(), limits));
        (addr, shutdown)
    }

    async fn get(addr: SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// True once the server closed `s` (read returns 0 or an error).
    async fn closed_by_server(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            first_bytes: Duration::from_millis(300),
            headers: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn silent_and_slow_clients_are_cut_off_and_others_served() {
        let (addr, _shutdown) = start(limits(64)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let answer = get(addr).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("127.0.0.1"),
            "{answer}"
        );
        assert!(closed_by_server(&mut silent).await, "a silent connection stays open");
        assert!(
            closed_by_server(&mut slow).await,
            "a connection that never finishes its headers stays open"
        );
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_slots_come_back() {
        let (addr, _shutdown) = start(limits(2)).await;
        let held: Vec<TcpStream> = futures::future::join_all((0..2).map(|_| TcpStream::connect(addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // Let the server accept both before the third arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = get(addr).await;
        assert!(refused.map_or(true, |a| a.is_empty()), "a third connection was served");
        drop(held);
        let mut served = false;
        for _ in 0..50 {
            if get(addr).await.is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "slots were not given back");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_lets_requests_finish() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "done"
            }),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, shutdown.clone(), limits(8)));
        let in_flight = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        let answer = in_flight.await.unwrap().unwrap();
        assert!(answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still accepting after shutdown"
        );
    }
}
