//! Upstream authorities: who signs the server's CA certificate when it is not self-signed.
//! One module per implementation: `disk` reads a CA certificate and key from files; `spire`
//! asks an upstream cluster (Testudo or SPIRE) for an intermediate, as a nested downstream.

pub mod disk;
pub mod spire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use identity::bundle::Bundle;
use identity::crypto::Signer;
use identity::x509::{verify_ca_chain, Subject};
use identity::TrustDomain;
use raft_store::model::{StoredJwtKey, StoredX509Authority};
use time::OffsetDateTime;

/// The upstream authority a config enables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamConfig {
    Disk(disk::DiskUpstreamConfig),
    Spire(spire::SpireUpstreamConfig),
}

/// Why the upstream authority could not sign.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream authority {name} is misconfigured: {reason}")]
    Config { name: &'static str, reason: String },
    #[error("upstream authority {name} is unavailable: {reason}")]
    Unavailable { name: &'static str, reason: String },
    #[error("upstream authority {name} refused to sign: {reason}")]
    Refused { name: &'static str, reason: String },
}

/// An intermediate CA certificate signed upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSigned {
    /// Our CA certificate (DER).
    pub certificate: Vec<u8>,
    /// Certificates between ours and the roots, nearest first.
    pub chain: Vec<Vec<u8>>,
    /// The upstream roots, which the local bundle publishes.
    pub roots: Vec<Vec<u8>>,
}

/// An upstream cluster's bundle, which a nested cluster's bundle mirrors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamBundle {
    /// The roots, with their taint marks.
    pub x509: Vec<StoredX509Authority>,
    /// Every JWT key the upstream publishes: its own and those its downstreams published.
    pub jwt: Vec<StoredJwtKey>,
}

/// Signs the server's intermediate CA certificates.
#[async_trait]
pub trait UpstreamAuthority: Send + Sync {
    /// The config name, e.g. `disk`.
    fn name(&self) -> &'static str;

    /// Signs a CA certificate for `signer`'s key (which signs the request where the
    /// upstream wants one); its lifetime may be capped upstream.
    async fn mint_x509_ca(
        &self,
        trust_domain: &TrustDomain,
        signer: Arc<dyn Signer>,
        subject: &Subject,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<UpstreamSigned, UpstreamError>;

    /// Whether this is an upstream cluster whose bundle this cluster follows, publishing
    /// its JWT keys there ([`Self::fetch_bundle`], [`Self::publish_jwt_key`]).
    fn is_upstream_cluster(&self) -> bool {
        false
    }

    /// The upstream cluster's bundle now.
    async fn fetch_bundle(&self) -> Result<UpstreamBundle, UpstreamError> {
        Err(UpstreamError::Config { name: self.name(), reason: "no upstream bundle to follow".into() })
    }

    /// Publishes one of this cluster's JWT keys in the upstream bundle; answers the
    /// upstream's JWT keys after it.
    async fn publish_jwt_key(&self, _key: &StoredJwtKey) -> Result<Vec<StoredJwtKey>, UpstreamError> {
        Err(UpstreamError::Config { name: self.name(), reason: "no upstream bundle to publish in".into() })
    }
}

/// Refuses to hand out a CA that validators could not chain to the published roots.
pub(crate) fn check_chains_to_roots(
    name: &'static str,
    td: &TrustDomain,
    ca: &[u8],
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(), UpstreamError> {
    let config_error = |reason: String| UpstreamError::Config { name, reason };
    let mut bundle = Bundle::new(td.clone());
    for root in roots {
        bundle.add_x509_authority(root).map_err(|e| config_error(format!("upstream roots: {e}")))?;
    }
    let mut presented = vec![ca.to_vec()];
    presented.extend(chain.iter().cloned());
    verify_ca_chain(&presented, &bundle, now)
        .map(|_| ())
        .map_err(|e| config_error(format!("the upstream CA does not chain to the bundle roots: {e}")))
}
