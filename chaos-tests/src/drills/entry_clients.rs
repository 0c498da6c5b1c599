//! Clients that create, update, delete and read registration entries through random
//! replicas' admin sockets (the SPIRE Entry API), recording each operation's invocation,
//! answer and time. Each entry is a register: its hint while it exists, nothing once
//! deleted. A write sets the hint (BatchUpdateEntry with an input mask of just the hint) or
//! creates the entry again under its own id with a hint (BatchCreateEntry); a delete
//! (BatchDeleteEntry) writes nothing; a read is GetEntry (linearizable on every replica).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::linearizability::{self, Op, Outcome, Recorded, Verdict};
use proto::reason::Reason;
use proto::spire::api::server::entry::v1 as entry_pb;
use proto::spire::api::types;
use proto::unix_socket::connect;
use testkit::ServerProcess;
use tonic::Code;

use super::Report;

/// How long one operation may take before its outcome counts as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Drill entry `i`: id `drill-<i>`, so a client can create it again after a delete.
fn drill_entry(i: usize, hint: &str) -> types::Entry {
    types::Entry {
        id: format!("drill-{i}"),
        spiffe_id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: format!("/drill/{i}") }),
        parent_id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: "/spire/agent/drill".into() }),
        selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{}", 10_000 + i) }],
        hint: hint.to_owned(),
        ..Default::default()
    }
}

/// Creates `n` entries through `socket`; returns their ids.
pub async fn create_entries(socket: &Path, n: usize) -> Vec<String> {
    let channel = connect(socket).await.expect("the admin socket answers");
    let entries = (0..n).map(|i| drill_entry(i, "")).collect();
    let out = entry_pb::entry_client::EntryClient::new(channel)
        .batch_create_entry(entry_pb::BatchCreateEntryRequest { entries, output_mask: None })
        .await
        .expect("entries created")
        .into_inner();
    out.results.into_iter().map(|r| r.entry.expect("a created entry").id).collect()
}

