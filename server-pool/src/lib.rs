//! Calls to a cluster's server replicas: an agent's calls to its servers, and a downstream
//! cluster's calls to its upstream one. Every call goes through one pool over the
//! configured replicas. A call
//! goes to the replica that answered last; on an error that says the replica (not the
//! request) is at fault, or a timeout, the replica is marked unhealthy for a jittered
//! backoff and the call moves to the next one. No call depends on reaching the Raft leader:
//! any replica serves any agent call.
//!
//! Replicas marked unhealthy are probed (gRPC health) and return as soon as they answer.
//!
//! A call that may be sent twice (a read, or a mint that changes no state) is hedged: when
//! the replica asked first has not answered within its usual time (estimated from its recent
//! answers as TCP estimates a round trip, RFC 6298: mean plus four mean deviations, 50 ms to
//! 500 ms), the next replica is asked too and the first answer wins; never more than two
//! replicas work on one call at once. A hung replica (SIGSTOP,
//! a machine that stopped scheduling) then costs such a call half a second at most, instead
//! of the call timeout.
//!
//! A configured DNS name stands for every address it resolves to (one DNS name with a record
//! per replica, as SPIRE users configure `server_address`): each address is a replica of its
//! own, and names are resolved again every [`RESOLVE_EVERY`], so replicas that come and go
//! in DNS come and go in the pool.
//!
//! Connections are mutual TLS: the caller presents its SVID (none before an agent's
//! attestation), and a server must present `spiffe://<td>/spire/server` chained to the
//! caller's bundle.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use identity::bundle::Bundle;
use identity::SpiffeId;
use spiffe_tls::SvidVerifier;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use zeroize::Zeroizing;

/// How long one call may take before the next replica is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on an open connection, and how long one may go unanswered.
const KEEPALIVE: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff for a replica that failed: doubles up to the maximum, with ±25% jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a hedged call waits for a replica before asking the next one too: from the
/// replica's recent answers, within these bounds; the default before it has answered.
const HEDGE_MIN: Duration = Duration::from_millis(50);
const HEDGE_MAX: Duration = Duration::from_millis(500);
const HEDGE_DEFAULT: Duration = Duration::from_millis(250);
/// How often configured DNS names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// The replicas and the caller's credentials for them.
pub struct ServerPool {
    /// `host:port` as configured.
    configured: Vec<String>,
    /// The counter of calls a replica failed (a replica skipped).
    failures_metric: &'static str,
    server_id: SpiffeId,
    bundle: Arc<RwLock<Bundle>>,
    state: Mutex<PoolState>,
}

/// One replica address.
struct Member {
    address: String,
    /// Built with the current identity; rebuilt after a failure or a new identity.
    channel: Option<Channel>,
    health: Health,
    latency: Latency,
}

impl Member {
    fn new(address: String) -> Self {
        Self { address, channel: None, health: Health::default(), latency: Latency::default() }
    }
}

/// A replica's recent answer time, estimated as TCP estimates a round trip (RFC 6298): a
/// smoothed mean and a smoothed mean deviation.
#[derive(Clone, Copy, Debug, Default)]
struct Latency {
    mean: Option<Duration>,
    deviation: Duration,
}

impl Latency {
    fn observe(&mut self, sample: Duration) {
        match self.mean {
            None => {
                self.mean = Some(sample);
                self.deviation = sample / 2;
            }
            Some(mean) => {
                self.deviation = (self.deviation * 3 + mean.abs_diff(sample)) / 4;
                self.mean = Some((mean * 7 + sample) / 8);
            }
        }
    }

    /// How long to wait for this replica before asking another one too.
    fn hedge_after(&self) -> Duration {
        self.mean.map_or(HEDGE_DEFAULT, |mean| (mean + self.deviation * 4).clamp(HEDGE_MIN, HEDGE_MAX))
    }
}

/// Whether a call may go to a second replica while the first is still working on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hedge {
    /// A read, or a mint that changes no state: sent to the next replica too when the
    /// first is slower than usual.
    Allowed,
    /// A call that changes state (attestation, renewal) or a long-lived stream: one
    /// replica at a time.
    Never,
}

struct PoolState {
    /// The address to try first.
    current: String,
    identity: Option<(String, Zeroizing<String>)>,
    /// Counts [`ServerPool::set_identity`] calls: a call refused for presenting an SVID the
    /// servers no longer take is sent again if the identity changed while it ran.
    identity_generation: u64,
    members: Vec<Member>,
}

impl PoolState {
    fn member(&mut self, address: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.address == address)
    }
}

#[derive(Clone, Copy, Default)]
struct Health {
    unhealthy_until: Option<Instant>,
    failures: u32,
}

/// Whether an error is the replica's (try another) or the request's (give up).
fn replica_at_fault(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}

