//! The client side: openraft's network factory over gRPC, and forwarding of writes and
//! read-index requests to the leader.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use proto::cluster::cluster_client::ClusterClient as GrpcClient;
use proto::cluster::Payload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::faults::Faults;
use super::server::MAX_MESSAGE_BYTES;
use super::tls::{client_endpoint, ClusterTls};
use super::wire::{AdminRequest, FormationState, ForwardError};
use crate::codec;
use crate::command::{Command, Response};
use crate::membership::AddProgress;
use crate::transfer::TRANSFER_CALL_LIMIT;
use crate::types::{LogId, NodeId, ReplicaNode, TypeConfig};

/// Opens channels to replicas, shared by openraft's replication and by forwarding.
#[derive(Clone)]
pub struct ClusterClient {
    /// What this replica presents and trusts; replaced when its certificate is renewed.
    tls: Arc<RwLock<ClusterTls>>,
    timeout: Duration,
    /// The local address outbound connections come from; `None` lets the kernel choose.
    source: Option<IpAddr>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    faults: Faults,
}

/// Why a call to another replica failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("link to replica {0} is cut")]
    Cut(NodeId),
    #[error("cannot reach replica at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The connection failed after the request may have been delivered: the peer may or
    /// may not have acted on it.
    #[error("lost the call to replica at {address}: {reason}")]
    Lost { address: String, reason: String },
    #[error("replica at {address} answered {status}")]
    Status { address: String, status: tonic::Status },
    #[error("replica at {address} sent an undecodable answer: {reason}")]
    Decode { address: String, reason: String },
}

/// Whether a call failed because no connection could be made (so nothing was sent).
fn never_connected(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if format!("{error:?}").contains("ConnectError") {
            return true;
        }
        source = error.source();
    }
    false
}

impl ClusterClient {
    pub fn new(tls: ClusterTls, timeout: Duration, faults: Faults) -> Self {
        Self {
            tls: Arc::new(RwLock::new(tls)),
            timeout,
            source: None,
            channels: Arc::new(Mutex::new(HashMap::new())),
            faults,
        }
    }

