//! Every member of a five-replica cluster is replaced in turn while clients write, as when
//! a fleet moves to new machines: a pristine replica under a new node id joins (as a
//! learner, promoted once caught up), then the member it replaces is removed from the
//! membership and stopped. The leader is replaced too. Then leadership moves to the new
//! member, so the next joiner, which replays the log from its start, hears from a leader
//! that no membership in the early log names. Nothing acknowledged may be lost, and the
//! clients follow the replacements.

use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::{runtime, Report, Settings, Workdir};
use testkit::ServerProcess;

pub const NAME: &str = "rolling_replacement";
const REPLICAS: usize = 5;

/// The voters' node ids, as `member` reports them.
fn voters(member: &ServerProcess) -> Option<Vec<u64>> {
    let out = member.command(&["cluster", "status", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut ids: Vec<u64> = status["members"]
        .as_array()?
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["node_id"].as_u64())
        .collect();
    ids.sort();
    Some(ids)
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let mut servers = ServerProcess::cluster(root.path(), REPLICAS as u64, "");
    let runtime = runtime();
    let alive = Alive::new(REPLICAS);
    let live = alive.targets();
    let load = Load::start(&runtime, &servers, 4, vec![live.clone(), live.clone(), live]);
    std::thread::sleep(Duration::from_secs(1));

    // At least one full pass: every member replaced once.
    let rounds = Settings { iterations: settings.iterations.max(REPLICAS), duration: settings.duration };
    let (began, mut first_fault, mut next_id, mut leaders_replaced) = (Instant::now(), None, REPLICAS as u64 + 1, 0);
    let mut longest_join = Duration::ZERO;
    while rounds.another_round(report.faults, began) {
        let index = report.faults % REPLICAS;
        let old_id = servers[index].id;
        let member = (index + 1) % REPLICAS;
        let was_leader = entry_clients::leader(&servers, &[true; REPLICAS]) == Some(old_id);
        first_fault.get_or_insert(load.now());

        let fresh = ServerProcess::start(root.path(), next_id, "");
        next_id += 1;
        let joining = Instant::now();
        fresh.join(&servers[member]);
        longest_join = longest_join.max(joining.elapsed());
        let removed = servers[member].command(&["cluster", "remove", "--node-id", &old_id.to_string()]);
        report.check(removed.status.success(), || {
            format!("removing replica {old_id}: {}", String::from_utf8_lossy(&removed.stderr))
        });
        // The clients move to the new replica, then the old one stops.
        load.replace(index, &fresh);
        let mut old = std::mem::replace(&mut servers[index], fresh);
        old.terminate();
        report.faults += 1;
        leaders_replaced += usize::from(was_leader);

        let expected_out = old_id;
        let settled = Instant::now() + Duration::from_secs(30);
        let membership = loop {
            let seen = voters(&servers[member]);
            let done = seen
                .as_ref()
                .is_some_and(|v| v.len() == REPLICAS && !v.contains(&expected_out) && v.contains(&servers[index].id));
            if done || Instant::now() > settled {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        report.check(membership.as_ref().is_some_and(|v| v.len() == REPLICAS && !v.contains(&old_id)), || {
            format!("after replacing {old_id} by {}, the voters are {membership:?}", servers[index].id)
        });
        if !servers[index].serves_within(Duration::from_secs(30)) {
            report.failures.push(format!("the new replica {} serves no reads", servers[index].id));
        }
        let newest = servers[index].id.to_string();
        let moved = servers[index].command(&["cluster", "transfer", "--node-id", &newest]);
        report.check(moved.status.success(), || {
            format!("moving leadership to the new replica {newest}: {}", String::from_utf8_lossy(&moved.stderr))
        });
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    let originals_left = servers.iter().filter(|s| s.id <= REPLICAS as u64).count();
    report.check(report.faults < REPLICAS || originals_left == 0, || {
        format!("{originals_left} of the original replicas are still members")
    });
    report.summary = format!(
        "{} replacements of {REPLICAS} replicas ({leaders_replaced} of the leader), longest join {} ms, {} operations \
         ({} acknowledged), lost writes {:?}, linearizable {:?}",
        report.faults,
        longest_join.as_millis(),
        report.operations,
        report.acknowledged,
        report.lost_writes,
        report.linearizable
    );
    root.settle(&mut report);
    report
}
