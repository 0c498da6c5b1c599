//! The cluster RPC server: hands Raft messages to openraft, serves forwarded writes and
//! read-index requests when this replica leads. Listens with TLS 1.3 and requires a
//! replica certificate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proto::cluster::cluster_server::{Cluster, ClusterServer};
use proto::cluster::Payload;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::tls::TlsError;
use super::wire::{decode, encode, AdminRequest, ForwardError};
use crate::command::Command;
use crate::membership::{add_member_step, remove_member, AddProgress};
use crate::proposer::Proposer;
use crate::types::{NodeId, Raft, TypeConfig};

/// Largest cluster message accepted or sent: a batch of log entries or a snapshot chunk.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Carries out leader transfers asked of this replica; the node implements it.
#[tonic::async_trait]
pub trait TransferHandler: Send + Sync + 'static {
    async fn transfer_leadership(&self, to: NodeId) -> Result<(), ForwardError>;
}

/// Admits new replicas. The server crate implements it (invites, certificates); this crate
/// only routes the Join call, whose payloads it does not read.
#[tonic::async_trait]
pub trait JoinHandler: Send + Sync + 'static {
    async fn join(&self, request: Vec<u8>) -> Result<Vec<u8>, Status>;
}

/// The gRPC service of one replica.
pub struct ClusterService {
    raft: Raft,
    proposer: Proposer,
    transfers: Arc<dyn TransferHandler>,
    join: Option<Arc<dyn JoinHandler>>,
    /// Counts election pauses and resumes, so a pause's timer restores the election timer
    /// only if nothing changed it since.
    election_pauses: Arc<AtomicU64>,
}

/// The longest a leader may pause this replica's election timer, whatever it asks.
const MAX_ELECTION_PAUSE: Duration = Duration::from_secs(60);

impl ClusterService {
    pub fn new(
        raft: Raft,
        proposer: Proposer,
        transfers: Arc<dyn TransferHandler>,
        join: Option<Arc<dyn JoinHandler>>,
    ) -> Self {
        Self { raft, proposer, transfers, join, election_pauses: Arc::default() }
    }

    /// Stops the election timer for `pause` (at most [`MAX_ELECTION_PAUSE`]), then restarts
    /// it unless a later pause or resume came first.
    fn pause_election(&self, pause: Duration) {
        let pause = pause.min(MAX_ELECTION_PAUSE);
        let this_pause = self.election_pauses.fetch_add(1, Ordering::SeqCst) + 1;
        self.raft.runtime_config().elect(false);
        let (raft, pauses) = (self.raft.clone(), self.election_pauses.clone());
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            if pauses.load(Ordering::SeqCst) == this_pause {
                tracing::warn!(
                    ?pause,
                    "a leader transfer paused this replica's election timer and did not resume it; resuming it now"
                );
                raft.runtime_config().elect(true);
            }
        });
    }

    fn resume_election(&self) {
        self.election_pauses.fetch_add(1, Ordering::SeqCst);
        self.raft.runtime_config().elect(true);
    }
}

/// Every call but Join comes from a replica: its certificate was verified in the
/// handshake, so here it only has to be there.
fn require_replica<T>(request: &Request<T>) -> Result<(), Status> {
    match request.peer_certs() {
        Some(certs) if !certs.is_empty() => Ok(()),
        _ => Err(Status::unauthenticated("a replica certificate is required for this call")),
    }
}

