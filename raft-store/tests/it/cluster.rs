//! Multi-replica behaviour over real loopback gRPC with mutual TLS: replication, forwarding,
//! leader failover, restart from disk, catch-up by snapshot, and a minority that cannot
//! write. Acknowledged writes are checked on every live replica, not assumed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raft_store::command::*;
use raft_store::network::{AdminRequest, ClusterClient, Faults};
use raft_store::{Command, NodeId, Outcome};

use crate::cluster_support::{eventually, presented_leaf_certificate, TestCluster};
use crate::support::entry;

const NODE: &str = "spiffe://example.org/spire/agent/x";

fn create(id: &str) -> Command {
    Command::CreateEntries(CreateEntries(vec![entry(id, &format!("spiffe://example.org/{id}"), NODE, &["unix:uid:1"])]))
}

fn created(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Entries(results) if results.iter().all(Result::is_ok))
}

/// Waits until every live replica has applied every id in `ids`, locally.
async fn assert_everywhere(cluster: &TestCluster, ids: &BTreeSet<String>) {
    for (node, replica) in &cluster.replicas {
        let reader = replica.local_reader().clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut missing = Vec::new();
            for id in ids {
                if reader.entry(id).await.unwrap().is_none() {
                    missing.push(id.clone());
                }
            }
            if missing.is_empty() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "replica {node} lacks acknowledged writes {missing:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_and_forwards_writes_from_followers() {
    let cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);

    let on_leader = cluster.replicas[&leader].write_command(create("via-leader")).await.unwrap();
    assert!(created(&on_leader.outcome));
    let forwarded = cluster.replicas[&follower].write_command(create("via-follower")).await.unwrap();
    assert!(created(&forwarded.outcome), "a follower forwards to the leader and answers once committed");
    assert!(forwarded.revision > on_leader.revision);
    // Read-your-writes on the replica that took the write: its local state has it already.
    for i in 0..20 {
        let id = format!("ryw-{i}");
        cluster.replicas[&follower].write_command(create(&id)).await.unwrap();
        assert!(
            cluster.replicas[&follower].local_reader().entry(&id).await.unwrap().is_some(),
            "{id} not applied on the replica that forwarded it"
        );
    }

    // A linearizable read on a follower sees the write acknowledged just before it.
    let reader = cluster.replicas[&follower].linearizable_reader().await.unwrap();
    assert!(reader.entry("via-follower").await.unwrap().is_some());

    let mut ids: BTreeSet<String> = ["via-leader", "via-follower"].map(String::from).into();
    ids.extend((0..20).map(|i| format!("ryw-{i}")));
    assert_everywhere(&cluster, &ids).await;

    let status = cluster.replicas[&leader].status();
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.voter && m.lag.is_some()), "{status:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_answer() {
    let cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let replica = &cluster.replicas[&leader];
    let before = replica.raft().metrics().borrow().last_log_index.unwrap_or(0);

    // 64 writes at once, one of them twice: each caller must get the outcome of its own command.
    let ids: Vec<String> = (0..64).map(|i| format!("group-{i}")).collect();
    let mut commands: Vec<Command> = ids.iter().map(|id| create(id)).collect();
    commands.push(create("group-7"));
    let responses = futures::future::join_all(commands.into_iter().map(|c| replica.write_command(c))).await;
    let mut revisions = BTreeSet::new();
    for (i, response) in responses.iter().enumerate() {
        let response = response.as_ref().unwrap();
        assert!(revisions.insert(response.revision), "revision {} answered twice", response.revision);
        match (&response.outcome, i) {
            (Outcome::Entries(results), 64) => {
                assert!(results[0].is_err(), "the duplicate of group-7 is refused: {results:?}")
            }
            (Outcome::Entries(results), i) => {
                // Its own command's revision, under which its own entry is stored.
                assert_eq!(results[0].as_ref().map(|w| w.revision_number).ok(), i64::try_from(response.revision).ok());
                let stored = replica.local_reader().entry(&ids[i]).await.unwrap().expect("the entry is stored");
                assert_eq!(stored.revision_number as u64, response.revision);
            }
            (other, _) => panic!("{other:?}"),
        }
    }
    let after = replica.raft().metrics().borrow().last_log_index.unwrap_or(0);
    assert!(after - before < 32, "65 writes took {} log entries: they were not grouped", after - before);
    assert_everywhere(&cluster, &ids.into_iter().collect()).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_restart_keep_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3, 10_000).await;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        let target = 1 + (i % 3) as NodeId;
        if created(&cluster.replicas[&target].write_command(create(&id)).await.unwrap().outcome) {
            acked.insert(id);
        }
    }
    let old_leader = cluster.wait_for_leader().await;
    cluster.stop(old_leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    let survivors: Vec<NodeId> = cluster.replicas.keys().copied().collect();
    for i in 0..20 {
        let id = format!("after-{i}");
        let target = survivors[i % survivors.len()];
        if created(&cluster.replicas[&target].write_command(create(&id)).await.unwrap().outcome) {
            acked.insert(id);
        }
    }
    assert_eq!(acked.len(), 40, "every write was acknowledged");
    assert_everywhere(&cluster, &acked).await;

    // The old leader comes back from its disk and catches up.
    cluster.start_replica(old_leader).await;
    assert_everywhere(&cluster, &acked).await;
    let revision = cluster.reader(old_leader).revision().await.unwrap();
    assert_eq!(revision, 40);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start(3, 20).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.follower(leader);
    cluster.stop(victim).await;
    let mut acked = BTreeSet::new();
    for i in 0..120 {
        let id = format!("e{i:03}");
        if created(&cluster.replicas[&leader].write_command(create(&id)).await.unwrap().outcome) {
            acked.insert(id);
        }
    }
    // The leader has snapshotted and purged the log the victim would need.
    let purged = eventually(Duration::from_secs(10), || {
        cluster.replicas[&leader].raft().metrics().borrow().purged.map(|p| p.index)
    })
    .await;
    assert!(purged.is_some_and(|p| p > 50), "leader purged its log: {purged:?}");

    cluster.wipe(victim);
    cluster.start_replica(victim).await;
    assert_everywhere(&cluster, &acked).await;
    let snapshot = cluster.replicas[&victim].raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "the wiped replica was sent a snapshot");
    assert_eq!(cluster.reader(victim).entries_by_selector("unix:uid:1").await.unwrap().len(), 120);
    // Installing the snapshot moved the announced revision to the leader's.
    let leader_revision = cluster.replicas[&leader].applied().current_revision();
    let victim_feed = cluster.replicas[&victim].applied().clone();
    let reached =
        eventually(Duration::from_secs(10), || (victim_feed.current_revision() == leader_revision).then_some(())).await;
    assert!(reached.is_some(), "the wiped replica announces revision {leader_revision}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_announces_every_change_with_its_revision_on_every_replica() {
    let cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    let mut announced = cluster.replicas[&follower].applied().subscribe();

    // Typed writes answer with their own result type.
    let written = cluster.replicas[&leader]
        .write(CreateEntries(vec![entry("a1", "spiffe://example.org/a1", NODE, &["unix:uid:1"])]))
        .await
        .unwrap();
    assert!(written[0].is_ok());
    let deleted = cluster.replicas[&follower].write(DeleteEntries(vec!["a1".into(), "missing".into()])).await.unwrap();
    assert!(deleted[0].is_ok() && matches!(deleted[1], Err(raft_store::ApplyError::NotFound(_))));

    // The follower announced both revisions, in order, with the rows each changed.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(10), announced.recv()).await.expect("announced").unwrap();
        if let raft_store::Applied::Changes { sets, revision } = next {
            assert!(sets.last().is_none_or(|s| s.revision <= revision));
            seen.extend(sets.iter().cloned());
        }
    }
    let entry_changes: Vec<(String, bool)> =
        seen.iter().flat_map(|s| s.changes.iter()).map(|c| (c.key.clone(), c.deleted)).collect();
    assert_eq!(entry_changes, vec![("a1".to_owned(), false), ("a1".to_owned(), true)]);
    assert!(seen[0].revision < seen[1].revision);
    assert_eq!(cluster.replicas[&follower].applied().current_revision(), seen[1].revision);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_cannot_write_and_catches_up_after_healing() {
    let cluster = TestCluster::start(3, 10_000).await;
    let old_leader = cluster.wait_for_leader().await;
    cluster.replicas[&old_leader].write_command(create("before")).await.unwrap();

    cluster.isolate(old_leader);
    // The minority side cannot commit: nothing is acknowledged.
    let minority =
        tokio::time::timeout(Duration::from_secs(2), cluster.replicas[&old_leader].write_command(create("minority")))
            .await;
    assert!(!matches!(minority, Ok(Ok(_))), "an isolated replica acknowledged a write");

    // The majority elects a new leader and goes on.
    let majority: Vec<NodeId> = cluster.replicas.keys().copied().filter(|id| *id != old_leader).collect();
    let new_leader =
        eventually(Duration::from_secs(10), || majority.iter().copied().find(|id| cluster.replicas[id].is_leader()))
            .await
            .expect("the majority elects a leader");
    let written = cluster.replicas[&majority[0]].write_command(create("majority")).await.unwrap();
    assert!(created(&written.outcome));
    assert_ne!(new_leader, old_leader);

    cluster.heal();
    let ids: BTreeSet<String> = ["before", "majority"].map(String::from).into();
    assert_everywhere(&cluster, &ids).await;
    // No split brain: the write the isolated leader took was never committed anywhere.
    let leader = cluster.wait_for_leader().await;
    assert_ne!(leader, old_leader, "the healed old leader does not take back leadership by itself");
    for replica in cluster.replicas.values() {
        let reader = replica.linearizable_reader().await.unwrap();
        assert!(reader.entry("minority").await.unwrap().is_none());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_where_an_admin_asks() {
    let cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    cluster.replicas[&leader].write_command(create("before")).await.unwrap();
    let target = cluster.follower(leader);
    let asker = *cluster.replicas.keys().find(|id| **id != leader && **id != target).unwrap();

    // Asked on a replica that is neither leader nor target: the request finds the leader.
    cluster.replicas[&asker].transfer_leadership(target).await.unwrap();
    assert_eq!(cluster.wait_for_leader().await, target);
    let written = cluster.replicas[&leader].write_command(create("after")).await.unwrap();
    assert!(created(&written.outcome), "writes go on through the old leader, now a follower");
    let ids: BTreeSet<String> = ["before", "after"].map(String::from).into();
    assert_everywhere(&cluster, &ids).await;

    let err = cluster.replicas[&target].transfer_leadership(42).await.unwrap_err();
    assert!(err.to_string().contains("not a voter"), "{err}");
    cluster.shutdown().await;
}

/// Writes new entries through `replica` until `stop`; returns those acknowledged.
async fn write_until(replica: &raft_store::node::Replica, writer: usize, stop: &AtomicBool) -> BTreeSet<String> {
    let mut acknowledged = BTreeSet::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("w{writer}-{n}");
        if replica.write_command(create(&id)).await.is_ok_and(|r| created(&r.outcome)) {
            acknowledged.insert(id);
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_while_clients_write() {
    let cluster = TestCluster::start(3, 10_000).await;
    let first = cluster.wait_for_leader().await;
    // Writers keep the leader's log growing, so a target is always a little behind unless
    // the transfer holds writes back while it catches up.
    let stop = AtomicBool::new(false);
    let writing = cluster.replicas.get(&first).unwrap();
    let transfers = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            let leader = cluster.wait_for_leader().await;
            let target = cluster.follower(leader);
            cluster.replicas[&leader].transfer_leadership(target).await.unwrap();
            assert_eq!(cluster.wait_for_leader().await, target);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.store(true, Ordering::SeqCst);
    };
    let (a, b, c, d, ()) = tokio::join!(
        write_until(writing, 0, &stop),
        write_until(writing, 1, &stop),
        write_until(writing, 2, &stop),
        write_until(writing, 3, &stop),
        transfers
    );
    let ids: BTreeSet<String> = [a, b, c, d].into_iter().flatten().collect();
    assert!(ids.len() > 20, "writes went on around the transfers: {}", ids.len());
    assert_everywhere(&cluster, &ids).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_can_be_removed_and_status_reports_lag() {
    let mut cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let leaving = cluster.follower(leader);
    cluster.replicas[&leader].remove(leaving).await.unwrap();
    cluster.stop(leaving).await;
    let status = cluster.replicas[&leader].status();
    assert_eq!(status.members.len(), 2);
    assert!(status.members.iter().all(|m| m.node_id != leaving));
    // Two voters remain, so both must be up: writes still commit.
    cluster.replicas[&leader].write_command(create("two-voters")).await.unwrap();

    // A learner that is down shows growing lag on the leader.
    cluster.join(7).await;
    cluster.stop(7).await;
    for i in 0..5 {
        cluster.replicas[&leader].write_command(create(&format!("lagging-{i}"))).await.unwrap();
    }
    let status = cluster.replicas[&leader].status();
    let seven = status.members.iter().find(|m| m.node_id == 7).unwrap();
    assert!(seven.lag.unwrap_or(0) >= 5, "{seven:?}");
    let err = cluster.replicas[&cluster.follower(leader)].remove(7).await.unwrap_err();
    assert!(err.to_string().contains("does not lead"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_can_add_and_remove_members_through_the_leader() {
    let mut cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    for i in 0..20 {
        cluster.replicas[&leader].write_command(create(&format!("before-{i}"))).await.unwrap();
    }
    cluster.start_replica(4).await;
    let node = cluster.replicas[&4].node().clone();
    cluster.replicas[&follower].add_member(4, node.clone(), Duration::from_secs(10)).await.unwrap();
    let status = cluster.replicas[&leader].status();
    assert!(status.members.iter().any(|m| m.node_id == 4 && m.voter), "{status:?}");
    // Asking again is a no-op; the same id at another address is refused.
    cluster.replicas[&follower].add_member(4, node.clone(), Duration::from_secs(5)).await.unwrap();
    let mut elsewhere = node.clone();
    elsewhere.raft_address = "127.0.0.1:1".into();
    let err = cluster.replicas[&follower].add_member(4, elsewhere, Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains("already a member"), "{err}");

    let ids: BTreeSet<String> = (0..20).map(|i| format!("before-{i}")).collect();
    assert_everywhere(&cluster, &ids).await;

    cluster.replicas[&follower].remove_member(4).await.unwrap();
    let status = cluster.replicas[&leader].status();
    assert!(status.members.iter().all(|m| m.node_id != 4), "{status:?}");
    cluster.stop(4).await;
    cluster.replicas[&follower].write_command(create("after-removal")).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_renews_its_certificate_while_running() {
    let cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    let address = cluster.replicas[&follower].address().to_string();
    let before = presented_leaf_certificate(&address);

    // A key that does not match the leaf is refused, and nothing changes.
    let renewed = cluster.ca.replica_tls(follower);
    let other = cluster.ca.replica_tls(follower);
    assert!(cluster.replicas[&follower].replace_certificate(renewed.chain.clone(), other.key_pkcs8.clone()).is_err());
    assert_eq!(presented_leaf_certificate(&address), before);

    cluster.replicas[&follower].replace_certificate(renewed.chain.clone(), renewed.key_pkcs8.clone()).unwrap();
    let after = presented_leaf_certificate(&address);
    assert_ne!(after, before, "the renewed certificate is presented from the next handshake on");
    assert_eq!(after, renewed.chain[0]);

    // It still takes part: it forwards writes to the leader over new connections that
    // present the new certificate, and the leader's appends reach it.
    let forwarded = cluster.replicas[&follower].write_command(create("after-renewal")).await.unwrap();
    assert!(created(&forwarded.outcome));
    cluster.replicas[&leader].write_command(create("to-renewed")).await.unwrap();
    assert_everywhere(&cluster, &["after-renewal", "to-renewed"].map(String::from).into()).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_asked_of_a_follower_outlasts_the_rpc_timeout() {
    // The leader's part of a transfer waits out its lease (600 ms here), longer than one
    // cluster RPC may take (300 ms): the follower's forwarded request must wait for it.
    let timing = raft_store::node::Timing {
        rpc_timeout: Duration::from_millis(300),
        ..crate::cluster_support::fast_timing(10_000)
    };
    let cluster = TestCluster::start_with(3, timing).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    cluster.replicas[&follower].transfer_leadership(follower).await.unwrap();
    assert_eq!(cluster.wait_for_leader().await, follower);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_paused_for_a_transfer_elect_again_when_its_leader_dies() {
    // A leader handing over pauses the other voters' election timers; if it dies before it
    // resumes them, they resume by themselves and elect a leader.
    let mut cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    // An admin call as the leader itself, a member.
    let client = ClusterClient::new(cluster.ca.replica_tls(leader), Duration::from_secs(2), Faults::default());
    let followers: Vec<NodeId> = cluster.replicas.keys().copied().filter(|id| *id != leader).collect();
    for id in &followers {
        let address = cluster.replicas[id].node().raft_address.clone();
        client.admin(*id, &address, &AdminRequest::PauseElection { millis: 3000 }).await.unwrap().unwrap();
    }
    let stopped = std::time::Instant::now();
    cluster.stop(leader).await;
    // Paused: no one stands (unpaused, they elect within about a second here).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for id in &followers {
        assert!(!cluster.replicas[id].is_leader(), "replica {id} was elected while its timer was paused");
    }
    let elected = cluster.wait_for_leader().await;
    assert!(followers.contains(&elected));
    assert!(
        stopped.elapsed() >= Duration::from_millis(3000),
        "elected before the pause ended: {:?}",
        stopped.elapsed()
    );
    assert!(created(&cluster.replicas[&elected].write_command(create("after-the-pause")).await.unwrap().outcome));
    cluster.shutdown().await;
}

/// The leader commits a forwarded write and dies before answering: the forwarding replica
/// sends it again, under the same request id, to the next leader, which answers with the
/// first answer. Without the request id the second copy would be a second write (answered
/// AlreadyExists); before request ids the caller got "outcome unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_leader_died_before_answering_is_applied_once() {
    let mut cluster = TestCluster::start(3, 1000).await;
    let leader_id = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader_id);
    let leader = cluster.replicas.remove(&leader_id).unwrap();
    let (applied, release) = leader.faults().hold_next_forwarded_answer();
    let leader_reader = leader.local_reader().clone();

    let write = cluster.replicas[&follower].write_command(create("once"));
    let kill = async move {
        applied.await.expect("the leader applied the forwarded write");
        assert!(leader_reader.entry("once").await.unwrap().is_some(), "committed before the leader died");
        drop(release);
        leader.shutdown().await;
    };
    let (answer, ()) = tokio::join!(write, kill);
    let answer = answer.expect("the write is answered, not left uncertain");
    assert!(created(&answer.outcome), "the first answer, not a duplicate's refusal: {answer:?}");

    assert_everywhere(&cluster, &BTreeSet::from(["once".to_owned()])).await;
    for replica in cluster.replicas.values() {
        let entries = replica.local_reader().entries_by_parent(NODE).await.unwrap();
        assert_eq!(entries.len(), 1, "applied once on replica {}", replica.id());
    }
    cluster.shutdown().await;
}

/// A follower cut off from the others refuses writes and linearizable reads at once, saying
/// why, once it has heard from no leader for longer than a failover takes (before, it kept
/// callers 10 s retrying); it serves again when the links heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_the_leader_refuses_at_once() {
    let cluster = TestCluster::start(3, 1000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    assert!(created(&cluster.replicas[&follower].write_command(create("before")).await.unwrap().outcome));
    cluster.isolate(follower);
    let timing = raft_store::testing::fast_timing(1000);
    tokio::time::sleep(timing.election_timeout_max * 2 + timing.heartbeat_interval * 2).await;

    let started = std::time::Instant::now();
    let refused = cluster.replicas[&follower].write_command(create("cut-off")).await.unwrap_err();
    assert!(matches!(refused, raft_store::node::ClusterError::NoLeaderContact(_)), "{refused}");
    assert!(refused.to_string().contains("heard from no leader"), "{refused}");
    let read = cluster.replicas[&follower].linearizable_reader().await.map(|_| ()).unwrap_err();
    assert!(matches!(read, raft_store::node::ClusterError::NoLeaderContact(_)), "{read}");
    assert!(started.elapsed() < timing.rpc_timeout, "answered at once, not after retries: {:?}", started.elapsed());

    cluster.heal();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.replicas[&follower].write_command(create("after")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the follower serves again once the leader reaches it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}

/// A follower that forwarded a write to a leader that then stops leading stops waiting for
/// that leader's answer as soon as it learns of the next one, and sends the write there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_follows_the_next_leader_without_waiting_for_a_timeout() {
    // An RPC timeout far longer than a leader transfer, so waiting for it would show.
    let timing =
        raft_store::node::Timing { rpc_timeout: Duration::from_secs(10), ..raft_store::testing::fast_timing(1000) };
    let cluster = TestCluster::start_with(3, timing).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    let next = *cluster.replicas.keys().find(|id| **id != leader && **id != follower).unwrap();
    let (applied, _release) = cluster.replicas[&leader].faults().hold_next_forwarded_answer();

    let started = std::time::Instant::now();
    let write = cluster.replicas[&follower].write_command(create("moved"));
    let transfer = async {
        applied.await.unwrap();
        cluster.replicas[&leader].transfer_leadership(next).await.unwrap();
    };
    let (answer, ()) = tokio::join!(write, transfer);
    let took = started.elapsed();
    assert!(created(&answer.unwrap().outcome), "the first answer, from the next leader");
    // The held answer never comes: waiting for it would take the 10 s RPC timeout.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(cluster.replicas[&next].local_reader().entries_by_parent(NODE).await.unwrap().len(), 1);
    cluster.shutdown().await;
}

/// Five replicas lose the leader and a follower at the same moment while clients write
/// through the other three: the three elect a leader and take writes again, nothing
/// acknowledged is lost, and the two come back from their disks and catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_lose_two_at_once_and_keep_every_acknowledged_write() {
    let mut cluster = TestCluster::start(5, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    let victims = [leader, follower];
    let lost: Vec<_> = victims.iter().map(|id| cluster.replicas.remove(id).unwrap()).collect();
    let survivors: Vec<NodeId> = cluster.replicas.keys().copied().collect();
    assert_eq!(survivors.len(), 3);

    let stop = AtomicBool::new(false);
    let writers = futures::future::join_all(
        survivors.iter().enumerate().map(|(i, id)| write_until(&cluster.replicas[id], i, &stop)),
    );
    let faults = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        futures::future::join_all(lost.into_iter().map(|replica| replica.shutdown())).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (acknowledged, ()) = tokio::join!(writers, faults);
    let acknowledged: BTreeSet<String> = acknowledged.into_iter().flatten().collect();

    // The three elected a leader of their own and take writes.
    let new_leader = cluster.wait_for_leader().await;
    assert!(!victims.contains(&new_leader));
    let after = cluster.replicas[&survivors[0]].write_command(create("after-the-kills")).await.unwrap();
    assert!(created(&after.outcome));
    let mut expected = acknowledged.clone();
    expected.insert("after-the-kills".to_owned());
    assert!(acknowledged.len() > 10, "writes before and after the kills: {}", acknowledged.len());
    assert_everywhere(&cluster, &expected).await;

    for id in victims {
        cluster.start_replica(id).await;
    }
    assert_everywhere(&cluster, &expected).await;
    cluster.shutdown().await;
}
