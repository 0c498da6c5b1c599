//! A data dir that is corrupt, foreign, or another replica's or cluster's is refused with an
//! error that says so, and left as it was.

use raft_store::{open_store, OpenError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_other_replicas_and_clusters_and_reopens_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 1, "cluster-a").await.unwrap();
    drop(store);
    assert!(matches!(
        open_store(dir.path(), 2, "cluster-a").await,
        Err(OpenError::WrongNode { found: 1, expected: 2, .. })
    ));
    let err = open_store(dir.path(), 1, "cluster-b").await.err().unwrap();
    assert!(matches!(err, OpenError::WrongCluster { .. }));
    assert!(err.to_string().contains("cluster-a") && err.to_string().contains("cluster-b"), "{err}");
    let reopened = open_store(dir.path(), 1, "cluster-a").await.unwrap();
    assert_eq!(reopened.header.cluster_id, "cluster-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_directory_with_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"do not touch").unwrap();
    let err = open_store(dir.path(), 1, "c").await.err().unwrap();
    assert!(matches!(err, OpenError::Foreign { .. }), "{err}");
    assert_eq!(std::fs::read(dir.path().join("precious.txt")).unwrap(), b"do not touch");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_corrupt_stores() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_store(dir.path(), 1, "c").await.unwrap());
    let db_dir = dir.path().join("raft-db");
    // Lose the CURRENT file: RocksDB cannot find its manifest.
    std::fs::remove_file(db_dir.join("CURRENT")).unwrap();
    let err = open_store(dir.path(), 1, "c").await.err().unwrap();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");

    // Garbage in every table file and manifest.
    let dir = tempfile::tempdir().unwrap();
    drop(open_store(dir.path(), 1, "c").await.unwrap());
    let db_dir = dir.path().join("raft-db");
    for file in std::fs::read_dir(&db_dir).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("MANIFEST") {
            std::fs::write(&path, b"garbage garbage garbage").unwrap();
        }
    }
    let err = open_store(dir.path(), 1, "c").await.err().unwrap();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_use_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let open = open_store(dir.path(), 1, "c").await.unwrap();
    let err = open_store(dir.path(), 1, "c").await.err().unwrap();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    drop(open);
    assert!(open_store(dir.path(), 1, "c").await.is_ok(), "released when the store is dropped");
}

/// A new store in a temporary dir whose format header says `format_version`.
fn store_of_format(format_version: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = raft_store::db::open(dir.path(), 1, "c").unwrap();
    let header = raft_store::db::Header { format_version, node_id: 1, cluster_id: "c".into() };
    let meta = raft_store::db::cf(&store.db, raft_store::schema::Cf::Meta);
    let bytes = raft_store::codec::encode("header", &header).unwrap();
    store.db.put_cf(meta, raft_store::schema::meta_key::HEADER, bytes).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_newer_format_and_one_older_than_the_previous() {
    use raft_store::db::{FORMAT_VERSION, PREVIOUS_FORMAT};
    let newer = store_of_format(FORMAT_VERSION + 1);
    for _ in 0..2 {
        let err = open_store(newer.path(), 1, "c").await.err().unwrap();
        assert!(matches!(err, OpenError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1), "{err}");
        assert!(err.to_string().contains("newer Testudo"), "{err}");
    }

    let older = store_of_format(PREVIOUS_FORMAT - 1);
    for _ in 0..2 {
        let err = open_store(older.path(), 1, "c").await.err().unwrap();
        assert!(matches!(err, OpenError::OlderFormat { found, .. } if found == PREVIOUS_FORMAT - 1), "{err}");
        assert!(err.to_string().contains(&format!("upgrades format {PREVIOUS_FORMAT} only")), "{err}");
    }
}
