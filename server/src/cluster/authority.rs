//! The cluster CA: a long-lived CA, separate from the trust domain's SPIFFE CA, that
//! issues the certificates replicas present to each other on the cluster RPC.

use std::time::Duration;

use identity::bundle::Bundle;
use identity::crypto::{KeyType, LocalKey, PublicKey, Signer};
use identity::x509::{mint_ca, mint_x509_svid, CaTemplate, Issuer, Subject, SvidTemplate};
use identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::ClusterSetupError;

/// Lifetime of the cluster CA.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a replica certificate.
const REPLICA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The SPIFFE ID every replica presents on the cluster RPC. Under `/spire/`, so no
/// workload entry can claim it, and distinct from the API server's `/spire/server`.
pub fn replicas_id(trust_domain: &TrustDomain) -> Result<SpiffeId, ClusterSetupError> {
    SpiffeId::parse(&format!("spiffe://{}/spire/replica", trust_domain.name()))
        .map_err(|e| ClusterSetupError::Certificate(e.to_string()))
}

/// Replica `node_id`'s SPIFFE ID, under [`replicas_id`]: its certificate names its node id,
/// so the cluster RPC admits it only while that id is a member.
pub fn replica_id(trust_domain: &TrustDomain, node_id: u64) -> Result<SpiffeId, ClusterSetupError> {
    SpiffeId::parse(&format!("spiffe://{}/spire/replica/{node_id}", trust_domain.name()))
        .map_err(|e| ClusterSetupError::Certificate(e.to_string()))
}

/// The cluster CA's certificate and key.
pub struct ClusterAuthority {
    pub cert_der: Vec<u8>,
    key: LocalKey,
}

impl ClusterAuthority {
    /// A new self-signed cluster CA for `trust_domain`.
    pub fn create(trust_domain: &TrustDomain) -> Result<Self, ClusterSetupError> {
        let key = LocalKey::generate(KeyType::EcP256).map_err(|e| ClusterSetupError::Certificate(e.to_string()))?;
        let subject = Subject {
            country: None,
            organization: Some("Testudo".into()),
            common_name: Some("Testudo cluster CA".into()),
        };
        let template = CaTemplate {
            trust_domain: trust_domain.clone(),
            public_key: key.public_key().clone(),
            ttl: CA_TTL,
            subject,
            serial: None,
        };
        let minted = mint_ca(&template, None, Some(&key as &dyn Signer), OffsetDateTime::now_utc())
            .map_err(|e| ClusterSetupError::Certificate(e.to_string()))?;
        Ok(Self { cert_der: minted.der, key })
    }

    pub fn from_parts(cert_der: Vec<u8>, key_pkcs8: &[u8]) -> Result<Self, ClusterSetupError> {
        let key = LocalKey::from_pkcs8_der(KeyType::EcP256, key_pkcs8)
            .map_err(|e| ClusterSetupError::Certificate(format!("cluster CA key: {e}")))?;
        Issuer::new(&cert_der, &key)
            .map_err(|e| ClusterSetupError::Certificate(format!("cluster CA certificate: {e}")))?;
        Ok(Self { cert_der, key })
    }

    pub fn key_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, ClusterSetupError> {
        self.key.to_pkcs8_der().map_err(|e| ClusterSetupError::Certificate(e.to_string()))
    }

