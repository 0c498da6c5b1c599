//! The failure drills. Each starts its own replicas (and agents) under a fresh directory,
//! injects its faults while clients work, and returns a [`Report`]: what it did, what it
//! measured and which of its checks failed. `make test` runs each once, briefly
//! (`tests/drills`); `testudo-chaos` runs them for longer and prints the summary table.

pub mod agent_links;
pub mod all_down;
pub mod clock_skew;
pub mod damaged_data_dir;
pub mod disk_failure;
pub mod entry_clients;
pub mod federation;
pub mod io_errors;
pub mod key_backend;
pub mod key_orphans;
pub mod leader_kill;
pub mod leader_pause;
pub mod mtls;
pub mod nested_regions;
pub mod partition;
pub mod rolling_replacement;
pub mod rolling_restart;
pub mod runbooks;
pub mod svid_watch;
pub mod wiped_replica;

use std::fmt::Write as _;
use std::time::Duration;

/// How hard a drill runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Fault rounds (kills, partitions, restarts…) at least.
    pub iterations: usize,
    /// Rounds go on until this much time has passed, if it is longer.
    pub duration: Duration,
}

impl Settings {
    /// The bounded run `make test` uses.
    pub const QUICK: Settings = Settings { iterations: 1, duration: Duration::ZERO };

    /// Whether round `done` (counted from 0) should be followed by another, given when the
    /// rounds began.
    pub fn another_round(&self, done: usize, began: std::time::Instant) -> bool {
        done < self.iterations || began.elapsed() < self.duration
    }
}

/// What one drill did and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub drill: &'static str,
    pub faults: usize,
    /// Of the faults, how many killed a leader (kill -9 of the replica leading then).
    pub leader_kills: usize,
    /// Client operations recorded, and how many of them were acknowledged.
    pub operations: usize,
    pub acknowledged: usize,
    /// Entries whose final state no acknowledged write explains (`None`: no entry history).
    pub lost_writes: Option<usize>,
    /// Whether every entry's history is linearizable (`None`: no entry history).
    pub linearizable: Option<bool>,
    /// The longest time without an acknowledged write, from the first fault on.
    pub longest_write_gap: Option<Duration>,
    /// The longest time a workload held no unexpired SVID (`None`: no workload).
    pub longest_workload_gap: Option<Duration>,
    /// One line for a reader: the figures that matter for this drill.
    pub summary: String,
    /// Every check that failed; empty means the drill passed.
    pub failures: Vec<String>,
}

impl Report {
    pub fn new(drill: &'static str) -> Self {
        Self { drill, ..Default::default() }
    }

    /// Records a failed check unless `ok`.
    pub fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(failure());
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Adds what `part` (one phase of this drill, named `label`) counted and found.
    pub fn absorb(&mut self, part: Report, label: &str) {
        self.faults += part.faults;
        self.leader_kills += part.leader_kills;
        self.operations += part.operations;
        self.acknowledged += part.acknowledged;
        if let Some(lost) = part.lost_writes {
            self.lost_writes = Some(self.lost_writes.unwrap_or(0) + lost);
        }
        if let Some(linearizable) = part.linearizable {
            self.linearizable = Some(self.linearizable.unwrap_or(true) && linearizable);
        }
        self.longest_write_gap = self.longest_write_gap.max(part.longest_write_gap);
        self.longest_workload_gap = self.longest_workload_gap.max(part.longest_workload_gap);
        self.failures.extend(part.failures.into_iter().map(|f| format!("{label}: {f}")));
    }
}

/// A drill: its name, what it does, and how to run it.
pub struct Drill {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Settings) -> Report,
}

