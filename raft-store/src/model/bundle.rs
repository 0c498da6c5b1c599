//! Trust bundles as stored: the local one and those of federated trust domains.

use identity::TrustDomain;
use serde::{Deserialize, Serialize};

/// An X.509 authority: a DER CA certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredX509Authority {
    pub der: Vec<u8>,
    pub tainted: bool,
}

/// A JWT authority: key id, DER SubjectPublicKeyInfo and expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredJwtKey {
    pub key_id: String,
    pub public_key: Vec<u8>,
    /// Unix seconds; 0 means none.
    pub expires_at: i64,
    pub tainted: bool,
}

/// A trust bundle. `sequence_number` rises on every change apply makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBundle {
    pub trust_domain: TrustDomain,
    pub x509_authorities: Vec<StoredX509Authority>,
    pub jwt_authorities: Vec<StoredJwtKey>,
    /// Seconds; 0 means none.
    pub refresh_hint: i64,
    pub sequence_number: u64,
}

impl StoredBundle {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self { trust_domain, x509_authorities: vec![], jwt_authorities: vec![], refresh_hint: 0, sequence_number: 0 }
    }

    /// Adds authorities not already present (X.509 by DER, JWT by key id). Returns whether
    /// anything was added.
    pub fn append(&mut self, x509: &[StoredX509Authority], jwt: &[StoredJwtKey]) -> bool {
        let mut changed = false;
        for a in x509 {
            if !self.x509_authorities.iter().any(|b| b.der == a.der) {
                self.x509_authorities.push(a.clone());
                changed = true;
            }
        }
        for k in jwt {
            if !self.jwt_authorities.iter().any(|b| b.key_id == k.key_id) {
                self.jwt_authorities.push(k.clone());
                changed = true;
            }
        }
        changed
    }

    /// Removes JWT keys that expired before `before` and X.509 authorities whose DER is in
    /// `expired_x509` (the proposer parsed the certificates). Returns whether anything went.
    pub fn prune(&mut self, before: i64, expired_x509: &[Vec<u8>]) -> bool {
        let (x, j) = (self.x509_authorities.len(), self.jwt_authorities.len());
        self.x509_authorities.retain(|a| !expired_x509.contains(&a.der));
        self.jwt_authorities.retain(|k| k.expires_at == 0 || k.expires_at >= before);
        x != self.x509_authorities.len() || j != self.jwt_authorities.len()
    }
}
