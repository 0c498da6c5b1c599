//! When a follower last heard from a leader: the AppendEntries (or snapshot) calls it
//! accepted. A follower that has heard nothing for longer than a failover takes is cut off
//! from the leader, or no leader was elected; it answers writes and linearizable reads at
//! once with the reason instead of keeping callers waiting for a leader it cannot reach.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared between the cluster RPC service, which records contact, and the replica, which
/// reads it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaderContact {
    origin: Instant,
    /// Milliseconds after `origin` of the last contact; starts at 0, as if heard at start.
    last: Arc<AtomicU64>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self { origin: Instant::now(), last: Arc::default() }
    }
}

impl LeaderContact {
    /// A leader's call was accepted now.
    pub fn heard(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// How long since the last contact (or since start, before any).
    pub fn silent_for(&self) -> Duration {
        self.origin.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}
