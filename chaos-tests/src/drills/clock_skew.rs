//! Clocks off, with libfaketime. One replica is restarted with its wall clock three minutes
//! ahead, then three minutes behind, while clients write and read entries through every
//! replica and three agents serve a workload each: one agent with a true clock, one three
//! minutes ahead, one three minutes behind. While ahead, the skewed replica is also made
//! leader (`cluster transfer`).
//!
//! Checks, by the drill's own (true) clock:
//! - the skewed replica finds out (its log says its clock is off, and by how much: the fault
//!   was really injected) and signs nothing, not even its own server SVID, so agents pass
//!   it by;
//! - an admin's `x509 mint` on it is refused with the reason;
//! - made leader, it hands leadership on within seconds;
//! - no workload ever gets an SVID its clock says is not valid yet or has expired, none sees
//!   an error, and every agent's SVIDs keep rotating (short TTLs);
//! - nothing acknowledged is lost and every entry's history is linearizable: a leader
//!   lease counts on monotonic clocks, which a wrong time of day does not move.

use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::svid_watch::{attach_agent_with_env, JwtAsk, Watch, WEB};
use super::{runtime, Report, Settings, Workdir};
use testkit::ServerProcess;

pub const NAME: &str = "clock_skew";
/// How long each skew holds once the replica has noticed it: long enough for every agent
/// to renew its workload's SVID (20 s TTL, renewed at half-life) with a replica refusing.
const HOLD: Duration = Duration::from_secs(16);
/// How long a replica may take to notice its clock is off: it reads each peer's clock
/// every 2 s.
const NOTICE_WITHIN: Duration = Duration::from_secs(15);
/// How long a leader with a clock off may keep leadership.
const HAND_ON_WITHIN: Duration = Duration::from_secs(10);
/// What an admin asks the skewed replica to mint.
const ADMIN_MINTED: &str = "spiffe://example.org/admin-minted";

/// Waits up to `within` for `until`; answers whether it came.
fn wait_for(within: Duration, mut until: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    while began.elapsed() < within {
        if until() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    until()
}

/// Restarts `servers[index]` from its disk with its wall clock at `offset` (libfaketime's
/// format; `None`: the true clock), out of the clients' reach meanwhile.
fn restart_with_clock(servers: &mut [ServerProcess], alive: &Alive, index: usize, offset: Option<&str>) {
    alive.set(index, false);
    servers[index].kill();
    for key in testkit::faketime::VARIABLES {
        servers[index].set_env(key, None);
    }
    if let Some(offset) = offset {
        for (key, value) in testkit::faketime::env(offset) {
            servers[index].set_env(&key, Some(&value));
        }
    }
    servers[index].restart();
    alive.set(index, true);
}

fn leader_index(servers: &[ServerProcess], alive: &Alive) -> Option<usize> {
    let id = entry_clients::leader(servers, &alive.snapshot())?;
    servers.iter().position(|s| s.id == id)
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    // Default TTLs for the servers' and agents' own SVIDs (an agent whose clock is minutes
    // ahead sees every certificate expire that much early), 20 s for the workloads'.
    let mut servers = ServerProcess::cluster(root.path(), 3, "");
    let runtime = runtime();
    let alive = Alive::new(3);
    let load = Load::start(&runtime, &servers, 4, vec![alive.targets(), alive.targets(), alive.targets()]);
    let agent_with = |name: &str, env: &[(String, String)]| {
        attach_agent_with_env(&root.path().join(name), &servers, &["--x509-svid-ttl", "20"], env)
    };
    let (agent, _) = agent_with("agent-true", &[]);
    let (ahead, _) = agent_with("agent-ahead", &testkit::faketime::env("+3m"));
    let (behind, _) = agent_with("agent-behind", &testkit::faketime::env("-3m"));
    let watches: Vec<(&str, &testkit::AgentProcess, Watch)> = [("true", &agent), ("+3m", &ahead), ("-3m", &behind)]
        .into_iter()
        .map(|(name, agent)| (name, agent, Watch::start(&runtime, agent.socket(), WEB, JwtAsk::NewAudience)))
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    let (began, mut first_fault, mut rounds) = (Instant::now(), None, 0);
    let mut notes = Vec::new();
    while settings.another_round(rounds, began) {
        rounds += 1;
        for (offset, direction) in [("+3m", "ahead of"), ("-3m", "behind")] {
            let index = (rounds + usize::from(direction == "behind")) % 3;
            first_fault.get_or_insert(load.now());
            let said = format!("ms {direction} the cluster's");
            let before = servers[index].log().matches(&said).count();
            restart_with_clock(&mut servers, &alive, index, Some(offset));
            report.faults += 1;
            let noticed = Instant::now();
            let mut note = if wait_for(NOTICE_WITHIN, || servers[index].log().matches(&said).count() > before) {
                format!("{offset}: noticed in {} ms", noticed.elapsed().as_millis())
            } else {
                report.failures.push(format!(
                    "replica {} with its clock at {offset} did not notice within {NOTICE_WITHIN:?}",
                    servers[index].id
                ));
                format!("{offset}: not noticed")
            };
            if direction == "ahead of" {
                // Made leader, it must hand leadership on.
                entry_clients::lead_from(&servers, index, &mut report);
                let asked = Instant::now();
                let handed_on =
                    wait_for(HAND_ON_WITHIN, || leader_index(&servers, &alive).is_some_and(|leader| leader != index));
                report.check(handed_on, || {
                    format!("replica {} led with its clock {offset} for over {HAND_ON_WITHIN:?}", servers[index].id)
                });
                note.push_str(&format!(
                    ", handed leadership on {} ms after it was given it",
                    asked.elapsed().as_millis()
                ));
            }
            // An admin asking it to mint directly is refused, with the reason.
            let minted = servers[index].command(&["x509", "mint", "--spiffe-id", ADMIN_MINTED]);
            let refusal = String::from_utf8_lossy(&minted.stderr).into_owned();
            report.check(!minted.status.success() && refusal.contains("clock is"), || {
                format!(
                    "replica {} with its clock at {offset} minted an SVID when asked directly: {}{refusal}",
                    servers[index].id,
                    String::from_utf8_lossy(&minted.stdout)
                )
            });
            std::thread::sleep(HOLD);
            report.check(leader_index(&servers, &alive) != Some(index), || {
                format!("replica {} leads with its clock at {offset}", servers[index].id)
            });
            notes.push(note);
            restart_with_clock(&mut servers, &alive, index, None);
        }
    }
    let took = began.elapsed();
    // Long enough after the last restart for another rotation.
    std::thread::sleep(Duration::from_secs(8));
    let mut seen_notes = Vec::new();
    for (name, agent, watch) in watches {
        let seen = watch.finish(&runtime);
        let mut part = Report::new(NAME);
        seen.judge(2, &agent.log(), &mut part);
        report.failures.extend(part.failures.into_iter().map(|f| format!("agent with the {name} clock: {f}")));
        report.longest_workload_gap = report.longest_workload_gap.max(part.longest_workload_gap);
        seen_notes.push(format!("{name}: {} SVIDs, {} JWT-SVIDs", seen.svids, seen.jwt_answered));
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    report.summary = format!(
        "{} skewed restarts in {:.1} s ({}); workloads: {}",
        report.faults,
        took.as_secs_f64(),
        notes.join("; "),
        seen_notes.join(", ")
    );
    root.settle(&mut report);
    report
}
