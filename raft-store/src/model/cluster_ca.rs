//! A rotation of the cluster CA, the CA of the certificates replicas present to each other.
//! It is replicated so that every replica walks the same phases and reports reaching each:
//! the next phase is applied only once every member has reached the current one, so no
//! replica ever presents a certificate that a peer does not trust yet.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::KeyMaterial;
use crate::types::NodeId;

/// Where a rotation stands. Each replica trusts and presents:
///
/// | phase | trusts | presents (and issues from) |
/// | --- | --- | --- |
/// | `Prepared` | old and new CA | old CA |
/// | `Active` | old and new CA | new CA |
/// | `Retired` | new CA | new CA |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCaPhase {
    Prepared,
    Active,
    Retired,
}

impl ClusterCaPhase {
    /// The phase after this one, if any.
    pub fn next(self) -> Option<Self> {
        match self {
            Self::Prepared => Some(Self::Active),
            Self::Active => Some(Self::Retired),
            Self::Retired => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }
}

/// The latest rotation of the cluster CA. Generation 0 is the CA `cluster init` made;
/// rotation `n` replaces generation `n - 1` with generation `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCaRotation {
    pub generation: u64,
    /// The new CA's certificate (DER).
    pub cert_der: Vec<u8>,
    /// The new CA's key, carried until the rotation retires the old CA: by then every
    /// member has written it to its data dir, so it leaves the replicated state.
    pub key: Option<KeyMaterial>,
    /// The CA being replaced (DER), trusted until `Retired`.
    pub previous_cert_der: Vec<u8>,
    pub phase: ClusterCaPhase,
    /// Members that reached `phase` (trust, present or dropped what it asks).
    pub reached: BTreeSet<NodeId>,
}
