//! A replica is killed (kill -9) and restarted from its disk, again and again, while clients
//! work on entries through every live replica: the leader, the leader again, a follower, a
//! replica picked at random, and round again. The killed replica stays down until the two
//! survivors have acknowledged a write on their own (so an election that never finishes is
//! seen, not masked by the restart). Afterwards: the replicas agree, no acknowledged write
//! is lost, every entry's history is linearizable, and writes were accepted again soon after
//! each kill.
//!
//! `leader_kill_five` does the same to five replicas, killing two at once each round (the
//! leader and a follower, mostly), which five tolerate.

use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::{runtime, Report, Settings, Workdir};
use testkit::ServerProcess;

pub const NAME: &str = "leader_kill";
pub const NAME_FIVE: &str = "leader_kill_five";
const CLIENTS: usize = 3;
/// One round: the leader down at least this long, then this long up before the next kill.
const DOWN: Duration = Duration::from_secs(2);
const UP: Duration = Duration::from_secs(4);
/// Two replicas with a quorum that acknowledge no write for this long after a kill have
/// failed to elect a leader (the election timeout is 300-600 ms).
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// Three replicas, one killed at a time.
pub fn run(settings: &Settings) -> Report {
    run_shaped(NAME, 3, 1, settings)
}

/// Five replicas, two killed at once.
pub fn run_five(settings: &Settings) -> Report {
    run_shaped(NAME_FIVE, 5, 2, settings)
}

fn run_shaped(name: &'static str, replicas: usize, at_once: usize, settings: &Settings) -> Report {
    let mut report = Report::new(name);
    let mut root = Workdir::new(name);
    let mut servers = ServerProcess::cluster(root.path(), replicas as u64, "");
    let runtime = runtime();
    let alive = Alive::new(servers.len());
    let live = alive.targets();
    let load = Load::start(&runtime, &servers, 4, vec![live; CLIENTS]);

    std::thread::sleep(Duration::from_secs(2));
    let (began, mut first_fault) = (Instant::now(), None);
    let mut slowest_recovery = Duration::ZERO;
    while settings.another_round(report.faults / at_once, began) {
        let up = alive.snapshot();
        let Some(id) = entry_clients::leader(&servers, &up) else {
            report.failures.push("no leader to kill".into());
            break;
        };
        let Some(leader) = servers.iter().position(|s| s.id == id) else { break };
        // Mostly the leader (the hard case), then a follower, then any replica; with more
        // kills at once, followers after the first pick.
        let round = report.faults / at_once;
        let first = match round % 4 {
            2 => (leader + 1 + fastrand::usize(..replicas - 1)) % replicas,
            3 => fastrand::usize(..replicas),
            _ => leader,
        };
        let mut victims = vec![first];
        while victims.len() < at_once {
            let other = fastrand::usize(..replicas);
            if !victims.contains(&other) {
                victims.push(other);
            }
        }
        let killed_at = load.now();
        first_fault.get_or_insert(killed_at);
        let killed = Instant::now();
        for &index in &victims {
            alive.set(index, false);
            servers[index].kill();
            report.faults += 1;
        }
        let killed_ids: Vec<u64> = victims.iter().map(|i| servers[*i].id).collect();
        match first_write_after(&load, killed_at, RECOVERY_LIMIT) {
            Some(after) => slowest_recovery = slowest_recovery.max(after),
            None => {
                report.failures.push(format!(
                    "no write acknowledged by the survivors within {RECOVERY_LIMIT:?} of killing replicas \
                        {killed_ids:?} (leader {id})\n{}",
                    entry_clients::trouble(&servers)
                ));
                break;
            }
        }
        std::thread::sleep(DOWN.saturating_sub(killed.elapsed()));
        for &index in &victims {
            servers[index].restart();
            alive.set(index, true);
        }
        std::thread::sleep(UP);
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    let acknowledged = report.acknowledged;
    report.check(acknowledged > 50, || format!("too few operations got through to mean anything: {acknowledged}"));
    report.summary = format!(
        "{} kills, {} operations ({} acknowledged), lost writes {:?}, linearizable {:?}, longest write gap {:?}, \
            slowest first write after a kill {:?}",
        report.faults,
        report.operations,
        report.acknowledged,
        report.lost_writes,
        report.linearizable,
        report.longest_write_gap,
        slowest_recovery
    );
    root.settle(&mut report);
    report
}

/// How long after `since` (the history's clock) the first write invoked after it was
/// acknowledged, waiting at most `limit`; `None` if none was.
fn first_write_after(load: &Load, since: u64, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(returned) = load.first_write_acknowledged_since(since) {
            return Some(Duration::from_nanos(returned - since));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
