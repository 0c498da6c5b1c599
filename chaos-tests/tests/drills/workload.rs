//! Clients that update and read registration entries through random replicas' admin
//! sockets (the SPIRE Entry API), recording each operation's invocation, answer and time.
//! An entry's hint is the register: a write sets it (BatchUpdateEntry with an input mask
//! of just the hint), a read is GetEntry (linearizable on every replica).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_tests::linearizability::{Op, Outcome, Recorded};
use proto::spire::api::server::entry::v1 as entry_pb;
use proto::spire::api::types;
use tonic::Code;

/// How long one operation may take before its outcome counts as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A gRPC channel to a Unix socket (a replica's admin socket, an agent's Workload API), or
/// `None` if it does not answer (then an operation was never sent: it failed).
pub async fn connect(socket: &Path) -> Option<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://admin.socket")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .ok()
}

/// Creates `n` entries through `socket`; returns their ids.
pub async fn create_entries(socket: &Path, n: usize) -> Vec<String> {
    let channel = connect(socket).await.expect("the admin socket answers");
    let entries = (0..n)
        .map(|i| types::Entry {
            spiffe_id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: format!("/drill/{i}") }),
            parent_id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: "/spire/agent/drill".into() }),
            selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{}", 10_000 + i) }],
            ..Default::default()
        })
        .collect();
    let out = entry_pb::entry_client::EntryClient::new(channel).batch_create_entry(entry_pb::BatchCreateEntryRequest { entries, output_mask: None }).await.expect("entries created").into_inner();
    out.results.into_iter().map(|r| r.entry.expect("a created entry").id).collect()
}

/// Reads every entry's hint through `socket` (linearizable).
pub async fn final_state(socket: &Path, ids: &[String]) -> BTreeMap<String, Option<String>> {
    let channel = connect(socket).await.expect("the admin socket answers");
    let mut client = entry_pb::entry_client::EntryClient::new(channel);
    let mut state = BTreeMap::new();
    for id in ids {
        // A replica that was just resumed or restarted may need a moment to rejoin.
        let deadline = Instant::now() + Duration::from_secs(20);
        let entry = loop {
            match client.get_entry(entry_pb::GetEntryRequest { id: id.clone(), output_mask: None }).await {
                Ok(entry) => break entry.into_inner(),
                Err(status) if Instant::now() < deadline => {
                    let _ = status;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("no final read of {id} through {}: {status:?}", socket.display()),
            }
        };
        state.insert(id.clone(), Some(entry.hint).filter(|h| !h.is_empty()));
    }
    state
}

/// What a status says about whether the operation happened.
fn outcome_of(status: &tonic::Status) -> Outcome {
    match status.code() {
        // Refused before anything was written.
        Code::InvalidArgument | Code::NotFound | Code::PermissionDenied | Code::FailedPrecondition | Code::AlreadyExists => Outcome::Failed,
        // The replica may have forwarded it, and the leader may have committed it.
        _ => Outcome::Unknown,
    }
}

/// One client: until `until`, picks a replica socket (`sockets()` gives the live ones'),
/// an entry and read or write at random, and records what happened.
pub async fn client(number: usize, sockets: Arc<dyn Fn() -> Vec<PathBuf> + Send + Sync>, ids: Arc<Vec<String>>, start: Instant, until: Instant, history: Arc<Mutex<Vec<Recorded>>>) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let live = sockets();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let socket = &live[fastrand::usize(..live.len())];
        let id = ids[fastrand::usize(..ids.len())].clone();
        let write = fastrand::bool();
        let value = format!("c{number}-{n}");
        let invoked = start.elapsed().as_nanos() as u64;
        let (op, outcome) = match connect(socket).await {
            None => (if write { Op::Write(Some(value)) } else { Op::Read }, Outcome::Failed),
            Some(channel) => {
                let mut client = entry_pb::entry_client::EntryClient::new(channel);
                if write {
                    let update = types::Entry { id: id.clone(), hint: value.clone(), ..Default::default() };
                    let mask = types::EntryMask { hint: true, ..Default::default() };
                    let call = client.batch_update_entry(entry_pb::BatchUpdateEntryRequest { entries: vec![update], input_mask: Some(mask), output_mask: None });
                    let outcome = match tokio::time::timeout(OP_TIMEOUT, call).await {
                        Err(_) => Outcome::Unknown,
                        Ok(Err(status)) => outcome_of(&status),
                        Ok(Ok(response)) => match response.into_inner().results.first().and_then(|r| r.status.as_ref()) {
                            Some(status) if status.code == 0 => Outcome::Ok(None),
                            Some(status) => outcome_of(&tonic::Status::new(Code::from(status.code), status.message.clone())),
                            None => Outcome::Unknown,
                        },
                    };
                    (Op::Write(Some(value)), outcome)
                } else {
                    let call = client.get_entry(entry_pb::GetEntryRequest { id: id.clone(), output_mask: None });
                    let outcome = match tokio::time::timeout(OP_TIMEOUT, call).await {
                        Err(_) => Outcome::Unknown,
                        Ok(Err(status)) => outcome_of(&status),
                        Ok(Ok(entry)) => Outcome::Ok(Some(entry.into_inner().hint).filter(|h| !h.is_empty())),
                    };
                    (Op::Read, outcome)
                }
            }
        };
        let returned = start.elapsed().as_nanos() as u64;
        history.lock().unwrap().push(Recorded { client: number, key: id, op, invoked, returned, outcome });
    }
}

/// The longest time between two acknowledged writes (or from `from` to the first), in ms.
pub fn longest_write_gap(history: &[Recorded], from: u64, to: u64) -> u64 {
    let mut acknowledged: Vec<u64> = history.iter().filter(|r| matches!(r.op, Op::Write(_)) && matches!(r.outcome, Outcome::Ok(_))).map(|r| r.returned).collect();
    acknowledged.sort_unstable();
    let mut last = from;
    let mut longest = 0;
    for t in acknowledged.into_iter().chain([to]) {
        longest = longest.max(t.saturating_sub(last));
        last = t;
    }
    longest / 1_000_000
}

/// The leader, as the first answering replica among those `alive` reports it.
pub fn leader(servers: &[chaos_tests::harness::ServerProcess], alive: &[bool]) -> Option<u64> {
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
    ops.iter().map(|r| format!("{:>12} {:>12} client {} {:?} -> {:?}", r.invoked / 1000, r.returned / 1000, r.client, r.op, r.outcome)).collect::<Vec<_>>().join("\n")
}
