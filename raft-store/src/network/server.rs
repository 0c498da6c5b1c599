//! The cluster RPC server: hands Raft messages to openraft, serves forwarded writes and
//! read-index requests when this replica leads. Listens with TLS 1.3; every call but Join
//! requires a replica certificate, and callers without one are served apart, with small
//! limits (`serve`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use proto::cluster::cluster_server::{Cluster, ClusterServer};
use proto::cluster::Payload;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::accept::{accept_tls, ConnectionLimits, Incoming};
use super::faults::Faults;
use super::tls::TlsError;
use super::wire::{decode, encode, AdminRequest, FormationState, ForwardError};
use crate::command::Command;
use crate::leader_contact::LeaderContact;
use crate::membership::{add_member_step, remove_member, replace_member_step, AddProgress};
use crate::proposer::Proposer;
use crate::query::StoreReader;
use crate::types::{NodeId, Raft, TypeConfig};

/// Largest cluster message accepted or sent: a batch of log entries or a snapshot chunk.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Concurrent streams on one replica's connection: forwarded writes and reads from many
/// API callers, replication and heartbeats.
const REPLICA_MAX_STREAMS: u32 = 1024;
/// A replica connection whose peer stops answering pings is closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Callers without a replica certificate may only Join, whose request is a few hundred
/// bytes: they get small messages and headers, a few streams, a request time limit, and a
/// connection that closes after a minute whatever it does.
const ANONYMOUS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
const ANONYMOUS_MAX_HEADER_BYTES: u32 = 16 * 1024;
const ANONYMOUS_MAX_STREAMS: u32 = 4;
const ANONYMOUS_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(60);
/// Anonymous connections open at once, from all sources.
const ANONYMOUS_MAX_CONNECTIONS: usize = 64;

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
#[derive(Clone)]
pub struct ClusterService {
    raft: Raft,
    /// The replicated state, for the removed node ids.
    reader: StoreReader,
    proposer: Proposer,
    transfers: Arc<dyn TransferHandler>,
    join: Option<Arc<dyn JoinHandler>>,
    /// Counts election pauses and resumes, so a pause's timer restores the election timer
    /// only if nothing changed it since.
    election_pauses: Arc<AtomicU64>,
    /// What a test injects (the replica's own, shared with its client).
    faults: Faults,
    /// Noted on every AppendEntries and snapshot a leader sends that this replica accepts.
    contact: LeaderContact,
}

/// The longest a leader may pause this replica's election timer, whatever it asks.
const MAX_ELECTION_PAUSE: Duration = Duration::from_secs(60);

/// The answer to a Clock call: this replica's wall clock, to any replica of the cluster CA.
pub(super) fn clock_answer<T>(request: &Request<T>) -> Result<Response<Payload>, Status> {
    caller_node(request)?;
    Ok(Response::new(encode("Clock result", &crate::peer_clocks::wall_clock_ms())?))
}

impl ClusterService {
    pub fn new(
        raft: Raft,
        reader: StoreReader,
        proposer: Proposer,
        transfers: Arc<dyn TransferHandler>,
        join: Option<Arc<dyn JoinHandler>>,
        faults: Faults,
        contact: LeaderContact,
    ) -> Self {
        Self { raft, reader, proposer, transfers, join, election_pauses: Arc::default(), faults, contact }
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

/// The node id named by the caller's replica certificate (verified in the handshake).
pub(super) fn caller_node<T>(request: &Request<T>) -> Result<NodeId, Status> {
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("a replica certificate is required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a replica certificate is required"))?;
    super::tls::node_id_of(leaf.as_ref())
        .ok_or_else(|| Status::unauthenticated("the replica certificate names no node id"))
}

impl ClusterService {
    /// Every call but Join, a joiner's AddMember of itself and replication (see
    /// `require_replicator`) comes from a current member of the membership this replica
    /// knows: a certificate of a replica that was removed, or never added, opens nothing
    /// else.
    fn require_member<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        let id = caller_node(request)?;
        let metrics = self.raft.metrics();
        let membership = metrics.borrow();
        let members = membership.membership_config.membership();
        // A replica that knows no membership yet (just admitted, waiting for its first
        // entries) hears from the leader before it knows who the leader is: any replica of
        // the cluster CA may reach it; it holds nothing yet.
        if members.get_node(&id).is_some() || members.nodes().next().is_none() {
            Ok(id)
        } else {
            Err(Status::permission_denied(format!("replica {id} is not a member of this cluster")))
        }
    }

