//! Network partitions between replicas, in two flavours.
//!
//! `partition` puts a fault proxy in front of each replica's cluster port. Each replica's
//! outbound cluster connections come from its own loopback address
//! (`raft_source_address`), so a proxy can tell which peer a connection is from and break
//! one link, one way or both. Each round:
//!
//! 1. the leader is cut off from both others (a minority of one holding the old leadership):
//!    the majority elects a leader and goes on; the old leader acknowledges no write;
//! 2. a follower is cut off: it acknowledges no write, the others go on;
//! 3. the leader cannot reach one follower, which can still reach it (one way);
//! 4. the links between the leader and one follower are slow (100 ms each way): writes go
//!    on through the other follower;
//!
//! each held for a few election timeouts, then healed. Links stall (bytes wait, as on a dead
//! route) in steps 1 and 3 and are reset in step 2.
//!
//! `partition_netns` puts each replica on a host of its own (a network namespace, joined to
//! the others by a veth pair and a bridge: `testkit::netns`) and breaks links in the
//! kernel: (1) the leader's link down; (2) a follower's link down; (3) every packet the
//! leader sends one follower dropped (a blackhole route: loss one way, which TCP turns into
//! a dead link both ways for new connections and a silent one for open ones); (4) a
//! follower's link going down and up every 400 ms. Needs root.
//!
//! Afterwards, in both, the replicas agree, nothing acknowledged is lost and every entry's
//! history is linearizable: no split brain.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use super::entry_clients::{self, any_replica, Load, Operation, Targets};
use super::{runtime, Report, Settings, Workdir};
use crate::linearizability::{Op, Outcome};
use testkit::netns::Network;
use testkit::proxy::{FaultProxy, Link};
use testkit::{free_port, ReplicaOptions, ServerProcess};

pub const NAME: &str = "partition";
pub const NAME_NETNS: &str = "partition_netns";
/// How long each partition holds. The majority elects after openraft's leader lease plus an
/// election timeout (0.9–1.2 s with the harness's 300 ms), plus twice the timeout's maximum
/// (1.2 s) if a replica saw a longer log in a failed election earlier; a write a follower
/// had forwarded to the lost leader waits out the cluster RPC timeout (2 s) on top. Six
/// seconds leave room for writes after all that.
const HOLD: Duration = Duration::from_secs(6);
const NOBODY: usize = usize::MAX;
/// How often a flapping link changes state.
const FLAP_EVERY: Duration = Duration::from_millis(400);

/// What a step does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The leader cut off from both others.
    LeaderCutOff,
    /// A follower cut off from both others.
    FollowerCutOff,
    /// The leader cannot reach one follower; that follower still reaches it.
    OneWay,
    /// The link between the leader and a follower is bad but works: writes must go on.
    Degraded,
}

/// Replica `index`'s own loopback address.
fn address_of(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + index as u8))
}

/// How links break.
enum Links {
    /// A fault proxy in front of each replica's cluster port.
    Proxies(Vec<FaultProxy>),
    /// A network namespace per replica; the links broken now, to mend when healing.
    Namespaces { network: Network, broken: Mutex<Broken> },
}

#[derive(Default)]
struct Broken {
    down: Vec<usize>,
    dropping: Vec<(usize, usize)>,
    flapping: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// Three replicas and the links between them.
struct Cluster {
    servers: Vec<ServerProcess>,
    links: Arc<Links>,
}

impl Cluster {
    fn with_proxies(root: &std::path::Path) -> Self {
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
        Self { servers, links: Arc::new(Links::Proxies(proxies)) }
    }

    /// Each replica on a host of its own; `Err` when the namespaces cannot be made.
    fn in_namespaces(root: &std::path::Path) -> Result<Self, String> {
        let network = Network::create(3)?;
        let servers: Vec<ServerProcess> = (0..3)
            .map(|index| {
                let options = ReplicaOptions {
                    raft_bind: Some(SocketAddr::new(network.address(index), 8082)),
                    launcher: network.launcher(index),
                    ..Default::default()
                };
                ServerProcess::start_with(root, index as u64 + 1, &options)
            })
            .collect();
        ServerProcess::form_cluster(&servers);
        Ok(Self { servers, links: Arc::new(Links::Namespaces { network, broken: Mutex::default() }) })
    }

    fn namespaces(&self) -> Option<(&Network, std::sync::MutexGuard<'_, Broken>)> {
        match &*self.links {
            Links::Namespaces { network, broken } => Some((network, broken.lock().unwrap_or_else(|p| p.into_inner()))),
            Links::Proxies(_) => None,
        }
    }

    /// Breaks the link on which `from` reaches `to` (proxies).
    fn break_link(&self, from: usize, to: usize, link: Link) {
        if let Links::Proxies(proxies) = &*self.links {
            proxies[to].set_from(address_of(from), link);
        }
    }

    /// Cuts `index` off from every other replica, both ways.
    fn isolate(&self, index: usize, link: Link) -> Result<(), String> {
        if let Some((network, mut broken)) = self.namespaces() {
            network.set_link(index, false)?;
            broken.down.push(index);
            return Ok(());
        }
        for other in (0..3).filter(|o| *o != index) {
            self.break_link(index, other, link);
            self.break_link(other, index, link);
        }
        Ok(())
    }

    /// `from` can no longer reach `to`; `to` still reaches `from`.
    fn one_way(&self, from: usize, to: usize) -> Result<(), String> {
        if let Some((network, mut broken)) = self.namespaces() {
            network.drop_packets(from, to, true)?;
            broken.dropping.push((from, to));
            return Ok(());
        }
        self.break_link(from, to, Link::Stall);
        Ok(())
    }

