//! The CA journal: both authority kinds' slots, changed only by applying events. Applying
//! is a pure function of (journal, event), so every replica that applies the same events
//! in the same order holds the same journal; key generation and signing happen before an
//! event exists.

use serde::{Deserialize, Serialize};

use super::slot::{JwtKeyAuthority, Slot, SlotId, SlotPair, SlotStatus, X509CaAuthority};

/// A change to one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotEvent<T> {
    /// A new authority is published in `slot`, not yet signing.
    Prepared { slot: SlotId, authority: T },
    /// The prepared authority in `slot` starts signing; the active one becomes old.
    Activated { slot: SlotId },
    /// The old authority in `slot` is suspected compromised: what it signed must be replaced.
    Tainted { slot: SlotId },
    /// The tainted authority in `slot` is removed from the bundle.
    Revoked { slot: SlotId },
}

/// A change to the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalEvent {
    X509(SlotEvent<X509CaAuthority>),
    Jwt(SlotEvent<JwtKeyAuthority>),
}

impl JournalEvent {
    /// The key id a `Prepared` event records when a key manager holds the key (the journal
    /// carries no key material for it); such ids must be reserved (`KeyIntents`).
    pub fn prepared_managed_key(&self) -> Option<&str> {
        match self {
            Self::X509(SlotEvent::Prepared { authority, .. }) if authority.private_key.is_none() => {
                Some(&authority.key_id)
            }
            Self::Jwt(SlotEvent::Prepared { authority, .. }) if authority.private_key.is_none() => {
                Some(&authority.key_id)
            }
            _ => None,
        }
    }
}

/// Why an event cannot be applied to the journal as it stands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("slot {0} holds the active authority and cannot be prepared over")]
    SlotActive(SlotId),
    #[error("slot {0} is empty")]
    SlotEmpty(SlotId),
    #[error("slot {slot} is {status:?}; only a prepared authority can be activated")]
    NotPrepared { slot: SlotId, status: SlotStatus },
    #[error("slot {slot} is {status:?}; only an old authority can be tainted")]
    NotOld { slot: SlotId, status: SlotStatus },
    #[error("slot {0} is already tainted")]
    AlreadyTainted(SlotId),
    #[error("slot {0} is not tainted; only a tainted authority can be revoked")]
    NotTainted(SlotId),
}

/// The X.509 CA and JWT key slots, and a counter that makes key ids unique.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaJournal {
    pub x509: SlotPair<X509CaAuthority>,
    pub jwt: SlotPair<JwtKeyAuthority>,
    /// How many authorities have ever been prepared; names the next key.
    pub prepared_count: u64,
}

impl CaJournal {
    /// Applies an event, or refuses it and leaves the journal unchanged.
    pub fn apply(&mut self, event: &JournalEvent) -> Result<(), JournalError> {
        match event {
            JournalEvent::X509(e) => self.x509.apply(e)?,
            JournalEvent::Jwt(e) => self.jwt.apply(e)?,
        }
        if matches!(
            event,
            JournalEvent::X509(SlotEvent::Prepared { .. }) | JournalEvent::Jwt(SlotEvent::Prepared { .. })
        ) {
            self.prepared_count += 1;
        }
        Ok(())
    }
}

impl<T: Clone> SlotPair<T> {
    /// Applies one slot event, or refuses it (SPIRE's LocalAuthority rules) and changes nothing.
    pub fn apply(&mut self, event: &SlotEvent<T>) -> Result<(), JournalError> {
        apply_slot_event(self, event)
    }
}

