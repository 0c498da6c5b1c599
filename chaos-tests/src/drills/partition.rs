//! Network partitions between replicas, through a fault proxy in front of each replica's
//! cluster port. Each replica's outbound cluster connections come from its own loopback
//! address (`raft_source_address`), so a proxy can tell which peer a connection is from and
//! break one link, one way or both. Each round:
//!
//! 1. the leader is cut off from both others (a minority of one holding the old leadership):
//!    the majority elects a leader and goes on; the old leader acknowledges no write;
//! 2. a follower is cut off: it acknowledges no write, the others go on;
//! 3. the leader cannot reach one follower, which can still reach it (one way);
//! 4. the links between the leader and one follower are slow (100 ms each way): writes go
//!    on through the other follower;
//!
//! each held for a few election timeouts, then healed. Links stall (bytes wait, as on a dead
//! route) in steps 1 and 3 and are reset in step 2. Afterwards the replicas agree, nothing
//! acknowledged is lost and every entry's history is linearizable: no split brain.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::entry_clients::{self, any_replica, Load, Operation, Targets};
use super::{runtime, Report, Settings, Workdir};
use crate::linearizability::{Op, Outcome};
use testkit::proxy::{FaultProxy, Link};
use testkit::{free_port, ReplicaOptions, ServerProcess};

pub const NAME: &str = "partition";
/// How long each partition holds. The majority elects after openraft's leader lease plus an
/// election timeout (0.9–1.2 s with the harness's 300 ms), plus twice the timeout's maximum
/// (1.2 s) if a replica saw a longer log in a failed election earlier; a write a follower
/// had forwarded to the lost leader waits out the cluster RPC timeout (2 s) on top. Six
/// seconds leave room for writes after all that.
const HOLD: Duration = Duration::from_secs(6);
const NOBODY: usize = usize::MAX;
/// The step that slows the links between the leader and one follower, both ways.
const SLOW: &str = "100 ms each way between the leader and a follower";

/// Replica `index`'s own loopback address.
fn address_of(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + index as u8))
}

/// Three replicas, each behind its proxy.
struct Cluster {
    servers: Vec<ServerProcess>,
    proxies: Vec<FaultProxy>,
}

impl Cluster {
    fn start(root: &std::path::Path) -> Self {
        let mut servers = Vec::new();
        let mut proxies = Vec::new();
        for index in 0..3 {
            let bind = SocketAddr::new(address_of(index), free_port());
            let proxy = FaultProxy::start(bind);
            let options = ReplicaOptions {
                raft_bind: Some(bind),
                cluster_extra: format!(
                    "raft_source_address = \"{}\"\n  raft_advertise_address = \"{}\"",
                    address_of(index),
                    proxy.address()
                ),
                ..Default::default()
            };
            servers.push(ServerProcess::start_with(root, index as u64 + 1, &options));
            proxies.push(proxy);
        }
        ServerProcess::form_cluster(&servers);
        Self { servers, proxies }
    }

    /// Breaks the link on which `from` reaches `to`.
    fn break_link(&self, from: usize, to: usize, link: Link) {
        self.proxies[to].set_from(address_of(from), link);
    }

    /// Cuts `index` off from every other replica, both ways.
    fn isolate(&self, index: usize, link: Link) {
        for other in (0..3).filter(|o| *o != index) {
            self.break_link(index, other, link);
            self.break_link(other, index, link);
        }
    }

    fn heal(&self) {
        for proxy in &self.proxies {
            proxy.restore();
        }
    }

    fn leader(&self) -> Option<usize> {
        let id = entry_clients::leader(&self.servers, &[true; 3])?;
        self.servers.iter().position(|s| s.id == id)
    }
}

/// Operations (`writes` only, or reads too) acknowledged by replica `via` that were sent
/// after `from` and answered before `to`.
fn acknowledged(history: &[Operation], via: usize, writes: bool, from: u64, to: u64) -> usize {
    history
        .iter()
        .filter(|o| {
            o.via == via
                && (!writes || matches!(o.recorded.op, Op::Write(_)))
                && matches!(o.recorded.outcome, Outcome::Ok(_))
        })
        .filter(|o| o.recorded.invoked >= from && o.recorded.returned <= to)
        .count()
}

/// One partition: what was cut off (`NOBODY` for the one-way step), when (history clock),
/// and the leader the majority reported at its end.
struct Window {
    step: &'static str,
    /// When it began, for finding it in the logs.
    wall: String,
    cut_off: usize,
    from: u64,
    to: u64,
    majority_leader: Option<u64>,
}

