//! Entry → SVID delivery: how long after `BatchCreateEntry` returns a workload's open
//! FetchX509SVID stream receives the SVID of the new entry. 3 replicas (release binaries),
//! one agent attached to a follower only, syncing every 5 s (SPIRE's default, and what a
//! new entry waited for before the servers pushed entry changes to agents).
//!
//! 1. `--rounds` times: create one entry for the agent through the leader's admin socket,
//!    then time until the workload's stream carries it.
//! 2. `--agents` more agents attest (in-process, each with one entry of its own) and hold a
//!    notification stream open to the same follower; the rounds are timed again.
//!
//! `cargo bench -p testudo-chaos-tests --bench entry_delivery -- --rounds 200 --agents 1000`
//! (build the release binaries first: `cargo build --release -p testudo-server -p testudo-agent`).

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use identity::bundle::Bundle;
use identity::{SpiffeId, TrustDomain};
use proto::spire::api::server::agent::v1 as agent_pb;
use proto::spire::api::server::entry::v1 as entry_pb;
use proto::spire::api::types;
use proto::unix_socket::connect;
use proto::workload as workload_pb;
use server_pool::ServerPool;
use testkit::{AgentProcess, ServerProcess};

const SYNC_INTERVAL: &str = "5s";
/// A round that sees nothing this long has failed: even the periodic sync would be late.
const ROUND_LIMIT: Duration = Duration::from_secs(15);

