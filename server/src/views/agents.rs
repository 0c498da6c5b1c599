//! Attested agents by SPIFFE ID, answered from memory: every agent call checks its caller
//! here (attested, not banned, presenting its current SVID) without reading storage.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use raft_store::model::AttestedAgent;

#[derive(Default)]
pub struct AgentRecords {
    agents: RwLock<HashMap<String, Arc<AttestedAgent>>>,
}

impl AgentRecords {
    /// The agent with this SPIFFE ID, if it is attested.
    pub fn get(&self, spiffe_id: &str) -> Option<Arc<AttestedAgent>> {
        self.agents.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(spiffe_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.agents.read().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn replace(&self, agents: impl IntoIterator<Item = AttestedAgent>) {
        let map = agents.into_iter().map(|a| (a.spiffe_id.to_string(), Arc::new(a))).collect();
        *self.agents.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = map;
    }

    /// Applies changed rows: each SPIFFE ID with its record as it is now (`None`: deleted).
    pub(super) fn apply(&self, changed: impl IntoIterator<Item = (String, Option<AttestedAgent>)>) {
        let mut agents = self.agents.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, agent) in changed {
            match agent {
                Some(agent) => agents.insert(id, Arc::new(agent)),
                None => agents.remove(&id),
            };
        }
    }
}