/// Checks what happened during each window; returns one note per window.
fn judge(windows: &[Window], history: &[Operation], servers: &[ServerProcess], report: &mut Report) -> Vec<String> {
    let recorded: Vec<_> = history.iter().map(|o| o.recorded.clone()).collect();
    let mut notes = Vec::new();
    for Window { step, wall, cut_off, from, to, majority_leader } in windows {
        let (step, cut_off, from, to, majority_leader) =
            (format!("{step} at {wall}"), *cut_off, *from, *to, *majority_leader);
        let gap = entry_clients::longest_write_gap(&recorded, from, to);
        if cut_off == NOBODY {
            if step.starts_with(SLOW) {
                // The leader commits through the other follower meanwhile.
                let acknowledged: usize =
                    (0..3).map(|i| acknowledged(history, i, true, from + 1_000_000_000, to)).sum();
                report.check(acknowledged > 5, || format!("{step}: only {acknowledged} writes acknowledged"));
            }
            notes.push(format!("{step}: longest write gap {gap} ms"));
            continue;
        }
        // Linearizable reads need a quorum too: the minority acknowledges nothing.
        let by_minority = acknowledged(history, cut_off, false, from, to);
        let tried = history
            .iter()
            .filter(|o| o.via == cut_off && o.recorded.invoked >= from && o.recorded.invoked < to)
            .count();
        report.check(tried > 0, || {
            format!("{step}: nothing was sent to the cut-off replica, so its refusal was not tested")
        });
        report.check(by_minority == 0, || {
            format!("{step}: the cut-off replica {} acknowledged {by_minority} operations", cut_off + 1)
        });
        let others: usize =
            (0..3).filter(|i| *i != cut_off).map(|i| acknowledged(history, i, true, from + 1_000_000_000, to)).sum();
        report.check(others > 5, || format!("{step}: the majority acknowledged only {others} writes"));
        report.check(majority_leader.is_some_and(|l| l != servers[cut_off].id), || {
            format!("{step}: the majority had no leader of its own: {majority_leader:?}")
        });
        notes.push(format!(
            "{step}: majority acknowledged {others} writes, the cut-off replica none of the {tried} \
            operations sent to it, longest write gap {gap} ms"
        ));
    }
    notes
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let cluster = Cluster::start(root.path());
    let runtime = runtime();
    // One client calls every replica, one calls only the cut-off one while there is one
    // (its calls hang or fail), two move off it, as agents fail over.
    let isolated = Arc::new(AtomicUsize::new(NOBODY));
    let failing_over: Targets = {
        let isolated = isolated.clone();
        Arc::new(move || (0..3).filter(|i| *i != isolated.load(Ordering::SeqCst)).collect())
    };
    let stuck: Targets = {
        let isolated = isolated.clone();
        Arc::new(move || match isolated.load(Ordering::SeqCst) {
            NOBODY => (0..3).collect(),
            one => vec![one],
        })
    };
    let load =
        Load::start(&runtime, &cluster.servers, 4, vec![any_replica(3), stuck, failing_over.clone(), failing_over]);
    std::thread::sleep(Duration::from_secs(1));

    let (began, mut first_fault, mut rounds) = (Instant::now(), None, 0);
    let mut windows = Vec::new();
    while settings.another_round(rounds, began) {
        rounds += 1;
        let slow = Link::Delay(Duration::from_millis(100));
        for (step, link) in [
            ("leader cut off", Link::Stall),
            ("follower cut off", Link::Reset),
            ("leader cannot reach a follower", Link::Stall),
            (SLOW, slow),
        ] {
            let Some(leader) = cluster.leader() else {
                report.failures.push(format!("no leader before \"{step}\""));
                break;
            };
            let follower = (leader + 1) % 3;
            let cut_off = match step {
                "leader cut off" => leader,
                "follower cut off" => follower,
                _ => NOBODY,
            };
            let from = load.now();
            let wall = testkit::utc_now();
            first_fault.get_or_insert(from);
            if step == SLOW {
                cluster.break_link(leader, follower, link);
                cluster.break_link(follower, leader, link);
            } else if cut_off == NOBODY {
                cluster.break_link(leader, follower, link);
            } else {
                isolated.store(cut_off, Ordering::SeqCst);
                cluster.isolate(cut_off, link);
            }
            report.faults += 1;
            // The majority's own leader, looked for through the hold (one status call can
            // land mid-election).
            let mut majority_leader = None;
            let until = Instant::now() + HOLD;
            while Instant::now() < until {
                if cut_off != NOBODY {
                    let own = entry_clients::leader(&cluster.servers, &[0, 1, 2].map(|i| i != cut_off))
                        .filter(|l| *l != cluster.servers[cut_off].id);
                    majority_leader = own.or(majority_leader);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let to = load.now();
            cluster.heal();
            isolated.store(NOBODY, Ordering::SeqCst);

            // Judged once every operation sent in the window has returned (at the end).
            windows.push(Window { step, wall, cut_off, from, to, majority_leader });
            // The cut-off replica serves linearizable reads again once healed.
            let back = cluster.servers.iter().all(|s| s.serves_within(Duration::from_secs(30)));
            report.check(back, || format!("{step}: a replica serves no reads 30 s after healing"));
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let ids = load.ids.clone();
    let start = load.start;
    let history = load.finish(&runtime);
    let notes = judge(&windows, &history, &cluster.servers, &mut report);
    entry_clients::check(
        &runtime,
        &cluster.servers,
        &ids,
        &history,
        first_fault.unwrap_or(0),
        start.elapsed().as_nanos() as u64,
        &mut report,
    );
    report.summary = format!(
        "{} partitions; {}; {} operations ({} acknowledged), lost writes {:?}, linearizable {:?}, longest write gap \
            {:?}",
        report.faults,
        notes.join("; "),
        report.operations,
        report.acknowledged,
        report.lost_writes,
        report.linearizable,
        report.longest_write_gap
    );
    root.settle(&mut report);
    report
}
