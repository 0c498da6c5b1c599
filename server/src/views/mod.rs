//! In-memory views of this replica's applied state: the active signers and local bundle
//! ([`Signing`]), the registration entries agents are authorized from ([`entries`]) and the
//! attested agents ([`agents`]). One follower task per replica keeps them current from what
//! apply announces (`raft_store::Applied`): it loads everything once, then reads only the
//! rows each announcement names, and loads everything again only after a snapshot install
//! or if it fell behind the announcements. Nothing polls storage for changes.

pub mod agents;
pub mod entries;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_store::{Applied, AppliedFeed, ChangedKeys, Rows, StoreReader};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};

use crate::ca::replicated::ClusterCa;
use crate::ca::Signing;
use agents::AgentRecords;
use entries::EntryCache;

/// How long a call waits for the views to reach the revision its replica has applied.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Registration entries changed: at `revision`, under these parent IDs (before and after
/// the change); `None` when everything was loaded again, which may change anything.
#[derive(Clone, Debug)]
pub struct EntriesChanged {
    pub revision: u64,
    pub parents: Option<Arc<BTreeSet<String>>>,
}

/// Entry changes a slow listener may fall behind by before it is told it lagged.
const ENTRY_CHANGES_BACKLOG: usize = 1024;

/// Federated bundles changed at `revision`: these trust domains' (by name); `None` when
/// everything was loaded again, which may change any of them.
#[derive(Clone, Debug)]
pub struct FederatedBundlesChanged {
    pub revision: u64,
    pub trust_domains: Option<Arc<BTreeSet<String>>>,
}

impl FederatedBundlesChanged {
    /// Whether the change may concern any of `trust_domains`.
    pub fn touches(&self, trust_domains: &BTreeSet<String>) -> bool {
        match &self.trust_domains {
            Some(changed) => changed.iter().any(|td| trust_domains.contains(td)),
            None => !trust_domains.is_empty(),
        }
    }
}

/// The views of one replica's state.
pub struct Views {
    ca: ClusterCa,
    entry_changes: broadcast::Sender<EntriesChanged>,
    federated_changes: broadcast::Sender<FederatedBundlesChanged>,
    signing: watch::Sender<Option<Arc<Signing>>>,
    entries: EntryCache,
    agents: AgentRecords,
    revision: watch::Sender<u64>,
    reloads: AtomicU64,
}

/// The views have not reached the revision asked for in time.
#[derive(Debug, thiserror::Error)]
#[error("the in-memory state is at revision {at}, behind revision {wanted} applied here")]
pub struct Behind {
    pub at: u64,
    pub wanted: u64,
}

impl Views {
    /// Empty views (revision 0) for a CA of `ca`'s configuration; `follow` fills them.
    pub fn new(ca: ClusterCa) -> Self {
        Self {
            ca,
            signing: watch::channel(None).0,
            entry_changes: broadcast::channel(ENTRY_CHANGES_BACKLOG).0,
            federated_changes: broadcast::channel(ENTRY_CHANGES_BACKLOG).0,
            entries: EntryCache::default(),
            agents: AgentRecords::default(),
            revision: watch::channel(0).0,
            reloads: AtomicU64::new(0),
        }
    }

    /// The revision the views reflect.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// How many times the views loaded the whole state (the first load included).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Waits until the views reflect at least `revision` (a write this replica applied, or
    /// everything applied here when the call began), up to a bound.
    pub async fn reach(&self, revision: u64) -> Result<&Self, Behind> {
        if self.revision() >= revision {
            return Ok(self);
        }
        let mut reached = self.revision.subscribe();
        let caught_up = tokio::time::timeout(CATCH_UP, async { reached.wait_for(|at| *at >= revision).await.is_ok() });
        match caught_up.await {
            Ok(true) => Ok(self),
            _ => Err(Behind { at: self.revision(), wanted: revision }),
        }
    }

    /// The active authorities, once a CA has been prepared.
    pub fn signing(&self) -> Option<Arc<Signing>> {
        self.signing.borrow().clone()
    }

    /// Changes of the active authorities and local bundle, as they are applied.
    pub fn signing_changes(&self) -> watch::Receiver<Option<Arc<Signing>>> {
        self.signing.subscribe()
    }

    /// Registration entry changes from now on, announced once the views reflect them.
    pub fn entry_changes(&self) -> broadcast::Receiver<EntriesChanged> {
        self.entry_changes.subscribe()
    }

    /// Federated bundle changes from now on, announced once apply made them: one follower
    /// per replica sorts them out of everything applied, so listeners wake only for these.
    pub fn federated_changes(&self) -> broadcast::Receiver<FederatedBundlesChanged> {
        self.federated_changes.subscribe()
    }

    pub fn entries(&self) -> &EntryCache {
        &self.entries
    }

