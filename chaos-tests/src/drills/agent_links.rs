//! The network between an agent and the replicas goes bad while a workload streams its
//! X.509-SVID and asks for a JWT-SVID for a new audience (a cache miss: the agent must
//! reach a replica) every 200 ms. The agent reaches each replica through a fault proxy of
//! its own; each round makes the links slow (300 ms each way on all three), lossy like a
//! long-haul path (150 ms ± 150 ms), half-open (two of the three stall: connections stay up
//! and nothing passes, as behind a dead route), then reset (two of the three refuse and drop
//! connections). One link stays usable in every step. The workload must see no error and
//! never hold an expired SVID, and its SVID must keep rotating.

use std::time::{Duration, Instant};

use super::svid_watch::{uid_selector, JwtAsk, Watch, WEB};
use super::{runtime, Report, Settings, Workdir};
use testkit::proxy::{FaultProxy, Link};
use testkit::{AgentProcess, ServerProcess};

pub const NAME: &str = "agent_links";
/// How long each bad-link step lasts; SVIDs live 20 s, so a step spans a rotation's
/// half-life now and then.
const STEP: Duration = Duration::from_secs(6);

const STEPS: [&str; 4] = ["slow", "long-haul", "half-open", "reset"];

/// What a link does in step `what`; `spared` links stay open in the steps that break links.
fn link(what: &str, spared: bool) -> Link {
    match what {
        "slow" => Link::Delay(Duration::from_millis(300)),
        "long-haul" => Link::Wan { latency: Duration::from_millis(150), jitter: Duration::from_millis(150) },
        _ if spared => Link::Open,
        "half-open" => Link::Stall,
        _ => Link::Reset,
    }
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let servers = ServerProcess::cluster(root.path(), 3, r#"default_x509_svid_ttl = "20s""#);
    let links: Vec<FaultProxy> =
        servers.iter().map(|s| FaultProxy::start(s.api_address().parse().expect("a socket address"))).collect();
    let token =
        servers[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().expect("a join token").to_owned();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    servers[0].json(&["entry", "create", "--spiffe-id", WEB, "--parent-id", &agent_id, "--selector", &uid_selector()]);
    let addresses: Vec<String> = links.iter().map(FaultProxy::address).collect();
    let agent = AgentProcess::start(root.path(), &addresses, &servers[0].bundle_pem(), &token, "1s");
    let runtime = runtime();
    let watch = Watch::start(&runtime, agent.socket(), WEB, JwtAsk::NewAudience);
    std::thread::sleep(Duration::from_secs(2));

    let began = Instant::now();
    let mut rounds = 0;
    while settings.another_round(rounds, began) {
        // The healthy link moves each round, so the agent's current replica is hit too.
        let spared = rounds % links.len();
        rounds += 1;
        for what in STEPS {
            for (i, proxy) in links.iter().enumerate() {
                proxy.set(link(what, i == spared));
            }
            report.faults += 1;
            eprintln!("{NAME}: round {rounds}: links {what} (replica {} spared)", spared + 1);
            std::thread::sleep(STEP);
            for proxy in &links {
                proxy.restore();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let took = began.elapsed();
    // Long enough for another rotation over healthy links.
    std::thread::sleep(Duration::from_secs(8));
    let seen = watch.finish(&runtime);
    seen.judge(2, &agent.log(), &mut report);
    report.summary = format!(
        "{} bad-link steps in {:.1} s, {} of {} new-audience JWT-SVIDs answered, {} workload errors, longest time \
         without a valid SVID {} ms, {} X.509-SVIDs seen",
        report.faults,
        took.as_secs_f64(),
        seen.jwt_answered,
        seen.jwt_calls,
        seen.errors.len(),
        seen.longest_gap.as_millis(),
        seen.svids
    );
    root.settle(&mut report);
    report
}
