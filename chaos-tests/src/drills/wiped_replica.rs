//! A follower's disk is wiped while clients write through the others (as a machine replaced
//! after a disk loss). The operator's procedure: remove the dead member, start a pristine
//! replica on the machine under a new node id (ids are never reused: a wiped voter would
//! have forgotten its votes) and join it with a one-time invite. The log it missed was
//! purged behind snapshots meanwhile, so it catches up by installing a snapshot; it then
//! serves the same state as the others, and nothing acknowledged is lost.

use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::{runtime, Report, Settings, Workdir};
use testkit::{wait_until, ReplicaOptions, ServerProcess};

pub const NAME: &str = "wiped_replica";
/// Small, so the writes made while the replica is gone outrun the log kept behind snapshots.
const SNAPSHOT_EVERY: u64 = 100;

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let options = ReplicaOptions { cluster_extra: format!("snapshot_every = {SNAPSHOT_EVERY}"), ..Default::default() };
    let mut servers: Vec<ServerProcess> =
        (1..=3).map(|id| ServerProcess::start_with(root.path(), id, &options)).collect();
    ServerProcess::form_cluster(&servers);
    let runtime = runtime();
    let alive = Alive::new(servers.len());
    let live = alive.targets();
    let load = Load::start(&runtime, &servers, 4, vec![live.clone(), live.clone(), live]);
    std::thread::sleep(Duration::from_secs(1));

    let (began, mut first_fault, mut next_id, mut installs) = (Instant::now(), None, 4u64, 0);
    while settings.another_round(report.faults, began) {
        let Some(leader) = entry_clients::leader(&servers, &[true; 3]) else {
            report.failures.push("no leader".into());
            break;
        };
        let Some(index) = servers.iter().position(|s| s.id != leader) else { break };
        let (old_id, member) = (servers[index].id, (index + 1) % 3);
        alive.set(index, false);
        first_fault.get_or_insert(load.now());
        servers[index].kill();
        let _ = std::fs::remove_dir_all(&servers[index].dir);
        report.faults += 1;

        // While it is gone, enough writes go through the others to purge the log it lacks.
        let written = load.recorded();
        wait_until(
            Duration::from_secs(60),
            || load.recorded() > written + 4 * SNAPSHOT_EVERY as usize,
            "writes while the replica is gone",
        );
        servers[member].json(&["cluster", "remove", "--node-id", &old_id.to_string()]);

        let fresh = ServerProcess::start_with(root.path(), next_id, &options);
        next_id += 1;
        let joined_at = Instant::now();
        fresh.join(&servers[member]);
        let caught_up = joined_at.elapsed();
        servers[index] = fresh;
        alive.set(index, true);
        let installed = servers[index].log().contains("installed a snapshot from the leader");
        installs += usize::from(installed);
        report.check(installed, || {
            format!("replica {} caught up without installing a snapshot:\n{}", servers[index].id, servers[index].log())
        });
        report.summary = format!(
            "replica {old_id} wiped; replica {} joined and caught up in {} ms",
            servers[index].id,
            caught_up.as_millis()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    let members = servers[0].json(&["cluster", "status"]);
    let voters =
        members["members"].as_array().map(|m| m.iter().filter(|m| m["voter"] == true).count()).unwrap_or_default();
    report.check(voters == 3, || format!("the cluster does not have three members after the drill: {members}"));
    report.summary = format!(
        "{}; {} wipes, {installs} snapshot installs, {} operations ({} acknowledged), lost writes {:?}, linearizable \
            {:?}",
        report.summary, report.faults, report.operations, report.acknowledged, report.lost_writes, report.linearizable
    );
    root.settle(&mut report);
    report
}