/// Every drill, in the order `testudo-chaos` runs them.
pub const ALL: &[Drill] = &[
    Drill {
        name: leader_kill::NAME,
        about: "kill -9 the leader (or a follower, or a random replica) under write load, restart it from disk",
        run: leader_kill::run,
    },
    Drill {
        name: leader_kill::NAME_FIVE,
        about: "five replicas: kill -9 the leader and a follower at once under write load, restart them from disk",
        run: leader_kill::run_five,
    },
    Drill {
        name: leader_kill::NAME_MANAGED_KEYS,
        about: "leader_kill with the CA keys in a KMS (moto, cut off in some kills), then on an HSM (SoftHSM2)",
        run: leader_kill::run_managed_keys,
    },
    Drill {
        name: partition::NAME,
        about: "isolate the leader, then a follower, then one way, then slow links; heal",
        run: partition::run,
    },
    Drill {
        name: partition::NAME_NETNS,
        about: "replicas in network namespaces: the leader's link down, a follower's, one-way loss, a flapping link",
        run: partition::run_netns,
    },
    Drill {
        name: leader_pause::NAME,
        about: "SIGSTOP the leader beyond the election timeout, SIGCONT",
        run: leader_pause::run,
    },
    Drill {
        name: rolling_restart::NAME,
        about: "restart every replica in turn with an agent and workloads attached",
        run: rolling_restart::run,
    },
    Drill {
        name: rolling_restart::NAME_MANAGED_KEYS,
        about: "rolling_restart with the CA keys in a KMS (moto, cut off for 6 s), then on an HSM (SoftHSM2)",
        run: rolling_restart::run_managed_keys,
    },
    Drill {
        name: rolling_replacement::NAME,
        about: "every member of a 5-replica cluster replaced in turn (join new, remove old) under write load",
        run: rolling_replacement::run,
    },
    Drill {
        name: agent_links::NAME,
        about: "the agent's links to the replicas slow, long-haul, half-open and reset while a workload asks for SVIDs",
        run: agent_links::run,
    },
    Drill { name: all_down::NAME, about: "every replica down for less than half the SVID TTL", run: all_down::run },
    Drill {
        name: wiped_replica::NAME,
        about: "a replica's disk wiped; it rejoins and catches up by snapshot",
        run: wiped_replica::run,
    },
    Drill {
        name: damaged_data_dir::NAME,
        about: "a stopped follower's store damaged (torn write-ahead log, scrambled MANIFEST): it recovers or is replaced",
        run: damaged_data_dir::run,
    },
    Drill {
        name: disk_failure::NAME,
        about: "one replica's disk fills up under write load, then is repaired",
        run: disk_failure::run,
    },
    Drill {
        name: io_errors::NAME,
        about: "the leader's fsyncs fail with EIO (libfiu) under write load, then work again",
        run: io_errors::run,
    },
    Drill {
        name: clock_skew::NAME,
        about: "one replica's clock 3 minutes ahead, then behind (libfaketime), two agents' clocks off; workloads by a true clock",
        run: clock_skew::run,
    },
    Drill {
        name: federation::NAME,
        about: "two federated clusters rotate CAs; both leaders killed as each refresh falls due; mTLS across",
        run: federation::run,
    },
    Drill {
        name: key_orphans::NAME,
        about: "the leader killed while it makes a CA key in KMS (moto) or on an HSM (SoftHSM2); the sweep leaves no orphan",
        run: key_orphans::run,
    },
    Drill {
        name: nested_regions::NAME,
        about: "a root and two regions over WAN links; leaders of all three killed, a region cut; mTLS across",
        run: nested_regions::run,
    },
    Drill {
        name: runbooks::NAME_LOST_REPLICA,
        about: "docs/runbooks/lost-replica.md as written: a replica's host lost with its disk, rebuilt",
        run: runbooks::lost_replica,
    },
    Drill {
        name: runbooks::NAME_LOST_QUORUM,
        about: "docs/runbooks/lost-quorum.md as written: two of three replicas lost, the backup restored",
        run: runbooks::lost_quorum,
    },
    Drill {
        name: runbooks::NAME_CA_KEY_COMPROMISE,
        about: "docs/runbooks/ca-key-compromise.md as written: the active CA and JWT key prepared over, tainted, revoked",
        run: runbooks::ca_key_compromise,
    },
    Drill {
        name: runbooks::NAME_KEY_MANAGER_OUTAGE,
        about: "docs/runbooks/key-manager-outage.md as written: the KMS (moto) cut off, then back",
        run: runbooks::key_manager_outage,
    },
    Drill {
        name: runbooks::NAME_ROLLING_UPGRADE,
        about: "docs/runbooks/rolling-upgrade.md as written: each replica upgraded in turn, then rolled back",
        run: runbooks::rolling_upgrade,
    },
    Drill {
        name: runbooks::NAME_SCALING,
        about: "docs/runbooks/scaling.md as written: 3 replicas to 5 and back to 3",
        run: runbooks::scaling,
    },
    Drill {
        name: runbooks::NAME_MOVING,
        about: "docs/runbooks/moving-a-replica.md as written: a replica moved to a host with a new name",
        run: runbooks::moving_a_replica,
    },
    Drill {
        name: runbooks::NAME_UPGRADE_COMPAT,
        about: "the build deploy/upgrade-baseline names rolled to this one and back (rolling-upgrade.md), agent and writes throughout",
        run: runbooks::upgrade_compat,
    },
];

/// Runs `drill`, turning a panic in its set-up (a replica that would not start, say) into
/// a failed report.
pub fn run_caught(drill: &Drill, settings: &Settings) -> Report {
    match std::panic::catch_unwind(|| (drill.run)(settings)) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Report { drill: drill.name, failures: vec![format!("panicked: {message}")], ..Default::default() }
        }
    }
}

fn millis(d: Option<Duration>) -> String {
    d.map(|d| format!("{} ms", d.as_millis())).unwrap_or_else(|| "-".into())
}

/// The summary table (Markdown, so it can go straight into a document).
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| drill | faults | leader kills | ops acknowledged | acknowledged writes lost | linearizable | \
        longest write unavailability | longest workload gap | result |\n",
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |\n");
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            r.drill,
            r.faults,
            r.leader_kills,
            r.acknowledged,
            r.operations,
            r.lost_writes.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r.linearizable.map(|l| if l { "yes" } else { "NO" }).unwrap_or("-"),
            millis(r.longest_write_gap),
            millis(r.longest_workload_gap),
            if r.passed() { "pass" } else { "FAIL" },
        );
    }
    out
}

/// A drill's directory (replicas, agents, their logs). Removed when dropped after a passing
/// run; kept, and named in the report, when the drill failed or panicked, so the logs can be
/// read.
pub(crate) struct Workdir {
    path: std::path::PathBuf,
    remove: bool,
}

impl Workdir {
    pub(crate) fn new(drill: &str) -> Self {
        let path = tempfile::Builder::new()
            .prefix(&format!("testudo-{drill}-"))
            .tempdir()
            .expect("a temporary directory")
            .keep();
        eprintln!("{drill}: working in {}", path.display());
        Self { path, remove: false }
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Marks the directory for removal if `report` passed (unless `TESTUDO_CHAOS_KEEP` is
    /// set); otherwise names it in the report.
    pub(crate) fn settle(&mut self, report: &mut Report) {
        self.remove = report.passed() && std::env::var_os("TESTUDO_CHAOS_KEEP").is_none();
        if !report.passed() {
            report.failures.push(format!("logs kept in {}", self.path.display()));
        }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A tokio runtime for the drill's clients (the faults run on the calling thread).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime")
}
