//! What apply announces. After each batch of log entries it applied, the state machine
//! publishes the change set of every revision that changed something (or, after installing
//! a snapshot, that the whole state was replaced) and the revision it reached. In-memory
//! views of the state follow these announcements instead of polling storage.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::command::ChangeSet;

/// Announcements a slow follower may fall behind by before it is told it lagged (and must
/// reload what it follows).
const BACKLOG: usize = 4096;

/// One announcement.
#[derive(Clone, Debug)]
pub enum Applied {
    /// Commands were applied; `sets` holds the change set of each revision that changed a
    /// row, oldest first, and `revision` is the revision reached.
    Changes { revision: u64, sets: Arc<[ChangeSet]> },
    /// The state was replaced wholesale (a snapshot from the leader): reload everything.
    Replaced { revision: u64 },
}

impl Applied {
    /// The revision the state had reached when this was announced.
    pub fn revision(&self) -> u64 {
        match self {
            Self::Changes { revision, .. } | Self::Replaced { revision } => *revision,
        }
    }
}

/// Where apply announces; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppliedFeed {
    changes: broadcast::Sender<Applied>,
    revision: Arc<watch::Sender<u64>>,
}

impl AppliedFeed {
    /// A feed whose state stands at `revision`.
    pub fn new(revision: u64) -> Self {
        let (changes, _) = broadcast::channel(BACKLOG);
        Self { changes, revision: Arc::new(watch::channel(revision).0) }
    }

    /// Announcements from now on. Subscribe before reading the state a view starts from,
    /// so nothing applied in between is missed (announcements at or below the revision
    /// read are then skipped).
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.changes.subscribe()
    }

    /// The revision apply has reached, updated before each announcement is sent.
    pub fn revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The revision apply has reached now.
    pub fn current_revision(&self) -> u64 {
        *self.revision.borrow()
    }

    pub(crate) fn publish(&self, applied: Applied) {
        self.revision.send_replace(applied.revision());
        // No subscriber is not an error: views start and stop with the server.
        let _ = self.changes.send(applied);
    }
}