fn arg(name: &str, default: usize) -> usize {
    let raw: Vec<String> = std::env::args().collect();
    raw.iter().position(|a| a == name).and_then(|i| raw.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(default)
}

fn spiffe_id(path: &str) -> Option<types::Spiffeid> {
    Some(types::Spiffeid { trust_domain: "example.org".into(), path: path.into() })
}

async fn create_entry(socket: &std::path::Path, path: &str, parent: &SpiffeId, selector: &str) {
    let channel = connect(socket).await.expect("an admin socket");
    let (kind, value) = selector.split_once(':').expect("a selector");
    let answer = entry_pb::entry_client::EntryClient::new(channel)
        .batch_create_entry(entry_pb::BatchCreateEntryRequest {
            entries: vec![types::Entry {
                spiffe_id: spiffe_id(path),
                parent_id: spiffe_id(parent.path()),
                selectors: vec![types::Selector { r#type: kind.into(), value: value.into() }],
                ..Default::default()
            }],
            output_mask: None,
        })
        .await
        .expect("an entry created")
        .into_inner();
    let status = answer.results[0].status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "entry refused: {}", status.message);
}

async fn join_token(socket: &std::path::Path) -> String {
    let channel = connect(socket).await.expect("an admin socket");
    agent_pb::agent_client::AgentClient::new(channel)
        .create_join_token(agent_pb::CreateJoinTokenRequest { ttl: 3600, ..Default::default() })
        .await
        .expect("a join token")
        .into_inner()
        .value
}

/// Creates `rounds` entries one after another and returns how long each took to reach the
/// workload's stream, sorted.
async fn rounds(
    leader_socket: &std::path::Path,
    agent_id: &SpiffeId,
    selector: &str,
    stream: &mut tonic::Streaming<workload_pb::X509svidResponse>,
    label: &str,
    count: usize,
) -> Vec<Duration> {
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        let path = format!("/bench/{label}/{i}");
        let want = format!("spiffe://example.org{path}");
        create_entry(leader_socket, &path, agent_id, selector).await;
        let returned = Instant::now();
        loop {
            let message = tokio::time::timeout(ROUND_LIMIT.saturating_sub(returned.elapsed()), stream.message())
                .await
                .unwrap_or_else(|_| panic!("{want} did not reach the workload within {ROUND_LIMIT:?}"))
                .expect("the workload's stream")
                .expect("the stream stays open");
            if message.svids.iter().any(|s| s.spiffe_id == want) {
                took.push(returned.elapsed());
                break;
            }
        }
    }
    took.sort();
    took
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map(|d| d.as_secs_f64() * 1e3).unwrap_or_default()
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let count = arg("--rounds", 200);
    let extra_agents = arg("--agents", 1000);
    let root = tempfile::tempdir().expect("a temporary directory");
    let servers = ServerProcess::cluster(root.path(), 3, testkit::NO_RATE_LIMITS);
    let leader_id = servers[0].json(&["cluster", "status"])["leader"].as_u64().expect("a leader");
    let leader = servers.iter().find(|s| s.id == leader_id).expect("the leader's process");
    let follower = servers.iter().find(|s| s.id != leader_id).expect("a follower");
    let bundle_pem = servers[0].bundle_pem();
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let selector = format!("unix:uid:{uid}");

    // The measured agent, attached to the follower only.
    let token = follower.json(&["token", "generate", "--ttl", "600"])["value"].as_str().expect("a token").to_owned();
    let agent_id = SpiffeId::parse(&format!("spiffe://example.org/spire/agent/join_token/{token}")).expect("an ID");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    runtime.block_on(create_entry(&leader.socket(), "/bench/first", &agent_id, &selector));
    let agent = AgentProcess::start(root.path(), &[follower.api_address()], &bundle_pem, &token, SYNC_INTERVAL);

    runtime.block_on(async {
        let channel = proto::unix_socket::connect(&agent.socket()).await.expect("the Workload API socket");
        let mut client = workload_pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
        let mut request = tonic::Request::new(workload_pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().expect("a header value"));
        let mut stream = client.fetch_x509svid(request).await.expect("FetchX509SVID").into_inner();
        tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a first SVID within 30 s")
            .expect("the stream")
            .expect("a message");

        let alone = rounds(&leader.socket(), &agent_id, &selector, &mut stream, "alone", count).await;

        // Many more agents, each holding a notification stream to the same follower.
        let trust = TrustDomain::parse("example.org").expect("a trust domain");
        let mut bundle = Bundle::new(trust);
        for cert in pem::parse_many(&bundle_pem).expect("the bundle's PEM") {
            bundle.add_x509_authority(cert.contents()).expect("a CA certificate");
        }
        let bundle = Arc::new(RwLock::new(bundle));
        let server_id = SpiffeId::parse("spiffe://example.org/spire/server").expect("the server ID");
        let started = Instant::now();
        let mut opened = Vec::with_capacity(extra_agents);
        let mut watchers = Vec::with_capacity(extra_agents);
        for i in 0..extra_agents {
            let token = join_token(&follower.socket()).await;
            let pool = Arc::new(
                ServerPool::new(vec![follower.api_address()], server_id.clone(), bundle.clone(), "bench_failures")
                    .await,
            );
            let identity = agent::attest::with_join_token(&pool, &token).await.expect("attested");
            pool.set_identity(&identity.chain, &identity.key_pkcs8);
            let parent =
                SpiffeId::parse(&format!("spiffe://example.org/spire/agent/join_token/{token}")).expect("an ID");
            create_entry(&leader.socket(), &format!("/idle/{i}"), &parent, "unix:uid:1").await;
            let wake = Arc::new(tokio::sync::Notify::new());
            watchers.push(tokio::spawn(agent::entry_watch::watch(pool, wake.clone())));
            opened.push(wake);
        }
        // Each stream says where it stands as it opens: every one is open once each woke.
        for wake in &opened {
            tokio::time::timeout(Duration::from_secs(60), wake.notified()).await.expect("a notification stream opened");
        }
        println!(
            "{extra_agents} more agents attested, each with an entry and a notification stream open to replica {}, in \
                {:.1} s",
            follower.id,
            started.elapsed().as_secs_f64()
        );
        let crowded = rounds(&leader.socket(), &agent_id, &selector, &mut stream, "crowded", count).await;
        for watcher in watchers {
            watcher.abort();
        }

        println!(
            "# Entry → SVID delivery: BatchCreateEntry returned (leader) → the workload's FetchX509SVID stream (agent \
                on follower {}) carries the SVID; sync_interval {SYNC_INTERVAL}, {count} entries one after \
                another",
            follower.id
        );
        println!("| agents attached to the follower | p50 ms | p99 ms | max ms |");
        println!("| ---: | ---: | ---: | ---: |");
        for (agents, took) in [(1, &alone), (1 + extra_agents, &crowded)] {
            println!("| {agents} | {:.1} | {:.1} | {:.1} |", ms(took, 0.5), ms(took, 0.99), ms(took, 1.0));
        }
    });
}
