//! Group commit of client writes. openraft 0.9 appends each proposal to the log and waits
//! for its fsync before it takes the next one, so proposals sent one by one cost one fsync
//! each on the leader. The proposer queues writes while earlier ones are in flight and
//! proposes what has queued as one `Command::Batch` entry: one log append, one fsync, one
//! replication round for many writes. Each write still gets its own revision and outcome.

use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::StorageIOError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::command::{Command, CreateEntries, DeleteEntries, Outcome, Response, UpdateEntries};
use crate::types::{LoggedCommand, NodeId, Raft, ReplicaNode};

/// What `raft.client_write` fails with.
pub type WriteError = RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>;

/// Proposals in flight at once. Two keep the log busy: one is replicated and applied while
/// the next is appended, and whatever arrives meanwhile waits to form the batch after.
const MAX_IN_FLIGHT: usize = 4;
/// At most this many commands in one batch entry.
const MAX_COMMANDS: usize = 256;
/// At most this many items (registration entries, ids) in one batch entry, so that one
/// log entry stays far below the cluster RPC's message limit.
const MAX_ITEMS: usize = 1000;
/// Writes waiting for a batch; callers wait here when the leader cannot keep up.
const QUEUE: usize = 4096;

/// Hands writes to the batching task. Cheap to clone; the task stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
    in_flight: Arc<Semaphore>,
}

/// Holds the proposer still: no write is proposed until it is dropped.
pub struct Paused(#[allow(dead_code)] OwnedSemaphorePermit);

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Response, WriteError>>,
}

impl Proposer {
    /// Starts the batching task for `raft` on the current tokio runtime.
    pub fn start(raft: Raft) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::spawn(run(raft, waiting, in_flight.clone()));
        Self { queue, in_flight }
    }

    /// Waits until every proposal in flight is answered, then keeps new ones from being
    /// proposed until the returned guard is dropped (writes queue meanwhile). A leader
    /// transfer needs the log to stand still while the target catches up.
    pub async fn pause(&self) -> Option<Paused> {
        self.in_flight.clone().acquire_many_owned(MAX_IN_FLIGHT as u32).await.ok().map(Paused)
    }

    /// Proposes `command` and waits until it is committed and applied on this replica.
    /// Fails like `raft.client_write` (ForwardToLeader on a follower).
    pub async fn write(&self, command: Command) -> Result<Response, WriteError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RaftError::Fatal(Fatal::Stopped);
        self.queue.send(Proposal { command, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// How much of a batch a command takes: the rows it names, at least one.
fn items(command: &Command) -> usize {
    match command {
        Command::CreateEntries(CreateEntries(e)) | Command::UpdateEntries(UpdateEntries(e)) => e.len().max(1),
        Command::DeleteEntries(DeleteEntries(ids)) => ids.len().max(1),
        Command::Batch(commands) => commands.iter().map(items).sum::<usize>().max(1),
        Command::Idempotent(once) => items(&once.command),
        _ => 1,
    }
}

async fn run(raft: Raft, mut waiting: mpsc::Receiver<Proposal>, in_flight: Arc<Semaphore>) {
    let mut held: Option<Proposal> = None;
    loop {
        let first = match held.take() {
            Some(p) => p,
            None => match waiting.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // The permit is taken after the first write arrives (so an idle proposer holds
        // none and `pause` can take them all) and before the rest are gathered: while none
        // is free, writes pile up into the next batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut total = items(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS {
            let Ok(next) = waiting.try_recv() else { break };
            let size = items(&next.command);
            if total + size > MAX_ITEMS {
                held = Some(next);
                break;
            }
            total += size;
            batch.push(next);
        }
        // Submitted here, in queue order; answered by a task of its own.
        let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let single = commands.len() == 1;
        let command = if single { commands.into_iter().next() } else { Some(Command::Batch(commands)) };
        let Some(command) = command else { continue };
        let logged = match LoggedCommand::new(command) {
            Ok(logged) => logged,
            Err(e) => {
                // Our own types always encode; if one does not, the callers hear why.
                let error = RaftError::Fatal(Fatal::StorageError(StorageIOError::write_logs(&e).into()));
                answer_all(Err(error), single, replies);
                continue;
            }
        };
        let submitted = raft.client_write_ff(logged).await;
        tokio::spawn(async move {
            let result = match submitted {
                Ok(answer) => match answer.await {
                    Ok(Ok(written)) => Ok(written.data),
                    Ok(Err(e)) => Err(RaftError::APIError(e)),
                    Err(_) => Err(RaftError::Fatal(Fatal::Stopped)),
                },
                Err(fatal) => Err(RaftError::Fatal(fatal)),
            };
            answer_all(result, single, replies);
            drop(permit);
        });
    }
}

/// Hands each caller its own response: the whole result for a single command, its item
/// of `Outcome::Batch` for a batch.
fn answer_all(
    result: Result<Response, WriteError>,
    single: bool,
    replies: Vec<oneshot::Sender<Result<Response, WriteError>>>,
) {
    let count = replies.len();
    match result {
        Ok(response) if single => {
            for reply in replies {
                let _ = reply.send(Ok(response.clone()));
            }
        }
        Ok(Response { outcome: Outcome::Batch(responses), .. }) if responses.len() == count => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(other) => {
            // Apply answers a batch with one response per command; anything else is a bug.
            tracing::error!(?other, count, "a batch entry was answered with the wrong outcome");
            for reply in replies {
                let _ = reply.send(Err(RaftError::Fatal(Fatal::Panicked)));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
