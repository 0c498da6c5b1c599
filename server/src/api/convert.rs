//! Between Testudo's types and SPIRE's API messages.

use identity::SpiffeId;
use proto::spire::api::types as pb;
use raft_store::model::StoredBundle;
use tonic::Status;

pub fn spiffe_id_to_pb(id: &SpiffeId) -> pb::Spiffeid {
    pb::Spiffeid { trust_domain: id.trust_domain().name().to_owned(), path: id.path().to_owned() }
}

/// A SPIFFE ID from the API, checked; `field` names it in the error.
pub fn spiffe_id_from_pb(id: Option<&pb::Spiffeid>, field: &str) -> Result<SpiffeId, Status> {
    let id = id.ok_or_else(|| Status::invalid_argument(format!("{field}: required")))?;
    if id.trust_domain.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: trust domain is missing")));
    }
    SpiffeId::parse(&format!("spiffe://{}{}", id.trust_domain, id.path))
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A stored bundle as the API shows it, with only the fields `mask` asks for.
pub fn bundle_to_pb(bundle: &StoredBundle, mask: Option<&pb::BundleMask>) -> pb::Bundle {
    let all =
        pb::BundleMask { x509_authorities: true, jwt_authorities: true, refresh_hint: true, sequence_number: true };
    let mask = mask.unwrap_or(&all);
    pb::Bundle {
        trust_domain: bundle.trust_domain.name().to_owned(),
        x509_authorities: if mask.x509_authorities {
            bundle
                .x509_authorities
                .iter()
                .map(|a| pb::X509Certificate { asn1: a.der.clone(), tainted: a.tainted })
                .collect()
        } else {
            vec![]
        },
        jwt_authorities: if mask.jwt_authorities {
            bundle
                .jwt_authorities
                .iter()
                .map(|k| pb::JwtKey {
                    public_key: k.public_key.clone(),
                    key_id: k.key_id.clone(),
                    expires_at: k.expires_at,
                    tainted: k.tainted,
                })
                .collect()
        } else {
            vec![]
        },
        refresh_hint: if mask.refresh_hint { bundle.refresh_hint } else { 0 },
        sequence_number: if mask.sequence_number { bundle.sequence_number } else { 0 },
    }
}

/// A bundle from the API, checked (trust domain, certificates, JWT keys) and ready to store.
pub fn bundle_from_pb(bundle: &pb::Bundle, field: &str) -> Result<StoredBundle, Status> {
    let td = identity::TrustDomain::parse(bundle.trust_domain.trim_start_matches("spiffe://"))
        .map_err(|e| Status::invalid_argument(format!("{field}.trust_domain: {e}")))?;
    let mut checked = identity::bundle::Bundle::new(td);
    for (i, authority) in bundle.x509_authorities.iter().enumerate() {
        checked
            .add_x509_authority(&authority.asn1)
            .map_err(|e| Status::invalid_argument(format!("{field}.x509_authorities[{i}]: {e}")))?;
    }
    for (i, key) in bundle.jwt_authorities.iter().enumerate() {
        jwt_key_checked(key, &format!("{field}.jwt_authorities[{i}]"))?;
    }
    if bundle.refresh_hint < 0 {
        return Err(Status::invalid_argument(format!("{field}.refresh_hint: must not be negative")));
    }
    let mut stored = StoredBundle::from_bundle(&checked);
    stored.jwt_authorities = bundle.jwt_authorities.iter().map(jwt_key_to_stored).collect();
    stored.refresh_hint = bundle.refresh_hint;
    Ok(stored)
}

/// A JWT key from the API: a key id and a public key that parses.
pub fn jwt_key_checked(key: &pb::JwtKey, field: &str) -> Result<(), Status> {
    if key.key_id.is_empty() {
        return Err(Status::invalid_argument(format!("{field}.key_id: required")));
    }
    identity::crypto::PublicKey::from_spki_der(&key.public_key)
        .map_err(|e| Status::invalid_argument(format!("{field}.public_key: {e}")))?;
    Ok(())
}

pub fn jwt_key_to_stored(key: &pb::JwtKey) -> raft_store::model::StoredJwtKey {
    raft_store::model::StoredJwtKey {
        key_id: key.key_id.clone(),
        public_key: key.public_key.clone(),
        expires_at: key.expires_at,
        tainted: key.tainted,
    }
}