    /// AppendEntries and InstallSnapshot: from a member, or from a replica this one does not
    /// know yet, unless the cluster removed it. A replica learns members from the log it
    /// applies, so one that is behind (a joiner replaying the log from its start, a replica
    /// back after members were replaced) does not know the current leader yet; refusing it
    /// would leave the replica behind for good. etcd's peers check the same way.
    async fn require_replicator<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        if let Ok(id) = self.require_member(request) {
            return Ok(id);
        }
        let id = caller_node(request)?;
        let removed = self.reader.removed_replicas().await.map_err(|e| Status::unavailable(e.to_string()))?;
        if removed.contains(&id) {
            return Err(Status::permission_denied(format!("replica {id} was removed from this cluster")));
        }
        Ok(id)
    }

    /// AddMember: from a member, or from a replica adding itself after its Join, unless its
    /// node id was removed from the cluster before.
    async fn require_member_or_joiner<T>(&self, request: &Request<T>, adding: NodeId) -> Result<(), Status> {
        if self.require_member(request).is_ok() {
            return Ok(());
        }
        let id = caller_node(request)?;
        if id != adding {
            return Err(Status::permission_denied(format!("replica {id} may only add itself")));
        }
        let removed = self.reader.removed_replicas().await.map_err(|e| Status::unavailable(e.to_string()))?;
        if removed.contains(&id) {
            return Err(Status::permission_denied(format!("replica {id} was removed from this cluster")));
        }
        Ok(())
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
        self.require_replicator(&request).await?;
        let req: AppendEntriesRequest<TypeConfig> = decode("AppendEntries", request.get_ref())?;
        let result = self.raft.append_entries(req).await;
        if matches!(&result, Ok(answer) if !matches!(answer, AppendEntriesResponse::HigherVote(_))) {
            self.contact.heard();
        }
        Ok(Response::new(encode("AppendEntries result", &result)?))
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.require_member(&request)?;
        let req: VoteRequest<NodeId> = decode("Vote", request.get_ref())?;
        let result = self.raft.vote(req).await;
        Ok(Response::new(encode("Vote result", &result)?))
    }

    async fn install_snapshot(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.require_replicator(&request).await?;
        let req: InstallSnapshotRequest<TypeConfig> = decode("InstallSnapshot", request.get_ref())?;
        let result = self.raft.install_snapshot(req).await;
        if result.is_ok() {
            self.contact.heard();
        }
        Ok(Response::new(encode("InstallSnapshot result", &result)?))
    }

    async fn write(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.require_member(&request)?;
        let command: Command = decode("Write", request.get_ref())?;
        let was_leader = self.raft.metrics().borrow().state == openraft::ServerState::Leader;
        let result = match self.proposer.write(command).await {
            Ok(response) => Ok(response),
            // openraft answers "not the leader" also for a write it took into its log and
            // then lost the leadership with: the next leader may still commit that.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) if was_leader => {
                Err(ForwardError::Unavailable("this replica stopped leading with the write in its log".into()))
            }
            Err(e) => Err(forward_error(e)),
        };
        if result.is_ok() {
            if let Some(held) = self.faults.take_held_answer() {
                let _ = held.applied.send(());
                let _ = held.released.await;
                return Err(Status::unavailable("the answer was lost (a test's fault)"));
            }
        }
        Ok(Response::new(encode("Write result", &result)?))
    }

    async fn read_index(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.require_member(&request)?;
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
        let admin: AdminRequest = decode("Admin", request.get_ref())?;
        match &admin {
            AdminRequest::AddMember { id, .. } | AdminRequest::ReplaceMember { id, .. } => {
                self.require_member_or_joiner(&request, *id).await?
            }
            _ => {
                self.require_member(&request)?;
            }
        }
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
            AdminRequest::ReplaceMember { id, node } => replace_member_step(&self.raft, id, node).await.map(Some),
            AdminRequest::RemoveMember { id } => done(remove_member(&self.raft, id).await),
        };
        Ok(Response::new(encode("Admin result", &result)?))
    }

    /// Any replica of the cluster CA may read this one's clock: it holds nothing secret,
    /// and a peer not yet in the membership (a joiner) needs it as much as a member.
    async fn clock(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        clock_answer(&request)
    }

    /// Any replica of the cluster CA may ask: a pristine replica of a declared cluster
    /// must learn whether the cluster formed before it forms or joins one. The answer names
    /// the members' addresses, which every holder of the CA may reach anyway.
    async fn formation(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        caller_node(&request)?;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        // The first leader's blank entry is index 1: applied means a quorum formed.
        let formed = metrics.last_applied.is_some_and(|applied| applied.index >= 1);
        let members = if formed {
            metrics.membership_config.membership().nodes().map(|(id, node)| (*id, node.clone())).collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(encode("Formation result", &FormationState { formed, members })?))
    }

    async fn join(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let Some(handler) = &self.join else {
            return Err(Status::unimplemented("this replica does not admit new replicas"));
        };
        let data = handler.join(request.into_inner().data).await?;
        Ok(Response::new(Payload { data }))
    }
}

