//! The `server`, `cluster`, `health_checks` and `telemetry` blocks, with SPIRE's defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use identity::crypto::KeyType;
use identity::{SpiffeId, TrustDomain};
use serde::Deserialize;

use crate::ca::config::{DEFAULT_CA_TTL, DEFAULT_JWT_SVID_TTL, DEFAULT_X509_SVID_TTL};
pub use hcl_config::sections::{HealthChecks, Prometheus, Telemetry};
use hcl_config::values;

/// `server { … }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_bind_address")]
    pub bind_address: IpAddr,
    #[serde(default = "default_bind_port", deserialize_with = "values::port")]
    pub bind_port: u16,
    #[serde(default = "default_socket_path")]
    pub socket_path: PathBuf,
    #[serde(deserialize_with = "values::trust_domain")]
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_ca_ttl", deserialize_with = "values::duration")]
    pub ca_ttl: Duration,
    /// How long a reserved CA key id may go unrecorded before the leader's sweep deems its
    /// creation abandoned and deletes the key (KMS and HSM key managers).
    #[serde(default = "default_ca_key_sweep_grace", deserialize_with = "values::duration")]
    pub ca_key_sweep_grace: Duration,
    #[serde(default = "default_x509_svid_ttl", deserialize_with = "values::duration")]
    pub default_x509_svid_ttl: Duration,
    #[serde(default = "default_jwt_svid_ttl", deserialize_with = "values::duration")]
    pub default_jwt_svid_ttl: Duration,
    /// Lifetime of agent SVIDs; SPIRE's default is the X.509-SVID TTL.
    #[serde(default, deserialize_with = "values::optional_duration")]
    pub agent_ttl: Option<Duration>,
    #[serde(default = "default_key_type", deserialize_with = "values::key_type")]
    pub ca_key_type: KeyType,
    #[serde(default = "default_key_type", deserialize_with = "values::key_type")]
    pub jwt_key_type: KeyType,
    #[serde(default)]
    pub ca_subject: Option<CaSubject>,
    #[serde(default)]
    pub jwt_issuer: Option<String>,
    /// SPIFFE IDs allowed to call admin APIs with their X.509-SVID.
    #[serde(default, deserialize_with = "values::spiffe_ids")]
    pub admin_ids: Vec<SpiffeId>,
    /// `ratelimit { attestation signing signing_per_agent }`.
    #[serde(default)]
    pub ratelimit: crate::api::rate_limits::RateLimitConfig,
    /// `federation { bundle_endpoint { … } }`.
    #[serde(default)]
    pub federation: super::federation::FederationSection,
}

/// `ca_subject { country = ["US"] organization = ["SPIFFE"] common_name = "" }`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CaSubject {
    #[serde(default)]
    pub country: Vec<String>,
    #[serde(default)]
    pub organization: Vec<String>,
    #[serde(default)]
    pub common_name: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum LogLevel {
    #[serde(alias = "debug")]
    DEBUG,
    #[default]
    #[serde(alias = "info")]
    INFO,
    #[serde(alias = "warn")]
    WARN,
    #[serde(alias = "error")]
    ERROR,
}

impl LogLevel {
    pub fn as_filter(self) -> &'static str {
        match self {
            Self::DEBUG => "debug",
            Self::INFO => "info",
            Self::WARN => "warn",
            Self::ERROR => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    #[serde(alias = "TEXT")]
    Text,
    #[serde(alias = "JSON")]
    Json,
}

/// `cluster { … }`: this replica's place in the Raft cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This replica's Raft id: unique in the cluster, never reused after removal. Not set
    /// with `peers`: the cluster gives the id then.
    #[serde(default)]
    pub node_id: u64,
    /// Declarative formation: the cluster RPC addresses of the replicas, the one at
    /// `peers[i]` being node `i + 1`; empty for the invite flow (`cluster init`, `join`).
    #[serde(default)]
    pub peers: Vec<String>,
    /// How many of `peers`, from the first, form the cluster; the default is all of them.
    #[serde(default)]
    pub bootstrap_expect: Option<usize>,
    /// The cluster CA provisioned ahead (PEM certificate, PEM PKCS#8 key), with `peers`.
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_key_file: Option<PathBuf>,
    /// With `peers`: the leader removes a member whose clock it could not read for this long,
    /// while more than `bootstrap_expect` voters remain (a scaled-down StatefulSet's
    /// members). Unset: members are only removed by `cluster remove`.
    #[serde(default, deserialize_with = "values::optional_duration")]
    pub remove_unreachable_after: Option<Duration>,
    /// Where the cluster RPC (Raft, write forwarding, joins) listens.
    pub raft_bind_address: SocketAddr,
    /// The address other replicas dial for the cluster RPC; defaults to `raft_bind_address`.
    #[serde(default)]
    pub raft_advertise_address: Option<String>,
    /// The local IP outbound cluster connections come from (a host with several addresses
    /// whose peers admit replicas by source address); by default the kernel chooses.
    #[serde(default)]
    pub raft_source_address: Option<IpAddr>,
    /// The API address given to callers redirected here; defaults to `bind_address:bind_port`.
    #[serde(default)]
    pub api_advertise_address: Option<String>,
    #[serde(default = "default_heartbeat", deserialize_with = "values::duration")]
    pub heartbeat_interval: Duration,
    #[serde(default = "default_election_timeout", deserialize_with = "values::duration")]
    pub election_timeout: Duration,
    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// How far this replica's clock may be from the cluster's (the median of the members'
    /// clocks) before it stops signing and, leading, hands leadership on.
    #[serde(default = "default_max_clock_skew", deserialize_with = "values::duration")]
    pub max_clock_skew: Duration,
}

impl ClusterSection {
    /// How many of `peers` found a declared cluster: `bootstrap_expect`, or all of them.
    pub fn founders(&self) -> usize {
        self.bootstrap_expect.unwrap_or(self.peers.len())
    }
}

fn default_bind_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_bind_port() -> u16 {
    8081
}
fn default_socket_path() -> PathBuf {
    PathBuf::from("/tmp/spire-server/private/api.sock")
}
fn default_ca_ttl() -> Duration {
    DEFAULT_CA_TTL
}
fn default_ca_key_sweep_grace() -> Duration {
    crate::ca::DEFAULT_KEY_SWEEP_GRACE
}
fn default_x509_svid_ttl() -> Duration {
    DEFAULT_X509_SVID_TTL
}
fn default_jwt_svid_ttl() -> Duration {
    DEFAULT_JWT_SVID_TTL
}
fn default_key_type() -> KeyType {
    KeyType::EcP256
}
fn default_heartbeat() -> Duration {
    Duration::from_millis(100)
}
fn default_election_timeout() -> Duration {
    Duration::from_millis(400)
}
fn default_max_clock_skew() -> Duration {
    raft_store::peer_clocks::DEFAULT_MAX_SKEW
}
fn default_snapshot_every() -> u64 {
    5000
}
