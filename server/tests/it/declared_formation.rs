//! Declarative formation on real processes: replicas started at once with the same peers and
//! a cluster CA provisioned ahead form one cluster by themselves, resume from their data dirs,
//! take in a replica the peers do not list, and a replica whose data dir was lost comes back
//! under a new node id in place of the one it was.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testkit::{free_port, wait_until, ReplicaOptions, ServerProcess};

/// `cluster status` as JSON, or `None` while the replica belongs to no cluster yet.
fn status(server: &ServerProcess) -> Option<serde_json::Value> {
    let out = server.command(&["cluster", "status", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    status["initialized"].as_bool().filter(|i| *i).map(|_| status)
}

/// The voters' node ids as `server` sees them, once it follows a leader and is one of them.
fn voters(server: &ServerProcess) -> Option<Vec<u64>> {
    testkit::voters_of(&status(server)?).map(|(_, voters)| voters)
}

fn wait_for_voters(servers: &[&ServerProcess], want: impl Fn(&[u64]) -> bool, what: &str) -> Vec<u64> {
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(60),
        || {
            let views: Vec<Option<Vec<u64>>> = servers.iter().map(|s| voters(s)).collect();
            match views.first().cloned().flatten() {
                Some(first) if views.iter().all(|v| v.as_ref() == Some(&first)) && want(&first) => {
                    seen = first;
                    true
                }
                _ => false,
            }
        },
        what,
    );
    seen
}

fn start(root: &Path, name: u64, raft: SocketAddr, cluster: &str) -> ServerProcess {
    let options = ReplicaOptions {
        cluster_extra: cluster.to_owned(),
        raft_bind: Some(raft),
        declarative: true,
        ..Default::default()
    };
    ServerProcess::start_with(root, name, &options)
}

/// A cluster CA made under `root`, and the `cluster { }` lines of a declared cluster of
/// `peers` (the first three founding it) with `extra` added.
fn declared_cluster(root: &Path, peers: &[SocketAddr], extra: &str) -> String {
    let (cert, key) = (root.join("ca.crt"), root.join("ca.key"));
    testkit::new_cluster_ca(&cert, &key);
    let peers: Vec<String> = peers.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "peers = [{}]\n  bootstrap_expect = 3\n  ca_cert_file = \"{}\"\n  ca_key_file = \"{}\"\n  {extra}",
        peers.join(", "),
        cert.display(),
        key.display()
    )
}

#[test]
fn replicas_form_one_cluster_by_themselves_and_take_in_new_ones() {
    let root = tempfile::tempdir().unwrap();
    let addresses: Vec<SocketAddr> = (0..4).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
    let cluster = declared_cluster(root.path(), &addresses[..3], "");
    // All three at once: each waits for the others, and exactly one cluster forms.
    let mut servers: Vec<ServerProcess> =
        (0..3).map(|i| start(root.path(), i as u64 + 1, addresses[i], &cluster)).collect();
    let formed = wait_for_voters(&servers.iter().collect::<Vec<_>>(), |v| v.len() == 3, "three voters");
    // The replica at peers[i] founds it as node i + 1; one that was too late for that joins
    // under an id of its own, so a majority of founders is all that is certain.
    assert!(formed.iter().filter(|id| **id <= 3).count() >= 2, "{formed:?}");
    let ids: Vec<String> =
        servers.iter().map(|s| status(s).unwrap()["cluster_id"].as_str().unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one cluster: {ids:?}");
    servers[1].json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node",
        "--selector",
        "unix:uid:1",
    ]);

    // A restart resumes: the same cluster, the same members, nothing asked of anyone.
    for server in &mut servers {
        server.kill();
    }
    for server in &mut servers {
        server.restart();
    }
    let resumed = wait_for_voters(&servers.iter().collect::<Vec<_>>(), |v| v.len() == 3, "the cluster back");
    assert_eq!(resumed, formed);
    assert_eq!(status(&servers[0]).unwrap()["cluster_id"].as_str(), Some(ids[0].as_str()));

    // A replica the peers do not list joins under an id the cluster gives it.
    let fourth = start(root.path(), 4, addresses[3], &cluster);
    let four = wait_for_voters(&[&servers[0], &fourth], |v| v.len() == 4, "a fourth voter");
    let drawn = *four.iter().find(|id| !formed.contains(id)).unwrap();
    assert!(drawn > 3, "{four:?}");

    // Replica 3 loses its data dir: it comes back under a new id, in place of the member
    // it was.
    let lost = status(&servers[2]).unwrap()["node_id"].as_u64().unwrap();
    servers[2].kill();
    std::fs::remove_dir_all(&servers[2].data_dir).unwrap();
    servers[2].restart();
    let replaced = wait_for_voters(
        &[&servers[0], &servers[2], &fourth],
        |v| v.len() == 4 && !v.contains(&lost),
        "the lost member replaced",
    );
    let back = status(&servers[2]).unwrap()["node_id"].as_u64().unwrap();
    assert!(back != lost && replaced.contains(&back) && replaced.contains(&drawn), "{replaced:?}");
    let entries = servers[2].json(&["entry", "count"]);
    assert_eq!(entries["count"].as_u64(), Some(1), "the new replica holds the state: {entries}");
}

#[test]
fn members_unreachable_for_long_are_removed_down_to_bootstrap_expect() {
    let root = tempfile::tempdir().unwrap();
    let addresses: Vec<SocketAddr> = (0..4).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
    let cluster = declared_cluster(root.path(), &addresses, "remove_unreachable_after = \"10s\"");
    // Three found the cluster; the fourth (as a StatefulSet scaled to four) joins it.
    let mut servers: Vec<ServerProcess> =
        (0..3).map(|i| start(root.path(), i as u64 + 1, addresses[i], &cluster)).collect();
    wait_for_voters(&servers.iter().collect::<Vec<_>>(), |v| v.len() == 3, "three voters");
    servers.push(start(root.path(), 4, addresses[3], &cluster));
    let four = wait_for_voters(&servers.iter().collect::<Vec<_>>(), |v| v.len() == 4, "four voters");
    // A member that answers is never removed, however new.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(voters(&servers[0]).as_deref(), Some(&four[..]), "a reachable member was removed");

    // Scaled back to three: the fourth is gone for good and is removed by itself.
    let gone = voters(&servers[3]).and_then(|_| status(&servers[3])).and_then(|s| s["node_id"].as_u64()).unwrap();
    servers[3].kill();
    let killed_at = std::time::Instant::now();
    let three = wait_for_voters(&servers[..3].iter().collect::<Vec<_>>(), |v| v.len() == 3, "the fourth removed");
    assert!(!three.contains(&gone) && four.contains(&gone), "{four:?} -> {three:?}");
    assert!(killed_at.elapsed() >= Duration::from_secs(10), "removed before remove_unreachable_after");
    let members = status(&servers[0]).unwrap()["members"].as_array().unwrap().len();
    assert_eq!(members, 3, "the fourth is no learner either");

    // One of three down as long: kept, since three voters is bootstrap_expect.
    servers[2].kill();
    std::thread::sleep(Duration::from_secs(17));
    let kept = voters(&servers[0]).or_else(|| voters(&servers[1])).expect("the two left follow a leader");
    assert_eq!(kept, three, "a voter was removed below bootstrap_expect");
}
