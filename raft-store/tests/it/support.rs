//! Helpers: stores in temp dirs, and log entries carrying commands.

use identity::{Selector, SpiffeId};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raft_store::model::RegistrationEntry;
use raft_store::types::LoggedCommand;
use raft_store::{open_store, Command, OpenedStore, Outcome, Response, TypeConfig};

pub struct TestStore {
    /// Kept so the directory lives as long as the store.
    pub _dir: tempfile::TempDir,
    pub store: OpenedStore,
    next_index: u64,
}

impl TestStore {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), 1, "test-cluster").await.unwrap();
        Self { _dir: dir, store, next_index: 1 }
    }

    /// Applies commands as consecutive log entries and returns their responses.
    pub async fn apply(&mut self, commands: Vec<Command>) -> Vec<Response> {
        let entries: Vec<Entry<TypeConfig>> = commands
            .into_iter()
            .map(|c| {
                let e = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next_index),
                    payload: EntryPayload::Normal(LoggedCommand::new(c).unwrap()),
                };
                self.next_index += 1;
                e
            })
            .collect();
        self.store.state_machine.apply(entries).await.unwrap()
    }

    /// Applies a membership of `voters` as the next log entry.
    pub async fn apply_membership(&mut self, voters: &[u64]) {
        let nodes = voters
            .iter()
            .map(|id| (*id, raft_store::ReplicaNode { raft_address: format!("r{id}"), api_address: String::new() }))
            .collect::<std::collections::BTreeMap<_, _>>();
        let membership = openraft::Membership::new(vec![voters.iter().copied().collect()], nodes);
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next_index),
            payload: EntryPayload::Membership(membership),
        };
        self.next_index += 1;
        self.store.state_machine.apply(vec![entry]).await.unwrap();
    }

    pub async fn apply_one(&mut self, command: Command) -> Outcome {
        self.apply(vec![command]).await.remove(0).outcome
    }
}

pub fn entry(id: &str, spiffe_id: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
    let mut entry = RegistrationEntry::new(
        id.into(),
        SpiffeId::parse(spiffe_id).unwrap(),
        SpiffeId::parse(parent).unwrap(),
        selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
    );
    entry.created_at = 100;
    entry
}
