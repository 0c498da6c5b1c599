//! Committed Raft writes per second and latency: a 3-replica Testudo cluster (RocksDB with
//! synced WAL, mutual TLS, loopback) against a 3-member etcd cluster from Debian's
//! etcd-server on the same machine, with the same payload size and concurrency, in one run.
//!
//! cargo bench -p testudo-raft-store --bench raft_writes -- [--seconds N] [--concurrency C] [--payload BYTES] [--batch 1|100] [--rounds R] [--only testudo|etcd]
//!
//! Each round runs both systems back to back (in alternating order), so that a ratio
//! compares runs that shared the machine's state; the median ratio over rounds is reported.

use testkit::free_port;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use identity::{Selector, SpiffeId};
use proto::etcd::kv_client::KvClient;
use proto::etcd::{request_op, PutRequest, RequestOp, TxnRequest};
use raft_store::command::CreateEntries;
use raft_store::model::RegistrationEntry;
use raft_store::testing::TestCluster;
use raft_store::{Command, Outcome};

struct Options {
    seconds: u64,
    concurrency: usize,
    payload: usize,
    /// Only this batch size (both by default).
    batch: Option<usize>,
    /// Only this system (both by default; one alone is for profiling, with no ratio).
    only: Option<String>,
    /// Rounds per batch size.
    rounds: usize,
}

fn options() -> Options {
    let mut o = Options { seconds: 10, concurrency: 16, payload: 256, batch: None, only: None, rounds: 3 };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        if args[i] == "--only" {
            o.only = args.get(i + 1).cloned();
            i += 2;
            continue;
        }
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), value) {
            ("--seconds", Some(v)) => o.seconds = v,
            ("--concurrency", Some(v)) => o.concurrency = v as usize,
            ("--payload", Some(v)) => o.payload = v as usize,
            ("--batch", Some(v)) => o.batch = Some(v as usize),
            ("--rounds", Some(v)) => o.rounds = (v as usize).max(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// CPU seconds (user + system) a process has used so far, from /proc (USER_HZ ticks).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Latencies of one worker, and how many entries it got committed.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    entries: u64,
}

struct Figures {
    system: &'static str,
    batch: usize,
    requests_per_s: f64,
    entries_per_s: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of every process of the system and of the bench's clients, per 1000
    /// committed entries: what a write costs, whatever else the machine was doing.
    cpu_ms_per_1000: f64,
}

fn summarise(system: &'static str, batch: usize, tallies: Vec<Tally>, elapsed: Duration, cpu_seconds: f64) -> Figures {
    let mut latencies: Vec<Duration> = tallies.iter().flat_map(|t| t.latencies.iter().copied()).collect();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let entries: u64 = tallies.iter().map(|t| t.entries).sum();
    Figures {
        system,
        batch,
        requests_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        entries_per_s: entries as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        cpu_ms_per_1000: cpu_seconds * 1e6 / (entries.max(1) as f64),
    }
}

/// What every bench entry shares; a client builds it once, as etcd's bench client builds
/// its value once.
struct Template {
    parent: SpiffeId,
    selectors: Vec<Selector>,
    hint: String,
}

impl Template {
    fn new(payload: usize) -> Self {
        Self {
            parent: SpiffeId::parse("spiffe://bench.test/spire/agent/bench").expect("parent"),
            selectors: vec![Selector::parse("unix:uid:1000").expect("selector")],
            hint: "x".repeat(payload),
        }
    }

    fn entry(&self, id: String) -> RegistrationEntry {
        let spiffe_id = SpiffeId::parse(&format!("spiffe://bench.test/w/{id}")).expect("id");
        let mut entry = RegistrationEntry::new(id, spiffe_id, self.parent.clone(), self.selectors.clone());
        entry.hint = self.hint.clone();
        entry
    }
}

async fn testudo(o: &Options, batch: usize) -> Figures {
    let cluster = TestCluster::start(3, 1_000_000).await;
    let leader = cluster.wait_for_leader().await;
    let replica = &cluster.replicas[&leader];
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let start = Instant::now();
    let cpu_before = cpu_seconds(std::process::id());
    let template = &Template::new(o.payload);
    let workers = (0..o.concurrency).map(|w| async move {
        let mut tally = Tally::default();
        let mut n = 0u64;
        while Instant::now() < deadline {
            let entries = (0..batch).map(|i| template.entry(format!("w{w}-{n}-{i}"))).collect();
            n += 1;
            let sent = Instant::now();
            let response = replica.write_command(Command::CreateEntries(CreateEntries(entries))).await.expect("write");
            tally.latencies.push(sent.elapsed());
            if let Outcome::Entries(results) = response.outcome {
                tally.entries += results.iter().filter(|r| r.is_ok()).count() as u64;
            }
        }
        tally
    });
    let tallies = join_all(workers).await;
    let cpu = cpu_seconds(std::process::id()) - cpu_before;
    let figures = summarise("testudo", batch, tallies, start.elapsed(), cpu);
    cluster.shutdown().await;
    figures
}

/// Three etcd members on loopback; killed when dropped.
struct Etcd {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    clients: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_etcd() -> Etcd {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}")).collect();
    let mut children = Vec::new();
    let mut clients = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let child = Process::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "bench", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd from Debian's etcd-server package (deploy/bootstrap.sh installs it)");
        children.push(child);
        clients.push(format!("http://127.0.0.1:{client}"));
    }
    Etcd { _dir: dir, children, clients }
}

