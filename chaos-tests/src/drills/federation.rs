//! Two federated clusters, example.org and b.test, of three replicas each; each serves its
//! bundle endpoint on every replica behind one balanced address, as a load balancer would.
//! A workload in each domain holds an X.509-SVID from its own agent and the other domain's
//! bundle, and all along the example.org workload opens mTLS connections to the b.test one
//! and back, each side checking the other's SVID against the federated bundle its agent
//! delivered. Each round both clusters prepare a new CA; at the moment each cluster's
//! refresh of the other's bundle is due, the leaders of both clusters are killed (a little
//! before or just after the due time). The refresh must still happen once, from the new
//! leader, and bring the new CA to the other domain's workload; then both clusters activate
//! their new CA and taint the old one, so both workloads move to SVIDs only the refreshed
//! bundles verify. No handshake may fail: both clusters keep their quorum.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::proxy::FaultProxy;
use testkit::{free_port, wait_until, AgentProcess, ReplicaOptions, ServerProcess};

use super::mtls::{Pairing, Workload};
use super::svid_watch::uid_selector;
use super::{runtime, Report, Settings, Workdir};

pub const NAME: &str = "federation";
const A: &str = "example.org";
const B: &str = "b.test";
/// Partners' refresh hint: the floor, so a round waits at most this for a refresh.
const HINT: Duration = Duration::from_secs(60);
/// How long after its due time a refresh may take to reach the other domain's workload,
/// with an election (300–600 ms) and an agent sync (1 s) on the way.
const DELIVERY_LIMIT: Duration = Duration::from_secs(15);

/// One trust domain of the drill: its replicas, agent and workload.
struct Domain {
    name: &'static str,
    servers: Vec<ServerProcess>,
    agent: AgentProcess,
    workload: Arc<Workload>,
}

fn config(name: &str, endpoint_port: u16, partner: &str, partner_endpoint: &str) -> String {
    format!(
        r#"default_x509_svid_ttl = "30s"
  federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {endpoint_port}
      refresh_hint = "{hint}s"
      profile "https_spiffe" {{}}
    }}
    federates_with "{partner}" {{
      bundle_endpoint_url = "https://{partner_endpoint}/"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://{partner}/spire/server"
      }}
    }}
  }}
  # {name}"#,
        hint = HINT.as_secs(),
    )
}

fn start_cluster(root: &Path, name: &str, ports: &[u16], partner: &str, partner_endpoint: &str) -> Vec<ServerProcess> {
    let servers: Vec<ServerProcess> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let options = ReplicaOptions {
                trust_domain: Some(name.into()),
                server_extra: config(name, *port, partner, partner_endpoint),
                ..Default::default()
            };
            ServerProcess::start_with(root, i as u64 + 1, &options)
        })
        .collect();
    ServerProcess::form_cluster(&servers);
    servers
}

impl Domain {
    fn live(&self) -> &ServerProcess {
        self.servers.iter().find(|s| s.pid().is_some()).expect("a live replica")
    }

    /// The replica that leads, as the live replicas see it.
    fn leader(&self) -> Option<usize> {
        let alive: Vec<bool> = self.servers.iter().map(|s| s.pid().is_some()).collect();
        let id = super::entry_clients::leader(&self.servers, &alive)?;
        self.servers.iter().position(|s| s.id == id)
    }

    /// This cluster's refresh schedule for `partner` (`federation show`'s `refresh`).
    fn refresh_of(&self, partner: &str) -> serde_json::Value {
        let shown = self.live().json(&["federation", "show", "--trustDomain", partner]);
        shown["federation_relationships"][0]["refresh"].clone()
    }
}

