//! Upstream authorities: who signs the server's CA certificate when it is not self-signed.
//! One module per implementation; `disk` reads a CA certificate and key from files.

pub mod disk;

use std::time::Duration;

use async_trait::async_trait;
use identity::crypto::PublicKey;
use identity::x509::Subject;
use identity::TrustDomain;
use time::OffsetDateTime;

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

/// Signs the server's intermediate CA certificates.
#[async_trait]
pub trait UpstreamAuthority: Send + Sync {
    /// The config name, e.g. `disk`.
    fn name(&self) -> &'static str;

    /// Signs a CA certificate for `public_key`; its lifetime may be capped upstream.
    async fn mint_x509_ca(
        &self,
        trust_domain: &TrustDomain,
        public_key: &PublicKey,
        subject: &Subject,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<UpstreamSigned, UpstreamError>;
}