impl ServerPool {
    /// A pool over `servers` (`host:port`, each name standing for every address it
    /// resolves to), trusting `bundle` (shared: its owner keeps it current) to vouch for
    /// `server_id`; calls a replica failed count in the counter `failures_metric`.
    pub async fn new(
        servers: Vec<String>,
        server_id: SpiffeId,
        bundle: Arc<RwLock<Bundle>>,
        failures_metric: &'static str,
    ) -> Self {
        let addresses = resolve(&servers).await;
        Self {
            configured: servers,
            failures_metric,
            server_id,
            bundle,
            state: Mutex::new(PoolState {
                current: addresses[0].clone(),
                identity: None,
                identity_generation: 0,
                members: addresses.into_iter().map(Member::new).collect(),
            }),
        }
    }

    /// Presents this SVID (its chain, leaf first, and PKCS#8 key) from now on: after an
    /// agent's attestation and every renewal.
    pub fn set_identity(&self, chain: &[Vec<u8>], key_pkcs8: &[u8]) {
        let chain: String = chain.iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone()))).collect();
        let key = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", key_pkcs8.to_vec())));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.identity = Some((chain, key));
        state.identity_generation += 1;
        state.members.iter_mut().for_each(|m| m.channel = None);
    }

    /// The address of the replica calls go to first.
    pub fn current(&self) -> String {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).current.clone()
    }

    /// Every replica address in the pool.
    pub fn addresses(&self) -> Vec<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).members.iter().map(|m| m.address.clone()).collect()
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let member = state.member(address).ok_or_else(|| Status::unavailable(format!("{address} left the pool")))?;
        if let Some(channel) = &member.channel {
            return Ok(channel.clone());
        }
        let mut tls = ClientTlsConfig::new().domain_name("server.testudo.invalid");
        if let Some((chain, key)) = &state.identity {
            tls = tls.identity(Identity::from_pem(chain, key.as_bytes()));
        }
        let verifier = Arc::new(
            SvidVerifier::for_id(self.bundle.clone(), self.server_id.clone())
                .allowing_slow_clock(spiffe_tls::SLOW_CLOCK_ALLOWANCE),
        );
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| Status::invalid_argument(format!("server address {address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            // A replica that stops answering (SIGSTOP, a cut link) is noticed on a stream
            // that carries nothing for long: the entry notifications.
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .tcp_nodelay(true)
            .tls_config_with_verifier(tls, verifier)
            .map_err(|e| Status::internal(format!("TLS for {address}: {e}")))?
            .connect_lazy();
        if let Some(member) = state.member(address) {
            member.channel = Some(channel.clone());
        }
        Ok(channel)
    }

    /// The order to try replicas in: the current one, then the others; healthy ones
    /// before those still in backoff.
    fn order(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let n = state.members.len();
        let start = state.members.iter().position(|m| m.address == state.current).unwrap_or(0);
        let mut order: Vec<&Member> = (0..n).map(|i| &state.members[(start + i) % n]).collect();
        order.sort_by_key(|m| m.health.unhealthy_until.is_some_and(|until| until > now));
        order.into_iter().map(|m| m.address.clone()).collect()
    }

    fn succeeded(&self, address: &str, answered_in: Option<Duration>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(member) = state.member(address) {
            member.health = Health::default();
            if let Some(sample) = answered_in {
                member.latency.observe(sample);
            }
            if state.current != address {
                tracing::info!(server = %address, previous = %state.current, "calling another replica first from now on");
                state.current = address.to_owned();
            }
        }
    }

    fn failed(&self, address: &str, status: &Status) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(member) = state.member(address) else { return };
        let health = &mut member.health;
        health.failures = health.failures.saturating_add(1);
        let backoff = BACKOFF_MIN.saturating_mul(1 << health.failures.min(6)).min(BACKOFF_MAX);
        health.unhealthy_until = Some(Instant::now() + jitter(backoff));
        // A broken connection is rebuilt on the next try.
        member.channel = None;
        metrics::counter!(self.failures_metric).increment(1);
        tracing::warn!(server = %address, code = ?status.code(), error = %status.message(), "server call failed; trying another replica");
    }

    /// Runs `call` against the replicas in turn until one answers or every one has failed
    /// `rounds` times over. Errors the request caused come back at once. With
    /// [`Hedge::Allowed`], a replica slower than usual is joined by the next one.
    pub async fn call<T, F, Fut>(&self, rounds: usize, hedge: Hedge, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = Status::unavailable("no server replica is configured");
        for round in 0..rounds.max(1) {
            if round > 0 {
                tokio::time::sleep(jitter(BACKOFF_MIN.saturating_mul(1 << round.min(5)).min(BACKOFF_MAX))).await;
            }
            if let Some(answer) = self.round(hedge, &call, &mut last).await {
                return answer;
            }
        }
        Err(last)
    }

    /// One try of every replica, in order; `None` when each failed (the last error in
    /// `last`).
    async fn round<T, F, Fut>(&self, hedge: Hedge, call: &F, last: &mut Status) -> Option<Result<T, Status>>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = |address: String| -> Result<_, Status> {
            let generation = self.identity_generation();
            let channel = self.channel(&address)?;
            let hedge_after = self.hedge_after(&address);
            Ok((hedge_after, async move {
                let started = Instant::now();
                let answer = call(channel).await;
                (address, started.elapsed(), generation, answer)
            }))
        };
        let mut waiting = self.order().into_iter();
        let mut running = FuturesUnordered::new();
        let mut hedge_at: Option<tokio::time::Instant> = None;
        loop {
            if running.is_empty() {
                let address = waiting.next()?;
                let (after, started) = match start(address) {
                    Ok(started) => started,
                    Err(status) => return Some(Err(status)),
                };
                running.push(started);
                hedge_at = Some(tokio::time::Instant::now() + after);
            }
            // Two replicas at most work on one call: when every replica is slow (an
            // overloaded cluster), hedging must not multiply the load by their number.
            let may_hedge = hedge == Hedge::Allowed && running.len() == 1 && waiting.len() > 0;
            let hedge_timer = async {
                match hedge_at.filter(|_| may_hedge) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((address, took, generation, answer)) = running.next() => match answer {
                    Ok(answer) => {
                        self.succeeded(&address, Some(took));
                        return Some(Ok(answer));
                    }
                    Err(status) if self.outdated_identity(generation, &status) => {
                        // Sent with the SVID this agent renewed while the call ran (over a
                        // connection opened before): the next replica gets the new one.
                        tracing::debug!(server = %address, "call made with the previous agent SVID; sending it again");
                        *last = status;
                        hedge_at = Some(tokio::time::Instant::now());
                    }
                    Err(status) if replica_at_fault(&status) => {
                        self.failed(&address, &status);
                        *last = status;
                        // The next replica now, not when the slow one's time is up.
                        hedge_at = Some(tokio::time::Instant::now());
                    }
                    Err(status) => {
                        // The replica answered; the request was refused.
                        self.succeeded(&address, None);
                        return Some(Err(status));
                    }
                },
                () = hedge_timer => {
                    if let Some(address) = waiting.next() {
                        metrics::counter!("testudo_server_calls_hedged_total").increment(1);
                        tracing::debug!(server = %address, "a replica is slower than usual; asking another one too");
                        match start(address) {
                            Ok((after, started)) => {
                                running.push(started);
                                hedge_at = Some(tokio::time::Instant::now() + after);
                            }
                            Err(status) => return Some(Err(status)),
                        }
                    }
                }
            }
        }
    }

    fn identity_generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).identity_generation
    }

    /// Whether `status` refuses the SVID a call presented, and the pool has had a newer one
    /// since the call took its channel.
    fn outdated_identity(&self, generation: u64, status: &Status) -> bool {
        proto::reason::Reason::of(status) == Some(proto::reason::Reason::AgentSvidSuperseded)
            && self.identity_generation() != generation
    }

    fn hedge_after(&self, address: &str) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.member(address).map_or(HEDGE_DEFAULT, |m| m.latency.hedge_after())
    }
}

