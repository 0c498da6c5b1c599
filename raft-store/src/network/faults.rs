//! Links a test has cut. A cut link fails like an unreachable peer, before anything is sent.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use crate::types::NodeId;

/// Outgoing links this replica must treat as down. Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    blocked: Arc<RwLock<HashSet<NodeId>>>,
    all: Arc<RwLock<bool>>,
}

impl Faults {
    /// Cuts the link to `peer`.
    pub fn block(&self, peer: NodeId) {
        if let Ok(mut b) = self.blocked.write() {
            b.insert(peer);
        }
    }

    /// Cuts every outgoing link (the replica is isolated on its side).
    pub fn block_all(&self) {
        if let Ok(mut a) = self.all.write() {
            *a = true;
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        if let Ok(mut b) = self.blocked.write() {
            b.clear();
        }
        if let Ok(mut a) = self.all.write() {
            *a = false;
        }
    }

    pub fn is_blocked(&self, peer: Option<NodeId>) -> bool {
        if self.all.read().map(|a| *a).unwrap_or(false) {
            return true;
        }
        peer.is_some_and(|p| self.blocked.read().map(|b| b.contains(&p)).unwrap_or(false))
    }
}
