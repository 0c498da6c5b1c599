//! Faults a test injects: links it has cut (a cut link fails like an unreachable peer,
//! before anything is sent), and a forwarded write whose answer never leaves the leader.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::oneshot;

use crate::types::NodeId;

/// Outgoing links this replica must treat as down. Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    blocked: Arc<RwLock<HashSet<NodeId>>>,
    all: Arc<RwLock<bool>>,
    held_answer: Arc<Mutex<Option<HeldAnswer>>>,
}

/// A forwarded write's answer a test holds back.
#[derive(Debug)]
pub(crate) struct HeldAnswer {
    pub applied: oneshot::Sender<()>,
    pub released: oneshot::Receiver<()>,
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

    /// The next write another replica forwards to this one is committed and applied, and
    /// then not answered, as when a leader dies between commit and answer. The first
    /// receiver hears once it is applied here; the forwarding replica gets an error instead
    /// of the answer once the returned sender is used or dropped.
    pub fn hold_next_forwarded_answer(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (held, applied) = oneshot::channel();
        let (release, released) = oneshot::channel();
        if let Ok(mut slot) = self.held_answer.lock() {
            *slot = Some(HeldAnswer { applied: held, released });
        }
        (applied, release)
    }

    /// Takes the hold [`Self::hold_next_forwarded_answer`] set, if any.
    pub(crate) fn take_held_answer(&self) -> Option<HeldAnswer> {
        self.held_answer.lock().ok().and_then(|mut slot| slot.take())
    }

    pub fn is_blocked(&self, peer: Option<NodeId>) -> bool {
        if self.all.read().map(|a| *a).unwrap_or(false) {
            return true;
        }
        peer.is_some_and(|p| self.blocked.read().map(|b| b.contains(&p)).unwrap_or(false))
    }
}