    /// Presents `chain` (leaf first) and its key on every connection opened from now on,
    /// and drops the open ones from the table so the next call opens a new one (calls in
    /// flight finish on theirs).
    pub fn replace_identity(&self, chain: Vec<Vec<u8>>, key_pkcs8: Zeroizing<Vec<u8>>) {
        {
            let mut tls = self.tls.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            tls.chain = chain;
            tls.key_pkcs8 = key_pkcs8;
        }
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// Outbound connections bind to `source` (a multi-homed host whose peers admit replicas
    /// by address).
    pub fn with_source_address(mut self, source: Option<IpAddr>) -> Self {
        self.source = source;
        self
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn channel(&self, address: &str) -> Result<Channel, CallError> {
        let unreachable = |reason: String| CallError::Unreachable { address: address.to_owned(), reason };
        let mut channels = self.channels.lock().map_err(|_| unreachable("channel table lock poisoned".into()))?;
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = {
            let tls = self.tls.read().map_err(|_| unreachable("TLS identity lock poisoned".into()))?;
            client_endpoint(&tls, address, self.timeout).map_err(|e| unreachable(e.to_string()))?
        };
        let channel = endpoint.local_address(self.source).connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    fn grpc(&self, address: &str) -> Result<GrpcClient<Channel>, CallError> {
        Ok(GrpcClient::new(self.channel(address)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// One unary call: encode, send, decode; given up (as lost) after `deadline`.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: Option<NodeId>,
        address: &str,
        method: Method,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, CallError> {
        if self.faults.is_blocked(target) {
            return Err(CallError::Cut(target.unwrap_or_default()));
        }
        let data = codec::encode("request", request)
            .map_err(|e| CallError::Decode { address: address.to_owned(), reason: e.to_string() })?;
        let mut client = self.grpc(address)?;
        let payload = Payload { data };
        let sent = async {
            match method {
                Method::AppendEntries => client.append_entries(payload).await,
                Method::Vote => client.vote(payload).await,
                Method::InstallSnapshot => client.install_snapshot(payload).await,
                Method::Write => client.write(payload).await,
                Method::ReadIndex => client.read_index(payload).await,
                Method::Admin => client.admin(payload).await,
                Method::Clock => client.clock(payload).await,
                Method::Formation => client.formation(payload).await,
            }
        };
        let Ok(result) = tokio::time::timeout(deadline, sent).await else {
            return Err(CallError::Lost {
                address: address.to_owned(),
                reason: format!("no answer within {deadline:?}"),
            });
        };
        let response = result.map_err(|status| match status.code() {
            // Only a failed connect proves the request never left.
            tonic::Code::Unavailable if never_connected(&status) => {
                CallError::Unreachable { address: address.to_owned(), reason: status.message().to_owned() }
            }
            tonic::Code::Unavailable
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown => {
                CallError::Lost { address: address.to_owned(), reason: status.message().to_owned() }
            }
            _ => CallError::Status { address: address.to_owned(), status },
        })?;
        codec::decode("response", &response.get_ref().data)
            .map_err(|e| CallError::Decode { address: address.to_owned(), reason: e.to_string() })
    }

    /// Sends a write to the replica at `address` (the leader, as far as we know).
    pub async fn forward_write(
        &self,
        target: NodeId,
        address: &str,
        command: &Command,
    ) -> Result<Result<Response, ForwardError>, CallError> {
        self.call(Some(target), address, Method::Write, command, self.timeout).await
    }

    /// Sends an administrative request to the replica at `address`. A leader transfer is
    /// answered when it is over, which takes longer than one RPC: it gets its own limit.
    pub async fn admin(
        &self,
        target: NodeId,
        address: &str,
        request: &AdminRequest,
    ) -> Result<Result<Option<AddProgress>, ForwardError>, CallError> {
        let deadline = match request {
            AdminRequest::TransferLeadership { .. } => TRANSFER_CALL_LIMIT,
            _ => self.timeout,
        };
        self.call(Some(target), address, Method::Admin, request, deadline).await
    }

    /// Reads the wall clock of the replica at `address` (milliseconds since the Unix
    /// epoch).
    pub async fn clock(&self, target: NodeId, address: &str) -> Result<i64, CallError> {
        self.call(Some(target), address, Method::Clock, &(), self.timeout).await
    }

    /// Asks the replica at `address` whether it belongs to a formed cluster.
    pub async fn formation(&self, address: &str) -> Result<FormationState, CallError> {
        self.call(None, address, Method::Formation, &(), self.timeout).await
    }

    /// Asks the replica at `address` for a read index.
    pub async fn read_index(
        &self,
        target: NodeId,
        address: &str,
    ) -> Result<Result<Option<LogId>, ForwardError>, CallError> {
        self.call(Some(target), address, Method::ReadIndex, &(), self.timeout).await
    }
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Write,
    ReadIndex,
    Admin,
    Clock,
    Formation,
}

/// openraft's network factory: one `PeerNetwork` per target replica.
#[derive(Clone)]
pub struct NetworkFactory {
    id: NodeId,
    client: ClusterClient,
}

impl NetworkFactory {
    pub fn new(id: NodeId, client: ClusterClient) -> Self {
        Self { id, client }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &ReplicaNode) -> PeerNetwork {
        PeerNetwork { id: self.id, target, node: node.clone(), client: self.client.clone() }
    }
}

/// Raft RPCs to one replica.
pub struct PeerNetwork {
    id: NodeId,
    target: NodeId,
    node: ReplicaNode,
    client: ClusterClient,
}

impl PeerNetwork {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        method: Method,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
        entries: u64,
    ) -> Result<Resp, RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>>> {
        let ttl = option.hard_ttl();
        let call = self.client.call::<Req, Result<Resp, RaftError<NodeId, E>>>(
            Some(self.target),
            &self.node.raft_address,
            method,
            request,
            self.client.timeout,
        );
        let answer = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout: ttl }))
            }
            Ok(answer) => answer,
        };
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(raft_error)) => {
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), raft_error)))
            }
            Err(e @ (CallError::Cut(_) | CallError::Unreachable { .. } | CallError::Lost { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(CallError::Status { status, .. })
                if entries > 1
                    && status.code() == tonic::Code::OutOfRange
                    && status.message().contains("message length too large") =>
            {
                // The message was over the size limit: ask openraft to send fewer entries.
                // Only then: openraft 0.9 panics on PayloadTooLarge for a request it cannot
                // shrink (a heartbeat), and other refusals (ResourceExhausted is also what
                // h2's ENHANCE_YOUR_CALM becomes) are transient network trouble.
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2).max(1))))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ReplicaNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        self.rpc(Method::AppendEntries, RPCTypes::AppendEntries, &rpc, &option, entries).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, ReplicaNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc(Method::InstallSnapshot, RPCTypes::InstallSnapshot, &rpc, &option, 1).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ReplicaNode, RaftError<NodeId>>> {
        self.rpc(Method::Vote, RPCTypes::Vote, &rpc, &option, 1).await
    }
}
