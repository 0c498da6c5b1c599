//! Every call to the servers goes through one pool over the configured replicas. A call
//! goes to the replica that answered last; on an error that says the replica (not the
//! request) is at fault, or a timeout, the replica is marked unhealthy for a jittered
//! backoff and the call moves to the next one. No call depends on reaching the Raft leader:
//! any replica serves any agent call.
//!
//! Replicas marked unhealthy are probed (gRPC health) and return as soon as they answer.
//!
//! Connections are mutual TLS: the agent presents its SVID (none before attestation), and
//! a server must present `spiffe://<td>/spire/server` chained to the agent's bundle.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use identity::bundle::Bundle;
use identity::SpiffeId;
use spiffe_tls::SvidVerifier;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use zeroize::Zeroizing;

use crate::identity_store::StoredIdentity;

/// How long one call may take before the next replica is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Backoff for a replica that failed: doubles up to the maximum, with ±25% jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The replicas and the agent's credentials for them.
pub struct ServerPool {
    servers: Vec<Server>,
    server_id: SpiffeId,
    bundle: Arc<RwLock<Bundle>>,
    state: Mutex<PoolState>,
}

struct Server {
    address: String,
}

struct PoolState {
    /// The replica to try first.
    current: usize,
    identity: Option<(String, Zeroizing<String>)>,
    /// Channels built with the current identity, per replica.
    channels: Vec<Option<Channel>>,
    health: Vec<Health>,
}

#[derive(Clone, Copy, Default)]
struct Health {
    unhealthy_until: Option<Instant>,
    failures: u32,
}

/// Whether an error is the replica's (try another) or the request's (give up).
fn replica_at_fault(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal | Code::ResourceExhausted | Code::Aborted | Code::Cancelled)
}

impl ServerPool {
    /// A pool over `servers` (`host:port`), trusting `bundle` (shared: the sync loop keeps
    /// it current) to vouch for servers of `trust_domain`.
    pub fn new(servers: Vec<String>, server_id: SpiffeId, bundle: Arc<RwLock<Bundle>>) -> Self {
        let n = servers.len();
        Self {
            servers: servers.into_iter().map(|address| Server { address }).collect(),
            server_id,
            bundle,
            state: Mutex::new(PoolState { current: 0, identity: None, channels: vec![None; n], health: vec![Health::default(); n] }),
        }
    }

    /// Presents `identity` from now on (after attestation and every renewal).
    pub fn set_identity(&self, identity: &StoredIdentity) {
        let chain: String = identity.chain.iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone()))).collect();
        let key = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", identity.key_pkcs8.to_vec())));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.identity = Some((chain, key));
        state.channels.iter_mut().for_each(|c| *c = None);
    }

    /// The address of the replica calls go to first.
    pub fn current(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.servers[state.current].address.clone()
    }

    fn channel(&self, index: usize) -> Result<Channel, Status> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = &state.channels[index] {
            return Ok(channel.clone());
        }
        let address = &self.servers[index].address;
        let mut tls = ClientTlsConfig::new().domain_name("server.testudo.invalid");
        if let Some((chain, key)) = &state.identity {
            tls = tls.identity(Identity::from_pem(chain, key.as_bytes()));
        }
        let verifier = Arc::new(SvidVerifier::for_id(self.bundle.clone(), self.server_id.clone()));
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| Status::invalid_argument(format!("server address {address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .tls_config_with_verifier(tls, verifier)
            .map_err(|e| Status::internal(format!("TLS for {address}: {e}")))?
            .connect_lazy();
        state.channels[index] = Some(channel.clone());
        Ok(channel)
    }

    /// The order to try replicas in: the current one, then the others; healthy ones
    /// before those still in backoff.
    fn order(&self) -> Vec<usize> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let n = self.servers.len();
        let mut order: Vec<usize> = (0..n).map(|i| (state.current + i) % n).collect();
        order.sort_by_key(|&i| state.health[i].unhealthy_until.is_some_and(|until| until > now));
        order
    }

    fn succeeded(&self, index: usize) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.current = index;
        state.health[index] = Health::default();
    }

    fn failed(&self, index: usize, status: &Status) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let health = &mut state.health[index];
        health.failures = health.failures.saturating_add(1);
        let backoff = BACKOFF_MIN.saturating_mul(1 << health.failures.min(6)).min(BACKOFF_MAX);
        health.unhealthy_until = Some(Instant::now() + jitter(backoff));
        // A broken connection is rebuilt on the next try.
        state.channels[index] = None;
        metrics::counter!("testudo_agent_server_failures_total").increment(1);
        tracing::warn!(server = %self.servers[index].address, code = ?status.code(), error = %status.message(), "server call failed; trying another replica");
    }

    /// Runs `call` against the replicas in turn until one answers or every one has failed
    /// `rounds` times over. Errors the request caused come back at once.
    pub async fn call<T, F, Fut>(&self, rounds: usize, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = Status::unavailable("no server replica is configured");
        for round in 0..rounds.max(1) {
            if round > 0 {
                tokio::time::sleep(jitter(BACKOFF_MIN.saturating_mul(1 << round.min(5)).min(BACKOFF_MAX))).await;
            }
            for index in self.order() {
                let channel = self.channel(index)?;
                match call(channel).await {
                    Ok(answer) => {
                        self.succeeded(index);
                        return Ok(answer);
                    }
                    Err(status) if replica_at_fault(&status) => {
                        self.failed(index, &status);
                        last = status;
                    }
                    Err(status) => {
                        // The replica answered; the request was refused.
                        self.succeeded(index);
                        return Err(status);
                    }
                }
            }
        }
        Err(last)
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
            let unhealthy: Vec<usize> = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                (0..self.servers.len()).filter(|&i| state.health[i].failures > 0).collect()
            };
            for index in unhealthy {
                let Ok(channel) = self.channel(index) else { continue };
                let mut client = HealthClient::new(channel);
                let check = client.check(HealthCheckRequest { service: String::new() });
                let serving = matches!(
                    tokio::time::timeout(CONNECT_TIMEOUT, check).await,
                    Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32
                );
                if serving {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.health[index] = Health::default();
                    tracing::info!(server = %self.servers[index].address, "server replica is healthy again");
                }
            }
        }
    }
}

/// `d` ± 25%.
fn jitter(d: Duration) -> Duration {
    let factor = 0.75 + fastrand::f64() * 0.5;
    d.mul_f64(factor)
}
