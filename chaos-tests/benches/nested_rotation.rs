//! How long a nested cluster takes to move to a new intermediate CA when its upstream is
//! across a wide-area link: a root cluster of three and a regional cluster of three nested
//! under it, the region reaching the root through 40 ms ± 10 ms links each way (the fault
//! proxy), release binaries. Each round prepares a new X.509 authority on a regional replica
//! (a CSR signed with the region's key, NewDownstreamX509CA on the root over the WAN, one
//! Raft write), waits until every regional replica reports it prepared, activates it, and
//! waits until every regional replica signs with it. Replicas are polled with
//! `localauthority x509 show` every 20 ms, so figures carry up to a poll's worth of delay.
//!
//! `cargo bench -p testudo-chaos-tests --bench nested_rotation -- --rounds 10` (build the
//! release binaries first: `cargo build --release -p testudo-server -p testudo-agent`).

use std::time::{Duration, Instant};

use chaos_tests::drills::nested_regions::start_region;
use testkit::ServerProcess;

fn rounds() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--rounds").and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(10)
}

fn row(what: &str, mut figures: Vec<Duration>) {
    figures.sort();
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
    let median = figures.get(figures.len() / 2).copied().unwrap_or_default();
    let all: Vec<String> = figures.iter().map(|d| ms(*d)).collect();
    println!(
        "| {what} | {} | {} | {} | {} |",
        figures.len(),
        ms(median),
        ms(figures.last().copied().unwrap_or_default()),
        all.join(", ")
    );
}

/// Waits until every replica's `localauthority x509 show` has `slot` = `id`.
fn everywhere(servers: &[ServerProcess], slot: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for server in servers {
        loop {
            let shown = server.json(&["localauthority", "x509", "show"]);
            if shown[slot]["authority_id"] == id {
                break;
            }
            assert!(Instant::now() < deadline, "replica {} never showed {slot} {id}: {shown}", server.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn main() {
    let rounds = rounds();
    let dir = tempfile::tempdir().expect("a directory");
    let root = ServerProcess::cluster(&dir.path().join("root"), 3, "");
    let region = start_region(&dir.path().join("eu"), "eu", "spiffe://example.org/eu-web", &root);
    let (mut prepare, mut replicated, mut activate, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let server = &region.servers[round % region.servers.len()];
        let started = Instant::now();
        let prepared = server.json(&["localauthority", "x509", "prepare"]);
        prepare.push(started.elapsed());
        let id = prepared["prepared"]["authority_id"].as_str().expect("a prepared authority").to_owned();
        everywhere(&region.servers, "prepared", &id);
        replicated.push(started.elapsed());
        let activating = Instant::now();
        server.json(&["localauthority", "x509", "activate", "--authority-id", &id]);
        everywhere(&region.servers, "active", &id);
        activate.push(activating.elapsed());
        total.push(started.elapsed());
    }
    println!("Nested rotation over a 40 ms ± 10 ms WAN, {rounds} rounds (ms)\n");
    println!("| step | rounds | p50 | max | all |");
    println!("| --- | ---: | ---: | ---: | --- |");
    row("prepare answered (CSR, NewDownstreamX509CA over the WAN, Raft write)", prepare);
    row("prepared on every regional replica", replicated);
    row("activate → active on every regional replica", activate);
    row("prepare → active on every regional replica", total);
}
