//! Accepting TLS connections on a port anyone can reach (the cluster RPC port, the server
//! API port) without letting one source hold the process's resources: bounds on the
//! connections open, on those open from one source (an IPv4 address, or an IPv6 /64, which
//! one host usually holds whole), on handshakes in flight, and on how long a handshake may
//! take. A connection over a limit is closed at once, before any TLS work.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// What one listener allows.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open (handshaking or established), from all sources together.
    pub max_connections: usize,
    /// TLS handshakes in flight, from all sources together.
    pub max_handshakes: usize,
    /// Connections open (handshaking or established) from one source.
    pub max_per_source: usize,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

impl ConnectionLimits {
    /// The cluster RPC port: a few replicas, each with a connection or two to this one
    /// (test clusters put every replica on one address), and new replicas joining.
    pub const CLUSTER: Self = Self {
        max_connections: 1024,
        max_handshakes: 64,
        max_per_source: 64,
        handshake_timeout: Duration::from_secs(10),
    };
}

/// A connection accepted within the limits; it gives back its source's slot when dropped.
pub struct Accepted<S> {
    inner: S,
    _slot: SourceSlot,
    _permits: Vec<OwnedSemaphorePermit>,
    /// When set, the connection is closed at this instant whatever it is doing.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Accepted<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Holds `permit` (a place under some further bound) until the connection closes.
    pub fn hold(mut self, permit: OwnedSemaphorePermit) -> Self {
        self._permits.push(permit);
        self
    }

    /// Closes the connection after `lifetime`, for callers who should come, ask and go.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.deadline = Some(Box::pin(tokio::time::sleep(lifetime)));
        self
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }
}

impl Accepted<TlsStream<TcpStream>> {
    /// Whether the peer presented a certificate that the TLS configuration verified.
    pub fn has_client_certificate(&self) -> bool {
        self.inner.get_ref().1.peer_certificates().is_some_and(|certs| !certs.is_empty())
    }
}

fn lifetime_over() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection lifetime is over")
}

impl<S: AsyncRead + Unpin> AsyncRead for Accepted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Accepted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Accepted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Open connections per source.
#[derive(Default)]
struct Sources {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place in its source's count.
struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

/// The source a peer address counts against: itself, or its /64 for IPv6 (one host
/// usually holds a whole /64).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
        v4 => v4,
    }
}

impl Sources {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let ip = source_of(ip);
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot { sources: self.clone(), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// At most one warning per interval for events anyone can cause (failed handshakes,
/// refused connections), so a flood of them cannot flood the log; the warning says how
/// many were not logged since the last one.
pub struct LogBudget {
    last: AtomicU64,
    skipped: AtomicU64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBudget {
    const INTERVAL_SECS: u64 = 10;

    pub const fn new() -> Self {
        Self { last: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }

    /// `Some(skipped since the last warning)` if this event may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let last = self.last.load(Ordering::Relaxed);
        if now >= last + Self::INTERVAL_SECS
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Why a connection was closed before it could carry a request.
fn refused(what: &'static str, reason: &'static str, peer: std::net::SocketAddr, detail: &str, budget: &LogBudget) {
    metrics::counter!("testudo_tls_connections_refused_total", "listener" => what, "reason" => reason).increment(1);
    if let Some(skipped) = budget.allow() {
        tracing::warn!(%peer, reason, detail, skipped, "{what} connection refused");
    }
}

/// One accepted TLS connection, as tonic's `serve_with_incoming` takes it.
pub type Incoming = Result<Accepted<TlsStream<TcpStream>>, io::Error>;

/// TLS connections accepted on `listener` within `limits`, as a stream for tonic's
/// `serve_with_incoming`. Each handshake runs in its own task. The returned task accepts
/// until aborted or the stream is dropped; `what` names the listener in logs and metrics.
pub fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    what: &'static str,
    limits: ConnectionLimits,
) -> (ReceiverStream<Incoming>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let sources = Arc::new(Sources::default());
    let budget = Arc::new(LogBudget::new());
    let task = tokio::spawn(async move {
        while !tx.is_closed() {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(connection) = connections.clone().try_acquire_owned() else {
                refused(what, "connections", peer, "too many connections open", &budget);
                continue;
            };
            let Some(slot) = sources.take(peer.ip(), limits.max_per_source) else {
                refused(what, "per_source", peer, "too many connections from this address", &budget);
                continue;
            };
            let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                refused(what, "handshakes", peer, "too many handshakes in flight", &budget);
                continue;
            };
            // gRPC sends small frames and waits for answers: without this, Nagle's algorithm
            // and delayed ACKs hold some of them back for tens of milliseconds.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let (acceptor, tx, budget) = (acceptor.clone(), tx.clone(), budget.clone());
            tokio::spawn(async move {
                let accepted = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await;
                drop(handshake);
                match accepted {
                    Ok(Ok(tls)) => {
                        let accepted = Accepted { inner: tls, _slot: slot, _permits: vec![connection], deadline: None };
                        let _ = tx.send(Ok(accepted)).await;
                    }
                    Ok(Err(e)) => refused(what, "handshake_failed", peer, &e.to_string(), &budget),
                    Err(_) => refused(what, "handshake_timeout", peer, "TLS handshake timed out", &budget),
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_slots_back_when_connections_close() {
        let sources = Arc::new(Sources::default());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<SourceSlot> = (0..3).filter_map(|_| sources.take(ip, 3)).collect();
        assert_eq!(slots.len(), 3);
        assert!(sources.take(ip, 3).is_none(), "a fourth connection is refused");
        assert!(sources.take([10, 0, 0, 2].into(), 3).is_some(), "another source is not");
        drop(slots);
        assert!(sources.take(ip, 3).is_some());
        assert!(sources.open.lock().unwrap().len() <= 1, "closed sources are forgotten");
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let sources = Arc::new(Sources::default());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _first = sources.take(a, 1).unwrap();
        assert!(sources.take(b, 1).is_none(), "another address in the same /64");
        assert!(sources.take(elsewhere, 1).is_some());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _v4 = sources.take([10, 0, 0, 1].into(), 1).unwrap();
        assert!(sources.take(mapped, 1).is_none(), "an IPv4-mapped address is its IPv4 address");
    }

    #[test]
    fn the_log_budget_lets_one_warning_through_per_interval() {
        let budget = LogBudget::new();
        assert_eq!(budget.allow(), Some(0));
        assert_eq!(budget.allow(), None);
        assert_eq!(budget.allow(), None);
        budget.last.store(0, Ordering::Relaxed);
        assert_eq!(budget.allow(), Some(2), "the next warning counts what was skipped");
    }
}
