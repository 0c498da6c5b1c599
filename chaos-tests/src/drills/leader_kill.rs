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
//!
//! `leader_kill_managed_keys` does it to three replicas whose CA keys are in a KMS (moto),
//! then on an HSM token (SoftHSM2); in every other kill, the first included, the KMS is cut
//! off too (connections reset) until the killed replica has been back a while. Afterwards every replica must sign
//! X.509- and JWT-SVIDs with the keys it never held.

use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::key_backend::{self, KeyBackend};
use super::{runtime, Report, Settings, Workdir};
use testkit::proxy::Link;
use testkit::ServerProcess;

pub const NAME: &str = "leader_kill";
pub const NAME_FIVE: &str = "leader_kill_five";
pub const NAME_MANAGED_KEYS: &str = "leader_kill_managed_keys";
/// How long every replica has, after the last restart, to sign with the managed keys.
const SIGNING_LIMIT: Duration = Duration::from_secs(60);
const CLIENTS: usize = 3;
/// One round: the leader down at least this long, then this long up before the next kill.
const DOWN: Duration = Duration::from_secs(2);
const UP: Duration = Duration::from_secs(4);
/// Two replicas with a quorum that acknowledge no write for this long after a kill have
/// failed to elect a leader (the election timeout is 300-600 ms).
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// Three replicas, one killed at a time.
pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let servers = ServerProcess::cluster(root.path(), 3, "");
    report.summary = kill_loop(servers, None, 1, settings, &mut report);
    root.settle(&mut report);
    report
}

/// Five replicas, two killed at once.
pub fn run_five(settings: &Settings) -> Report {
    let mut report = Report::new(NAME_FIVE);
    let mut root = Workdir::new(NAME_FIVE);
    let servers = ServerProcess::cluster(root.path(), 5, "");
    report.summary = kill_loop(servers, None, 2, settings, &mut report);
    root.settle(&mut report);
    report
}

/// Three replicas with their CA keys in a KMS, then on an HSM.
pub fn run_managed_keys(settings: &Settings) -> Report {
    let mut root = Workdir::new(NAME_MANAGED_KEYS);
    let mut report = key_backend::on_each_backend(NAME_MANAGED_KEYS, root.path(), |backend, dir, part| {
        kill_loop(backend.cluster(dir, 3, ""), Some(backend), 1, settings, part)
    });
    root.settle(&mut report);
    report
}

/// Kills `at_once` replicas of `servers` at a time, round after round, under write load;
/// with `keys` (a KMS), cuts the KMS off in every other kill, and at the end
/// checks every replica signs. Fills `report`; answers its summary line.
fn kill_loop(
    mut servers: Vec<ServerProcess>,
    keys: Option<&KeyBackend>,
    at_once: usize,
    settings: &Settings,
    report: &mut Report,
) -> String {
    let replicas = servers.len();
    let runtime = runtime();
    let alive = Alive::new(servers.len());
    let live = alive.targets();
    let load = Load::start(&runtime, &servers, 4, vec![live; CLIENTS]);

    std::thread::sleep(Duration::from_secs(2));
    let (began, mut first_fault) = (Instant::now(), None);
    let (mut slowest_recovery, mut kms_cuts) = (Duration::ZERO, 0);
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
        let cut = keys.is_some_and(|k| matches!(k, KeyBackend::Kms { .. })) && round.is_multiple_of(2);
        if let (true, Some(keys)) = (cut, keys) {
            keys.set_link(Link::Reset);
            kms_cuts += 1;
        }
        let killed_at = load.now();
        first_fault.get_or_insert(killed_at);
        let killed = Instant::now();
        for &index in &victims {
            alive.set(index, false);
            servers[index].kill();
            report.faults += 1;
            report.leader_kills += usize::from(index == leader);
        }
        let killed_ids: Vec<u64> = victims.iter().map(|i| servers[*i].id).collect();
        if cut {
            let survivor = (0..replicas).find(|i| !victims.contains(i)).unwrap_or(0);
            if let Err(e) = key_backend::refused_while_cut(&servers[survivor]) {
                report.failures.push(e);
            }
        }
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
        if let (true, Some(keys)) = (cut, keys) {
            keys.set_link(Link::Open);
        }
    }
    if let Some(keys) = keys {
        keys.set_link(Link::Open);
    }
    load.finish_and_check(&runtime, &servers, first_fault, report);
    let acknowledged = report.acknowledged;
    report.check(acknowledged > 50, || format!("too few operations got through to mean anything: {acknowledged}"));
    let signing = match keys.map(|_| key_backend::all_sign_within(&servers, SIGNING_LIMIT)) {
        None => String::new(),
        Some(Ok(took)) => {
            format!(", the KMS cut in {kms_cuts} kills, every replica signed {} ms after the checks", took.as_millis())
        }
        Some(Err(refusals)) => {
            report.failures.push(format!("not every replica signs {SIGNING_LIMIT:?} after the last kill: {refusals}"));
            format!(", the KMS cut in {kms_cuts} kills, not every replica signs")
        }
    };
    format!(
        "{} kills, {} operations ({} acknowledged), lost writes {:?}, linearizable {:?}, longest write gap {:?}, \
            slowest first write after a kill {:?}{signing}",
        report.faults,
        report.operations,
        report.acknowledged,
        report.lost_writes,
        report.linearizable,
        report.longest_write_gap,
        slowest_recovery
    )
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
