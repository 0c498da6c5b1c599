//! Agent sync at scale: many attested agents and their entries on a 3-replica cluster
//! (release binaries); per-sync latency of the agent's own sync code (`agent::sync`) as the
//! total number of entries grows tenfold while each measured agent's own entries stay the
//! same, and the replicas' resident memory.
//!
//! 1. `--agents` agents attest with join tokens (spread over the replicas).
//! 2. Phase A: the first `--probes` agents get `--per-agent` entries each; each probe syncs
//!    twice, timed: a full sync (it knows nothing yet) and a steady one (it knows everything;
//!    the servers send revisions only).
//! 3. Phase B: every other agent gets `--per-agent` entries too (10,000 × 10 = 100,000 in
//!    all by default); the probes sync again, and then every agent does one full sync.
//!
//! `cargo bench -p testudo-chaos-tests --bench agent_sync -- --agents 10000 --per-agent 10`
//! (build the release binaries first: `cargo build --release -p testudo-server`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use agent::identity_store::StoredIdentity;
use identity::bundle::Bundle;
use identity::{SpiffeId, TrustDomain};
use proto::spire::api::server::agent::v1 as agent_pb;
use proto::spire::api::server::entry::v1 as entry_pb;
use proto::spire::api::types;
use proto::unix_socket::connect;
use server_pool::ServerPool;
use testkit::ServerProcess;

/// Probes sync a few at a time, so their latency is mostly the servers' work, not queueing.
const PROBE_CONCURRENCY: usize = 4;

struct Args {
    agents: usize,
    per_agent: usize,
    probes: usize,
    concurrency: usize,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: usize| {
        raw.iter().position(|a| a == name).and_then(|i| raw.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(default)
    };
    Args {
        agents: get("--agents", 10_000),
        per_agent: get("--per-agent", 10),
        probes: get("--probes", 1_000),
        concurrency: get("--concurrency", 16),
    }
}

/// The replicas' API addresses, starting at replica `i % 3`, so agents spread over them.
fn addresses_for(addresses: &[String], i: usize) -> Vec<String> {
    (0..addresses.len()).map(|k| addresses[(i + k) % addresses.len()].clone()).collect()
}

struct Cluster {
    servers: Vec<ServerProcess>,
    addresses: Vec<String>,
    bundle: Arc<RwLock<Bundle>>,
    server_id: SpiffeId,
}

impl Cluster {
    async fn pool(&self, i: usize) -> ServerPool {
        ServerPool::new(
            addresses_for(&self.addresses, i),
            self.server_id.clone(),
            self.bundle.clone(),
            "bench_failures",
        )
        .await
    }

    /// Resident memory of each replica now and at its peak, in MiB.
    fn memory(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                s.memory_kib()
                    .map(|(now, peak)| format!("replica {}: {} MiB (peak {} MiB)", s.id, now / 1024, peak / 1024))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `job(i)` for every `i` in `items`, `concurrency` at a time; returns the results in order.
async fn each<T: Send + 'static, F, Fut>(items: std::ops::Range<usize>, concurrency: usize, job: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(items.start));
    let end = items.end;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (job, next) = (job.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= end {
                        break out;
                    }
                    out.push((i, job(i).await));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("a worker"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// Creates `per_agent` entries for each agent in `agents`, 500 per call, through every
/// replica's admin socket in turn.
async fn create_entries(cluster: &Cluster, agent_ids: &[String], agents: std::ops::Range<usize>, per_agent: usize) {
    let mut entries = Vec::new();
    for a in agents {
        let parent = SpiffeId::parse(&agent_ids[a]).expect("an agent ID");
        for k in 0..per_agent {
            entries.push(types::Entry {
                spiffe_id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: format!("/w/{a}/{k}") }),
                parent_id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: parent.path().to_owned() }),
                selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{k}") }],
                ..Default::default()
            });
        }
    }
    let sockets: Vec<_> = cluster.servers.iter().map(ServerProcess::socket).collect();
    let batches: Arc<Vec<Vec<types::Entry>>> = Arc::new(entries.chunks(500).map(<[types::Entry]>::to_vec).collect());
    let n = batches.len();
    each(0..n, 4, move |b| {
        let (batches, socket) = (batches.clone(), sockets[b % sockets.len()].clone());
        async move {
            let channel = connect(&socket).await.expect("an admin socket");
            let answer = entry_pb::entry_client::EntryClient::new(channel)
                .batch_create_entry(entry_pb::BatchCreateEntryRequest {
                    entries: batches[b].clone(),
                    output_mask: None,
                })
                .await
                .expect("entries created")
                .into_inner();
            let failed = answer.results.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.code != 0)).count();
            assert_eq!(
                failed,
                0,
                "entries refused: {:?}",
                answer.results.iter().find_map(|r| r.status.as_ref().filter(|s| s.code != 0))
            );
        }
    })
    .await;
}

