//! What the agent serves workloads: its authorized entries, an X.509-SVID per entry, and
//! the bundles. One immutable snapshot at a time, published on a watch channel: the sync
//! loop replaces it, and every Workload API stream wakes on a new one and sends the
//! caller's full current state.

use std::collections::BTreeMap;
use std::sync::Arc;

use identity::bundle::Bundle;
use identity::{entry_matches, SelectorSet};
use identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::watch;
use zeroize::Zeroizing;

/// A registration entry as the agent needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub selectors: SelectorSet,
    /// Seconds; 0: the server's default.
    pub x509_svid_ttl: i32,
    pub jwt_svid_ttl: i32,
    pub federates_with: Vec<TrustDomain>,
    pub hint: String,
    pub revision_number: i64,
}

impl Entry {
    /// SPIRE's rule: an entry applies to a workload that has every one of its selectors.
    pub fn matches(&self, workload: &SelectorSet) -> bool {
        entry_matches(&self.selectors, workload)
    }
}

/// An X.509-SVID the agent holds for an entry, with its private key.
#[derive(Clone)]
pub struct WorkloadSvid {
    pub spiffe_id: SpiffeId,
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// When to replace it: half its life, ±10%.
    pub renew_at: OffsetDateTime,
    /// The entry revision it was minted for.
    pub entry_revision: i64,
}

/// One consistent view of everything workloads can get.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// Our trust domain's bundle; `None` until the agent has one.
    pub bundle: Option<Bundle>,
    pub federated: BTreeMap<TrustDomain, Bundle>,
    pub entries: BTreeMap<String, Entry>,
    /// By entry id.
    pub svids: BTreeMap<String, WorkloadSvid>,
}

impl Snapshot {
    /// The entries that apply to a workload with these selectors, in id order.
    pub fn entries_for<'a>(&'a self, selectors: &'a SelectorSet) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.values().filter(move |e| e.matches(selectors))
    }

    /// The bundles a workload with these selectors may see: ours, and those of the trust
    /// domains its entries federate with. Empty until the agent has a bundle.
    pub fn bundles_for(&self, selectors: &SelectorSet) -> Vec<Bundle> {
        let Some(bundle) = &self.bundle else { return vec![] };
        let mut bundles = vec![bundle.clone()];
        let entries: Vec<&Entry> = self.entries_for(selectors).collect();
        for (td, b) in &self.federated {
            if entries.iter().any(|e| e.federates_with.contains(td)) {
                bundles.push(b.clone());
            }
        }
        bundles
    }
}

/// The published snapshot.
#[derive(Clone)]
pub struct Cache {
    sender: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self { sender: Arc::new(watch::channel(Arc::new(Snapshot::default())).0) }
    }
}

impl Cache {
    pub fn current(&self) -> Arc<Snapshot> {
        self.sender.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.sender.subscribe()
    }

    /// Replaces the snapshot with `change` applied to a copy of the current one; wakes every
    /// subscriber if anything changed.
    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.sender.send_modify(|current| {
            let mut next = (**current).clone();
            change(&mut next);
            *current = Arc::new(next);
        });
    }
}
