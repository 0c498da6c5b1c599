//! The leader is paused (SIGSTOP) for longer than the election timeout while clients write:
//! the others elect a new leader and keep accepting writes; the old leader, resumed, steps
//! down and catches up, and nothing it might still have held is taken for committed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_tests::harness::{wait_until, ServerProcess};
use chaos_tests::linearizability::{self, Outcome, Verdict};

use super::workload;

#[test]
fn a_paused_leader_is_replaced_and_rejoins() {
    let root = tempfile::tempdir().unwrap();
    let servers = ServerProcess::cluster(root.path(), 3, "");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ids = Arc::new(runtime.block_on(workload::create_entries(&servers[0].socket(), 4)));
    let leader = workload::leader(&servers, &[true; 3]).expect("a leader");
    let paused = servers.iter().position(|s| s.id == leader).unwrap();

    // Two clients move off the paused replica (as agents fail over); a third keeps calling
    // every replica, the paused one included: its calls there hang and time out (outcome
    // unknown), as against a hung machine.
    let sockets: Vec<_> = servers.iter().map(ServerProcess::socket).collect();
    let is_paused = Arc::new(Mutex::new(false));
    let failing_over = {
        let (sockets, is_paused) = (sockets.clone(), is_paused.clone());
        Arc::new(move || sockets.iter().enumerate().filter(|(i, _)| !(*is_paused.lock().unwrap() && *i == paused)).map(|(_, s)| s.clone()).collect::<Vec<_>>())
    };
    let everyone = Arc::new(move || sockets.clone());
    let history = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let until = start + Duration::from_secs(14);
    let mut clients: Vec<_> = (0..2).map(|c| runtime.spawn(workload::client(c, failing_over.clone(), ids.clone(), start, until, history.clone()))).collect();
    clients.push(runtime.spawn(workload::client(2, everyone, ids.clone(), start, until, history.clone())));

    std::thread::sleep(Duration::from_secs(2));
    let paused_at = start.elapsed().as_nanos() as u64;
    *is_paused.lock().unwrap() = true;
    servers[paused].pause();
    // Election timeout is 300 ms in the harness; four seconds is many of them.
    std::thread::sleep(Duration::from_secs(4));
    let mut up = [true; 3];
    up[paused] = false;
    let new_leader = workload::leader(&servers, &up);
    servers[paused].resume();
    *is_paused.lock().unwrap() = false;
    runtime.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });
    let history = history.lock().unwrap().clone();
    assert!(new_leader.is_some_and(|l| l != leader), "the others elected a new leader while {leader} was paused: {new_leader:?}");

    wait_until(Duration::from_secs(20), || workload::leader(&servers, &[true; 3]).is_some(), "a leader after the drill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !servers[paused].command(&["entry", "count"]).status.success() {
        if Instant::now() > deadline {
            let logs: Vec<String> = servers.iter().map(|s| format!("--- replica {}:\n{}", s.id, s.log().lines().filter(|l| !l.contains("INFO")).collect::<Vec<_>>().join("\n"))).collect();
            panic!("the resumed replica serves no reads:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let finals: Vec<_> = servers.iter().map(|s| runtime.block_on(workload::final_state(&s.socket(), &ids))).collect();
    assert!(finals.windows(2).all(|w| w[0] == w[1]), "replicas disagree: {finals:?}");
    let acknowledged_during = history
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ok(_)) && r.invoked > paused_at + 1_000_000_000 && r.returned < paused_at + 4_000_000_000)
        .count();
    let lost = linearizability::lost_writes(&history, &finals[0]);
    let verdict = linearizability::check(&history, None);
    eprintln!("leader pause drill: {} operations, {acknowledged_during} acknowledged while the old leader was paused, lost writes {}, {verdict:?}", history.len(), lost.len());
    assert!(acknowledged_during > 10, "writes and reads went on without the paused leader: {acknowledged_during}");
    assert!(lost.is_empty(), "acknowledged writes lost for entries {lost:?}");
    if let Verdict::NotLinearizable { key, .. } = &verdict {
        panic!("not linearizable: entry {key}; its operations (invoked µs, returned µs):\n{}", workload::describe(&history, key));
    }
}
