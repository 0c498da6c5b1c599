//! openraft's own conformance suite against the RocksDB log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;
use raft_store::{open_store, LogStore, StateMachine, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), openraft::StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let opened = open_store(dir.path(), 0, "suite")
            .await
            .map_err(|e| StorageIOError::write(&std::io::Error::other(e.to_string())))?;
        Ok((dir, opened.log, opened.state_machine))
    }
}

/// Synchronous on purpose: the suite builds its own runtime.
#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(RocksBuilder).unwrap();
}