/// Reads every entry's hint through `socket` (linearizable).
pub async fn final_state(socket: &Path, ids: &[String]) -> Result<BTreeMap<String, Option<String>>, String> {
    let channel = connect(socket).await.map_err(|e| format!("{} does not answer: {e}", socket.display()))?;
    let mut client = entry_pb::entry_client::EntryClient::new(channel);
    let mut state = BTreeMap::new();
    for id in ids {
        // A replica that was just resumed or restarted may need a moment to rejoin.
        let deadline = Instant::now() + Duration::from_secs(20);
        let hint = loop {
            match client.get_entry(entry_pb::GetEntryRequest { id: id.clone(), output_mask: None }).await {
                Ok(entry) => break Some(entry.into_inner().hint).filter(|h| !h.is_empty()),
                // Deleted: the register holds nothing.
                Err(status) if status.code() == Code::NotFound => break None,
                Err(status) if Instant::now() < deadline => {
                    let _ = status;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => return Err(format!("no final read of {id} through {}: {status:?}", socket.display())),
            }
        };
        state.insert(id.clone(), hint);
    }
    Ok(state)
}

/// What a status says about whether the operation happened.
fn outcome_of(status: &tonic::Status) -> Outcome {
    match status.code() {
        // Refused before anything was written.
        Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::AlreadyExists => Outcome::Failed,
        // The server says the cluster took nothing (no leader, cut off): as good as a
        // refusal. With reason OUTCOME_UNKNOWN, or from the transport, it may have been.
        Code::Unavailable if Reason::of(status) == Some(Reason::ClusterUnavailable) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// The replicas (by index) a client may call right now.
pub type Targets = Arc<dyn Fn() -> Vec<usize> + Send + Sync>;

/// One recorded operation and the replica (by index) it was sent to.
#[derive(Clone, Debug)]
pub struct Operation {
    pub via: usize,
    pub recorded: Recorded,
}

/// Clients working on a few entries until stopped, recording every operation.
pub struct Load {
    pub ids: Arc<Vec<String>>,
    /// Times in the history are nanoseconds since this instant.
    pub start: Instant,
    history: Arc<Mutex<Vec<Operation>>>,
    /// The admin socket of each replica index; a replaced replica's index gets its
    /// successor's.
    sockets: Sockets,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Sockets = Arc<Mutex<Vec<std::path::PathBuf>>>;

impl Load {
    /// Creates `entries` entries through `servers[0]`, then starts one client per item of
    /// `targets`, each calling the replicas its item names.
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        servers: &[ServerProcess],
        entries: usize,
        targets: Vec<Targets>,
    ) -> Self {
        let ids = Arc::new(runtime.block_on(create_entries(&servers[0].socket(), entries)));
        let sockets: Sockets = Arc::new(Mutex::new(servers.iter().map(ServerProcess::socket).collect()));
        let (history, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let start = Instant::now();
        let tasks = targets
            .into_iter()
            .enumerate()
            .map(|(c, targets)| {
                runtime.spawn(client(c, sockets.clone(), targets, ids.clone(), start, stop.clone(), history.clone()))
            })
            .collect();
        Self { ids, start, history, sockets, stop, tasks }
    }

    /// Sends the calls for replica `index` to `server` from now on (it replaced the one
    /// there).
    pub fn replace(&self, index: usize, server: &ServerProcess) {
        if let Some(socket) = self.sockets.lock().unwrap_or_else(|p| p.into_inner()).get_mut(index) {
            *socket = server.socket();
        }
    }

    /// Nanoseconds since the load started (the history's clock).
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// How many operations have been recorded so far.
    pub fn recorded(&self) -> usize {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The operations recorded so far.
    pub fn history(&self) -> Vec<Operation> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When the first write invoked at or after `since` was acknowledged (history clock),
    /// if one was yet.
    pub fn first_write_acknowledged_since(&self, since: u64) -> Option<u64> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history
            .iter()
            .map(|o| &o.recorded)
            .filter(|r| r.invoked >= since && matches!(r.op, Op::Write(_)) && matches!(r.outcome, Outcome::Ok(_)))
            .map(|r| r.returned)
            .min()
    }

    /// Stops the clients and runs [`check`] on their history against `servers`, from the
    /// first fault (history clock; none: from the start) to now.
    pub fn finish_and_check(
        self,
        runtime: &tokio::runtime::Runtime,
        servers: &[ServerProcess],
        first_fault: Option<u64>,
        report: &mut Report,
    ) {
        let (ids, start) = (self.ids.clone(), self.start);
        let history = self.finish(runtime);
        let end = start.elapsed().as_nanos() as u64;
        check(runtime, servers, &ids, &history, first_fault.unwrap_or(0), end, report);
    }

    /// Stops the clients (each finishes the operation it is in); returns the history.
    pub fn finish(self, runtime: &tokio::runtime::Runtime) -> Vec<Operation> {
        self.stop.store(true, Ordering::SeqCst);
        runtime.block_on(async {
            for task in self.tasks {
                let _ = task.await;
            }
        });
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner()).clone();
        history
    }
}

/// Which replicas are up; clients given [`Alive::targets`] call only those.
#[derive(Clone)]
pub struct Alive(Arc<Mutex<Vec<bool>>>);

impl Alive {
    /// `n` replicas, all up.
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Mutex::new(vec![true; n])))
    }

    pub fn set(&self, index: usize, up: bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner())[index] = up;
    }

    pub fn snapshot(&self) -> Vec<bool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn targets(&self) -> Targets {
        let alive = self.clone();
        Arc::new(move || alive.snapshot().iter().enumerate().filter(|(_, up)| **up).map(|(i, _)| i).collect())
    }
}

/// Moves leadership to `servers[index]` (`cluster transfer`) and gives it half a second to
/// take over; a refusal is a failed check.
pub fn lead_from(servers: &[ServerProcess], index: usize, report: &mut Report) {
    let target = servers[index].id.to_string();
    let transferred = servers[index].command(&["cluster", "transfer", "--node-id", &target]);
    report.check(transferred.status.success(), || {
        format!("leadership transfer to replica {target}: {}", String::from_utf8_lossy(&transferred.stderr))
    });
    std::thread::sleep(Duration::from_millis(500));
}

/// Restarts `servers[index]` from its disk once its fault is repaired, out of the clients'
/// reach meanwhile; a replica that serves no reads 30 s later is a failed check.
pub fn restart_repaired(servers: &mut [ServerProcess], alive: &Alive, index: usize, report: &mut Report) {
    alive.set(index, false);
    servers[index].kill();
    servers[index].restart();
    alive.set(index, true);
    if !servers[index].serves_within(Duration::from_secs(30)) {
        report
            .failures
            .push(format!("the repaired replica serves no reads 30 s after restarting:\n{}", servers[index].log()));
    }
}

