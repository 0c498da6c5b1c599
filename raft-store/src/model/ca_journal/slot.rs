//! Authorities and the two slots each kind rotates through.

use identity::crypto::PublicKey;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One of the two slots an authority kind rotates through (SPIRE's A and B).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::A => "A",
            Self::B => "B",
        })
    }
}

/// Where an authority is in its life: published but not yet signing, signing, or retired
/// (still published until it expires, so what it signed keeps verifying).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotStatus {
    Prepared,
    Active,
    Old,
}

/// The lifetime of an authority, which rotation decisions are made from.
pub trait Authority {
    fn not_before(&self) -> OffsetDateTime;
    fn not_after(&self) -> OffsetDateTime;
}

/// An X.509 CA: the key (by id in the key manager) and its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509CaAuthority {
    pub key_id: String,
    /// DER CA certificate, self-signed or signed by the upstream authority.
    pub certificate: Vec<u8>,
    /// Certificates between ours and the upstream roots, presented after ours in SVID chains.
    pub upstream_chain: Vec<Vec<u8>>,
    /// The certificates published in the bundle for this CA: ours when self-signed, else the
    /// upstream roots.
    pub trust_anchors: Vec<Vec<u8>>,
    #[serde(with = "time::serde::timestamp")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub not_after: OffsetDateTime,
    /// The private key, when the key manager cannot share it by id (development managers).
    pub private_key: Option<super::KeyMaterial>,
}

impl Authority for X509CaAuthority {
    fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }
    fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// A JWT signing key: the key (by id in the key manager) and the `kid` tokens name it by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtKeyAuthority {
    pub key_id: String,
    pub kid: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    #[serde(with = "time::serde::timestamp")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub not_after: OffsetDateTime,
    /// The private key, when the key manager cannot share it by id (development managers).
    pub private_key: Option<super::KeyMaterial>,
}

impl JwtKeyAuthority {
    pub fn public_key(&self) -> Result<PublicKey, identity::crypto::PublicKeyError> {
        PublicKey::from_spki_der(&self.public_key)
    }
}

impl Authority for JwtKeyAuthority {
    fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }
    fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// An authority in a slot, with its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot<T> {
    pub id: SlotId,
    pub status: SlotStatus,
    pub tainted: bool,
    pub authority: T,
}

/// The two slots of one authority kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPair<T> {
    slots: [Option<Slot<T>>; 2],
}

impl<T> Default for SlotPair<T> {
    fn default() -> Self {
        Self { slots: [None, None] }
    }
}

impl<T> SlotPair<T> {
    pub fn get(&self, id: SlotId) -> Option<&Slot<T>> {
        self.slots[id.index()].as_ref()
    }

    pub(super) fn get_mut(&mut self, id: SlotId) -> Option<&mut Slot<T>> {
        self.slots[id.index()].as_mut()
    }

    pub(super) fn set(&mut self, id: SlotId, slot: Option<Slot<T>>) {
        self.slots[id.index()] = slot;
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot<T>> {
        self.slots.iter().flatten()
    }

    pub fn with_status(&self, status: SlotStatus) -> Option<&Slot<T>> {
        self.iter().find(|s| s.status == status)
    }

    /// The authority that signs now.
    pub fn active(&self) -> Option<&Slot<T>> {
        self.with_status(SlotStatus::Active)
    }

    pub fn prepared(&self) -> Option<&Slot<T>> {
        self.with_status(SlotStatus::Prepared)
    }
}
