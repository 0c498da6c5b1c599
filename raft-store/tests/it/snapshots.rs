//! Snapshots carry the whole state machine: built from a consistent view while writes go
//! on, installed atomically over whatever a lagging replica had.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use raft_store::command::*;
use raft_store::model::{JoinToken, StoredX509Authority};
use raft_store::{BundleScope, Command};

use crate::support::{entry, TestStore};

const NODE: &str = "spiffe://example.org/spire/agent/x";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_replaces_a_lagging_replicas_state() {
    let mut leader = TestStore::new().await;
    let batch: Vec<_> = (0..300)
        .map(|i| entry(&format!("e{i:03}"), &format!("spiffe://example.org/w{i}"), NODE, &["unix:uid:1"]))
        .collect();
    leader.apply_one(Command::CreateEntries(CreateEntries(batch))).await;
    leader
        .apply_one(Command::CreateJoinToken(CreateJoinToken(JoinToken {
            token: "tok".into(),
            expires_at: 10,
            agent_id: None,
        })))
        .await;
    let authority = StoredX509Authority { der: vec![1, 2, 3], tainted: false };
    leader
        .apply_one(Command::AppendBundle(AppendBundle {
            scope: BundleScope::Local,
            trust_domain: "example.org".into(),
            x509: vec![authority.clone()],
            jwt: vec![],
        }))
        .await;

    let mut builder = leader.store.state_machine.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));
    // Writes after the snapshot was built are not in it.
    leader.apply_one(Command::DeleteEntries(DeleteEntries(vec!["e000".into()]))).await;

    // The follower has stale state of its own, which the snapshot must wipe.
    let mut follower = TestStore::new().await;
    follower
        .apply_one(Command::CreateEntries(CreateEntries(vec![entry(
            "stale",
            "spiffe://example.org/stale",
            NODE,
            &["a:b"],
        )])))
        .await;
    let data = snapshot.snapshot.into_inner();
    follower.store.state_machine.install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(data))).await.unwrap();

    let reader = &follower.store.reader;
    assert!(reader.entry("stale").await.unwrap().is_none());
    assert!(reader.entry("e000").await.unwrap().is_some());
    assert_eq!(reader.entries_by_selector("unix:uid:1").await.unwrap().len(), 300, "indexes come along");
    assert!(reader.join_token("tok").await.unwrap().is_some());
    assert_eq!(
        reader.bundle(BundleScope::Local, "example.org").await.unwrap().unwrap().x509_authorities,
        vec![authority]
    );
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
    s.apply_one(Command::CreateEntries(CreateEntries(vec![entry("keep", "spiffe://example.org/k", NODE, &["a:b"])])))
        .await;
    let mut builder = s.store.state_machine.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    let mut data = snapshot.snapshot.into_inner();
    data.truncate(data.len() / 2);
    let err = s.store.state_machine.install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(data))).await;
    assert!(err.is_err());
    assert!(s.store.reader.entry("keep").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_as_a_new_one_replica_cluster() {
    use raft_store::node::Replica;
    let cluster = crate::cluster_support::TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    for i in 0..30 {
        let e = crate::support::entry(
            &format!("kept-{i}"),
            &format!("spiffe://example.org/kept/{i}"),
            "spiffe://example.org/spire/agent/x",
            &["unix:uid:1"],
        );
        cluster.replicas[&leader]
            .write_command(raft_store::Command::CreateEntries(CreateEntries(vec![e])))
            .await
            .unwrap();
    }
    // Taken on a follower after a read-index barrier: it holds every acknowledged write.
    let backup = cluster.replicas[&follower].linearizable_reader().await.unwrap().backup().await.unwrap();

    let config = cluster.config(9);
    let node = raft_store::ReplicaNode { raft_address: "127.0.0.1:1".into(), api_address: "api-of-9".into() };
    assert!(matches!(
        raft_store::backup::restore(&config.data_dir, 9, &config.cluster_id, node.clone(), b"not a backup"),
        Err(raft_store::backup::BackupError::Format(_))
    ));
    let index = raft_store::backup::restore(&config.data_dir, 9, &config.cluster_id, node.clone(), &backup).unwrap();
    assert!(index >= 30, "restored up to {index}");
    let err = raft_store::backup::restore(&config.data_dir, 9, &config.cluster_id, node, &backup).unwrap_err();
    assert!(matches!(err, raft_store::backup::BackupError::NotPristine(_)), "{err}");

    let restored = Replica::start(config).await.unwrap();
    let leader_of_new = restored.wait_for_leader(std::time::Duration::from_secs(10)).await.unwrap();
    assert_eq!(leader_of_new, 9);
    let reader = restored.linearizable_reader().await.unwrap();
    for i in 0..30 {
        assert!(reader.entry(&format!("kept-{i}")).await.unwrap().is_some(), "kept-{i} restored");
    }
    let e = crate::support::entry(
        "after-restore",
        "spiffe://example.org/after",
        "spiffe://example.org/spire/agent/x",
        &["unix:uid:1"],
    );
    let response = restored.write_command(raft_store::Command::CreateEntries(CreateEntries(vec![e]))).await.unwrap();
    assert!(
        matches!(response.outcome, raft_store::Outcome::Entries(ref r) if r.iter().all(Result::is_ok)),
        "{response:?}"
    );
    assert_eq!(restored.status().members.len(), 1);
    restored.shutdown().await;
    cluster.shutdown().await;
}
