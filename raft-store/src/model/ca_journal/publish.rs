//! What each journal event publishes in the local bundle.

use super::journal::{CaJournal, JournalEvent, SlotEvent};
use super::slot::X509CaAuthority;
use crate::model::{StoredBundle, StoredJwtKey, StoredX509Authority};

/// Publishes what `event` changes, given the journal as it was before the event: a newly
/// prepared authority is added, a tainted one marked, a revoked one removed. Returns
/// whether the bundle changed (and then bumps its sequence number).
pub fn publish(bundle: &mut StoredBundle, before: &CaJournal, event: &JournalEvent) -> bool {
    let changed = match event {
        JournalEvent::X509(SlotEvent::Prepared { authority, .. }) => {
            let anchors: Vec<StoredX509Authority> = authority
                .trust_anchors
                .iter()
                .map(|der| StoredX509Authority { der: der.clone(), tainted: false })
                .collect();
            bundle.append(&anchors, &[])
        }
        JournalEvent::Jwt(SlotEvent::Prepared { authority, .. }) => {
            let key = StoredJwtKey {
                key_id: authority.kid.clone(),
                public_key: authority.public_key.clone(),
                expires_at: authority.not_after.unix_timestamp(),
                tainted: false,
            };
            bundle.append(&[], &[key])
        }
        // Only a self-signed CA's own certificate is ours to taint or remove; upstream roots
        // are shared with the CAs that come after it.
        JournalEvent::X509(SlotEvent::Tainted { slot }) => {
            before.x509.get(*slot).filter(|s| is_self_signed(&s.authority)).is_some_and(|s| {
                set_tainted(
                    bundle
                        .x509_authorities
                        .iter_mut()
                        .filter(|a| a.der == s.authority.certificate)
                        .map(|a| &mut a.tainted),
                )
            })
        }
        JournalEvent::X509(SlotEvent::Revoked { slot }) => {
            before.x509.get(*slot).filter(|s| is_self_signed(&s.authority)).is_some_and(|s| {
                let n = bundle.x509_authorities.len();
                bundle.x509_authorities.retain(|a| a.der != s.authority.certificate);
                n != bundle.x509_authorities.len()
            })
        }
        JournalEvent::Jwt(SlotEvent::Tainted { slot }) => before.jwt.get(*slot).is_some_and(|s| {
            set_tainted(
                bundle.jwt_authorities.iter_mut().filter(|k| k.key_id == s.authority.kid).map(|k| &mut k.tainted),
            )
        }),
        JournalEvent::Jwt(SlotEvent::Revoked { slot }) => before.jwt.get(*slot).is_some_and(|s| {
            let n = bundle.jwt_authorities.len();
            bundle.jwt_authorities.retain(|k| k.key_id != s.authority.kid);
            n != bundle.jwt_authorities.len()
        }),
        JournalEvent::X509(SlotEvent::Activated { .. }) | JournalEvent::Jwt(SlotEvent::Activated { .. }) => false,
    };
    if changed {
        bundle.sequence_number += 1;
    }
    changed
}

fn set_tainted<'a>(flags: impl Iterator<Item = &'a mut bool>) -> bool {
    let mut changed = false;
    for flag in flags {
        changed |= !*flag;
        *flag = true;
    }
    changed
}

fn is_self_signed(authority: &X509CaAuthority) -> bool {
    authority.trust_anchors.len() == 1 && authority.trust_anchors[0] == authority.certificate
}
