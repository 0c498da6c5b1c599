//! The in-memory views follow what apply announces: changes made anywhere in the cluster
//! show up on every replica without reloading everything, node aliases and descendants are
//! followed, and pruning the change log changes nothing for them.

use std::collections::BTreeSet;
use std::time::Duration;

use identity::TrustDomain;
use identity::{Selector, SpiffeId};
use raft_store::command::*;
use raft_store::model::{AttestedAgent, RegistrationEntry};
use raft_store::testing::TestCluster;
use server::ca::replicated::ClusterCa;
use server::ca::{CaConfig, CaKeys};
use server::clock::SystemClock;
use server::views::Views;
use std::sync::Arc;

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

async fn authorized_ids(views: &Views, replica: &raft_store::node::Replica) -> BTreeSet<String> {
    let server = SpiffeId::parse(SERVER).unwrap();
    // A caller's view reflects everything its replica applied when it asked.
    views.reach(replica.applied().current_revision()).await.unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    views.entries().authorized(&agent(), &server, now).unwrap().into_keys().collect()
}

/// Views of `replica`'s state, kept current from what it announces.
fn follow(replica: &raft_store::node::Replica) -> Arc<Views> {
    let ca = ClusterCa {
        config: CaConfig::new(TrustDomain::parse("example.org").unwrap()),
        keys: CaKeys::Shared,
        upstream: None,
        clock: Arc::new(SystemClock),
    };
    let views = Arc::new(Views::new(ca));
    tokio::spawn(views.clone().follow(replica.local_reader().clone(), replica.applied().clone()));
    views
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_follow_changes_on_every_replica_without_reloading() {
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

    let leader_views = follow(on_leader);
    assert_eq!(
        authorized_ids(&leader_views, on_leader).await,
        ids(&["direct", "via-alias", "grandchild"]),
        "aliases themselves are not minted for"
    );
    assert_eq!(leader_views.reloads(), 1);

    // Changes through a follower: reparent, delete, create. The leader's views see each one
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
    assert_eq!(authorized_ids(&leader_views, on_leader).await, ids(&["direct", "new"]));
    assert_eq!(leader_views.reloads(), 1, "changes arrive by delta, not by reloading");
    assert_eq!(leader_views.revision(), on_leader.local_reader().revision().await.unwrap());
    assert_eq!(leader_views.revision(), on_leader.applied().current_revision());

    // A follower's views converge once the follower has applied the same revision.
    let follower_views = follow(on_follower);
    let target = on_leader.local_reader().revision().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while on_follower.local_reader().revision().await.unwrap() < target {
        assert!(tokio::time::Instant::now() < deadline, "the follower applies every write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(authorized_ids(&follower_views, on_follower).await, ids(&["direct", "new"]));

    // Pruning the change log changes nothing for views that follow apply.
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
    assert_eq!(authorized_ids(&leader_views, on_leader).await, ids(&["new", "late"]));
    assert_eq!(leader_views.reloads(), 1, "a pruned change log costs no reload");
    on_leader
        .write_command(Command::CreateEntries(CreateEntries(vec![entry(
            "after",
            "spiffe://example.org/after",
            AGENT,
            &["unix:uid:7"],
        )])))
        .await
        .unwrap();
    assert_eq!(authorized_ids(&leader_views, on_leader).await, ids(&["new", "late", "after"]));
    assert_eq!(leader_views.reloads(), 1);
    assert_eq!(follower_views.reloads(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_prunes_the_change_log_behind_what_it_keeps() {
    use server::leader::change_log::prune_once;
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
    let revision = replica.local_reader().revision().await.unwrap();
    let floor = prune_once(replica, 20).await.unwrap().expect("30 revisions, 20 kept: prune");
    assert_eq!(floor, revision - 20);
    let oldest = replica.local_reader().changes_since(0, 1).await.unwrap()[0].revision;
    assert_eq!(oldest, floor, "records before the floor are gone, the rest kept");
    assert_eq!(
        prune_once(replica, 20).await.unwrap(),
        None,
        "the floor would move by less than a tenth of what is kept"
    );
    // The floor is replicated: another replica that leads next resumes from it.
    let follower = &cluster.replicas[&cluster.follower(leader)];
    let head = replica.applied().current_revision();
    follower.linearizable_reader().await.unwrap();
    assert!(follower.applied().current_revision() >= head);
    assert_eq!(prune_once(follower, 20).await.unwrap(), None, "a new leader does not prune the same records again");

    // Views started after the prune load every entry.
    let views = follow(replica);
    assert_eq!(authorized_ids(&views, replica).await.len(), 30);
    assert_eq!(views.reloads(), 1);
    cluster.shutdown().await;
}

/// An entry past its `expires_at` is neither authorized nor followed to its children at
/// once, and the leader's prune removes it (and only it) from the replicated state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_not_served_and_are_pruned() {
    let cluster = TestCluster::start(1, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let replica = &cluster.replicas[&leader];
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let with_expiry = |mut e: RegistrationEntry, at: i64| {
        e.expires_at = at;
        e
    };
    replica
        .write_command(Command::CreateEntries(CreateEntries(vec![
            with_expiry(entry("gone", "spiffe://example.org/gone", AGENT, &["unix:uid:1"]), now - 10),
            entry("under-gone", "spiffe://example.org/gone/child", "spiffe://example.org/gone", &["unix:uid:2"]),
            with_expiry(entry("later", "spiffe://example.org/later", AGENT, &["unix:uid:3"]), now + 3_600),
            entry("forever", "spiffe://example.org/forever", AGENT, &["unix:uid:4"]),
        ])))
        .await
        .unwrap();
    let views = follow(replica);
    assert_eq!(authorized_ids(&views, replica).await, ids(&["later", "forever"]));
    assert!(views.entries().any_expired(now));

    let pruned = replica.write(raft_store::command::PruneEntries { expired_before: now }).await.unwrap();
    assert_eq!(pruned, 1);
    views.reach(replica.applied().current_revision()).await.unwrap();
    assert!(!views.entries().any_expired(now));
    assert!(replica.local_reader().entry("gone").await.unwrap().is_none());
    assert!(replica.local_reader().entry("under-gone").await.unwrap().is_some(), "only expired entries go");
}
