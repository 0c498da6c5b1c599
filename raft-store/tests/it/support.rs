//! Helpers: stores in temp dirs, and log entries carrying commands.

use identity::{Selector, SpiffeId};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raft_store::model::RegistrationEntry;
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
                let e = Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next_index), payload: EntryPayload::Normal(c) };
                self.next_index += 1;
                e
            })
            .collect();
        self.store.state_machine.apply(entries).await.unwrap()
    }

    pub async fn apply_one(&mut self, command: Command) -> Outcome {
        self.apply(vec![command]).await.remove(0).outcome
    }
}

pub fn entry(id: &str, spiffe_id: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
    RegistrationEntry {
        id: id.into(),
        spiffe_id: SpiffeId::parse(spiffe_id).unwrap(),
        parent_id: SpiffeId::parse(parent).unwrap(),
        selectors: selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        federates_with: vec![],
        admin: false,
        downstream: false,
        expires_at: 0,
        dns_names: vec![],
        revision_number: 0,
        store_svid: false,
        hint: String::new(),
        created_at: 100,
    }
}