fn cas(server: &ServerProcess) -> Vec<Vec<u8>> {
    identity::bundle::parse_pem_certificates(&server.bundle_pem()).expect("the cluster's bundle")
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Attaches an agent to `servers` and registers `workload` under it, federating with
/// `partner`; the agent's bundle is the cluster's.
fn attach(root: &Path, name: &str, servers: &[ServerProcess], workload: &str, partner: &str) -> AgentProcess {
    let token = servers[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().expect("a token").to_owned();
    let agent_id = format!("spiffe://{name}/spire/agent/join_token/{token}");
    servers[0].json(&[
        "entry",
        "create",
        "--spiffe-id",
        workload,
        "--parent-id",
        &agent_id,
        "--selector",
        &uid_selector(),
        "--federates-with",
        partner,
    ]);
    let addresses: Vec<String> = servers.iter().map(ServerProcess::api_address).collect();
    AgentProcess::start_in(root, name, &addresses, &servers[0].bundle_pem(), &token, "1s")
}

/// Kills the leader of each domain; returns which replica of each went down.
fn kill_leaders(domains: &mut [Domain; 2], report: &mut Report) -> Vec<(usize, usize)> {
    let mut killed = Vec::new();
    for (d, domain) in domains.iter_mut().enumerate() {
        match domain.leader() {
            Some(index) => {
                domain.servers[index].kill();
                report.faults += 1;
                report.leader_kills += 1;
                killed.push((d, index));
            }
            None => report.failures.push(format!("{}: no leader to kill", domain.name)),
        }
    }
    killed
}

fn restart(domains: &mut [Domain; 2], killed: Vec<(usize, usize)>) {
    for (d, index) in killed {
        let server = &mut domains[d].servers[index];
        server.restart();
        assert!(server.serves_within(Duration::from_secs(20)), "restarted replica {} serves no reads", server.id);
    }
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let a_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let b_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let balanced =
        |ports: &[u16]| FaultProxy::balance(ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect());
    let (a_endpoint, b_endpoint) = (balanced(&a_ports), balanced(&b_ports));
    let a_servers = start_cluster(&root.path().join("a"), A, &a_ports, B, &b_endpoint.address());
    let b_servers = start_cluster(&root.path().join("b"), B, &b_ports, A, &a_endpoint.address());

    // Each side bootstraps the other's bundle once, then asks for a refresh.
    for (servers, partner, partner_servers) in [(&a_servers, B, &b_servers), (&b_servers, A, &a_servers)] {
        let pem = root.path().join(format!("{partner}.pem"));
        std::fs::write(&pem, partner_servers[0].bundle_pem()).expect("a bundle file");
        let path = pem.to_str().expect("a UTF-8 path");
        let out = servers[0].command(&["bundle", "set", "--id", &format!("spiffe://{partner}"), "--path", path]);
        assert!(out.status.success(), "bundle set: {}", String::from_utf8_lossy(&out.stderr));
        let out = servers[1].command(&["federation", "refresh", "--id", partner]);
        assert!(out.status.success(), "first refresh of {partner}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let a_agent = attach(&root.path().join("a"), A, &a_servers, "spiffe://example.org/web", B);
    let b_agent = attach(&root.path().join("b"), B, &b_servers, "spiffe://b.test/db", A);
    let workload = Workload::new;
    let mut domains = [
        Domain { name: A, servers: a_servers, agent: a_agent, workload: workload(A, "spiffe://example.org/web") },
        Domain { name: B, servers: b_servers, agent: b_agent, workload: workload(B, "spiffe://b.test/db") },
    ];

    let runtime = runtime();
    let mut pairing = Pairing::follow(
        &runtime,
        [
            (domains[0].workload.clone(), domains[0].agent.socket()),
            (domains[1].workload.clone(), domains[1].agent.socket()),
        ],
    );
    let (wa, wb) = (domains[0].workload.clone(), domains[1].workload.clone());
    wait_until(
        Duration::from_secs(60),
        || {
            wa.issuer().is_some()
                && wb.issuer().is_some()
                && !wa.held_bundle_of(B).is_empty()
                && !wb.held_bundle_of(A).is_empty()
        },
        "both workloads to hold an SVID and the other domain's bundle",
    );
    pairing.shake();

    let began = Instant::now();
    let mut rounds = 0;
    let mut delays = Vec::new();
    while settings.another_round(rounds, began) && report.passed() {
        rounds += 1;
        round(&mut domains, &mut report, &mut delays);
    }
    let seen = pairing.finish(&runtime, &mut report, "cross-domain");
    let slowest = delays.iter().cloned().fold(0.0_f64, f64::max);
    report.summary = format!(
        "{rounds} rounds, {} leader kills around refreshes, {} of {} cross-domain mTLS handshakes failed \
         (longest gap between successful ones {} ms), new CAs at the other domain's workload at most \
         {slowest:.1} s after the refresh was due",
        report.faults,
        seen.failed.len(),
        seen.made,
        seen.longest_gap.as_millis()
    );
    if !report.passed() {
        for domain in &domains {
            report.failures.push(format!("{} agent log:\n{}", domain.name, domain.agent.log()));
        }
    }
    root.settle(&mut report);
    report
}

/// One round: both clusters prepare a CA; both leaders die around each refresh's due time;
/// the new CAs must reach the other domain's workload soon after; then both activate.
fn round(domains: &mut [Domain; 2], report: &mut Report, delays: &mut Vec<f64>) {
    let mut new_cas = Vec::new();
    let mut prepared_ids = Vec::new();
    for domain in domains.iter() {
        let before = cas(domain.live());
        let prepared = domain.live().json(&["localauthority", "x509", "prepare"]);
        prepared_ids.push(prepared["prepared"]["authority_id"].as_str().unwrap_or_default().to_owned());
        let after = cas(domain.live());
        new_cas.push(after.into_iter().find(|ca| !before.contains(ca)).expect("a prepared CA in the bundle"));
    }
    // When each cluster's refresh of the other is due (unix seconds).
    let dues: Vec<f64> = [(0, B), (1, A)]
        .iter()
        .map(|(d, partner)| domains[*d].refresh_of(partner)["next_due"].as_f64().unwrap_or_default())
        .collect();
    let mut order: Vec<usize> = vec![0, 1];
    order.sort_by(|x, y| dues[*x].total_cmp(&dues[*y]));
    let mut last_kill = f64::MIN;
    for &d in &order {
        // Both leaders die between 500 ms before and 200 ms after the due time, unless the
        // previous kill already covered it.
        if dues[d] - last_kill < 3.0 {
            continue;
        }
        let at = dues[d] + fastrand::f64() * 0.7 - 0.5;
        let wait = at - unix_now();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        let killed = kill_leaders(domains, report);
        last_kill = dues[d];
        std::thread::sleep(Duration::from_secs(2));
        restart(domains, killed);
    }
    // The refreshing cluster's new leader fetched the other's bundle once, on time, and
    // its workload holds the other's new CA.
    for (d, partner, partner_index) in [(0, B, 1), (1, A, 0)] {
        let workload = domains[d].workload.clone();
        let deadline = Instant::now() + DELIVERY_LIMIT + Duration::from_secs_f64((dues[d] - unix_now()).max(0.0));
        while !workload.held_bundle_of(partner).contains(&new_cas[partner_index]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let delay = unix_now() - dues[d];
        if !workload.held_bundle_of(partner).contains(&new_cas[partner_index]) {
            report.failures.push(format!(
                "{}'s workload lacks {partner}'s new CA {delay:.1} s after the refresh was due; schedule: {}",
                domains[d].name,
                domains[d].refresh_of(partner)
            ));
            continue;
        }
        delays.push(delay);
        let refresh = domains[d].refresh_of(partner);
        let last_success = refresh["last_success"].as_f64().unwrap_or_default();
        let next_due = refresh["next_due"].as_f64().unwrap_or_default();
        report.check(last_success >= dues[d] && last_success <= dues[d] + DELIVERY_LIMIT.as_secs_f64(), || {
            format!("{}: the refresh due at {} was recorded at {last_success}: {refresh}", domains[d].name, dues[d])
        });
        report.check(next_due == last_success + HINT.as_secs_f64(), || {
            format!("{}: the schedule does not go on from that refresh: {refresh}", domains[d].name)
        });
    }
    // Both clusters move to their new CA and taint the old one: their agents replace the
    // workloads' SVIDs at once, and only the refreshed bundles verify the new ones.
    for (d, domain) in domains.iter().enumerate() {
        let old = domain.live().json(&["localauthority", "x509", "show"])["active"]["authority_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        domain.live().json(&["localauthority", "x509", "activate", "--authority-id", &prepared_ids[d]]);
        domain.live().json(&["localauthority", "x509", "taint", "--authority-id", &old]);
    }
    for (d, domain) in domains.iter().enumerate() {
        let workload = domain.workload.clone();
        let moved = (0..200).any(|_| {
            let done = workload.issuer().as_ref() == Some(&new_cas[d]);
            if !done {
                std::thread::sleep(Duration::from_millis(100));
            }
            done
        });
        report.check(moved, || format!("{}'s workload has no SVID from the new CA 20 s after activation", domain.name));
    }
    // A few handshakes with the new SVIDs before the next round.
    std::thread::sleep(Duration::from_secs(2));
}
