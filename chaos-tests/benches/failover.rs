//! Failover timings on a 3-replica cluster with the server's default Raft timing (heartbeat
//! 100 ms, election timeout 400–800 ms), release binaries:
//!
//! - leader kill → writes accepted again: 4 clients update entries through every live
//!   replica's admin socket; the leader is killed (kill -9); the figure is the time from the
//!   kill to the answer of the first write sent after it that was acknowledged;
//! - agent switch: an agent (all three replicas configured) serves a workload that asks for a
//!   JWT-SVID for a new audience every 20 ms (a cache miss: the agent must reach a replica);
//!   the replica the agent calls first is killed, or paused (SIGSTOP, a hung machine, for
//!   13 s: longer than the agent's 10 s call timeout); the figure is the time from the fault
//!   to the first answer to a request sent after it.
//!
//! `cargo bench -p testudo-chaos-tests --bench failover -- --rounds 20` (build the release
//! binaries first: `cargo build --release -p testudo-server -p testudo-agent`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_tests::drills::entry_clients::{self, Alive, Load};
use chaos_tests::drills::svid_watch::attach_agent;
use chaos_tests::linearizability::{Op, Outcome};
use proto::workload as pb;
use testkit::{ReplicaOptions, ServerProcess};

fn rounds() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--rounds").and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(5)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn row(what: &str, mut figures: Vec<Duration>) {
    figures.sort();
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
    let all: Vec<String> = figures.iter().map(|d| ms(*d)).collect();
    println!(
        "| {what} | {} | {} | {} | {} |",
        figures.len(),
        ms(percentile(&figures, 0.5)),
        ms(figures.last().copied().unwrap_or_default()),
        all.join(", ")
    );
}

/// The API address the agent calls first, from its log (the first configured one until it
/// switches).
fn agent_current(log: &str, first: &str) -> String {
    log.lines()
        .rev()
        .filter(|l| l.contains("calling another replica first"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("server=")).map(str::to_owned))
        .next()
        .unwrap_or_else(|| first.to_owned())
}

fn main() {
    let rounds = rounds();
    let root = tempfile::tempdir().expect("a temporary directory");
    let options = ReplicaOptions {
        default_timing: true,
        server_extra: format!("default_x509_svid_ttl = \"1h\"\n  {}", testkit::NO_RATE_LIMITS),
        ..Default::default()
    };
    let mut servers: Vec<ServerProcess> =
        (1..=3).map(|id| ServerProcess::start_with(root.path(), id, &options)).collect();
    ServerProcess::form_cluster(&servers);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");

    // Leader kills under write load.
    let alive = Alive::new(3);
    let load = Load::start(&runtime, &servers, 4, vec![alive.targets(); 4]);
    std::thread::sleep(Duration::from_secs(2));
    let mut kills = Vec::new();
    for _ in 0..rounds {
        let Some(leader) = entry_clients::leader(&servers, &alive.snapshot()) else { panic!("no leader") };
        let index = servers.iter().position(|s| s.id == leader).expect("the leader is a replica");
        alive.set(index, false);
        kills.push(load.now());
        servers[index].kill();
        std::thread::sleep(Duration::from_secs(4));
        servers[index].restart();
        alive.set(index, true);
        std::thread::sleep(Duration::from_secs(3));
    }
    let history = load.finish(&runtime);
    let recovered: Vec<Duration> = kills
        .iter()
        .filter_map(|&kill| {
            history
                .iter()
                .filter(|o| {
                    matches!(o.recorded.op, Op::Write(_))
                        && matches!(o.recorded.outcome, Outcome::Ok(_))
                        && o.recorded.invoked >= kill
                })
                .map(|o| o.recorded.returned - kill)
                .min()
                .map(Duration::from_nanos)
        })
        .collect();

    // The agent's replica killed, then paused.
    let (agent, _) = attach_agent(root.path(), &servers);
    let calls: Arc<Mutex<Vec<(Instant, Instant, bool)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workload = {
        let (calls, stop, socket): (_, _, PathBuf) = (calls.clone(), stop.clone(), agent.socket());
        runtime.spawn(async move {
            let channel = proto::unix_socket::connect(&socket).await.expect("the agent's socket");
            let mut client = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let mut request = tonic::Request::new(pb::JwtsvidRequest {
                    audience: vec![format!("failover-{n}")],
                    spiffe_id: String::new(),
                });
                request
                    .metadata_mut()
                    .insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
                let sent = Instant::now();
                let ok = client.fetch_jwtsvid(request).await.is_ok_and(|r| !r.get_ref().svids.is_empty());
                calls.lock().unwrap_or_else(|p| p.into_inner()).push((sent, Instant::now(), ok));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let addresses: Vec<String> = servers.iter().map(ServerProcess::api_address).collect();
    let (mut killed, mut paused) = (Vec::new(), Vec::new());
    for round in 0..2 * rounds {
        let current = agent_current(&agent.log(), &addresses[0]);
        let index = addresses.iter().position(|a| *a == current).expect("the agent calls a configured replica");
        let at = Instant::now();
        if round % 2 == 0 {
            servers[index].kill();
            killed.push(at);
        } else {
            servers[index].pause();
            paused.push(at);
        }
        // Longer than the agent's call timeout (10 s), so a hung replica is left behind.
        std::thread::sleep(Duration::from_secs(if round % 2 == 0 { 4 } else { 13 }));
        if round % 2 == 0 {
            servers[index].restart();
        } else {
            servers[index].resume();
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = runtime.block_on(workload);
    let calls = calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let switch = |faults: &[Instant]| -> Vec<Duration> {
        faults
            .iter()
            .filter_map(|&at| {
                calls.iter().filter(|(sent, _, ok)| *ok && *sent >= at).map(|(_, answered, _)| *answered - at).min()
            })
            .collect()
    };
    let failed_calls = calls.iter().filter(|(_, _, ok)| !ok).count();

    println!(
        "# Failover, 3 replicas ({}), default Raft timing, {rounds} rounds each",
        testkit::binary("testudo-server").display()
    );
    println!("| what | rounds | p50 ms | max ms | every round, ms |");
    println!("| --- | ---: | ---: | ---: | --- |");
    row("leader kill -9 → first acknowledged write sent after it", recovered);
    row("agent's replica kill -9 → first JWT-SVID minted after it", switch(&killed));
    row("agent's replica SIGSTOP → first JWT-SVID minted after it", switch(&paused));
    println!("workload JWT-SVID requests: {} ({failed_calls} failed)", calls.len());
}
