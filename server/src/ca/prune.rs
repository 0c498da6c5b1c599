//! Removing expired authorities from the local bundle.

use identity::x509::certificate_facts;
use raft_store::model::StoredBundle;
use time::OffsetDateTime;

/// The DER of every X.509 authority in `bundle` that has expired at `now`: nothing it
/// signed is still valid. (Certificate parsing stays out of replicated apply.)
pub fn expired_x509(bundle: &StoredBundle, now: OffsetDateTime) -> Vec<Vec<u8>> {
    bundle
        .x509_authorities
        .iter()
        .filter(|a| certificate_facts(&a.der).map(|f| f.not_after < now).unwrap_or(false))
        .map(|a| a.der.clone())
        .collect()
}

/// Removes expired authorities. Returns whether the bundle changed (and then bumps its
/// sequence number).
pub fn prune_expired(bundle: &mut StoredBundle, now: OffsetDateTime) -> bool {
    let expired = expired_x509(bundle, now);
    let changed = bundle.prune(now.unix_timestamp(), &expired);
    if changed {
        bundle.sequence_number += 1;
    }
    changed
}
