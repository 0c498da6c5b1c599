//! The leader is paused (SIGSTOP) for longer than the election timeout while clients write:
//! the others elect a new leader and keep accepting writes; the old leader, resumed, steps
//! down and catches up, and nothing it might still have held is taken for committed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::entry_clients::{self, any_replica, Load, Targets};
use super::{runtime, Report, Settings, Workdir};
use testkit::ServerProcess;

pub const NAME: &str = "leader_pause";
/// Much longer than an election takes (see `partition::HOLD` for what that is).
const PAUSE: Duration = Duration::from_secs(6);
const NOBODY: usize = usize::MAX;

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let servers = ServerProcess::cluster(root.path(), 3, "");
    let runtime = runtime();

    // Two clients move off the paused replica (as agents fail over); a third keeps calling
    // every replica, the paused one included: its calls there hang and time out (outcome
    // unknown), as against a hung machine.
    let paused = Arc::new(AtomicUsize::new(NOBODY));
    let failing_over: Targets = {
        let paused = paused.clone();
        Arc::new(move || (0..3).filter(|i| *i != paused.load(Ordering::SeqCst)).collect())
    };
    let load = Load::start(&runtime, &servers, 4, vec![failing_over.clone(), failing_over, any_replica(3)]);
    std::thread::sleep(Duration::from_secs(2));

    let (began, mut first_fault, mut acknowledged_during) = (Instant::now(), None, 0);
    while settings.another_round(report.faults, began) {
        let Some(leader) = entry_clients::leader(&servers, &[true; 3]) else {
            report.failures.push("no leader to pause".into());
            break;
        };
        let Some(index) = servers.iter().position(|s| s.id == leader) else { break };
        let paused_at = load.now();
        let wall = testkit::utc_now();
        first_fault.get_or_insert(paused_at);
        paused.store(index, Ordering::SeqCst);
        servers[index].pause();
        report.faults += 1;
        // Sampled through the pause: one sample can land mid-election or on a status call
        // that is slow to answer.
        let mut up = [true; 3];
        up[index] = false;
        let mut new_leader = None;
        let until = Instant::now() + PAUSE;
        while Instant::now() < until {
            if let Some(l) = entry_clients::leader(&servers, &up).filter(|l| *l != leader) {
                new_leader = Some(l);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        servers[index].resume();
        paused.store(NOBODY, Ordering::SeqCst);
        report.check(new_leader.is_some_and(|l| l != leader), || {
            format!("the others elected no new leader while {leader} was paused: {new_leader:?}")
        });
        // The resumed replica serves linearizable reads again.
        if !servers[index].serves_within(Duration::from_secs(30)) {
            report.failures.push(format!("the resumed replica {leader} serves no reads 30 s after SIGCONT"));
        }
        let history = load.history();
        acknowledged_during = history
            .iter()
            .filter(|o| {
                matches!(o.recorded.outcome, crate::linearizability::Outcome::Ok(_))
                    && o.recorded.invoked > paused_at + 1_000_000_000
                    && o.recorded.returned < paused_at + PAUSE.as_nanos() as u64
            })
            .count();
        report.check(acknowledged_during > 10, || {
            format!(
                "too few operations acknowledged while the leader \
            ({leader}) was paused at {wall}: {acknowledged_during}"
            )
        });
        std::thread::sleep(Duration::from_secs(2));
    }
    load.finish_and_check(&runtime, &servers, first_fault, &mut report);
    report.summary = format!(
        "{} pauses, {} operations, {acknowledged_during} acknowledged while the last paused leader was stopped, lost \
            writes {:?}, linearizable {:?}",
        report.faults, report.operations, report.lost_writes, report.linearizable
    );
    root.settle(&mut report);
    report
}
