//! The registration entries agents may mint for, answered from memory. The views follower
//! loads every entry once and then applies the rows each announced change names, so an
//! authorization costs in proportion to the caller's own entries and no call reads storage.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use identity::SpiffeId;
use raft_store::model::{AttestedAgent, RegistrationEntry};

/// How many entries an agent's authorization may span (a bound on a runaway walk).
const MAX_AUTHORIZED: usize = 100_000;

/// Every registration entry of this replica's state, indexed by parent.
#[derive(Default)]
pub struct EntryCache {
    state: RwLock<State>,
}

/// Entries by id.
pub type EntriesById = BTreeMap<String, Arc<RegistrationEntry>>;

/// The agent is authorized for more entries than one answer may carry.
#[derive(Debug, thiserror::Error)]
#[error("the agent is authorized for more than {MAX_AUTHORIZED} entries")]
pub struct TooManyEntries;

#[derive(Default)]
struct State {
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

    fn children<'a>(&'a self, parent: &str) -> impl Iterator<Item = &'a Arc<RegistrationEntry>> + 'a {
        self.by_parent.get(parent).into_iter().flatten().filter_map(|id| self.entries.get(id))
    }
}

impl EntryCache {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces every entry (the first load, or a reload after falling behind).
    pub(super) fn replace(&self, entries: impl IntoIterator<Item = RegistrationEntry>) {
        let mut state = State::default();
        for entry in entries {
            state.insert(entry);
        }
        metrics::gauge!("testudo_entry_cache_entries").set(state.entries.len() as f64);
        *self.write() = state;
    }

    /// Applies changed rows: each id with its entry as it is now (`None`: deleted). Returns
    /// the parent IDs of every changed entry, before and after the change.
    pub(super) fn apply(
        &self,
        changed: impl IntoIterator<Item = (String, Option<RegistrationEntry>)>,
    ) -> BTreeSet<String> {
        let mut state = self.write();
        let mut count = 0u64;
        let mut parents = BTreeSet::new();
        for (id, entry) in changed {
            if let Some(old) = state.entries.get(&id) {
                parents.insert(old.parent_id.to_string());
            }
            match entry {
                Some(entry) => {
                    parents.insert(entry.parent_id.to_string());
                    state.insert(entry)
                }
                None => state.remove(&id),
            }
            count += 1;
        }
        metrics::counter!("testudo_entry_cache_changes_total").increment(count);
        metrics::gauge!("testudo_entry_cache_entries").set(state.entries.len() as f64);
        parents
    }

    /// How many entries the cache holds.
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry `agent` may mint for: those parented to it, to a node alias it holds
    /// (an entry parented to the server whose selectors the agent has), and their
    /// descendants, keyed by entry id.
    pub fn authorized(
        &self,
        agent: &AttestedAgent,
        server_id: &SpiffeId,
        now: i64,
    ) -> Result<EntriesById, TooManyEntries> {
        self.authorized_with_parents(agent, server_id, now).map(|(authorized, _)| authorized)
    }

    /// Whether some entry's `expires_at` is set and before `now`.
    pub fn any_expired(&self, now: i64) -> bool {
        self.read().entries.values().any(|e| expired(e, now))
    }

    /// As [`Self::authorized`], with every parent ID the answer depends on: the agent's,
    /// its node aliases' and its authorized entries' SPIFFE IDs. A change to an entry under
    /// none of these (or to a node alias) cannot change the answer.
    /// An entry past its `expires_at` (Unix seconds, `now`) is neither served nor followed:
    /// it is as good as deleted until the leader prunes it.
    pub fn authorized_with_parents(
        &self,
        agent: &AttestedAgent,
        server_id: &SpiffeId,
        now: i64,
    ) -> Result<(EntriesById, BTreeSet<String>), TooManyEntries> {
        let state = self.read();
        let mut parents: VecDeque<String> = VecDeque::from([agent.spiffe_id.to_string()]);
        let agent_selectors: BTreeSet<_> = agent.selectors.iter().collect();
        for alias in state.children(&server_id.to_string()).filter(|e| !expired(e, now)) {
            if !alias.selectors.is_empty() && alias.selectors.iter().all(|s| agent_selectors.contains(s)) {
                parents.push_back(alias.spiffe_id.to_string());
            }
        }
        let mut seen: BTreeSet<String> = parents.iter().cloned().collect();
        let mut authorized = BTreeMap::new();
        while let Some(parent) = parents.pop_front() {
            for entry in state.children(&parent).filter(|e| !expired(e, now)) {
                let child = entry.spiffe_id.to_string();
                if seen.insert(child.clone()) {
                    parents.push_back(child);
                }
                authorized.insert(entry.id.clone(), entry.clone());
                if authorized.len() > MAX_AUTHORIZED {
                    return Err(TooManyEntries);
                }
            }
        }
        Ok((authorized, seen))
    }
}

/// Whether `entry` has an expiry and it is before `now`.
fn expired(entry: &RegistrationEntry, now: i64) -> bool {
    entry.expires_at > 0 && entry.expires_at < now
}