/// Every replica, for clients that may call any.
pub fn any_replica(n: usize) -> Targets {
    Arc::new(move || (0..n).collect())
}

/// After the faults: waits until all `servers` have a leader and serve reads, then checks
/// that they agree on every entry, that no acknowledged write was lost and that every
/// entry's history is linearizable; fills those parts of `report`. `first_fault` and `end`
/// bound the longest write gap (history clock).
pub fn check(
    runtime: &tokio::runtime::Runtime,
    servers: &[ServerProcess],
    ids: &[String],
    history: &[Operation],
    first_fault: u64,
    end: u64,
    report: &mut Report,
) {
    let recorded: Vec<Recorded> = history.iter().map(|o| o.recorded.clone()).collect();
    report.operations = recorded.len();
    report.acknowledged = recorded.iter().filter(|r| matches!(r.outcome, Outcome::Ok(_))).count();
    report.longest_write_gap = Some(Duration::from_millis(longest_write_gap(&recorded, first_fault, end)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader(servers, &vec![true; servers.len()]).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut finals = Vec::new();
    for server in servers {
        match runtime.block_on(final_state(&server.socket(), ids)) {
            Ok(state) => finals.push(state),
            Err(why) => {
                report.failures.push(format!("{why}\n{}", trouble(servers)));
                return;
            }
        }
    }
    report
        .check(finals.windows(2).all(|w| w[0] == w[1]), || format!("replicas disagree on the final state: {finals:?}"));
    let lost = linearizability::lost_writes(&recorded, &finals[0]);
    report.lost_writes = Some(lost.len());
    report.check(lost.is_empty(), || format!("acknowledged writes lost for entries {lost:?}"));
    let verdict = linearizability::check(&recorded, None);
    report.linearizable = Some(matches!(verdict, Verdict::Linearizable));
    if let Verdict::NotLinearizable { key, .. } = &verdict {
        report.failures.push(format!(
            "not linearizable: entry {key}; its operations (invoked µs, returned µs):\n{}",
            describe(&recorded, key)
        ));
    }
}

/// The last warnings and errors of each replica's log, for a failure that needs explaining.
pub fn trouble(servers: &[ServerProcess]) -> String {
    let tail = |server: &ServerProcess| {
        let log = server.log();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" INFO ") && !l.contains(" DEBUG ")).collect();
        lines[lines.len().saturating_sub(20)..]
            .iter()
            .map(|l| l.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    };
    servers
        .iter()
        .map(|s| format!("--- replica {} (last warnings and errors):\n{}", s.id, tail(s)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One client: until `stop`, picks a replica (`targets()` names those it may call), an
/// entry and read or write at random, and records what happened.
async fn client(
    number: usize,
    sockets: Sockets,
    targets: Targets,
    ids: Arc<Vec<String>>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Operation>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let live = targets();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let via = live[fastrand::usize(..live.len())];
        let Some(socket) = sockets.lock().unwrap_or_else(|p| p.into_inner()).get(via).cloned() else { continue };
        let id = ids[fastrand::usize(..ids.len())].clone();
        let kind = match fastrand::u8(..20) {
            0 => Kind::Delete,
            1 => Kind::Create,
            2..=9 => Kind::Update,
            _ => Kind::Read,
        };
        let value = format!("c{number}-{n}");
        let op = match kind {
            Kind::Read => Op::Read,
            Kind::Update | Kind::Create => Op::Write(Some(value.clone())),
            Kind::Delete => Op::Write(None),
        };
        let invoked = start.elapsed().as_nanos() as u64;
        let outcome = match connect(&socket).await.ok() {
            None => Outcome::Failed,
            Some(channel) => tokio::time::timeout(
                OP_TIMEOUT,
                call(entry_pb::entry_client::EntryClient::new(channel), kind, &id, &value),
            )
            .await
            .unwrap_or(Outcome::Unknown),
        };
        let returned = start.elapsed().as_nanos() as u64;
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Operation { via, recorded: Recorded { client: number, key: id, op, invoked, returned, outcome } });
    }
}

/// What a client does to an entry. Creating is modelled as a plain write and refusals are
/// left out of the history, which can only make the check more lenient, never wrong.
#[derive(Clone, Copy)]
enum Kind {
    /// GetEntry; NotFound reads as nothing.
    Read,
    /// BatchUpdateEntry of the hint (NotFound once deleted: refused).
    Update,
    /// BatchCreateEntry under the entry's own id (AlreadyExists while it exists: refused).
    Create,
    /// BatchDeleteEntry (NotFound once deleted: refused).
    Delete,
}

/// One call, and what its answer says about whether it took effect.
async fn call(
    mut client: entry_pb::entry_client::EntryClient<tonic::transport::Channel>,
    kind: Kind,
    id: &str,
    value: &str,
) -> Outcome {
    let item = |status: Option<&types::Status>| match status {
        Some(status) if status.code == 0 => Outcome::Ok(None),
        Some(status) => outcome_of(&tonic::Status::new(Code::from(status.code), status.message.clone())),
        None => Outcome::Unknown,
    };
    match kind {
        Kind::Read => {
            match client.get_entry(entry_pb::GetEntryRequest { id: id.to_owned(), output_mask: None }).await {
                Ok(entry) => Outcome::Ok(Some(entry.into_inner().hint).filter(|h| !h.is_empty())),
                Err(status) if status.code() == Code::NotFound => Outcome::Ok(None),
                Err(status) => outcome_of(&status),
            }
        }
        Kind::Update => {
            let update = types::Entry { id: id.to_owned(), hint: value.to_owned(), ..Default::default() };
            let mask = types::EntryMask { hint: true, ..Default::default() };
            match client
                .batch_update_entry(entry_pb::BatchUpdateEntryRequest {
                    entries: vec![update],
                    input_mask: Some(mask),
                    output_mask: None,
                })
                .await
            {
                Ok(response) => item(response.into_inner().results.first().and_then(|r| r.status.as_ref())),
                Err(status) => outcome_of(&status),
            }
        }
        Kind::Create => {
            let Some(i) = id.strip_prefix("drill-").and_then(|i| i.parse().ok()) else { return Outcome::Failed };
            match client
                .batch_create_entry(entry_pb::BatchCreateEntryRequest {
                    entries: vec![drill_entry(i, value)],
                    output_mask: None,
                })
                .await
            {
                Ok(response) => item(response.into_inner().results.first().and_then(|r| r.status.as_ref())),
                Err(status) => outcome_of(&status),
            }
        }
        Kind::Delete => {
            match client.batch_delete_entry(entry_pb::BatchDeleteEntryRequest { ids: vec![id.to_owned()] }).await {
                Ok(response) => item(response.into_inner().results.first().and_then(|r| r.status.as_ref())),
                Err(status) => outcome_of(&status),
            }
        }
    }
}

/// The longest time between two acknowledged writes (or from `from` to the first), in ms.
pub fn longest_write_gap(history: &[Recorded], from: u64, to: u64) -> u64 {
    let mut acknowledged: Vec<u64> = history
        .iter()
        .filter(|r| {
            matches!(r.op, Op::Write(_)) && matches!(r.outcome, Outcome::Ok(_)) && r.returned > from && r.returned <= to
        })
        .map(|r| r.returned)
        .collect();
    acknowledged.sort_unstable();
    let mut last = from;
    let mut longest = 0;
    for t in acknowledged.into_iter().chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest / 1_000_000
}

/// The leader, as the first answering replica among those `alive` reports it.
pub fn leader(servers: &[ServerProcess], alive: &[bool]) -> Option<u64> {
    servers.iter().zip(alive).filter(|(_, up)| **up).find_map(|(s, _)| {
        let out = s.command(&["cluster", "status", "--output", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?["leader"].as_u64()
    })
}

/// The recorded operations on `key`, by invocation time, one per line (for a verdict that
/// needs explaining).
pub fn describe(history: &[Recorded], key: &str) -> String {
    let mut ops: Vec<&Recorded> = history.iter().filter(|r| r.key == key).collect();
    ops.sort_by_key(|r| r.invoked);
    ops.iter()
        .map(|r| {
            format!(
                "{:>12} {:>12} client {} {:?} -> {:?}",
                r.invoked / 1000,
                r.returned / 1000,
                r.client,
                r.op,
                r.outcome
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