impl ServerPool {
    /// Probes every replica marked unhealthy with a gRPC health check, every `every`, and
    /// returns those that answer SERVING to the pool at once (instead of when their backoff
    /// runs out). Runs until the task is dropped.
    pub async fn probe_unhealthy(self: std::sync::Arc<Self>, every: Duration) {
        use proto::health::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let unhealthy: Vec<String> = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.members.iter().filter(|m| m.health.failures > 0).map(|m| m.address.clone()).collect()
            };
            for address in unhealthy {
                let Ok(channel) = self.channel(&address) else { continue };
                let mut client = HealthClient::new(channel);
                let check = client.check(HealthCheckRequest { service: String::new() });
                let serving = matches!(
                    tokio::time::timeout(CONNECT_TIMEOUT, check).await,
                    Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32
                );
                if serving {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(member) = state.member(&address) {
                        member.health = Health::default();
                        tracing::info!(server = %address, "server replica is healthy again");
                    }
                }
            }
        }
    }

    /// Resolves the configured names again every `every` and makes the pool's members
    /// what they resolve to now, keeping the state of addresses that stay. Runs until the
    /// task is dropped; does nothing when every configured address is an IP address.
    pub async fn follow_dns(self: std::sync::Arc<Self>, every: Duration) {
        if self.configured.iter().all(|a| is_ip_address(a)) {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let addresses = resolve(&self.configured).await;
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.members.iter().map(|m| &m.address).eq(addresses.iter()) {
                continue;
            }
            tracing::info!(before = ?state.members.iter().map(|m| &m.address).collect::<Vec<_>>(), now = ?addresses, "server replicas changed in DNS");
            let mut old = std::mem::take(&mut state.members);
            state.members = addresses
                .into_iter()
                .map(|address| match old.iter().position(|m| m.address == address) {
                    Some(i) => old.swap_remove(i),
                    None => Member::new(address),
                })
                .collect();
        }
    }
}

