//! Key ids reserved for keys about to be made in a key manager (KMS, an HSM). The id is
//! recorded through Raft before the key exists, so a replica that dies between creating a
//! key and recording its authority leaves a trace: a sweep finds the key by its tags, sees
//! its id was never recorded, releases the id and deletes the key. A released id can no
//! longer be recorded, so a slow creator cannot adopt a key the sweep is deleting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::slot::SlotId;

/// How many reserved ids may wait at once. Each creation attempt reserves one and a failed
/// one releases it, so only crashes leave ids behind; the bound stops a creator stuck in a
/// loop from growing the state without end.
pub const MAX_PENDING_KEYS: usize = 64;

/// Which authority a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaKeyKind {
    X509,
    Jwt,
}

impl CaKeyKind {
    /// The start of its key ids, as SPIRE names its CA keys.
    pub fn key_id_prefix(self) -> &'static str {
        match self {
            Self::X509 => "x509-CA",
            Self::Jwt => "JWT-Signer",
        }
    }

    /// Its name in key tags and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }
}

/// The reserved ids not yet recorded in the journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyIntents {
    /// The serial in the last id handed out; no id is handed out twice.
    pub last_serial: u64,
    /// Reserved ids, with when each was reserved (unix seconds, the proposer's clock).
    pub pending: BTreeMap<String, i64>,
}

impl KeyIntents {
    /// Reserves a new id for `slot`, numbered after every id handed out and every authority
    /// the journal ever prepared (ids from before reservations existed count too).
    pub fn reserve(&mut self, kind: CaKeyKind, slot: SlotId, prepared_count: u64, now: i64) -> Option<String> {
        if self.pending.len() >= MAX_PENDING_KEYS {
            return None;
        }
        self.last_serial = self.last_serial.max(prepared_count) + 1;
        let id = format!("{}-{slot}-{}", kind.key_id_prefix(), self.last_serial);
        self.pending.insert(id.clone(), now);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_handed_out_twice() {
        let mut intents = KeyIntents::default();
        assert_eq!(intents.reserve(CaKeyKind::X509, SlotId::A, 0, 1).as_deref(), Some("x509-CA-A-1"));
        // Ids the journal named before reservations existed are passed over.
        assert_eq!(intents.reserve(CaKeyKind::Jwt, SlotId::B, 7, 2).as_deref(), Some("JWT-Signer-B-8"));
        intents.pending.clear();
        assert_eq!(intents.reserve(CaKeyKind::X509, SlotId::A, 3, 3).as_deref(), Some("x509-CA-A-9"));
    }

    #[test]
    fn pending_ids_are_bounded() {
        let mut intents = KeyIntents::default();
        for n in 0..MAX_PENDING_KEYS {
            assert!(intents.reserve(CaKeyKind::X509, SlotId::A, 0, n as i64).is_some());
        }
        assert_eq!(intents.reserve(CaKeyKind::X509, SlotId::A, 0, 0), None);
    }
}