    /// The links between `a` and `b` broken as `link` says (proxies), or `b`'s link
    /// flapping (namespaces).
    fn degrade(&self, a: usize, b: usize, link: Link) {
        if let Some((_, mut broken)) = self.namespaces() {
            let stop = Arc::new(AtomicBool::new(false));
            let (links, flag) = (self.links.clone(), stop.clone());
            let flapping = std::thread::spawn(move || {
                let Links::Namespaces { network, .. } = &*links else { return };
                let mut up = false;
                while !flag.load(Ordering::SeqCst) {
                    let _ = network.set_link(b, up);
                    up = !up;
                    std::thread::sleep(FLAP_EVERY);
                }
                let _ = network.set_link(b, true);
            });
            broken.flapping = Some((stop, flapping));
            return;
        }
        self.break_link(a, b, link);
        self.break_link(b, a, link);
    }

    fn heal(&self) -> Result<(), String> {
        match &*self.links {
            Links::Proxies(proxies) => proxies.iter().for_each(FaultProxy::restore),
            Links::Namespaces { network, broken } => {
                let mut broken = broken.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((stop, flapping)) = broken.flapping.take() {
                    stop.store(true, Ordering::SeqCst);
                    let _ = flapping.join();
                }
                for index in std::mem::take(&mut broken.down) {
                    network.set_link(index, true)?;
                }
                for (from, to) in std::mem::take(&mut broken.dropping) {
                    network.drop_packets(from, to, false)?;
                }
            }
        }
        Ok(())
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
    fault: Fault,
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
    for Window { step, fault, wall, cut_off, from, to, majority_leader } in windows {
        let (step, cut_off, from, to, majority_leader) =
            (format!("{step} at {wall}"), *cut_off, *from, *to, *majority_leader);
        let gap = entry_clients::longest_write_gap(&recorded, from, to);
        if cut_off == NOBODY {
            if *fault == Fault::Degraded {
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
    let root = Workdir::new(NAME);
    let cluster = Cluster::with_proxies(root.path());
    let steps = [
        ("leader cut off", Fault::LeaderCutOff, Link::Stall),
        ("follower cut off", Fault::FollowerCutOff, Link::Reset),
        ("leader cannot reach a follower", Fault::OneWay, Link::Stall),
        ("100 ms each way between the leader and a follower", Fault::Degraded, Link::Delay(Duration::from_millis(100))),
    ];
    drill(settings, cluster, root, &steps, &mut report);
    report
}

/// The partitions for real, in the kernel, between network namespaces (needs root).
pub fn run_netns(settings: &Settings) -> Report {
    let mut report = Report::new(NAME_NETNS);
    let root = Workdir::new(NAME_NETNS);
    let cluster = match Cluster::in_namespaces(root.path()) {
        Ok(cluster) => cluster,
        Err(e) => {
            report.failures.push(format!("cannot make the network namespaces (root is needed): {e}"));
            return report;
        }
    };
    let steps = [
        ("the leader's link down", Fault::LeaderCutOff, Link::Stall),
        ("a follower's link down", Fault::FollowerCutOff, Link::Stall),
        ("the leader's packets to a follower dropped", Fault::OneWay, Link::Stall),
        ("a follower's link flapping every 400 ms", Fault::Degraded, Link::Stall),
    ];
    drill(settings, cluster, root, &steps, &mut report);
    report
}

fn drill(
    settings: &Settings,
    cluster: Cluster,
    mut root: Workdir,
    steps: &[(&'static str, Fault, Link)],
    report: &mut Report,
) {
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
        for &(step, fault, link) in steps {
            let Some(leader) = cluster.leader() else {
                report.failures.push(format!("no leader before \"{step}\""));
                break;
            };
            let follower = (leader + 1) % 3;
            let cut_off = match fault {
                Fault::LeaderCutOff => leader,
                Fault::FollowerCutOff => follower,
                Fault::OneWay | Fault::Degraded => NOBODY,
            };
            first_fault.get_or_insert(load.now());
            let broken = match fault {
                Fault::Degraded => {
                    cluster.degrade(leader, follower, link);
                    Ok(())
                }
                Fault::OneWay => cluster.one_way(leader, follower),
                Fault::LeaderCutOff | Fault::FollowerCutOff => {
                    isolated.store(cut_off, Ordering::SeqCst);
                    cluster.isolate(cut_off, link)
                }
            };
            if let Err(e) = broken {
                report.failures.push(format!("{step}: {e}"));
                break;
            }
            report.faults += 1;
            // The window opens once the fault is in place: an operation sent before that
            // may be acknowledged by anyone.
            let from = load.now();
            let wall = testkit::utc_now();
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
            if let Err(e) = cluster.heal() {
                report.failures.push(format!("{step}: cannot heal: {e}"));
            }
            isolated.store(NOBODY, Ordering::SeqCst);

            // Judged once every operation sent in the window has returned (at the end).
            windows.push(Window { step, fault, wall, cut_off, from, to, majority_leader });
            // The cut-off replica serves linearizable reads again once healed.
            let back = cluster.servers.iter().all(|s| s.serves_within(Duration::from_secs(30)));
            report.check(back, || format!("{step}: a replica serves no reads 30 s after healing"));
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let ids = load.ids.clone();
    let start = load.start;
    let history = load.finish(&runtime);
    let notes = judge(&windows, &history, &cluster.servers, report);
    entry_clients::check(
        &runtime,
        &cluster.servers,
        &ids,
        &history,
        first_fault.unwrap_or(0),
        start.elapsed().as_nanos() as u64,
        report,
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
    root.settle(report);
}
