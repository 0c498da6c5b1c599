//! Snapshots carry the whole state machine: built from a consistent view while writes go
//! on, installed atomically over whatever a lagging replica had.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use raft_store::model::{JoinToken, StoredX509Authority};
use raft_store::{BundleScope, Command};

use crate::support::{entry, TestStore};

const NODE: &str = "spiffe://example.org/spire/agent/x";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_replaces_a_lagging_replicas_state() {
    let mut leader = TestStore::new().await;
    let batch: Vec<_> = (0..300).map(|i| entry(&format!("e{i:03}"), &format!("spiffe://example.org/w{i}"), NODE, &["unix:uid:1"])).collect();
    leader.apply_one(Command::CreateEntries(batch)).await;
    leader.apply_one(Command::CreateJoinToken(JoinToken { token: "tok".into(), expires_at: 10, agent_id: None })).await;
    let authority = StoredX509Authority { der: vec![1, 2, 3], tainted: false };
    leader.apply_one(Command::AppendBundle { scope: BundleScope::Local, trust_domain: "example.org".into(), x509: vec![authority.clone()], jwt: vec![] }).await;

    let mut builder = leader.store.state_machine.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));
    // Writes after the snapshot was built are not in it.
    leader.apply_one(Command::DeleteEntries(vec!["e000".into()])).await;

    // The follower has stale state of its own, which the snapshot must wipe.
    let mut follower = TestStore::new().await;
    follower.apply_one(Command::CreateEntries(vec![entry("stale", "spiffe://example.org/stale", NODE, &["a:b"])])).await;
    let data = snapshot.snapshot.into_inner();
    follower.store.state_machine.install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(data))).await.unwrap();

    let reader = &follower.store.reader;
    assert!(reader.entry("stale").await.unwrap().is_none());
    assert!(reader.entry("e000").await.unwrap().is_some());
    assert_eq!(reader.entries_by_selector("unix:uid:1").await.unwrap().len(), 300, "indexes come along");
    assert!(reader.join_token("tok").await.unwrap().is_some());
    assert_eq!(reader.bundle(BundleScope::Local, "example.org").await.unwrap().unwrap().x509_authorities, vec![authority]);
    assert_eq!(reader.revision().await.unwrap(), 3);
    assert_eq!(reader.changes_since(0, 10).await.unwrap().len(), 3, "the change log comes along");
    let (applied, _) = follower.store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, snapshot.meta.last_log_id);
    let current = follower.store.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_refused_and_changes_nothing() {
    let mut s = TestStore::new().await;
    s.apply_one(Command::CreateEntries(vec![entry("keep", "spiffe://example.org/k", NODE, &["a:b"])])).await;
    let mut builder = s.store.state_machine.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    let mut data = snapshot.snapshot.into_inner();
    data.truncate(data.len() / 2);
    let err = s.store.state_machine.install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(data))).await;
    assert!(err.is_err());
    assert!(s.store.reader.entry("keep").await.unwrap().is_some());
}