/// Turns openraft's "not the leader" into a forward hint; everything else is unavailable.
pub(crate) fn forward_error(e: RaftError<NodeId, ClientWriteError<NodeId, crate::ReplicaNode>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ForwardError::NotLeader { leader: f.leader_id.zip(f.leader_node) }
        }
        other => ForwardError::Unavailable(other.to_string()),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        require_replica(&request)?;
        let req: AppendEntriesRequest<TypeConfig> = decode("AppendEntries", request.get_ref())?;
        let result = self.raft.append_entries(req).await;
        Ok(Response::new(encode("AppendEntries result", &result)?))
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        require_replica(&request)?;
        let req: VoteRequest<NodeId> = decode("Vote", request.get_ref())?;
        let result = self.raft.vote(req).await;
        Ok(Response::new(encode("Vote result", &result)?))
    }

    async fn install_snapshot(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        require_replica(&request)?;
        let req: InstallSnapshotRequest<TypeConfig> = decode("InstallSnapshot", request.get_ref())?;
        let result = self.raft.install_snapshot(req).await;
        Ok(Response::new(encode("InstallSnapshot result", &result)?))
    }

    async fn write(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        require_replica(&request)?;
        let command: Command = decode("Write", request.get_ref())?;
        let result = match self.proposer.write(command).await {
            Ok(response) => Ok(response),
            Err(e) => Err(forward_error(e)),
        };
        Ok(Response::new(encode("Write result", &result)?))
    }

    async fn read_index(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        require_replica(&request)?;
        let result = match self.raft.ensure_linearizable().await {
            Ok(read_log_id) => Ok(read_log_id),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader { leader: f.leader_id.zip(f.leader_node) })
            }
            Err(e) => Err(ForwardError::Unavailable(e.to_string())),
        };
        Ok(Response::new(encode("ReadIndex result", &result)?))
    }

    async fn admin(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        require_replica(&request)?;
        let admin: AdminRequest = decode("Admin", request.get_ref())?;
        let done = |r: Result<(), ForwardError>| r.map(|()| None);
        let result: Result<Option<AddProgress>, ForwardError> = match admin {
            AdminRequest::PauseElection { millis } => {
                self.pause_election(Duration::from_millis(millis));
                Ok(None)
            }
            AdminRequest::AllowElection(false) => {
                self.pause_election(MAX_ELECTION_PAUSE);
                Ok(None)
            }
            AdminRequest::ResumeElection | AdminRequest::AllowElection(true) => {
                self.resume_election();
                Ok(None)
            }
            AdminRequest::StartElection => {
                done(self.raft.trigger().elect().await.map_err(|e| ForwardError::Unavailable(e.to_string())))
            }
            AdminRequest::TransferLeadership { to } => done(self.transfers.transfer_leadership(to).await),
            AdminRequest::AddMember { id, node } => add_member_step(&self.raft, id, node).await.map(Some),
            AdminRequest::RemoveMember { id } => done(remove_member(&self.raft, id).await),
        };
        Ok(Response::new(encode("Admin result", &result)?))
    }

    async fn join(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let Some(handler) = &self.join else {
            return Err(Status::unimplemented("this replica does not admit new replicas"));
        };
        let data = handler.join(request.into_inner().data).await?;
        Ok(Response::new(Payload { data }))
    }
}

/// TLS connections accepted on `listener`, as a stream for tonic's `serve_with_incoming`.
/// Each handshake runs in its own task with a 10 s limit, so a slow or hostile client
/// cannot stall accepts. The returned task accepts until aborted or the stream is dropped;
/// `what` names the listener in logs.
pub fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    what: &'static str,
) -> (ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(async move {
        while !tx.is_closed() {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // gRPC sends small frames and waits for answers: without this, Nagle's algorithm
            // and delayed ACKs hold some of them back for tens of milliseconds.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, error = %e, "{what} TLS handshake failed"),
                    Err(_) => tracing::warn!(%peer, "{what} TLS handshake timed out"),
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

/// Binds `listen` and serves the cluster RPC over TLS (`acceptor`, from
/// `tls::server_config`) until `shutdown` resolves.
/// Returns the bound address (useful with port 0) and the server task.
pub async fn serve(
    raft: Raft,
    proposer: Proposer,
    transfers: Arc<dyn TransferHandler>,
    join: Option<Arc<dyn JoinHandler>>,
    acceptor: TlsAcceptor,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TlsError> {
    let listener =
        TcpListener::bind(listen).await.map_err(|e| TlsError::Config(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| TlsError::Config(e.to_string()))?;
    let (incoming, accept_task) = accept_tls(listener, acceptor, "cluster");
    let service = ClusterServer::new(ClusterService::new(raft, proposer, transfers, join))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let task = tokio::spawn(async move {
        // Peers are authenticated replicas, and a replica resumed after a pause finds many
        // streams its peers gave up on (each heartbeat times out and is reset): h2's
        // rapid-reset guard (20 by default) would close the connection for that.
        let result = tonic::transport::Server::builder()
            .http2_max_pending_accept_reset_streams(Some(1024))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        accept_task.abort();
        if let Err(e) = result {
            tracing::error!(error = %e, "cluster RPC server stopped");
        }
    });
    Ok((bound, task))
}