    /// The replica certificate to use: `current` while it has more than half its life left,
    /// otherwise a new one for the same key (the replica's key stays; only the
    /// certificate is replaced, so the two files never disagree). `Some` when renewed.
    /// A certificate naming another ID (one from before certificates named node ids), or
    /// one this CA did not sign (this replica moved to a new cluster CA), is replaced at once.
    pub fn renew_replica_if_due(
        &self,
        trust_domain: &TrustDomain,
        node_id: u64,
        current: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<Vec<u8>>, ClusterSetupError> {
        let facts = identity::x509::certificate_facts(current)
            .map_err(|e| ClusterSetupError::Certificate(format!("replica certificate: {e}")))?;
        let half_life = (facts.not_after - facts.not_before) / 2;
        let named = facts.spiffe_ids.first() == Some(&replica_id(trust_domain, node_id)?);
        if named && now < facts.not_before + half_life && self.signed(trust_domain, current, now) {
            return Ok(None);
        }
        self.issue_replica(trust_domain, node_id, facts.public_key).map(Some)
    }

    /// Whether `cert_der` is valid at `now` and chains to this CA.
    fn signed(&self, trust_domain: &TrustDomain, cert_der: &[u8], now: OffsetDateTime) -> bool {
        let mut bundle = Bundle::new(trust_domain.clone());
        bundle.add_x509_authority(&self.cert_der).is_ok()
            && identity::x509::verify_x509_svid(&[cert_der], &bundle, now).is_ok()
    }

    /// The files of replica `node_id` of cluster `cluster_id`, issuing from this CA: a new
    /// key pair made here and its certificate.
    pub fn material_for(
        &self,
        trust_domain: &TrustDomain,
        node_id: u64,
        cluster_id: String,
    ) -> Result<super::files::ClusterMaterial, ClusterSetupError> {
        let key = LocalKey::generate(KeyType::EcP256).map_err(|e| ClusterSetupError::Certificate(e.to_string()))?;
        let replica_cert_der = self.issue_replica(trust_domain, node_id, key.public_key().clone())?;
        Ok(super::files::ClusterMaterial {
            cluster_id,
            ca_generation: 0,
            ca_cert_der: self.cert_der.clone(),
            ca_key_pkcs8: self.key_pkcs8()?,
            also_trusted: None,
            replica_cert_der,
            replica_key_pkcs8: key.to_pkcs8_der().map_err(|e| ClusterSetupError::Certificate(e.to_string()))?,
        })
    }

    /// A replica certificate for `public_key`.
    pub fn issue_replica(
        &self,
        trust_domain: &TrustDomain,
        node_id: u64,
        public_key: PublicKey,
    ) -> Result<Vec<u8>, ClusterSetupError> {
        let issuer =
            Issuer::new(&self.cert_der, &self.key).map_err(|e| ClusterSetupError::Certificate(e.to_string()))?;
        let template = SvidTemplate {
            spiffe_id: replica_id(trust_domain, node_id)?,
            public_key,
            ttl: REPLICA_TTL,
            dns_names: vec![],
            subject: Subject { country: None, organization: Some("Testudo".into()), common_name: None },
            serial: None,
        };
        mint_x509_svid(&template, &issuer, OffsetDateTime::now_utc())
            .map(|m| m.der)
            .map_err(|e| ClusterSetupError::Certificate(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use identity::crypto::{KeyType, LocalKey, Signer};

    use super::*;

    #[test]
    fn a_replica_certificate_is_renewed_for_the_same_key_past_half_its_life() {
        let td = TrustDomain::parse("example.org").unwrap();
        let authority = ClusterAuthority::create(&td).unwrap();
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let cert = authority.issue_replica(&td, 4, key.public_key().clone()).unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(authority.renew_replica_if_due(&td, 4, &cert, now).unwrap(), None, "fresh: kept");
        let later = now + time::Duration::days(200);
        let renewed = authority.renew_replica_if_due(&td, 4, &cert, later).unwrap().expect("past half-life: renewed");
        assert_ne!(renewed, cert);
        let facts = identity::x509::certificate_facts(&renewed).unwrap();
        assert_eq!(&facts.public_key, key.public_key(), "the key stays, so the key file still matches");
        assert_eq!(facts.uri_sans, vec![replica_id(&td, 4).unwrap().to_string()]);

        let next = ClusterAuthority::create(&td).unwrap();
        let moved = next.renew_replica_if_due(&td, 4, &cert, now).unwrap().expect("signed by another CA: replaced");
        assert!(next.signed(&td, &moved, now) && !authority.signed(&td, &moved, now));
    }
}
