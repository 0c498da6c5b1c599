//! The leader's disk starts failing its syncs: the replica runs under libfiu's POSIX
//! preload (`fiu-run -x`), and `fiu-ctrl` turns on failures of every `fsync`/`fdatasync`
//! it makes (errno EIO) while clients write. RocksDB cannot make the Raft log durable, so
//! the replica must not acknowledge those writes, nor count itself towards any quorum: its
//! Raft core stops and the process exits non-zero for its supervisor to restart it. The
//! others elect a leader and go on. Then the failures are turned off and the replica is
//! restarted: it recovers from what it had made durable and catches up. Needs Debian's
//! `fiu-utils`; without `fiu-run` the drill says so and checks nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::{runtime, Report, Settings, Workdir};
use testkit::{ReplicaOptions, ServerProcess};

pub const NAME: &str = "io_errors";
/// How long the syncs fail.
const FAILING: Duration = Duration::from_secs(5);
/// EIO, as a failing disk reports it.
const EIO: i32 = 5;

/// Runs a libfiu remote-control command in process `pid` (started under `fiu-run`).
fn fiu_ctrl(pid: u32, command: &str) -> Result<(), String> {
    let out = Command::new("fiu-ctrl")
        .args(["-c", command])
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("fiu-ctrl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("fiu-ctrl {command:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    if Command::new("fiu-run").arg("-h").output().is_err() {
        report.summary = "not run: fiu-run is not installed (Debian fiu-utils)".into();
        root.settle(&mut report);
        return report;
    }
    let failing = 2;
    let mut servers: Vec<ServerProcess> = (1..=3)
        .map(|id| {
            let launcher = if id as usize == failing + 1 { vec!["fiu-run".into(), "-x".into()] } else { Vec::new() };
            ServerProcess::start_with(root.path(), id, &ReplicaOptions { launcher, ..Default::default() })
        })
        .collect();
    ServerProcess::form_cluster(&servers);
    let runtime = runtime();
    let alive = Alive::new(servers.len());
    let live = alive.targets();
    // Three clients call every replica, the failing one included.
    let load = Load::start(&runtime, &servers, 4, vec![live.clone(), live.clone(), live]);
    std::thread::sleep(Duration::from_secs(1));

    let (began, mut first_fault) = (Instant::now(), None);
    let mut slowest_recovery = Duration::ZERO;
    while settings.another_round(report.faults, began) {
        // The failing replica leads: the harder case, as the others must notice and elect.
        entry_clients::lead_from(&servers, failing, &mut report);

        let Some(pid) = servers[failing].pid() else {
            report.failures.push("the failing replica is not running".into());
            break;
        };
        let failed_at = load.now();
        first_fault.get_or_insert(failed_at);
        if let Err(e) = fiu_ctrl(pid, &format!("enable name=posix/io/sync/*,failinfo={EIO}")) {
            report.failures.push(e);
            break;
        }
        report.faults += 1;
        std::thread::sleep(FAILING);
        let exited = servers[failing].exited();
        report.check(exited.is_some_and(|status| !status.success()), || {
            format!("the replica whose syncs failed did not exit with an error: {exited:?}")
        });
        let others_leader = entry_clients::leader(&servers, &[true, true, false]);
        report.check(others_leader.is_some_and(|l| l != servers[failing].id), || {
            format!("the others elected no leader of their own while the leader's syncs failed: {others_leader:?}")
        });
        match load.first_write_acknowledged_since(failed_at) {
            Some(at) => slowest_recovery = slowest_recovery.max(Duration::from_nanos(at - failed_at)),
            None => report.failures.push("the others acknowledged no write while the leader's syncs failed".into()),
        }

        // Repair: the disk works again; the replica restarts from what it made durable.
        let _ = fiu_ctrl(pid, "disable name=posix/io/sync/*");
        entry_clients::restart_repaired(&mut servers, &alive, failing, &mut report);
        std::thread::sleep(Duration::from_secs(2));
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    let log = servers[failing].log();
    let saw_eio = log.contains("Input/output error") && log.contains("the Raft core stopped on a fault");
    report.check(saw_eio, || format!("the failing replica's log does not show the I/O error:\n{log}"));
    report.summary = format!(
        "{} rounds of failing syncs on the leader, {} operations ({} acknowledged), lost writes {:?}, linearizable \
            {:?}, slowest first write by the others {:?}",
        report.faults,
        report.operations,
        report.acknowledged,
        report.lost_writes,
        report.linearizable,
        slowest_recovery
    );
    root.settle(&mut report);
    report
}