/// Whether `host:port` names its host by IP address.
fn is_ip_address(address: &str) -> bool {
    address.parse::<std::net::SocketAddr>().is_ok()
}

/// Every address the configured `host:port`s stand for, in order, without repeats. A name
/// that does not resolve now stays as it is (the connection resolves it when it is tried).
pub async fn resolve(configured: &[String]) -> Vec<String> {
    let mut addresses: Vec<String> = Vec::new();
    for address in configured {
        let found = if is_ip_address(address) {
            vec![address.clone()]
        } else {
            match tokio::net::lookup_host(address.as_str()).await {
                Ok(found) => found.map(|a| a.to_string()).collect(),
                Err(e) => {
                    tracing::warn!(server = %address, error = %e, "cannot resolve a server address now");
                    vec![address.clone()]
                }
            }
        };
        for a in found {
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
    }
    if addresses.is_empty() {
        // A name that resolved to nothing: keep it, as for a failed lookup.
        addresses.extend(configured.iter().cloned());
    }
    addresses
}

/// `d` ± 25%.
pub fn jitter(d: Duration) -> Duration {
    let factor = 0.75 + fastrand::f64() * 0.5;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hedge_follows_a_replicas_recent_answers_within_bounds() {
        let mut latency = Latency::default();
        assert_eq!(latency.hedge_after(), HEDGE_DEFAULT, "before any answer");
        for _ in 0..50 {
            latency.observe(Duration::from_millis(4));
        }
        assert_eq!(latency.hedge_after(), HEDGE_MIN, "a fast, steady replica: the floor");
        for ms in [40, 80, 120, 160, 200, 240] {
            latency.observe(Duration::from_millis(ms));
        }
        let slower = latency.hedge_after();
        assert!(slower > Duration::from_millis(200) && slower <= HEDGE_MAX, "{slower:?}");
        for _ in 0..50 {
            latency.observe(Duration::from_secs(3));
        }
        assert_eq!(latency.hedge_after(), HEDGE_MAX, "never longer than the ceiling");
    }

    #[tokio::test]
    async fn a_call_refused_for_an_svid_replaced_while_it_ran_is_sent_again() {
        let td = identity::TrustDomain::parse("example.org").unwrap();
        let server_id = SpiffeId::parse("spiffe://example.org/spire/server").unwrap();
        let bundle = Arc::new(RwLock::new(Bundle::new(td)));
        let pool = ServerPool::new(vec!["127.0.0.1:9".into()], server_id, bundle, "failures").await;
        let superseded = proto::reason::Reason::AgentSvidSuperseded.status(Code::PermissionDenied, "no longer active");
        let started = pool.identity_generation();
        assert!(!pool.outdated_identity(started, &superseded), "the SVID the call used is still this agent's");
        pool.set_identity(&[vec![1, 2, 3]], &[4, 5, 6]);
        assert!(pool.outdated_identity(started, &superseded), "renewed while the call ran: send it again");
        assert!(!pool.outdated_identity(pool.identity_generation(), &superseded), "refused with the new one");
        let banned = proto::reason::Reason::AgentBanned.status(Code::PermissionDenied, "banned");
        assert!(!pool.outdated_identity(started, &banned), "other refusals stand");
    }

    #[tokio::test]
    async fn a_name_stands_for_every_address_it_resolves_to() {
        let expected: Vec<String> = tokio::net::lookup_host("localhost:8081")
            .await
            .unwrap()
            .map(|a| a.to_string())
            .fold(Vec::new(), |mut v, a| {
                if !v.contains(&a) {
                    v.push(a);
                }
                v
            });
        assert!(!expected.is_empty());
        let configured = vec!["127.0.0.1:9000".to_string(), "localhost:8081".to_string(), "127.0.0.1:9000".to_string()];
        let mut want = vec!["127.0.0.1:9000".to_string()];
        want.extend(expected.iter().filter(|a| *a != "127.0.0.1:9000").cloned());
        assert_eq!(resolve(&configured).await, want);
        assert!(want.contains(&"127.0.0.1:8081".to_string()), "localhost resolves to 127.0.0.1 here: {want:?}");
        let unknown = vec!["no-such-host.invalid:8081".to_string()];
        assert_eq!(resolve(&unknown).await, unknown, "an unresolvable name stays for later");
    }
}
