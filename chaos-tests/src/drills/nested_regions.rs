//! A root cluster and two regional clusters nested under it, `eu` and `us`, three replicas
//! each, one trust domain. Each region reaches the root over wide-area links of its own (a
//! fault proxy per root replica, 40 ms ± 10 ms each way) and takes its intermediate CA
//! from there (`UpstreamAuthority "spire"`, its replicas' SVIDs from a root agent in the
//! region). A workload in each region opens mutual TLS to the other's every 200 ms, each
//! checking the other's SVID against the bundle its own agent delivered: the root's roots.
//! Each round kills the leader of eu, of us and of the root in turn (each restarted 2 s
//! later), then cuts eu off from the root for a while and heals it. No handshake may fail,
//! and both workloads' SVIDs (20 s) keep rotating and stay under the root.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::proxy::{FaultProxy, Link};
use testkit::{wait_until, AgentProcess, ReplicaOptions, ServerProcess};

use super::mtls::{Pairing, Workload};
use super::svid_watch::uid_selector;
use super::{runtime, Report, Settings, Workdir};

pub const NAME: &str = "nested_regions";
const TRUST_DOMAIN: &str = "example.org";
/// Between a region and the root.
const WAN: Link = Link::Wan { latency: Duration::from_millis(40), jitter: Duration::from_millis(10) };
/// How long eu is cut off from the root each round: several SVID lifetimes.
const CUT: Duration = Duration::from_secs(30);
/// The intermediate's lifetime: a cut far shorter than half of it is invisible.
const INTERMEDIATE_TTL: &str = "600";

/// One regional cluster and what runs in the region.
pub struct Region {
    pub name: &'static str,
    pub servers: Vec<ServerProcess>,
    /// The root's agent in the region, which gives the region's replicas their SVID.
    _root_agent: AgentProcess,
    pub agent: AgentProcess,
    /// The region's links to each root replica.
    pub links: Vec<FaultProxy>,
    pub workload: Arc<Workload>,
}

fn token(server: &ServerProcess) -> String {
    server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().expect("a join token").to_owned()
}

fn agent_id(token: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}")
}

/// A regional cluster of three under `root`, reaching it over WAN links, with a root agent
/// and an agent of its own in the region, and `workload` registered under the latter.
pub fn start_region(dir: &Path, name: &'static str, workload: &'static str, root: &[ServerProcess]) -> Region {
    let root_addresses: Vec<String> = root.iter().map(ServerProcess::api_address).collect();
    let root_token = token(&root[0]);
    let root_agent = AgentProcess::start_discovering_paths(
        &dir.join("root-agent"),
        &root_addresses,
        &root[0].bundle_pem(),
        &root_token,
        "1s",
    );
    let server_binary = std::fs::canonicalize(testkit::binary("testudo-server")).expect("the server binary");
    root[0].json(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TRUST_DOMAIN}/region/{name}"),
        "--parent-id",
        &agent_id(&root_token),
        "--selector",
        &format!("unix:path:{}", server_binary.display()),
        "--downstream",
        "--x509-svid-ttl",
        INTERMEDIATE_TTL,
    ]);
    let links: Vec<FaultProxy> = root
        .iter()
        .map(|s| {
            let link = FaultProxy::start(s.api_address().parse().expect("an API address"));
            link.set(WAN);
            link
        })
        .collect();
    let upstream: Vec<String> = links.iter().map(|l| format!("\"{}\"", l.address())).collect();
    let options = ReplicaOptions {
        server_extra: r#"default_x509_svid_ttl = "20s""#.into(),
        plugins_extra: format!(
            "UpstreamAuthority \"spire\" {{\n plugin_data {{\n server_address = [{}]\n workload_api_socket = \"{}\"\n \
             }}\n }}",
            upstream.join(", "),
            root_agent.socket().display()
        ),
        ..Default::default()
    };
    let servers: Vec<ServerProcess> =
        (1..=3).map(|i| ServerProcess::start_with(&dir.join("servers"), i, &options)).collect();
    ServerProcess::form_cluster(&servers);
    wait_until(
        Duration::from_secs(60),
        || servers.iter().all(|s| s.command(&["bundle", "show"]).status.success()),
        &format!("region {name} to hold a CA from the root"),
    );
    let region_token = token(&servers[0]);
    servers[1].json(&[
        "entry",
        "create",
        "--spiffe-id",
        workload,
        "--parent-id",
        &agent_id(&region_token),
        "--selector",
        &uid_selector(),
    ]);
    let addresses: Vec<String> = servers.iter().map(ServerProcess::api_address).collect();
    let agent = AgentProcess::start(&dir.join("agent"), &addresses, &servers[0].bundle_pem(), &region_token, "1s");
    Region { name, servers, _root_agent: root_agent, agent, links, workload: Workload::new(TRUST_DOMAIN, workload) }
}