/// Sync latencies of the probes: (full sync, steady sync), and the entries each saw.
async fn probe(
    cluster: &Arc<Cluster>,
    identities: &Arc<Vec<StoredIdentity>>,
    probes: usize,
    concurrency: usize,
) -> (Vec<Duration>, Vec<Duration>, Vec<usize>) {
    let (cluster, identities) = (cluster.clone(), identities.clone());
    let results = each(0..probes, concurrency, move |i| {
        let (cluster, identities) = (cluster.clone(), identities.clone());
        async move {
            let pool = cluster.pool(i).await;
            pool.set_identity(&identities[i].chain, &identities[i].key_pkcs8);
            // A first call makes the connection, so the timed ones measure the sync alone.
            let _ = agent::sync::sync_entries(&pool, &BTreeMap::new()).await.expect("sync");
            let started = Instant::now();
            let known = agent::sync::sync_entries(&pool, &BTreeMap::new()).await.expect("sync");
            let full = started.elapsed();
            let started = Instant::now();
            let again = agent::sync::sync_entries(&pool, &known).await.expect("sync");
            (full, started.elapsed(), again.len())
        }
    })
    .await;
    let mut full: Vec<Duration> = results.iter().map(|r| r.0).collect();
    let mut steady: Vec<Duration> = results.iter().map(|r| r.1).collect();
    full.sort();
    steady.sort();
    (full, steady, results.iter().map(|r| r.2).collect())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or_default()
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = args();
    let root = tempfile::tempdir().expect("a temporary directory");
    let servers = ServerProcess::cluster(root.path(), 3, testkit::NO_RATE_LIMITS);
    let trust_domain = TrustDomain::parse("example.org").expect("a trust domain");
    let mut bundle = Bundle::new(trust_domain.clone());
    for cert in pem::parse_many(servers[0].bundle_pem()).expect("the bundle's PEM") {
        bundle.add_x509_authority(cert.contents()).expect("a CA certificate");
    }
    let addresses = servers.iter().map(ServerProcess::api_address).collect();
    let cluster = Arc::new(Cluster {
        servers,
        addresses,
        bundle: Arc::new(RwLock::new(bundle)),
        server_id: SpiffeId::parse("spiffe://example.org/spire/server").expect("the server ID"),
    });
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let concurrency = args.concurrency;

    // 1. Agents.
    let started = Instant::now();
    let attested: Vec<(String, StoredIdentity)> = runtime.block_on({
        let cluster = cluster.clone();
        each(0..args.agents, concurrency, move |i| {
            let cluster = cluster.clone();
            async move {
                let socket = cluster.servers[i % 3].socket();
                let channel = connect(&socket).await.expect("an admin socket");
                let token = agent_pb::agent_client::AgentClient::new(channel)
                    .create_join_token(agent_pb::CreateJoinTokenRequest { ttl: 3600, ..Default::default() })
                    .await
                    .expect("a join token")
                    .into_inner()
                    .value;
                let pool = cluster.pool(i).await;
                let identity = agent::attest::with_join_token(&pool, &token).await.expect("attested");
                (format!("spiffe://example.org/spire/agent/join_token/{token}"), identity)
            }
        })
    });
    let attest_time = started.elapsed();
    let (agent_ids, identities): (Vec<String>, Vec<StoredIdentity>) = attested.into_iter().unzip();
    let identities = Arc::new(identities);
    println!("attested {} agents in {:.1} s; {}", args.agents, attest_time.as_secs_f64(), cluster.memory());

    // 2. Phase A: only the probes have entries.
    let probes = args.probes.min(args.agents);
    let started = Instant::now();
    runtime.block_on(create_entries(&cluster, &agent_ids, 0..probes, args.per_agent));
    println!("phase A: {} entries created in {:.1} s", probes * args.per_agent, started.elapsed().as_secs_f64());
    let (full_a, steady_a, seen_a) = runtime.block_on(probe(&cluster, &identities, probes, PROBE_CONCURRENCY));
    assert!(seen_a.iter().all(|n| *n == args.per_agent), "a probe saw the wrong number of entries");
    let memory_a = cluster.memory();

    // 3. Phase B: everyone has entries.
    let started = Instant::now();
    runtime.block_on(create_entries(&cluster, &agent_ids, probes..args.agents, args.per_agent));
    let total = args.agents * args.per_agent;
    println!(
        "phase B: {} more entries created in {:.1} s ({total} in all)",
        (args.agents - probes) * args.per_agent,
        started.elapsed().as_secs_f64()
    );
    let (full_b, steady_b, seen_b) = runtime.block_on(probe(&cluster, &identities, probes, PROBE_CONCURRENCY));
    assert!(seen_b.iter().all(|n| *n == args.per_agent), "a probe saw the wrong number of entries");
    let started = Instant::now();
    let everyone = runtime.block_on({
        let (cluster, identities) = (cluster.clone(), identities.clone());
        each(0..args.agents, concurrency, move |i| {
            let (cluster, identities) = (cluster.clone(), identities.clone());
            async move {
                let pool = cluster.pool(i).await;
                pool.set_identity(&identities[i].chain, &identities[i].key_pkcs8);
                agent::sync::sync_entries(&pool, &BTreeMap::new()).await.expect("sync").len()
            }
        })
    });
    let all_time = started.elapsed();
    assert!(everyone.iter().all(|n| *n == args.per_agent), "an agent saw the wrong number of entries");
    let memory_b = cluster.memory();

    println!(
        "# Agent sync at scale: {} agents, {} entries each, 3 replicas ({}), {probes} probes syncing 4 at a time, \
            {concurrency} at a time for every agent",
        args.agents,
        args.per_agent,
        testkit::binary("testudo-server").display()
    );
    println!("| phase | entries in all | full sync p50 / p99 ms | steady sync p50 / p99 ms | replica memory |");
    println!("| --- | ---: | --- | --- | --- |");
    println!(
        "| A | {} | {:.2} / {:.2} | {:.2} / {:.2} | {memory_a} |",
        probes * args.per_agent,
        pct(&full_a, 0.5),
        pct(&full_a, 0.99),
        pct(&steady_a, 0.5),
        pct(&steady_a, 0.99)
    );
    println!(
        "| B | {total} | {:.2} / {:.2} | {:.2} / {:.2} | {memory_b} |",
        pct(&full_b, 0.5),
        pct(&full_b, 0.99),
        pct(&steady_b, 0.5),
        pct(&steady_b, 0.99)
    );
    println!(
        "full sync p50, B / A: {:.2}; steady sync p50, B / A: {:.2}",
        pct(&full_b, 0.5) / pct(&full_a, 0.5),
        pct(&steady_b, 0.5) / pct(&steady_a, 0.5)
    );
    println!(
        "every agent's full sync in phase B (new connection each): {} syncs in {:.1} s, {:.0} syncs/s",
        args.agents,
        all_time.as_secs_f64(),
        args.agents as f64 / all_time.as_secs_f64()
    );
}
