//! Attested agents (nodes).

use identity::{Selector, SpiffeId};
use serde::{Deserialize, Serialize};

/// An agent that passed node attestation, with SPIRE's fields (`spire.api.types.Agent`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedAgent {
    pub spiffe_id: SpiffeId,
    pub attestation_type: String,
    pub selectors: Vec<Selector>,
    /// Serial of the agent SVID in use (hex).
    pub serial_number: String,
    /// Unix seconds when that SVID expires.
    pub expires_at: i64,
    /// Serial of an SVID issued by a renewal but not yet seen in use; empty if none.
    pub new_serial_number: String,
    pub new_expires_at: i64,
    pub banned: bool,
    pub can_reattest: bool,
}
