//! A replica killed with SIGKILL while clients write keeps every write it acknowledged.
//! State-machine writes skip RocksDB's WAL, so after the kill the state on disk is that of
//! the last flush (here: none since start), and the replica must rebuild the rest from its
//! Raft log when it restarts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_store::command::*;
use raft_store::node::{Replica, ReplicaConfig};
use raft_store::schema::{meta_key, Cf};
use raft_store::testing::{eventually, fast_timing, TestCa};
use raft_store::Command;

use crate::support::entry;

const DIR_VAR: &str = "TESTUDO_CRASH_TEST_DIR";
const SNAPSHOT_VAR: &str = "TESTUDO_CRASH_TEST_SNAPSHOT_EVERY";
const NODE: &str = "spiffe://example.org/spire/agent/x";

fn config(data_dir: &Path, snapshot_every: u64) -> ReplicaConfig {
    ReplicaConfig {
        node_id: 1,
        cluster_id: "crash-test".into(),
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("address"),
        api_address: "api-of-1".into(),
        tls: TestCa::new().replica_tls(1),
        timing: fast_timing(snapshot_every),
        advertise_address: None,
        source_address: None,
        join: None,
        clocks: Default::default(),
    }
}

/// Run by `a_killed_replica_keeps_every_acknowledged_write` in a child process: writes
/// until killed, printing each acknowledged entry id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of a_killed_replica_keeps_every_acknowledged_write"]
async fn crash_child_writes_until_killed() {
    let dir = std::env::var(DIR_VAR).expect("the parent test names the data dir");
    let snapshot_every = std::env::var(SNAPSHOT_VAR)
        .ok()
        .and_then(|n| n.parse().ok())
        .expect("the parent test names the snapshot interval");
    let replica = Replica::start(config(Path::new(&dir), snapshot_every)).await.expect("start");
    replica.initialize().await.expect("initialize");
    for n in 0u64.. {
        let ids: Vec<String> = (0..10).map(|i| format!("e{n}-{i}")).collect();
        let entries =
            ids.iter().map(|id| entry(id, &format!("spiffe://example.org/{id}"), NODE, &["unix:uid:1"])).collect();
        replica.write_command(Command::CreateEntries(CreateEntries(entries))).await.expect("write");
        for id in ids {
            println!("acked {id}");
        }
    }
}

/// Without snapshots nothing flushes the state before the kill: it is all rebuilt from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_keeps_every_acknowledged_write() {
    kill_and_check(1_000_000).await;
}

/// With frequent snapshots the log is purged behind them while the replica writes: the
/// state the purged entries produced must already be on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_whose_log_was_purged_keeps_every_acknowledged_write() {
    kill_and_check(50).await;
}

/// Runs the writer child with `snapshot_every`, kills it, restarts the replica from its
/// dir and finds every acknowledged write.
async fn kill_and_check(snapshot_every: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node-1");
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["crash::crash_child_writes_until_killed", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(DIR_VAR, &data_dir)
        .env(SNAPSHOT_VAR, snapshot_every.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let counted = Arc::new(AtomicUsize::new(0));
    let counter = counted.clone();
    let reading = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("acked ") {
                acked.push(id.to_owned());
                counter.store(acked.len(), Ordering::Relaxed);
            }
        }
        acked
    });
    // Kill once a good number of writes were acknowledged (or after 30 s, whatever came).
    let enough = eventually(Duration::from_secs(30), || (counted.load(Ordering::Relaxed) >= 2000).then_some(())).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = reading.join().unwrap();
    assert!(enough.is_some() && acked.len() >= 2000, "the child acknowledged only {} writes in 30 s", acked.len());

    // What the kill left of the state: the test means something only if the restart has
    // to rebuild acknowledged writes from the log.
    let store = raft_store::db::open(&data_dir, 1, "crash-test").expect("reopen the killed replica's store");
    let on_disk =
        store.db.iterator_cf(raft_store::db::cf(&store.db, Cf::Entries), rocksdb::IteratorMode::Start).count();
    let purged = store.db.get_cf(raft_store::db::cf(&store.db, Cf::Meta), meta_key::LAST_PURGED).unwrap().is_some();
    drop(store);
    assert!(on_disk < acked.len(), "all {} acknowledged writes were already in the state on disk", acked.len());
    assert_eq!(purged, snapshot_every < 1000, "the log is purged exactly when snapshots are taken");

    let replica =
        Replica::start(config(&data_dir, snapshot_every)).await.expect("restart from the killed replica's dir");
    let reader = replica.local_reader().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut missing = acked.clone();
    loop {
        let mut still = Vec::new();
        for id in missing {
            if reader.entry(&id).await.unwrap().is_none() {
                still.push(id);
            }
        }
        missing = still;
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are missing after the restart, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
    replica.shutdown().await;
}
