//! The leader's disk fills up under write load. Its data directory is a small tmpfs of its
//! own; the drill fills it with a file until nothing more fits, so RocksDB's next write
//! fails with ENOSPC. The replica must stop acknowledging anything it cannot make durable,
//! the others elect a leader and go on, and once the disk is repaired (the file removed)
//! and the replica restarted, it recovers from what it had made durable and catches up.
//! Mounting needs root (CAP_SYS_ADMIN); without it the drill says so and checks nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::entry_clients::{self, Alive, Load};
use super::{runtime, Report, Settings, Workdir};
use testkit::{ReplicaOptions, ServerProcess};

pub const NAME: &str = "disk_failure";
/// Room for RocksDB's files with the default options, and little more.
const DISK_MB: u64 = 256;
/// How long the disk stays full.
const FULL: Duration = Duration::from_secs(5);

/// A tmpfs mounted for the drill, unmounted when dropped (even after a panic).
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, megabytes: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self { path: path.to_owned() })
    }

    /// Writes a file until the disk refuses more; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        if let Ok(mut file) = std::fs::File::create(&filler) {
            let chunk = vec![0u8; 1 << 20];
            while file.write_all(&chunk).is_ok() {}
            // The last partial chunk: byte by byte would be slow; small pieces suffice.
            while file.write_all(&chunk[..4096]).is_ok() {}
            let _ = file.sync_all();
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let disk = match SmallDisk::mount(&root.path().join("disk"), DISK_MB) {
        Ok(disk) => disk,
        Err(why) => {
            report.summary = format!("not run: could not mount a tmpfs for the failing disk ({why})");
            root.settle(&mut report);
            return report;
        }
    };
    let failing = 2;
    let mut servers: Vec<ServerProcess> = (1..=3)
        .map(|id| {
            let data_dir = (id as usize == failing + 1).then(|| disk.path.join("data"));
            ServerProcess::start_with(root.path(), id, &ReplicaOptions { data_dir, ..Default::default() })
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
    while settings.another_round(report.faults, began) {
        // The failing replica leads: the harder case, as the others must notice and elect.
        entry_clients::lead_from(&servers, failing, &mut report);

        first_fault.get_or_insert(load.now());
        let filler = disk.fill();
        report.faults += 1;
        std::thread::sleep(FULL);
        let others_leader = entry_clients::leader(&servers, &[true, true, false]);
        report.check(others_leader.is_some_and(|l| l != servers[failing].id), || {
            format!("the others elected no leader of their own while the leader's disk was full: {others_leader:?}")
        });

        // Repair: free the disk, restart the replica from what it made durable.
        let _ = std::fs::remove_file(&filler);
        entry_clients::restart_repaired(&mut servers, &alive, failing, &mut report);
        std::thread::sleep(Duration::from_secs(2));
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    let log = servers[failing].log();
    let saw_enospc = log.contains("No space left") || log.contains("NoSpace") || log.contains("no space");
    report.check(saw_enospc, || format!("the failing replica's log does not mention the full disk:\n{log}"));
    report.summary = format!(
        "{} disk fills on the leader ({} MB tmpfs), {} operations ({} acknowledged), lost writes {:?}, linearizable \
            {:?}, longest write gap {:?}",
        report.faults,
        DISK_MB,
        report.operations,
        report.acknowledged,
        report.lost_writes,
        report.linearizable,
        report.longest_write_gap
    );
    root.settle(&mut report);
    report
}
