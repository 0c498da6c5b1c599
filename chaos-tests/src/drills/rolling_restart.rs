//! Every replica restarted in turn (kill -9, down a second, started from its disk) while an
//! agent serves a workload that streams its X.509-SVID and asks for JWT-SVIDs: the workload
//! sees no error and always holds an SVID that has not expired; the agent's SVIDs keep
//! rotating (short TTLs), and an entry created mid-drill reaches the workload.

use std::time::{Duration, Instant};

use super::svid_watch::{attach_agent, uid_selector, JwtAsk, Watch, WEB};
use super::{runtime, Report, Settings, Workdir};
use testkit::ServerProcess;

pub const NAME: &str = "rolling_restart";
const LATE: &str = "spiffe://example.org/late";

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let mut servers = ServerProcess::cluster(root.path(), 3, r#"default_x509_svid_ttl = "20s""#);
    let (agent, agent_id) = attach_agent(root.path(), &servers);
    let runtime = runtime();
    let watch = Watch::start(&runtime, agent.socket(), WEB, JwtAsk::NewAudience);

    std::thread::sleep(Duration::from_secs(2));
    let began = Instant::now();
    let mut rounds = 0;
    while settings.another_round(rounds, began) {
        rounds += 1;
        for i in 0..servers.len() {
            servers[i].kill();
            report.faults += 1;
            std::thread::sleep(Duration::from_secs(1));
            servers[i].restart();
            assert!(
                servers[i].serves_within(Duration::from_secs(20)),
                "the restarted replica {} serves no reads",
                servers[i].id
            );
            if i == 1 && rounds == 1 {
                // Registrations made mid-drill still reach the workload.
                servers[(i + 1) % 3].json(&[
                    "entry",
                    "create",
                    "--spiffe-id",
                    LATE,
                    "--parent-id",
                    &agent_id,
                    "--selector",
                    &uid_selector(),
                ]);
            }
        }
    }
    let took = began.elapsed();
    // Long enough after the last restart for another rotation.
    std::thread::sleep(Duration::from_secs(8));
    let seen = watch.finish(&runtime);
    seen.judge(2, &agent.log(), &mut report);
    report.summary = format!(
        "{} restarts in {:.1} s, {} workload errors, longest time without a valid SVID {} ms, {} X.509-SVIDs seen",
        report.faults,
        took.as_secs_f64(),
        seen.errors.len(),
        seen.longest_gap.as_millis(),
        seen.svids
    );
    report.check(seen.ids.contains(LATE), || {
        format!("an entry made mid-drill did not reach the workload: {:?}", seen.ids)
    });
    root.settle(&mut report);
    report
}