/// The client URL of etcd's current leader, once the cluster answers writes.
async fn etcd_leader(etcd: &Etcd) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Process::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.clients.join(","), "endpoint", "status", "-w", "json"])
            .output();
        if let Ok(out) = out {
            if let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                let leader = status.as_array().and_then(|members| {
                    members.iter().find(|m| {
                        m["Status"]["leader"].as_u64().is_some()
                            && m["Status"]["leader"] == m["Status"]["header"]["member_id"]
                    })
                });
                if let Some(endpoint) = leader.and_then(|m| m["Endpoint"].as_str()) {
                    return endpoint.to_owned();
                }
            }
        }
        assert!(Instant::now() < deadline, "etcd did not elect a leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn etcd(o: &Options, batch: usize) -> Figures {
    let etcd = start_etcd();
    let leader = etcd_leader(&etcd).await;
    let channel =
        tonic::transport::Endpoint::from_shared(leader).expect("url").connect().await.expect("connect to etcd");
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let start = Instant::now();
    let cpu_all = || cpu_seconds(std::process::id()) + etcd.children.iter().map(|c| cpu_seconds(c.id())).sum::<f64>();
    let cpu_before = cpu_all();
    let value = vec![b'x'; o.payload];
    let workers = (0..o.concurrency).map(|w| {
        let mut client = KvClient::new(channel.clone());
        let value = value.clone();
        async move {
            let mut tally = Tally::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = |i: usize| format!("w{w}-{n}-{i}").into_bytes();
                let sent = Instant::now();
                if batch == 1 {
                    client.put(PutRequest { key: key(0), value: value.clone() }).await.expect("etcd put");
                } else {
                    let success = (0..batch)
                        .map(|i| RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: key(i),
                                value: value.clone(),
                            })),
                        })
                        .collect();
                    client.txn(TxnRequest { success }).await.expect("etcd txn");
                }
                tally.latencies.push(sent.elapsed());
                tally.entries += batch as u64;
                n += 1;
            }
            tally
        }
    });
    let tallies = join_all(workers).await;
    let cpu = cpu_all() - cpu_before;
    summarise("etcd 3.4", batch, tallies, start.elapsed(), cpu)
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "# Raft writes: 3 replicas on loopback, fsync on, {} concurrent clients, {}-byte payload, {} s per run",
        o.concurrency, o.payload, o.seconds
    );
    println!("| round | system | batch | requests/s | entries/s | p50 | p99 | CPU ms / 1000 entries |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut ratios = Vec::new();
    for batch in [1usize, 100].into_iter().filter(|b| o.batch.is_none_or(|only| only == *b)) {
        let mut batch_ratios = Vec::new();
        for round in 1..=o.rounds {
            let runs = |system: &str| o.only.as_deref().is_none_or(|only| only == system);
            let run_ours = || runs("testudo").then(|| runtime.block_on(testudo(&o, batch)));
            let run_theirs = || runs("etcd").then(|| runtime.block_on(etcd(&o, batch)));
            let (ours, theirs) = if round % 2 == 1 {
                let ours = run_ours();
                (ours, run_theirs())
            } else {
                let theirs = run_theirs();
                (run_ours(), theirs)
            };
            for f in ours.iter().chain(theirs.iter()) {
                println!(
                    "| {round} | {} | {} | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.0} |",
                    f.system,
                    f.batch,
                    f.requests_per_s,
                    f.entries_per_s,
                    f.p50.as_secs_f64() * 1e3,
                    f.p99.as_secs_f64() * 1e3,
                    f.cpu_ms_per_1000
                );
            }
            if let (Some(ours), Some(theirs)) = (ours, theirs) {
                batch_ratios.push(ours.entries_per_s / theirs.entries_per_s);
            }
        }
        if !batch_ratios.is_empty() {
            ratios.push((batch, batch_ratios));
        }
    }
    for (batch, mut each) in ratios {
        let listed: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
        each.sort_by(f64::total_cmp);
        let median = each[each.len() / 2];
        println!(
            "batch {batch}: Testudo / etcd entries per second = {median:.2} (median of rounds: {})",
            listed.join(", ")
        );
    }
}