    pub fn agents(&self) -> &AgentRecords {
        &self.agents
    }

    /// Keeps the views current with what `feed` announces, reading rows through `reader`,
    /// until the feed closes (the replica stopped) or the task is aborted.
    pub async fn follow(self: Arc<Self>, reader: StoreReader, feed: AppliedFeed) {
        let mut announced = feed.subscribe();
        let trust_domain = self.ca.config.trust_domain.name().to_owned();
        let mut reload = true;
        loop {
            if reload {
                match reader.all_rows(trust_domain.clone()).await {
                    Ok(rows) => {
                        let revision = rows.revision;
                        self.load(rows);
                        reload = false;
                        let _ = self.federated_changes.send(FederatedBundlesChanged { revision, trust_domains: None });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load the state into memory; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            // Everything announced so far, coalesced into one read.
            let mut keys = ChangedKeys::default();
            let mut federated = BTreeSet::new();
            let mut target = None;
            let mut next = announced.recv().await;
            loop {
                match next {
                    Ok(Applied::Changes { revision, sets }) => {
                        keys.add(&sets);
                        federated.extend(
                            sets.iter()
                                .flat_map(|set| &set.changes)
                                .filter(|change| change.table == raft_store::Table::FederatedBundle)
                                .map(|change| change.key.clone()),
                        );
                        target = Some(revision);
                    }
                    Ok(Applied::Replaced { .. }) => reload = true,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::info!(missed, "the in-memory state fell behind apply; loading it again");
                        reload = true;
                    }
                    Err(RecvError::Closed) => return,
                }
                next = match announced.try_recv() {
                    Ok(applied) => Ok(applied),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                };
            }
            if reload {
                continue;
            }
            let Some(target) = target.filter(|t| *t > self.revision()) else { continue };
            if !federated.is_empty() {
                let changed = FederatedBundlesChanged { revision: target, trust_domains: Some(Arc::new(federated)) };
                let _ = self.federated_changes.send(changed);
            }
            if keys.is_empty() {
                self.revision.send_replace(target);
                continue;
            }
            match reader.rows(keys, trust_domain.clone()).await {
                // The rows may be newer than `target`; later announcements name the rest of
                // what changed after it, so the views claim `target` only.
                Ok(rows) => self.update(rows, target),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read changed rows; loading the state again");
                    reload = true;
                }
            }
        }
    }

    fn load(&self, rows: Rows) {
        self.entries.replace(rows.entries.into_iter().filter_map(|(_, e)| e));
        self.agents.replace(rows.agents.into_iter().filter_map(|(_, a)| a));
        if let Some((journal, bundle)) = rows.ca {
            self.rebuild_signing(journal, bundle);
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("testudo_views_reloads_total").increment(1);
        tracing::info!(
            revision = rows.revision,
            entries = self.entries.len(),
            agents = self.agents.len(),
            "state loaded into memory"
        );
        self.revision.send_replace(rows.revision);
    }

    fn update(&self, rows: Rows, revision: u64) {
        let entries_changed = !rows.entries.is_empty();
        let parents = self.entries.apply(rows.entries);
        self.agents.apply(rows.agents);
        if let Some((journal, bundle)) = rows.ca {
            self.rebuild_signing(journal, bundle);
        }
        self.revision.send_replace(revision);
        if entries_changed {
            // No listener is not an error: agents come and go.
            let _ = self.entry_changes.send(EntriesChanged { revision, parents: Some(Arc::new(parents)) });
        }
    }

    /// A new `Signing` for a changed journal or bundle, keeping the signers of authorities
    /// that are still active. Nothing is prepared yet in a new cluster: no signing then.
    fn rebuild_signing(&self, journal: raft_store::model::CaJournal, bundle: Option<raft_store::model::StoredBundle>) {
        if journal.x509.active().is_none() && journal.jwt.active().is_none() {
            return;
        }
        let bundle =
            bundle.unwrap_or_else(|| raft_store::model::StoredBundle::new(self.ca.config.trust_domain.clone()));
        if let Some(active) = journal.x509.active() {
            // On every replica: alerts on a CA that nears its expiry (a nested cluster cut off
            // from its upstream) need no leader.
            metrics::gauge!("testudo_ca_x509_active_expiry_seconds")
                .set(active.authority.not_after.unix_timestamp() as f64);
        }
        let previous = self.signing();
        let ca = &self.ca;
        match Signing::build(ca.config.clone(), &ca.keys, ca.clock.clone(), journal, bundle, previous.as_deref()) {
            Ok(signing) => {
                self.signing.send_replace(Some(Arc::new(signing)));
            }
            Err(e) => {
                metrics::counter!("testudo_ca_signer_errors_total").increment(1);
                tracing::error!(error = %e, "cannot build the signers of the active authorities; signing with the \
                    previous ones");
            }
        }
    }
}
