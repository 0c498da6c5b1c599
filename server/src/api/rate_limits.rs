//! Rate limits on the calls a caller can repeat to cost us most, in SPIRE's shape
//! (`server { ratelimit { attestation signing } }`): node attestation, one per second per
//! source; X.509 and JWT signing, 500 per second per source each; publishing JWT keys, 500
//! per second per source, always. A source is an IPv4 address or an IPv6 /64. Calls on the
//! admin socket are not limited.
//!
//! Testudo adds one limit SPIRE lacks: when the CA keys live in AWS KMS or an HSM, every
//! signature is a call to it, and a KMS quota is shared by the whole cluster; each agent
//! may then have `signing_per_agent` signatures a second (a burst of ten seconds' worth), so
//! one agent cannot use up the quota the others need.
//!
//! A caller over a limit waits, as in SPIRE, but at most [`MAX_WAIT`]; past that it is
//! refused with `ResourceExhausted` at once, so a flood holds nothing for long.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use tonic::{Request, Status};

/// The longest a caller waits for its turn before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
const ATTESTATIONS_PER_SECOND: u32 = 1;
const SIGNING_PER_SECOND: u32 = 500;
const PUSH_KEY_PER_SECOND: u32 = 500;
const DEFAULT_SIGNING_PER_AGENT: u32 = 100;

/// `server { ratelimit { … } }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Node attestation, one per second per source (SPIRE's default: on).
    #[serde(default = "on")]
    pub attestation: bool,
    /// X.509 and JWT signing, 500 per second per source each (SPIRE's default: on).
    #[serde(default = "on")]
    pub signing: bool,
    /// Signatures per second per agent when the CA keys are in AWS KMS or PKCS#11; 0: none.
    #[serde(default = "default_signing_per_agent")]
    pub signing_per_agent: u32,
}

fn on() -> bool {
    true
}

fn default_signing_per_agent() -> u32 {
    DEFAULT_SIGNING_PER_AGENT
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { attestation: true, signing: true, signing_per_agent: DEFAULT_SIGNING_PER_AGENT }
    }
}

/// One limiter per kind of call, each with a state per source (or agent).
pub struct RateLimits {
    attestation: Option<Limiter<IpAddr>>,
    x509_signing: Option<Limiter<IpAddr>>,
    jwt_signing: Option<Limiter<IpAddr>>,
    push_key: Limiter<IpAddr>,
    managed_signing: Option<Limiter<String>>,
}

struct Limiter<K: std::hash::Hash + Eq + Clone> {
    what: &'static str,
    limiter: DefaultKeyedRateLimiter<K>,
}

impl RateLimits {
    /// The limits `config` enables; `managed_keys`: the CA keys are in a KMS or HSM.
    pub fn new(config: &RateLimitConfig, managed_keys: bool) -> Self {
        let per_second = |what, n: u32, burst: u32| -> Option<Limiter<IpAddr>> {
            let quota = Quota::per_second(NonZeroU32::new(n)?).allow_burst(NonZeroU32::new(burst)?);
            Some(Limiter { what, limiter: DefaultKeyedRateLimiter::keyed(quota) })
        };
        let enabled = |on: bool, limiter: Option<Limiter<IpAddr>>| limiter.filter(|_| on);
        let managed_signing = NonZeroU32::new(config.signing_per_agent).filter(|_| managed_keys).map(|n| {
            let burst = n.saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
            Limiter {
                what: "signing with the KMS or HSM for this agent",
                limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(n).allow_burst(burst)),
            }
        });
        Self {
            attestation: enabled(
                config.attestation,
                per_second("node attestation", ATTESTATIONS_PER_SECOND, ATTESTATIONS_PER_SECOND),
            ),
            x509_signing: enabled(config.signing, per_second("X.509 signing", SIGNING_PER_SECOND, SIGNING_PER_SECOND)),
            jwt_signing: enabled(config.signing, per_second("JWT signing", SIGNING_PER_SECOND, SIGNING_PER_SECOND)),
            push_key: per_second("publishing JWT keys", PUSH_KEY_PER_SECOND, PUSH_KEY_PER_SECOND)
                .unwrap_or_else(|| unreachable_limiter("publishing JWT keys")),
            managed_signing,
        }
    }

    pub async fn attestation<T>(&self, request: &Request<T>) -> Result<(), Status> {
        admit_source(self.attestation.as_ref(), request, 1).await
    }

    pub async fn x509_signing<T>(&self, request: &Request<T>, count: usize) -> Result<(), Status> {
        admit_source(self.x509_signing.as_ref(), request, count).await
    }

    pub async fn jwt_signing<T>(&self, request: &Request<T>) -> Result<(), Status> {
        admit_source(self.jwt_signing.as_ref(), request, 1).await
    }

    pub async fn push_key<T>(&self, request: &Request<T>) -> Result<(), Status> {
        admit_source(Some(&self.push_key), request, 1).await
    }

    /// `count` signatures for `agent`, when the keys are a KMS's or an HSM's.
    pub async fn managed_signing(&self, agent: &identity::SpiffeId, count: usize) -> Result<(), Status> {
        match &self.managed_signing {
            Some(limiter) => limiter.admit(agent.to_string(), count).await,
            None => Ok(()),
        }
    }

    /// Forgets callers whose limits are back to full, so the tables hold only recent ones.
    pub fn forget_idle(&self) {
        for limiter in [&self.attestation, &self.x509_signing, &self.jwt_signing].into_iter().flatten() {
            limiter.limiter.retain_recent();
            limiter.limiter.shrink_to_fit();
        }
        self.push_key.limiter.retain_recent();
        if let Some(limiter) = &self.managed_signing {
            limiter.limiter.retain_recent();
            limiter.limiter.shrink_to_fit();
        }
    }
}

