//! The agent-authorization cache follows the Raft change log: changes made anywhere in the
//! cluster show up on the next call without reloading everything, node aliases and
//! descendants are followed, and a pruned change log makes it reload once.

use std::collections::BTreeSet;
use std::time::Duration;

use identity::{Selector, SpiffeId};
use raft_store::command::*;
use raft_store::model::{AttestedAgent, RegistrationEntry};
use raft_store::testing::TestCluster;
use server::cluster::entry_cache::EntryCache;

const AGENT: &str = "spiffe://example.org/spire/agent/join_token/a";
const SERVER: &str = "spiffe://example.org/spire/server";

fn entry(id: &str, spiffe_id: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
    let selectors = selectors.iter().map(|s| Selector::parse(s).unwrap()).collect();
    RegistrationEntry::new(id.into(), SpiffeId::parse(spiffe_id).unwrap(), SpiffeId::parse(parent).unwrap(), selectors)
}

fn agent() -> AttestedAgent {
    AttestedAgent {
        spiffe_id: SpiffeId::parse(AGENT).unwrap(),
        attestation_type: "join_token".into(),
        selectors: vec![Selector::parse("k8s:cluster:blue").unwrap(), Selector::parse("k8s:zone:a").unwrap()],
        serial_number: "01".into(),
        expires_at: 0,
        new_serial_number: String::new(),
        new_expires_at: 0,
        banned: false,
        can_reattest: false,
    }
}

async fn authorized_ids(cache: &EntryCache, replica: &raft_store::node::Replica) -> BTreeSet<String> {
    let server = SpiffeId::parse(SERVER).unwrap();
    cache.authorized(replica, &agent(), &server).await.unwrap().into_keys().collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_follows_changes_on_every_replica_and_reloads_only_after_a_prune() {
    let cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    let (on_leader, on_follower) = (&cluster.replicas[&leader], &cluster.replicas[&follower]);
    on_leader
        .write_command(Command::CreateEntries(CreateEntries(vec![
            entry("direct", "spiffe://example.org/web", AGENT, &["unix:uid:1"]),
            // A node alias whose selectors the agent has, one it lacks, and their children.
            entry("alias", "spiffe://example.org/blue-nodes", SERVER, &["k8s:cluster:blue"]),
            entry("other-alias", "spiffe://example.org/red-nodes", SERVER, &["k8s:cluster:red"]),
            entry("via-alias", "spiffe://example.org/db", "spiffe://example.org/blue-nodes", &["unix:uid:2"]),
            entry("not-mine", "spiffe://example.org/cache", "spiffe://example.org/red-nodes", &["unix:uid:3"]),
            // A descendant of an authorized workload.
            entry("grandchild", "spiffe://example.org/web/sidecar", "spiffe://example.org/web", &["unix:uid:4"]),
        ])))
        .await
        .unwrap();

    let leader_cache = EntryCache::default();
    assert_eq!(
        authorized_ids(&leader_cache, on_leader).await,
        ids(&["direct", "via-alias", "grandchild"]),
        "aliases themselves are not minted for"
    );
    assert_eq!(leader_cache.reloads(), 1);

    // Changes through a follower: reparent, delete, create. The leader's cache sees each one
    // on the next call (read-your-writes on the replica that applied them), by delta.
    let moved =
        entry("grandchild", "spiffe://example.org/web/sidecar", "spiffe://example.org/red-nodes", &["unix:uid:4"]);
    on_follower.write_command(Command::UpdateEntries(UpdateEntries(vec![moved]))).await.unwrap();
    on_follower.write_command(Command::DeleteEntries(DeleteEntries(vec!["alias".into()]))).await.unwrap();
    on_follower
        .write_command(Command::CreateEntries(CreateEntries(vec![entry(
            "new",
            "spiffe://example.org/new",
            AGENT,
            &["unix:uid:5"],
        )])))
        .await
        .unwrap();
    assert_eq!(authorized_ids(&leader_cache, on_leader).await, ids(&["direct", "new"]));
    assert_eq!(leader_cache.reloads(), 1, "changes arrive by delta, not by reloading");
    assert_eq!(leader_cache.revision(), on_leader.local_reader().revision().await.unwrap());

    // A follower's cache converges once the follower has applied the same revision.
    let follower_cache = EntryCache::default();
    let target = on_leader.local_reader().revision().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while on_follower.local_reader().revision().await.unwrap() < target {
        assert!(tokio::time::Instant::now() < deadline, "the follower applies every write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(authorized_ids(&follower_cache, on_follower).await, ids(&["direct", "new"]));

    // Prune the change log past the cache's revision: the next call reloads, once.
    on_leader
        .write_command(Command::CreateEntries(CreateEntries(vec![entry(
            "late",
            "spiffe://example.org/late",
            AGENT,
            &["unix:uid:6"],
        )])))
        .await
        .unwrap();
    let head =
        on_leader.write_command(Command::DeleteEntries(DeleteEntries(vec!["direct".into()]))).await.unwrap().revision;
    on_leader.write_command(Command::PruneChangeLog(PruneChangeLog { before_revision: head + 1 })).await.unwrap();
    assert_eq!(authorized_ids(&leader_cache, on_leader).await, ids(&["new", "late"]));
    assert_eq!(leader_cache.reloads(), 2, "a pruned change log means one reload");
    on_leader
        .write_command(Command::CreateEntries(CreateEntries(vec![entry(
            "after",
            "spiffe://example.org/after",
            AGENT,
            &["unix:uid:7"],
        )])))
        .await
        .unwrap();
    assert_eq!(authorized_ids(&leader_cache, on_leader).await, ids(&["new", "late", "after"]));
    assert_eq!(leader_cache.reloads(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_prunes_the_change_log_behind_what_it_keeps() {
    use server::cluster::change_log::prune_once;
    let cluster = TestCluster::start(2, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let replica = &cluster.replicas[&leader];
    for i in 0..30 {
        replica
            .write_command(Command::CreateEntries(CreateEntries(vec![entry(
                &format!("e{i}"),
                &format!("spiffe://example.org/w/{i}"),
                AGENT,
                &["unix:uid:1"],
            )])))
            .await
            .unwrap();
    }
    assert_eq!(prune_once(&cluster.replicas[&cluster.follower(leader)], 20, 0).await, None, "only the leader prunes");
    let revision = replica.local_reader().revision().await.unwrap();
    let floor = prune_once(replica, 20, 0).await.expect("30 revisions, 20 kept: prune");
    assert_eq!(floor, revision - 20);
    let oldest = replica.local_reader().changes_since(0, 1).await.unwrap()[0].revision;
    assert_eq!(oldest, floor, "records before the floor are gone, the rest kept");
    assert_eq!(prune_once(replica, 20, floor).await, None, "the floor would move by less than a tenth of what is kept");

    // A cache that was behind the floor reloads, and still answers right.
    let cache = EntryCache::default();
    assert_eq!(authorized_ids(&cache, replica).await.len(), 30);
    assert_eq!(cache.reloads(), 1);
    cluster.shutdown().await;
}
