//! A TCP proxy on loopback in front of one service, whose links can be broken the ways
//! networks break. A link is the traffic of the connections that come from one source IP
//! (a replica whose outbound connections come from its own loopback address: see
//! `cluster.raft_source_address`), or of every connection when no source is named. Both
//! directions of a connection share its link, so breaking the link from A at B's proxy means
//! "A cannot reach B", while B's own connections to A still work: a one-way partition.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What a link does to the bytes that cross it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes pass.
    Open,
    /// Bytes pass after this delay, each way.
    Delay(Duration),
    /// A wide-area link: bytes pass after `latency` ± up to `jitter` (uniform, drawn per
    /// chunk read), each way, in order, as between regions.
    Wan { latency: Duration, jitter: Duration },
    /// Nothing passes and nothing is closed: bytes wait in the kernel's buffers, as packets
    /// dropped on a dead route do (TCP retransmits them once the route is back). New
    /// connections are accepted and then wait too.
    Stall,
    /// Open connections are reset (RST) and new ones reset on arrival, as when a host
    /// reboots or a firewall rejects.
    Reset,
}

/// A connection through the proxy: where it came from, and both of its sockets.
struct Connection {
    source: IpAddr,
    client: TcpStream,
    server: TcpStream,
    /// How many of its two pipes have finished (then it is dropped from the table).
    finished: Arc<AtomicUsize>,
}

struct State {
    every: Link,
    by_source: HashMap<IpAddr, Link>,
    live: Vec<Connection>,
}

impl State {
    fn link(&self, source: IpAddr) -> Link {
        self.by_source.get(&source).copied().unwrap_or(self.every)
    }
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self, source: IpAddr) -> Link {
        self.state().link(source)
    }

    /// Resets (RST) every open connection whose link is now `Reset`.
    fn reset_broken(&self) {
        let mut state = self.state();
        let (every, by_source) = (state.every, state.by_source.clone());
        let link = |source: &IpAddr| by_source.get(source).copied().unwrap_or(every);
        state.live.retain(|c| {
            if link(&c.source) != Link::Reset {
                return true;
            }
            for stream in [&c.client, &c.server] {
                // With a zero linger, the last close of the socket sends RST, not FIN.
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
                // Wakes the pipe threads blocked in read; they close their copies.
                let _ = stream.shutdown(Shutdown::Read);
            }
            false
        });
    }
}

/// A proxy to one upstream address.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

/// Copies `from` to `to` while the link lets it, as long as both ends are open.
fn pipe(from: TcpStream, to: TcpStream, source: IpAddr, shared: Arc<Shared>, finished: Arc<AtomicUsize>) {
    copy(from, to, source, &shared);
    finished.fetch_add(1, Ordering::SeqCst);
}