/// Only reached if a constant above were zero.
fn unreachable_limiter(what: &'static str) -> Limiter<IpAddr> {
    Limiter { what, limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(NonZeroU32::MAX)) }
}

async fn admit_source<T>(limiter: Option<&Limiter<IpAddr>>, request: &Request<T>, count: usize) -> Result<(), Status> {
    // Calls on the admin socket have no address: they are the operator's.
    match (limiter, request.remote_addr()) {
        (Some(limiter), Some(peer)) => limiter.admit(raft_store::network::source_of(peer.ip()), count).await,
        _ => Ok(()),
    }
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    async fn admit(&self, key: K, count: usize) -> Result<(), Status> {
        let Some(n) = u32::try_from(count).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let wait = match self.limiter.check_key_n(&key, n) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(not_until)) => not_until.wait_time_from(DefaultClock::default().now()),
                Err(_) => {
                    return Err(self.refuse(format!("{count} at once is more than the limit allows in a burst")));
                }
            };
            if tokio::time::Instant::now() + wait > deadline {
                return Err(self.refuse("rate limit exceeded; retry later".into()));
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn refuse(&self, reason: String) -> Status {
        metrics::counter!("testudo_rate_limited_total", "limit" => self.what).increment(1);
        proto::reason::Reason::RateLimited.status(tonic::Code::ResourceExhausted, format!("{}: {reason}", self.what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(ip: [u8; 4]) -> Request<()> {
        let mut request = Request::new(());
        let info = tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(std::net::SocketAddr::from((ip, 40_000))),
        };
        request.extensions_mut().insert(info);
        request
    }

    #[tokio::test]
    async fn a_source_over_its_rate_waits_then_is_refused_and_others_are_not() {
        let limits = RateLimits::new(&RateLimitConfig::default(), false);
        let flood = request_from([10, 0, 0, 1]);
        limits.attestation(&flood).await.unwrap();
        let started = tokio::time::Instant::now();
        limits.attestation(&flood).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(900), "the second attestation waited its turn");
        // Three more queue behind it: the third would wait past MAX_WAIT.
        let waits = futures::future::join_all((0..3).map(|_| limits.attestation(&flood))).await;
        let refused = waits.iter().filter(|r| r.as_ref().is_err_and(|s| s.code() == tonic::Code::ResourceExhausted));
        assert!(refused.count() >= 1, "{waits:?}");
        limits.attestation(&request_from([10, 0, 0, 2])).await.unwrap();
        // The admin socket (no address) is not limited.
        for _ in 0..10 {
            limits.attestation(&Request::new(())).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_burst_is_refused_and_disabled_limits_admit_all() {
        let limits = RateLimits::new(&RateLimitConfig::default(), false);
        let err = limits.x509_signing(&request_from([10, 0, 0, 1]), 501).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        limits.x509_signing(&request_from([10, 0, 0, 1]), 500).await.unwrap();

        let off = RateLimits::new(&RateLimitConfig { attestation: false, signing: false, signing_per_agent: 5 }, false);
        for _ in 0..100 {
            off.attestation(&request_from([10, 0, 0, 1])).await.unwrap();
        }
        let agent = identity::SpiffeId::parse("spiffe://example.org/spire/agent/x").unwrap();
        off.managed_signing(&agent, 1_000).await.unwrap();
    }

    #[tokio::test]
    async fn with_managed_keys_each_agent_has_its_own_signing_budget() {
        let config = RateLimitConfig { signing_per_agent: 5, ..Default::default() };
        let limits = RateLimits::new(&config, true);
        let greedy = identity::SpiffeId::parse("spiffe://example.org/spire/agent/greedy").unwrap();
        let other = identity::SpiffeId::parse("spiffe://example.org/spire/agent/other").unwrap();
        limits.managed_signing(&greedy, 50).await.unwrap();
        let err = limits.managed_signing(&greedy, 50).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        limits.managed_signing(&other, 50).await.unwrap();
    }
}
