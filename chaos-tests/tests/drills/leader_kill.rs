//! The leader is killed (kill -9) and restarted from its disk, again and again, while
//! clients write and read entries through every replica. Afterwards: the replicas agree,
//! no acknowledged write is lost, every entry's history is linearizable, and writes were
//! accepted again soon after each kill.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_tests::harness::{wait_until, ServerProcess};
use chaos_tests::linearizability::{self, Outcome, Verdict};

use super::workload;

const KILLS: usize = 3;
const CLIENTS: usize = 3;

#[test]
fn leader_kill_loop_under_write_load() {
    let root = tempfile::tempdir().unwrap();
    let mut servers = ServerProcess::cluster(root.path(), 3, "");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ids = Arc::new(runtime.block_on(workload::create_entries(&servers[0].socket(), 4)));

    let alive = Arc::new(Mutex::new(vec![true; servers.len()]));
    let sockets: Vec<_> = servers.iter().map(ServerProcess::socket).collect();
    let live_sockets = {
        let alive = alive.clone();
        Arc::new(move || sockets.iter().zip(alive.lock().unwrap().iter()).filter(|(_, up)| **up).map(|(s, _)| s.clone()).collect::<Vec<_>>())
    };
    let history = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let run_for = Duration::from_secs(6 * KILLS as u64 + 4);
    let until = start + run_for;
    let clients: Vec<_> = (0..CLIENTS).map(|c| runtime.spawn(workload::client(c, live_sockets.clone(), ids.clone(), start, until, history.clone()))).collect();

    // The faults: kill the leader, leave it down for two seconds, start it again.
    let mut kills = Vec::new();
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..KILLS {
        let up = alive.lock().unwrap().clone();
        let Some(id) = workload::leader(&servers, &up) else { panic!("no leader to kill") };
        let index = servers.iter().position(|s| s.id == id).unwrap();
        alive.lock().unwrap()[index] = false;
        kills.push(start.elapsed().as_nanos() as u64);
        servers[index].kill();
        std::thread::sleep(Duration::from_secs(2));
        servers[index].restart();
        alive.lock().unwrap()[index] = true;
        std::thread::sleep(Duration::from_secs(4));
    }
    runtime.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });
    let end = start.elapsed().as_nanos() as u64;
    let history = history.lock().unwrap().clone();

    // The cluster settles with all three replicas; each reads the same final state.
    wait_until(Duration::from_secs(20), || workload::leader(&servers, &[true; 3]).is_some(), "a leader after the drill");
    let finals: Vec<_> = servers.iter().map(|s| runtime.block_on(workload::final_state(&s.socket(), &ids))).collect();
    assert!(finals.windows(2).all(|w| w[0] == w[1]), "replicas disagree: {finals:?}");

    let acknowledged = history.iter().filter(|r| matches!(r.outcome, Outcome::Ok(_))).count();
    let unknown = history.iter().filter(|r| r.outcome == Outcome::Unknown).count();
    let lost = linearizability::lost_writes(&history, &finals[0]);
    let verdict = linearizability::check(&history, None);
    let gap = workload::longest_write_gap(&history, kills[0], end);
    eprintln!(
        "leader kill drill: {} kills, {} operations ({acknowledged} acknowledged, {unknown} unknown), lost writes {}, {verdict:?}, longest write gap {gap} ms",
        kills.len(),
        history.len(),
        lost.len()
    );
    assert!(acknowledged > 50, "too few operations got through to mean anything: {acknowledged}");
    assert!(lost.is_empty(), "acknowledged writes lost for entries {lost:?}");
    if let Verdict::NotLinearizable { key, .. } = &verdict {
        panic!("not linearizable: entry {key}; its operations (invoked µs, returned µs):\n{}", workload::describe(&history, key));
    }
}
