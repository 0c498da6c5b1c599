//! A stopped follower's data directory is damaged, as a failing disk or a bad restore
//! leaves it, while clients keep writing through the others. Rounds alternate two kinds:
//! the newest RocksDB write-ahead log cut short in the middle of a record (a torn write),
//! and garbage over the middle of the MANIFEST. On restart the replica must either recover
//! what its files still hold and catch up from the leader, or refuse to start with an error
//! that names the damaged data dir. A refused replica is replaced the way docs/cluster.md
//! says: `cluster remove`, a pristine replica under a new node id, `cluster join`. Nothing
//! acknowledged may be lost.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::{runtime, Report, Settings, Workdir};
use testkit::ServerProcess;

pub const NAME: &str = "damaged_data_dir";

/// The files of `dir` whose names satisfy `pick`, newest name last.
fn files(dir: &Path, pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| pick(&n.to_string_lossy())))
        .collect();
    found.sort();
    found
}

/// Damages the store in `data_dir`; answers what was done.
fn damage(data_dir: &Path, round: usize) -> Result<String, String> {
    let db = data_dir.join("raft").join("raft-db");
    if round.is_multiple_of(2) {
        let wal = files(&db, |n| n.ends_with(".log")).pop().ok_or("no write-ahead log")?;
        let len = std::fs::metadata(&wal).map_err(|e| e.to_string())?.len();
        if len < 64 {
            return Err(format!("{} holds only {len} bytes", wal.display()));
        }
        // Into the middle of a record: an odd cut well inside the last 4 KiB.
        let cut = len - (len / 3).min(4096) + 7;
        let file = std::fs::OpenOptions::new().write(true).open(&wal).map_err(|e| e.to_string())?;
        file.set_len(cut.min(len - 1)).map_err(|e| e.to_string())?;
        Ok(format!("write-ahead log cut from {len} to {} bytes", cut.min(len - 1)))
    } else {
        let manifest = files(&db, |n| n.starts_with("MANIFEST")).pop().ok_or("no MANIFEST")?;
        let mut bytes = std::fs::read(&manifest).map_err(|e| e.to_string())?;
        let middle = bytes.len() / 2;
        let end = (middle + 64).min(bytes.len());
        for byte in &mut bytes[middle..end] {
            *byte ^= 0x5a;
        }
        std::fs::write(&manifest, &bytes).map_err(|e| e.to_string())?;
        Ok(format!("{} bytes of the MANIFEST scrambled", end - middle))
    }
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let mut servers = ServerProcess::cluster(root.path(), 3, "");
    let runtime = runtime();
    let alive = Alive::new(servers.len());
    let live = alive.targets();
    let load = Load::start(&runtime, &servers, 4, vec![live.clone(), live.clone(), live]);
    std::thread::sleep(Duration::from_secs(2));

    let (began, mut first_fault, mut next_id) = (Instant::now(), None, 4u64);
    let (mut recovered, mut refused) = (0, 0);
    while settings.another_round(report.faults, began) {
        let Some(leader) = entry_clients::leader(&servers, &[true; 3]) else {
            report.failures.push("no leader".into());
            break;
        };
        let Some(index) = servers.iter().position(|s| s.id != leader) else { break };
        alive.set(index, false);
        first_fault.get_or_insert(load.now());
        // Killed, not stopped: its write-ahead log still holds the latest records.
        servers[index].kill();
        let done = match damage(&servers[index].data_dir, report.faults) {
            Ok(done) => done,
            Err(e) => {
                report.failures.push(format!("could not damage replica {}'s store: {e}", servers[index].id));
                break;
            }
        };
        report.faults += 1;
        std::thread::sleep(Duration::from_secs(1));
        eprintln!("{NAME}: replica {}: {done}", servers[index].id);

        match servers[index].try_restart() {
            Ok(()) => {
                recovered += 1;
                alive.set(index, true);
                if !servers[index].serves_within(Duration::from_secs(30)) {
                    report.failures.push(format!(
                        "replica {} started on its damaged store ({done}) but serves no reads",
                        servers[index].id
                    ));
                }
            }
            Err(log) => {
                refused += 1;
                report.check(log.contains("is corrupt"), || {
                    format!(
                        "replica {} refused its damaged store ({done}) without saying so:\n{log}",
                        servers[index].id
                    )
                });
                // The documented way back: remove the member, join a pristine replica.
                let member = (index + 1) % 3;
                let old_id = servers[index].id.to_string();
                let removed = servers[member].command(&["cluster", "remove", "--node-id", &old_id]);
                report.check(removed.status.success(), || {
                    format!("cluster remove {old_id}: {}", String::from_utf8_lossy(&removed.stderr))
                });
                let fresh = ServerProcess::start(root.path(), next_id, "");
                next_id += 1;
                fresh.join(&servers[member]);
                load.replace(index, &fresh);
                servers[index] = fresh;
                alive.set(index, true);
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    report.summary = format!(
        "{} damaged stores: {recovered} recovered and caught up, {refused} refused and replaced; {} operations ({} \
         acknowledged), lost writes {:?}, linearizable {:?}",
        report.faults, report.operations, report.acknowledged, report.lost_writes, report.linearizable
    );
    root.settle(&mut report);
    report
}