fn copy(mut from: TcpStream, mut to: TcpStream, source: IpAddr, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if wait_while_stalled(shared, source) == Link::Reset {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match wait_while_stalled(shared, source) {
            Link::Reset => break,
            Link::Delay(delay) => std::thread::sleep(delay),
            Link::Wan { latency, jitter } => std::thread::sleep(wan_delay(latency, jitter)),
            Link::Open | Link::Stall => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if shared.link(source) != Link::Reset {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// `latency` ± up to `jitter`, uniformly.
fn wan_delay(latency: Duration, jitter: Duration) -> Duration {
    let spread = jitter.as_secs_f64() * (fastrand::f64() * 2.0 - 1.0);
    Duration::from_secs_f64((latency.as_secs_f64() + spread).max(0.0))
}

/// Waits until the link is not stalled; returns what it is then.
fn wait_while_stalled(shared: &Shared, source: IpAddr) -> Link {
    loop {
        let link = shared.link(source);
        if link != Link::Stall || shared.stop.load(Ordering::SeqCst) {
            return link;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        Self::balance(vec![upstream])
    }

    /// Listens on a free port of 127.0.0.1 and forwards each connection to the next of
    /// `upstreams` that accepts it, as a load balancer or a DNS name with health checks puts
    /// one address in front of every replica.
    pub fn balance(upstreams: Vec<SocketAddr>) -> Self {
        assert!(!upstreams.is_empty(), "a proxy needs an upstream");
        let next = AtomicUsize::new(0);
        let connect = move || {
            let first = next.fetch_add(1, Ordering::SeqCst);
            (0..upstreams.len()).find_map(|i| {
                let upstream = upstreams[(first + i) % upstreams.len()];
                TcpStream::connect_timeout(&upstream, Duration::from_secs(1)).ok()
            })
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State { every: Link::Open, by_source: HashMap::new(), live: Vec::new() }),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(source) = client.peer_addr().map(|a| a.ip()) else { continue };
                if accepting.link(source) == Link::Reset {
                    reset(&client);
                    continue;
                }
                let Some(server) = connect() else {
                    reset(&client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c1), Ok(c2), Ok(s1), Ok(s2)) =
                    (client.try_clone(), client.try_clone(), server.try_clone(), server.try_clone())
                else {
                    continue;
                };
                let finished = Arc::new(AtomicUsize::new(0));
                {
                    let mut state = accepting.state();
                    state.live.retain(|c| c.finished.load(Ordering::SeqCst) < 2);
                    state.live.push(Connection { source, client: c1, server: s1, finished: finished.clone() });
                }
                let (up, down, finished2) = (accepting.clone(), accepting.clone(), finished.clone());
                std::thread::spawn(move || pipe(client, s2, source, up, finished));
                std::thread::spawn(move || pipe(server, c2, source, down, finished2));
            }
        });
        Self { port, shared }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sets the link of every source that has no link of its own.
    pub fn set(&self, link: Link) {
        self.shared.state().every = link;
        self.shared.reset_broken();
    }

    /// Sets the link of connections from `source`.
    pub fn set_from(&self, source: IpAddr, link: Link) {
        self.shared.state().by_source.insert(source, link);
        self.shared.reset_broken();
    }

    /// Cuts every link: open connections are reset, new ones reset on arrival.
    pub fn cut(&self) {
        self.set(Link::Reset);
    }

    /// Opens every link again, including those set per source.
    pub fn restore(&self) {
        let mut state = self.shared.state();
        state.every = Link::Open;
        state.by_source.clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on 127.0.0.1.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let (mut reader, mut writer) = (stream.try_clone().unwrap(), stream);
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        address
    }

    /// A connection to `proxy` from the local address `from`.
    fn connect_from(from: [u8; 4], proxy: &FaultProxy) -> TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
        socket.connect(&SocketAddr::from(([127, 0, 0, 1], proxy.port)).into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        stream
    }

    /// Sends `message` and reads the echo; `None` if nothing came back in time.
    fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(message).ok()?;
        let mut buf = vec![0u8; message.len()];
        stream.read_exact(&mut buf).ok()?;
        Some(buf)
    }

    #[test]
    fn links_break_per_source_and_heal() {
        let proxy = FaultProxy::start(echo());
        let (mut a, mut b) = (connect_from([127, 0, 0, 1], &proxy), connect_from([127, 0, 0, 2], &proxy));
        assert_eq!(round_trip(&mut a, b"one").as_deref(), Some(&b"one"[..]));
        assert_eq!(round_trip(&mut b, b"two").as_deref(), Some(&b"two"[..]));

        // A stalled link holds the bytes; the other source's link is untouched.
        proxy.set_from("127.0.0.2".parse().unwrap(), Link::Stall);
        assert_eq!(round_trip(&mut b, b"held"), None, "a stalled link passed bytes");
        assert_eq!(round_trip(&mut a, b"free").as_deref(), Some(&b"free"[..]));
        proxy.restore();
        let mut buf = [0u8; 4];
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        b.read_exact(&mut buf).expect("the held bytes arrive once the link heals");
        assert_eq!(&buf, b"held");

        // A delayed link passes bytes late, each way.
        proxy.set_from("127.0.0.2".parse().unwrap(), Link::Delay(Duration::from_millis(150)));
        let started = Instant::now();
        assert_eq!(round_trip(&mut b, b"late").as_deref(), Some(&b"late"[..]));
        assert!(started.elapsed() >= Duration::from_millis(300), "delayed by {:?} only", started.elapsed());

        // A wide-area link: every round trip pays the latency twice, give or take the jitter.
        let wan = Link::Wan { latency: Duration::from_millis(40), jitter: Duration::from_millis(10) };
        proxy.set_from("127.0.0.2".parse().unwrap(), wan);
        for _ in 0..5 {
            let started = Instant::now();
            assert_eq!(round_trip(&mut b, b"far").as_deref(), Some(&b"far"[..]));
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(60), "a WAN round trip took {took:?}");
        }

        // A reset link resets open connections and refuses new ones from that source only.
        proxy.set_from("127.0.0.2".parse().unwrap(), Link::Reset);
        assert_eq!(round_trip(&mut b, b"gone"), None, "a reset link passed bytes");
        let mut fresh = connect_from([127, 0, 0, 2], &proxy);
        assert_eq!(round_trip(&mut fresh, b"new"), None, "a new connection on a reset link passed bytes");
        assert_eq!(round_trip(&mut a, b"still").as_deref(), Some(&b"still"[..]));
        proxy.restore();
        let mut again = connect_from([127, 0, 0, 2], &proxy);
        assert_eq!(round_trip(&mut again, b"back").as_deref(), Some(&b"back"[..]));
    }
}
