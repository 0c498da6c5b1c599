//! One-time invitations for new server replicas to join the cluster.

use serde::{Deserialize, Serialize};

/// An invitation, stored by the SHA-256 of its secret (hex) so the state never holds a
/// usable secret. Consumed exactly once, by the join it admits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInvite {
    pub secret_sha256: String,
    /// Unix seconds after which the invitation is refused.
    pub expires_at: i64,
}
