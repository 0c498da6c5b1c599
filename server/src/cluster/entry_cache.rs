//! The registration entries agents may mint for, answered from memory. The cache follows
//! the Raft change log: before answering, it reads the entries changed since the revision
//! it reflects, so a call costs in proportion to the caller's own entries and to what
//! changed. It reloads everything only when the change log no longer reaches back that far
//! (pruned) — never on a timer. One cache belongs to one replica (see `runtime::Member`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use identity::SpiffeId;
use raft_store::model::{AttestedAgent, RegistrationEntry};
use raft_store::node::Replica;
use raft_store::{EntryChanges, ReadError};

/// How many entries an agent's authorization may span (a bound on a runaway walk).
const MAX_AUTHORIZED: usize = 100_000;
/// Change-log revisions read per step of a catch-up.
const REVISIONS_PER_READ: usize = 10_000;

/// Every registration entry of this replica's state, indexed by parent.
#[derive(Default)]
pub struct EntryCache {
    state: RwLock<State>,
    /// One catch-up at a time; callers that waited for it find the cache current.
    updating: tokio::sync::Mutex<()>,
    reloads: std::sync::atomic::AtomicU64,
}

/// Why the cache could not answer.
#[derive(Debug, thiserror::Error)]
pub enum EntryCacheError {
    #[error("reading registration entries: {0}")]
    Read(#[from] ReadError),
    #[error("the agent is authorized for more than {0} entries")]
    TooMany(usize),
}

#[derive(Default)]
struct State {
    loaded: bool,
    revision: u64,
    entries: HashMap<String, Arc<RegistrationEntry>>,
    /// Parent SPIFFE ID → ids of the entries parented to it.
    by_parent: HashMap<String, BTreeSet<String>>,
}

impl State {
    fn remove(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            let parent = old.parent_id.to_string();
            if let Some(children) = self.by_parent.get_mut(&parent) {
                children.remove(id);
                if children.is_empty() {
                    self.by_parent.remove(&parent);
                }
            }
        }
    }

    fn insert(&mut self, entry: RegistrationEntry) {
        self.remove(&entry.id);
        self.by_parent.entry(entry.parent_id.to_string()).or_default().insert(entry.id.clone());
        self.entries.insert(entry.id.clone(), Arc::new(entry));
    }

    fn apply(&mut self, delta: EntryChanges) {
        for (id, entry) in delta.changed {
            match entry {
                Some(entry) => self.insert(entry),
                None => self.remove(&id),
            }
        }
        self.revision = delta.revision;
    }

    fn children<'a>(&'a self, parent: &str) -> impl Iterator<Item = &'a Arc<RegistrationEntry>> + 'a {
        self.by_parent.get(parent).into_iter().flatten().filter_map(|id| self.entries.get(id))
    }
}

impl EntryCache {
    /// How many times the cache loaded every entry (the first load included).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The revision the cache reflects.
    pub fn revision(&self) -> u64 {
        self.state.read().map(|s| s.revision).unwrap_or_default()
    }

    /// Every entry `agent` may mint for: those parented to it, to a node alias it holds
    /// (an entry parented to the server whose selectors the agent has), and their
    /// descendants, keyed by entry id. Reflects at least every write this replica had
    /// applied when the call began.
    pub async fn authorized(
        &self,
        replica: &Replica,
        agent: &AttestedAgent,
        server_id: &SpiffeId,
    ) -> Result<BTreeMap<String, Arc<RegistrationEntry>>, EntryCacheError> {
        self.catch_up(replica).await?;
        let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut parents: VecDeque<String> = VecDeque::from([agent.spiffe_id.to_string()]);
        let agent_selectors: BTreeSet<_> = agent.selectors.iter().collect();
        for alias in state.children(&server_id.to_string()) {
            if !alias.selectors.is_empty() && alias.selectors.iter().all(|s| agent_selectors.contains(s)) {
                parents.push_back(alias.spiffe_id.to_string());
            }
        }
        let mut seen: BTreeSet<String> = parents.iter().cloned().collect();
        let mut authorized = BTreeMap::new();
        while let Some(parent) = parents.pop_front() {
            for entry in state.children(&parent) {
                let child = entry.spiffe_id.to_string();
                if seen.insert(child.clone()) {
                    parents.push_back(child);
                }
                authorized.insert(entry.id.clone(), entry.clone());
                if authorized.len() > MAX_AUTHORIZED {
                    return Err(EntryCacheError::TooMany(MAX_AUTHORIZED));
                }
            }
        }
        Ok(authorized)
    }

    /// Brings the cache up to the revision `replica` has applied now.
    async fn catch_up(&self, replica: &Replica) -> Result<(), EntryCacheError> {
        let reader = replica.local_reader();
        let applied = reader.revision().await?;
        let current = |state: &RwLock<State>| state.read().map(|s| s.loaded && s.revision >= applied).unwrap_or(false);
        if current(&self.state) {
            return Ok(());
        }
        let _one_at_a_time = self.updating.lock().await;
        loop {
            if current(&self.state) {
                return Ok(());
            }
            let (loaded, revision) = {
                let state = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                (state.loaded, state.revision)
            };
            let delta = if loaded { reader.entry_changes_since(revision, REVISIONS_PER_READ).await? } else { None };
            let update = match delta {
                Some(delta) => Ok(delta),
                None => Err(reader.entries_at_revision().await?),
            };
            let mut state = self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            match update {
                Ok(delta) => {
                    metrics::counter!("testudo_entry_cache_changes_total").increment(delta.changed.len() as u64);
                    state.apply(delta);
                }
                Err((revision, entries)) => {
                    tracing::info!(revision, entries = entries.len(), "entry cache reloaded");
                    metrics::counter!("testudo_entry_cache_reloads_total").increment(1);
                    self.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *state = State { loaded: true, revision, ..State::default() };
                    for entry in entries {
                        state.insert(entry);
                    }
                }
            }
            metrics::gauge!("testudo_entry_cache_entries").set(state.entries.len() as f64);
        }
    }
}
