//! How a nested cluster's calls to its upstream cluster are going, as its leader last
//! recorded: any replica can show it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// Unix seconds of a recent call that succeeded (0: none recorded). Recorded when calls
    /// recover and at most hourly after that, so it is a lower bound.
    pub last_success: i64,
    /// Unix seconds of the last failure recorded, and why it failed (empty: none yet).
    pub last_error_at: i64,
    pub last_error: String,
}

impl UpstreamStatus {
    /// Whether the last call recorded failed.
    pub fn failing(&self) -> bool {
        self.last_error_at > self.last_success
    }
}
