//! What the local bundle publishes for the CA journal: pure functions of (bundle, event)
//! and (bundle, now).

use identity::bundle::{Bundle, JwtAuthority};
use identity::crypto::PublicKey;
use identity::x509::certificate_facts;
use time::OffsetDateTime;

use super::journal::{CaJournal, JournalEvent, SlotEvent};

/// Publishes what `event` changes, given the journal as it was before the event: a newly
/// prepared authority is added, a tainted one marked, a revoked one removed. Returns
/// whether the bundle changed (and then bumps its sequence number).
pub fn publish(bundle: &mut Bundle, before: &CaJournal, event: &JournalEvent) -> bool {
    let changed = match event {
        JournalEvent::X509(SlotEvent::Prepared { authority, .. }) => authority
            .trust_anchors
            .iter()
            .fold(false, |changed, anchor| bundle.add_x509_authority(anchor).unwrap_or(false) | changed),
        JournalEvent::Jwt(SlotEvent::Prepared { authority, .. }) => match PublicKey::from_spki_der(&authority.public_key) {
            Ok(public_key) => bundle
                .add_jwt_authority(JwtAuthority {
                    key_id: authority.kid.clone(),
                    public_key,
                    expires_at: Some(authority.not_after.unix_timestamp()),
                    tainted: false,
                })
                .unwrap_or(false),
            Err(_) => false,
        },
        // Only a self-signed CA's own certificate is ours to taint or remove; upstream roots
        // are shared with the CAs that come after it.
        JournalEvent::X509(SlotEvent::Tainted { slot }) => before
            .x509
            .get(*slot)
            .is_some_and(|s| is_self_signed(&s.authority) && bundle.taint_x509_authority(&s.authority.certificate)),
        JournalEvent::X509(SlotEvent::Revoked { slot }) => before
            .x509
            .get(*slot)
            .is_some_and(|s| is_self_signed(&s.authority) && bundle.remove_x509_authority(&s.authority.certificate)),
        JournalEvent::Jwt(SlotEvent::Tainted { slot }) => before.jwt.get(*slot).is_some_and(|s| bundle.taint_jwt_authority(&s.authority.kid)),
        JournalEvent::Jwt(SlotEvent::Revoked { slot }) => before.jwt.get(*slot).is_some_and(|s| bundle.remove_jwt_authority(&s.authority.kid)),
        JournalEvent::X509(SlotEvent::Activated { .. }) | JournalEvent::Jwt(SlotEvent::Activated { .. }) => false,
    };
    if changed {
        bundle.sequence_number += 1;
    }
    changed
}

fn is_self_signed(authority: &super::slot::X509CaAuthority) -> bool {
    authority.trust_anchors.len() == 1 && authority.trust_anchors[0] == authority.certificate
}

/// Removes authorities that have expired: nothing they signed is still valid. Returns
/// whether the bundle changed (and then bumps its sequence number).
pub fn prune_expired(bundle: &mut Bundle, now: OffsetDateTime) -> bool {
    let expired_x509: Vec<Vec<u8>> = bundle
        .x509_authorities()
        .iter()
        .filter(|a| certificate_facts(&a.der).map(|f| f.not_after < now).unwrap_or(false))
        .map(|a| a.der.clone())
        .collect();
    let expired_jwt: Vec<String> = bundle
        .jwt_authorities()
        .iter()
        .filter(|a| a.expires_at.is_some_and(|e| e < now.unix_timestamp()))
        .map(|a| a.key_id.clone())
        .collect();
    let mut changed = false;
    for der in &expired_x509 {
        changed |= bundle.remove_x509_authority(der);
    }
    for kid in &expired_jwt {
        changed |= bundle.remove_jwt_authority(kid);
    }
    if changed {
        bundle.sequence_number += 1;
    }
    changed
}
