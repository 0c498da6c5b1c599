//! Trust bundles: the X.509 and JWT authorities of a trust domain.

mod json;
mod pem;

use std::collections::BTreeMap;

pub use self::pem::{parse_pem_certificates, to_pem_certificates, PemError};
pub use json::{BundleJsonError, MAX_BUNDLE_JSON_BYTES};

use crate::crypto::PublicKey;
use crate::TrustDomain;

/// Why a change to a bundle was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("X.509 authority is not a parseable certificate")]
    BadCertificate,
    #[error("JWT authority key id cannot be empty")]
    EmptyKeyId,
    #[error("JWT authority key id {0:?} is already in the bundle with a different key")]
    KeyIdConflict(String),
}

/// A CA certificate trusted to sign X.509-SVIDs of the bundle's trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Authority {
    /// DER certificate.
    pub der: Vec<u8>,
    /// Set when the authority's key is suspected compromised: SVIDs it signed must be replaced.
    pub tainted: bool,
}

/// A public key trusted to sign JWT-SVIDs of the bundle's trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuthority {
    pub key_id: String,
    pub public_key: PublicKey,
    /// Unix seconds after which the key is no longer published; not part of the JSON format.
    pub expires_at: Option<i64>,
    pub tainted: bool,
}

/// The trust bundle of one trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<X509Authority>,
    jwt_authorities: Vec<JwtAuthority>,
    /// Seconds consumers should wait before refreshing, if the publisher suggests it.
    pub refresh_hint: Option<u64>,
    pub sequence_number: u64,
}

impl Bundle {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            refresh_hint: None,
            sequence_number: 0,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn x509_authorities(&self) -> &[X509Authority] {
        &self.x509_authorities
    }

    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    /// Adds a CA certificate unless it is already present. Returns whether it was added.
    pub fn add_x509_authority(&mut self, der: &[u8]) -> Result<bool, BundleError> {
        match x509_parser::parse_x509_certificate(der) {
            Ok(([], _)) => {}
            _ => return Err(BundleError::BadCertificate),
        }
        if self.x509_authorities.iter().any(|a| a.der == der) {
            return Ok(false);
        }
        self.x509_authorities.push(X509Authority { der: der.to_vec(), tainted: false });
        Ok(true)
    }

    /// Removes a CA certificate. Returns whether it was present.
    pub fn remove_x509_authority(&mut self, der: &[u8]) -> bool {
        let before = self.x509_authorities.len();
        self.x509_authorities.retain(|a| a.der != der);
        before != self.x509_authorities.len()
    }

    /// Adds a JWT key. The same key under the same id is a no-op; another key under an
    /// existing id is refused. Returns whether it was added.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) -> Result<bool, BundleError> {
        if authority.key_id.is_empty() {
            return Err(BundleError::EmptyKeyId);
        }
        if let Some(existing) = self.jwt_authority(&authority.key_id) {
            if existing.public_key == authority.public_key {
                return Ok(false);
            }
            return Err(BundleError::KeyIdConflict(authority.key_id));
        }
        self.jwt_authorities.push(authority);
        Ok(true)
    }

    /// Removes a JWT key by id. Returns whether it was present.
    pub fn remove_jwt_authority(&mut self, key_id: &str) -> bool {
        let before = self.jwt_authorities.len();
        self.jwt_authorities.retain(|a| a.key_id != key_id);
        before != self.jwt_authorities.len()
    }

    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }

    /// Marks the X.509 authority with this certificate as tainted. Returns whether found.
    pub fn taint_x509_authority(&mut self, der: &[u8]) -> bool {
        let found = self.x509_authorities.iter_mut().find(|a| a.der == der);
        found.map(|a| a.tainted = true).is_some()
    }

    /// Marks the JWT authority with this key id as tainted. Returns whether found.
    pub fn taint_jwt_authority(&mut self, key_id: &str) -> bool {
        let found = self.jwt_authorities.iter_mut().find(|a| a.key_id == key_id);
        found.map(|a| a.tainted = true).is_some()
    }

    /// The X.509 authorities as concatenated PEM certificates.
    pub fn x509_authorities_pem(&self) -> String {
        to_pem_certificates(self.x509_authorities.iter().map(|a| a.der.as_slice()))
    }
}

/// Where verifiers find the bundle of a trust domain.
pub trait BundleSource {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&Bundle>;
}

impl BundleSource for Bundle {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&Bundle> {
        (self.trust_domain == *trust_domain).then_some(self)
    }
}

/// Bundles of several trust domains: the local one and those it federates with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: Bundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.values()
    }
}

impl BundleSource for BundleSet {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&Bundle> {
        self.bundles.get(trust_domain)
    }
}

#[cfg(test)]
mod tests;
