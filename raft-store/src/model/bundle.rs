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

    /// This bundle as a mirror of an upstream bundle (see `MirrorUpstreamBundle`): the
    /// upstream's X.509 authorities, and its JWT keys plus those of ours (`own_kids`) it does
    /// not list yet. `None` when that is what this bundle holds already.
    pub fn mirrored(
        &self,
        x509: &[StoredX509Authority],
        jwt: &[StoredJwtKey],
        own_kids: &[&str],
    ) -> Option<StoredBundle> {
        let mut keys = jwt.to_vec();
        for key in &self.jwt_authorities {
            if own_kids.contains(&key.key_id.as_str()) && !keys.iter().any(|k| k.key_id == key.key_id) {
                keys.push(key.clone());
            }
        }
        if self.x509_authorities == x509 && self.jwt_authorities == keys {
            return None;
        }
        Some(StoredBundle {
            x509_authorities: x509.to_vec(),
            jwt_authorities: keys,
            sequence_number: self.sequence_number + 1,
            ..self.clone()
        })
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

/// A stored bundle that does not convert to a usable bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stored bundle of {trust_domain}: {reason}")]
pub struct BundleConversionError {
    pub trust_domain: String,
    pub reason: String,
}

impl StoredBundle {
    /// The bundle verifiers use.
    pub fn to_bundle(&self) -> Result<identity::bundle::Bundle, BundleConversionError> {
        let err = |reason: String| BundleConversionError { trust_domain: self.trust_domain.to_string(), reason };
        let mut bundle = identity::bundle::Bundle::new(self.trust_domain.clone());
        for authority in &self.x509_authorities {
            bundle.add_x509_authority(&authority.der).map_err(|e| err(e.to_string()))?;
            if authority.tainted {
                bundle.taint_x509_authority(&authority.der);
            }
        }
        for key in &self.jwt_authorities {
            let public_key = identity::crypto::PublicKey::from_spki_der(&key.public_key)
                .map_err(|e| err(format!("JWT key {:?}: {e}", key.key_id)))?;
            let expires_at = (key.expires_at != 0).then_some(key.expires_at);
            bundle
                .add_jwt_authority(identity::bundle::JwtAuthority {
                    key_id: key.key_id.clone(),
                    public_key,
                    expires_at,
                    tainted: key.tainted,
                })
                .map_err(|e| err(e.to_string()))?;
        }
        bundle.refresh_hint = u64::try_from(self.refresh_hint).ok().filter(|h| *h > 0);
        bundle.sequence_number = self.sequence_number;
        Ok(bundle)
    }

    /// The stored form of a bundle.
    pub fn from_bundle(bundle: &identity::bundle::Bundle) -> Self {
        Self {
            trust_domain: bundle.trust_domain().clone(),
            x509_authorities: bundle
                .x509_authorities()
                .iter()
                .map(|a| StoredX509Authority { der: a.der.clone(), tainted: a.tainted })
                .collect(),
            jwt_authorities: bundle
                .jwt_authorities()
                .iter()
                .map(|k| StoredJwtKey {
                    key_id: k.key_id.clone(),
                    public_key: k.public_key.spki_der().to_vec(),
                    expires_at: k.expires_at.unwrap_or(0),
                    tainted: k.tainted,
                })
                .collect(),
            refresh_hint: bundle.refresh_hint.map_or(0, |h| i64::try_from(h).unwrap_or(i64::MAX)),
            sequence_number: bundle.sequence_number,
        }
    }
}