/// Kills the leader of `servers`, waits 2 s and restarts it; whether there was one.
fn kill_leader(servers: &mut [ServerProcess]) -> bool {
    let alive = vec![true; servers.len()];
    let Some(id) = super::entry_clients::leader(servers, &alive) else { return false };
    let Some(index) = servers.iter().position(|s| s.id == id) else { return false };
    servers[index].kill();
    std::thread::sleep(Duration::from_secs(2));
    servers[index].restart();
    assert!(servers[index].serves_within(Duration::from_secs(20)), "restarted replica {id} serves no reads");
    true
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let mut root_servers = ServerProcess::cluster(&root.path().join("root"), 3, "");
    let root_roots = identity::bundle::parse_pem_certificates(&root_servers[0].bundle_pem()).expect("the roots");
    let mut regions = [
        start_region(&root.path().join("eu"), "eu", "spiffe://example.org/eu-web", &root_servers),
        start_region(&root.path().join("us"), "us", "spiffe://example.org/us-web", &root_servers),
    ];

    let runtime = runtime();
    let mut pairing = Pairing::follow(
        &runtime,
        [
            (regions[0].workload.clone(), regions[0].agent.socket()),
            (regions[1].workload.clone(), regions[1].agent.socket()),
        ],
    );
    let (eu, us) = (regions[0].workload.clone(), regions[1].workload.clone());
    wait_until(Duration::from_secs(60), || eu.chain().is_some() && us.chain().is_some(), "both regions' workloads");
    pairing.shake();

    let began = Instant::now();
    let mut rounds = 0;
    while settings.another_round(rounds, began) {
        rounds += 1;
        for region in regions.iter_mut() {
            if kill_leader(&mut region.servers) {
                report.faults += 1;
                report.leader_kills += 1;
            } else {
                report.failures.push(format!("region {}: no leader to kill", region.name));
            }
        }
        if kill_leader(&mut root_servers) {
            report.faults += 1;
            report.leader_kills += 1;
        } else {
            report.failures.push("root: no leader to kill".into());
        }
        for link in &regions[0].links {
            link.set(Link::Reset);
        }
        report.faults += 1;
        std::thread::sleep(CUT);
        for link in &regions[0].links {
            link.set(WAN);
        }
    }
    // Long enough after the cut for another rotation in each region.
    std::thread::sleep(Duration::from_secs(8));
    let seen = pairing.finish(&runtime, &mut report, "cross-region");
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse(TRUST_DOMAIN).expect("a name"));
    for der in &root_roots {
        let _ = bundle.add_x509_authority(der);
    }
    for region in &regions {
        let svids = region.workload.svids_seen();
        report.check(svids >= 3, || format!("region {}'s SVID rotated too little: {svids} seen", region.name));
        let chain = region.workload.chain().unwrap_or_default();
        let verified = identity::x509::verify_x509_svid(&chain, &bundle, time::OffsetDateTime::now_utc());
        report.check(verified.is_ok(), || format!("region {}'s SVID is not under the root: {verified:?}", region.name));
    }
    report.summary = format!(
        "{rounds} rounds, {} faults (leader kills in eu, us and the root; eu cut off for {} s), {} of {} \
         cross-region mTLS handshakes failed, longest gap between successful handshakes {} ms, SVIDs seen: eu \
         {}, us {}",
        report.faults,
        CUT.as_secs(),
        seen.failed.len(),
        seen.made,
        seen.longest_gap.as_millis(),
        regions[0].workload.svids_seen(),
        regions[1].workload.svids_seen()
    );
    if !report.passed() {
        for region in &regions {
            report.failures.push(format!("{} agent log:\n{}", region.name, region.agent.log()));
        }
    }
    root.settle(&mut report);
    report
}