fn apply_slot_event<T: Clone>(pair: &mut SlotPair<T>, event: &SlotEvent<T>) -> Result<(), JournalError> {
    match event {
        SlotEvent::Prepared { slot, authority } => {
            if pair.get(*slot).is_some_and(|s| s.status == SlotStatus::Active) {
                return Err(JournalError::SlotActive(*slot));
            }
            pair.set(
                *slot,
                Some(Slot { id: *slot, status: SlotStatus::Prepared, tainted: false, authority: authority.clone() }),
            );
        }
        SlotEvent::Activated { slot } => {
            let target = pair.get(*slot).ok_or(JournalError::SlotEmpty(*slot))?;
            if target.status != SlotStatus::Prepared {
                return Err(JournalError::NotPrepared { slot: *slot, status: target.status });
            }
            if let Some(other) = pair.get_mut(slot.other()) {
                if other.status == SlotStatus::Active {
                    other.status = SlotStatus::Old;
                }
            }
            if let Some(target) = pair.get_mut(*slot) {
                target.status = SlotStatus::Active;
            }
        }
        SlotEvent::Tainted { slot } => {
            let target = pair.get_mut(*slot).ok_or(JournalError::SlotEmpty(*slot))?;
            if target.status != SlotStatus::Old {
                return Err(JournalError::NotOld { slot: *slot, status: target.status });
            }
            if target.tainted {
                return Err(JournalError::AlreadyTainted(*slot));
            }
            target.tainted = true;
        }
        SlotEvent::Revoked { slot } => {
            let target = pair.get(*slot).ok_or(JournalError::SlotEmpty(*slot))?;
            if !target.tainted {
                return Err(JournalError::NotTainted(*slot));
            }
            pair.set(*slot, None);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;

    fn key(n: i64) -> JwtKeyAuthority {
        JwtKeyAuthority {
            key_id: format!("k{n}"),
            kid: format!("kid{n}"),
            public_key: vec![],
            not_before: OffsetDateTime::from_unix_timestamp(n).unwrap(),
            not_after: OffsetDateTime::from_unix_timestamp(n + 100).unwrap(),
            private_key: None,
        }
    }

    fn jwt(e: SlotEvent<JwtKeyAuthority>) -> JournalEvent {
        JournalEvent::Jwt(e)
    }

    #[test]
    fn prepare_activate_taint_revoke() {
        let mut j = CaJournal::default();
        j.apply(&jwt(SlotEvent::Prepared { slot: SlotId::A, authority: key(1) })).unwrap();
        assert_eq!(j.jwt.prepared().unwrap().id, SlotId::A);
        j.apply(&jwt(SlotEvent::Activated { slot: SlotId::A })).unwrap();
        assert_eq!(j.jwt.active().unwrap().authority, key(1));
        j.apply(&jwt(SlotEvent::Prepared { slot: SlotId::B, authority: key(2) })).unwrap();
        j.apply(&jwt(SlotEvent::Activated { slot: SlotId::B })).unwrap();
        assert_eq!(j.jwt.get(SlotId::A).unwrap().status, SlotStatus::Old);
        assert_eq!(j.jwt.active().unwrap().id, SlotId::B);
        j.apply(&jwt(SlotEvent::Tainted { slot: SlotId::A })).unwrap();
        assert!(j.jwt.get(SlotId::A).unwrap().tainted);
        j.apply(&jwt(SlotEvent::Revoked { slot: SlotId::A })).unwrap();
        assert!(j.jwt.get(SlotId::A).is_none());
        assert_eq!(j.prepared_count, 2);
    }

    #[test]
    fn refuses_transitions_spire_forbids_and_changes_nothing() {
        let mut j = CaJournal::default();
        assert_eq!(j.apply(&jwt(SlotEvent::Activated { slot: SlotId::A })), Err(JournalError::SlotEmpty(SlotId::A)));
        j.apply(&jwt(SlotEvent::Prepared { slot: SlotId::A, authority: key(1) })).unwrap();
        assert!(matches!(j.apply(&jwt(SlotEvent::Tainted { slot: SlotId::A })), Err(JournalError::NotOld { .. })));
        j.apply(&jwt(SlotEvent::Activated { slot: SlotId::A })).unwrap();
        let before = j.clone();
        assert_eq!(
            j.apply(&jwt(SlotEvent::Prepared { slot: SlotId::A, authority: key(2) })),
            Err(JournalError::SlotActive(SlotId::A))
        );
        assert!(matches!(
            j.apply(&jwt(SlotEvent::Activated { slot: SlotId::A })),
            Err(JournalError::NotPrepared { .. })
        ));
        assert!(
            matches!(j.apply(&jwt(SlotEvent::Tainted { slot: SlotId::A })), Err(JournalError::NotOld { .. })),
            "the active authority cannot be tainted"
        );
        assert_eq!(j.apply(&jwt(SlotEvent::Revoked { slot: SlotId::A })), Err(JournalError::NotTainted(SlotId::A)));
        assert_eq!(j, before);
    }

    #[test]
    fn serde_round_trip() {
        let mut j = CaJournal::default();
        j.apply(&jwt(SlotEvent::Prepared { slot: SlotId::B, authority: key(5) })).unwrap();
        let json = serde_json::to_string(&j).unwrap();
        assert_eq!(serde_json::from_str::<CaJournal>(&json).unwrap(), j);
    }
}