/// Binds `listen` and serves the cluster RPC over TLS (`acceptor`, from
/// `tls::server_config`) until `shutdown` resolves.
/// Returns the bound address (useful with port 0) and the server task.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    raft: Raft,
    reader: StoreReader,
    proposer: Proposer,
    transfers: Arc<dyn TransferHandler>,
    join: Option<Arc<dyn JoinHandler>>,
    faults: Faults,
    contact: LeaderContact,
    acceptor: TlsAcceptor,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TlsError> {
    let listener =
        TcpListener::bind(listen).await.map_err(|e| TlsError::Config(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| TlsError::Config(e.to_string()))?;
    let (mut incoming, accept_task) = accept_tls(listener, acceptor, "cluster", ConnectionLimits::CLUSTER);
    let service = ClusterService::new(raft, reader, proposer, transfers, join, faults, contact);
    // Replicas and anonymous callers are served apart, each with its own limits: only a
    // replica certificate earns the large messages and many streams replication needs.
    let (replicas, anonymous) =
        (tokio::sync::mpsc::channel::<Incoming>(16), tokio::sync::mpsc::channel::<Incoming>(16));
    let anonymous_connections = Arc::new(tokio::sync::Semaphore::new(ANONYMOUS_MAX_CONNECTIONS));
    let sort_task = tokio::spawn(async move {
        use tokio_stream::StreamExt;
        while let Some(Ok(connection)) = incoming.next().await {
            let sent = if connection.has_client_certificate() {
                replicas.0.send(Ok(connection)).await.is_ok()
            } else if let Ok(permit) = anonymous_connections.clone().try_acquire_owned() {
                let connection = connection.hold(permit).with_lifetime(ANONYMOUS_LIFETIME);
                anonymous.0.send(Ok(connection)).await.is_ok()
            } else {
                metrics::counter!("testudo_tls_connections_refused_total", "listener" => "cluster", "reason" => "anonymous")
                    .increment(1);
                true
            };
            if !sent {
                break;
            }
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let replica_server = tonic::transport::Server::builder()
        // A replica resumed after a pause finds many streams its peers gave up on (each
        // heartbeat times out and is reset): h2's rapid-reset guard (20 by default) would
        // close the connection for that. Only authenticated replicas get this allowance.
        .http2_max_pending_accept_reset_streams(Some(1024))
        .max_concurrent_streams(Some(REPLICA_MAX_STREAMS))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(
            ClusterServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(replicas.1), until_stopped());
    let anonymous_server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(ANONYMOUS_MAX_STREAMS))
        .http2_max_header_list_size(Some(ANONYMOUS_MAX_HEADER_BYTES))
        .timeout(ANONYMOUS_REQUEST_TIMEOUT)
        .add_service(
            ClusterServer::new(service)
                .max_decoding_message_size(ANONYMOUS_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(anonymous.1), until_stopped());
    let task = tokio::spawn(async move {
        let stopper = tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let (replica_result, anonymous_result) = tokio::join!(replica_server, anonymous_server);
        accept_task.abort();
        sort_task.abort();
        stopper.abort();
        for result in [replica_result, anonymous_result] {
            if let Err(e) = result {
                tracing::error!(error = %e, "cluster RPC server stopped");
            }
        }
    });
    Ok((bound, task))
}
