//! Every replica killed at once and kept down for less than half the SVID TTL, spanning the
//! moment the agent wants to rotate: the workload keeps an unexpired X.509-SVID and its
//! cached JWT-SVID throughout, the cluster comes back from its disks and accepts writes, and
//! the agent rotates once it can reach a replica again.

use std::time::{Duration, Instant};

use super::svid_watch::{attach_agent, JwtAsk, Watch, WEB};
use super::{runtime, Report, Settings, Workdir};
use testkit::{wait_until, ServerProcess};

pub const NAME: &str = "all_down";
/// SVID lifetime; the agent rotates at half of it.
const TTL: Duration = Duration::from_secs(20);
/// Less than half the TTL, so a workload holding a fresh SVID outlives the outage whenever
/// it starts.
const DOWN: Duration = Duration::from_secs(8);

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let mut servers =
        ServerProcess::cluster(root.path(), 3, &format!(r#"default_x509_svid_ttl = "{}s""#, TTL.as_secs()));
    let (agent, _) = attach_agent(root.path(), &servers);
    let runtime = runtime();
    let watch = Watch::start(&runtime, agent.socket(), WEB, JwtAsk::SameAudience);

    let (began, mut longest_unavailable) = (Instant::now(), Duration::ZERO);
    while settings.another_round(report.faults, began) {
        std::thread::sleep(Duration::from_secs(3));
        for server in &mut servers {
            server.kill();
        }
        report.faults += 1;
        report.leader_kills += 1;
        let down = Instant::now();
        std::thread::sleep(DOWN);
        for server in &mut servers {
            server.restart();
        }
        // Writes are accepted again once a leader is elected from what the disks hold.
        let mut n = 0;
        wait_until(
            Duration::from_secs(30),
            || {
                n += 1;
                servers[n % 3]
                    .command(&[
                        "entry",
                        "create",
                        "--spiffe-id",
                        &format!("spiffe://example.org/after-{}-{n}", report.faults),
                        "--parent-id",
                        "spiffe://example.org/spire/agent/x",
                        "--selector",
                        "unix:uid:1",
                    ])
                    .status
                    .success()
            },
            "a write accepted after every replica came back",
        );
        longest_unavailable = longest_unavailable.max(down.elapsed());
    }
    // Past the next rotation: the agent must have reached a replica again.
    std::thread::sleep(TTL / 2 + Duration::from_secs(2));
    let seen = watch.finish(&runtime);
    report.longest_write_gap = Some(longest_unavailable);
    seen.judge(2, &agent.log(), &mut report);
    report.summary = format!(
        "{} outages of {} s each (SVID TTL {} s), writes refused for at most {} ms, {} workload errors, longest time \
            without a valid SVID {} ms, {} X.509-SVIDs seen",
        report.faults,
        DOWN.as_secs(),
        TTL.as_secs(),
        longest_unavailable.as_millis(),
        seen.errors.len(),
        seen.longest_gap.as_millis(),
        seen.svids
    );
    root.settle(&mut report);
    report
}
