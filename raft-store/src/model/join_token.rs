//! One-time join tokens for node attestation.

use serde::{Deserialize, Serialize};

/// A join token: consumed exactly once, by the command that attests with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// The SPIFFE ID the agent gets, if the creator chose one.
    pub agent_id: Option<String>,
}
