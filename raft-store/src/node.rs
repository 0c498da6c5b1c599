//! A running replica: the store, openraft, the cluster RPC server, and the operations
//! callers use — writes (forwarded to the leader), linearizable and local reads, membership
//! changes and status.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::applied::AppliedFeed;
use crate::command::{Command, Outcome, RequestId, RequestIds, Response, Write};
use crate::leader_contact::LeaderContact;
use crate::membership::{add_member_step, remove_member, AddProgress};
use crate::network::tls::{server_config, ClusterTls, PresentedCertificate, TlsError};
use crate::network::{
    serve, AdminRequest, CallError, ClusterClient, Faults, ForwardError, JoinHandler, NetworkFactory, TransferHandler,
};
use crate::peer_clocks::PeerClocks;
use crate::proposer::Proposer;
use crate::query::StoreReader;
use crate::transfer::LeaderTransfer;
use crate::types::{NodeId, Raft, ReplicaNode};
use crate::{open_store, OpenError};

/// How a replica runs.
#[derive(Clone)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub data_dir: PathBuf,
    /// Where the cluster RPC listens (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The public API address other replicas redirect callers to.
    pub api_address: String,
    pub tls: ClusterTls,
    pub timing: Timing,
    /// The cluster RPC address other replicas dial; `None` means the bound `listen` address.
    pub advertise_address: Option<String>,
    /// The local IP outbound cluster connections come from; `None` lets the kernel choose.
    pub source_address: Option<std::net::IpAddr>,
    /// Admits new replicas over the Join call; `None` refuses joins.
    pub join: Option<Arc<dyn JoinHandler>>,
    /// Where this replica keeps its readings of the members' clocks (shared with whoever
    /// must know whether this replica's clock is off).
    pub clocks: PeerClocks,
}

/// Raft timing and batching, with defaults for replicas on one network.
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Timeout of one cluster RPC.
    pub rpc_timeout: Duration,
    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    pub snapshot_every: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            rpc_timeout: Duration::from_secs(2),
            snapshot_every: 5000,
        }
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("cannot start the cluster RPC server: {0}")]
    Server(String),
    #[error("cannot start Raft: {0}")]
    Raft(String),
}

/// Why a write or read was not served.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader is known; the cluster may be electing one or lack a quorum")]
    NoLeader,
    /// This replica has heard from no leader for longer than a failover takes (twice the
    /// longest election timeout): the leader is gone and no other was elected, or this
    /// replica is cut off from it. Answered at once.
    #[error(
        "this replica has heard from no leader for {} ms, longer than a failover takes: no leader \
         was elected, or this replica is cut off from it; try another replica",
        .0.as_millis()
    )]
    NoLeaderContact(Duration),
    #[error("the leader could not be reached: {0}")]
    LeaderUnreachable(String),
    #[error("{0}")]
    Unavailable(String),
    /// The write reached the leader but no answer came back, and asking again (under its
    /// request id, so it is applied at most once) got none before the retry time ran out:
    /// it may or may not have been applied.
    #[error("the write's outcome is unknown: {0}")]
    Uncertain(String),
    /// The request id was used before for a write that differs from this one; nothing
    /// was applied. A call sent again gets this when the server chose some of its values
    /// (a generated id, the time) anew: its first try was applied and its answer lost.
    #[error(
        "request id {0} was used by an earlier write that differs from this one (an earlier try of \
         this call, if the server chose ids or times for it, was applied); nothing was applied now"
    )]
    RequestIdReused(RequestId),
    #[error("timed out waiting for the cluster")]
    Timeout,
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("read failed: {0}")]
    Read(#[from] crate::ReadError),
    /// Apply answered with the outcome of another kind of command: replicas of builds that
    /// disagree on the command set, or a bug.
    #[error("the write was answered with another command's outcome: {0}")]
    MismatchedOutcome(String),
}

/// One member's replication progress, as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub node: ReplicaNode,
    pub voter: bool,
    /// The last log index known to be on that member (leader's view; `None` if unknown).
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader's last log index.
    pub lag: Option<u64>,
}

/// What a replica knows of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// A running replica.
pub struct Replica {
    id: NodeId,
    raft: Raft,
    proposer: Proposer,
    reader: StoreReader,
    applied: AppliedFeed,
    client: ClusterClient,
    address: SocketAddr,
    node: ReplicaNode,
    transfer: Arc<LeaderTransfer>,
    /// Ids for the writes this replica sends, so it can send one again safely.
    requests: RequestIds,
    /// When a leader last reached this replica.
    contact: LeaderContact,
    /// Silence from the leader longer than this cuts this replica off from writes and
    /// linearizable reads: twice the longest election timeout, because in openraft 0.9 a
    /// healthy failover keeps followers without a leader for the leader lease (the longest
    /// election timeout) plus an election timeout; refusing sooner would fail writes that
    /// the failover completes anyway.
    cut_off_after: Duration,
    /// How far this replica's clock is from the other members'.
    clocks: PeerClocks,
    /// The certificate the cluster RPC server presents.
    certificate: Arc<PresentedCertificate>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// How long writes and reads keep retrying while the cluster elects a leader.
const RETRY_FOR: Duration = Duration::from_secs(10);

impl Replica {
    pub async fn start(config: ReplicaConfig) -> Result<Self, StartError> {
        let store = open_store(&config.data_dir, config.node_id, &config.cluster_id).await?;
        let t = &config.timing;
        let raft_config = Config {
            cluster_name: config.cluster_id.clone(),
            heartbeat_interval: t.heartbeat_interval.as_millis() as u64,
            election_timeout_min: t.election_timeout_min.as_millis() as u64,
            election_timeout_max: t.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 256,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
            max_in_snapshot_log_to_keep: t.snapshot_every / 2,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let faults = Faults::default();
        let client =
            ClusterClient::new(config.tls.clone(), t.rpc_timeout, faults).with_source_address(config.source_address);
        let network = NetworkFactory::new(config.node_id, client.clone());
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, store.log, store.state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let proposer = Proposer::start(raft.clone());
        let contact = LeaderContact::default();
        // While this replica leads, it is its own contact; stepping down must not leave it
        // looking cut off until the next leader's first heartbeat.
        let (mut watched, leading) = (raft.metrics(), contact.clone());
        tokio::spawn(async move {
            let mut was_leader = false;
            while watched.changed().await.is_ok() {
                let is_leader = watched.borrow().state == ServerState::Leader;
                if was_leader || is_leader {
                    leading.heard();
                }
                was_leader = is_leader;
            }
        });
        tokio::spawn(crate::peer_clocks::probe(config.node_id, raft.metrics(), client.clone(), config.clocks.clone()));
        let transfer = Arc::new(LeaderTransfer {
            id: config.node_id,
            raft: raft.clone(),
            client: client.clone(),
            proposer: proposer.clone(),
            lease: t.election_timeout_max,
        });
        let certificate = Arc::new(
            PresentedCertificate::new(&config.tls.chain, &config.tls.key_pkcs8)
                .map_err(|e| StartError::Server(e.to_string()))?,
        );
        let acceptor = TlsAcceptor::from(Arc::new(
            server_config(&config.tls, certificate.clone()).map_err(|e| StartError::Server(e.to_string()))?,
        ));
        let (address, server) = serve(
            raft.clone(),
            store.reader.clone(),
            proposer.clone(),
            transfer.clone(),
            config.join.clone(),
            client.faults().clone(),
            contact.clone(),
            acceptor,
            config.listen,
            async {
                let _ = stopped.await;
            },
        )
        .await
        .map_err(|e| StartError::Server(e.to_string()))?;
        let raft_address = config.advertise_address.clone().unwrap_or_else(|| address.to_string());
        let node = ReplicaNode { raft_address, api_address: config.api_address.clone() };
        tracing::info!(node_id = config.node_id, %address, "replica started");
        Ok(Self {
            id: config.node_id,
            raft,
            proposer,
            reader: store.reader,
            applied: store.applied,
            client,
            address,
            node,
            transfer,
            requests: RequestIds::default(),
            contact,
            cut_off_after: config.timing.election_timeout_max * 2,
            clocks: config.clocks,
            certificate,
            stop: Some(stop),
            server: Some(server),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Waits until openraft's core stops on a fault of its own (a storage error such as a
    /// failed fsync: it refuses to go on with a log it could not make durable); answers the
    /// fault. Never returns while the replica is healthy; call it only while the replica
    /// runs (after a shutdown, the core's end reads as a fault).
    pub async fn stopped_by_fault(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(fault) = self.fault() {
                return fault;
            }
            if metrics.changed().await.is_err() {
                // The core dropped its metrics without a shutdown: it panicked.
                return "the Raft core ended unexpectedly (panicked)".into();
            }
        }
    }

    /// The fault openraft's core stopped on, if it did (see [`Self::stopped_by_fault`]).
    pub fn fault(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        if metrics.has_changed().is_err() {
            return Some("the Raft core ended unexpectedly (panicked)".into());
        }
        let fault = match &metrics.borrow().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(fatal) => Some(fatal.to_string()),
        };
        fault
    }

    /// The id of the cluster this replica belongs to.
    pub fn cluster_id(&self) -> String {
        self.raft.config().cluster_name.clone()
    }

    /// How far this replica's clock is from the other members'.
    pub fn clocks(&self) -> &PeerClocks {
        &self.clocks
    }

    /// This replica's addresses, as other replicas should record them.
    pub fn node(&self) -> &ReplicaNode {
        &self.node
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Presents a new certificate chain (leaf first) and key on the cluster RPC from now on,
    /// as server and as client (certificate renewal while running). Refused, changing
    /// nothing, if the key does not match the leaf.
    pub fn replace_certificate(&self, chain: Vec<Vec<u8>>, key_pkcs8: Zeroizing<Vec<u8>>) -> Result<(), TlsError> {
        self.certificate.replace(&chain, &key_pkcs8)?;
        self.client.replace_identity(chain, key_pkcs8);
        Ok(())
    }

    /// The links this replica's outgoing traffic uses; tests cut them to isolate it.
    pub fn faults(&self) -> &Faults {
        self.client.faults()
    }

    /// Whether this replica has never been part of a cluster: no log entry, no vote. Asks
    /// the Raft core (its metrics may not be published yet right after start).
    pub async fn is_pristine(&self) -> Result<bool, ClusterError> {
        self.raft
            .is_initialized()
            .await
            .map(|initialized| !initialized)
            .map_err(|e| ClusterError::Unavailable(e.to_string()))
    }

    /// Makes this replica the sole voter of a new cluster. Only on a pristine replica.
    pub async fn initialize(&self) -> Result<(), ClusterError> {
        self.initialize_with(BTreeMap::from([(self.id, self.node.clone())])).await
    }

    /// Makes this pristine replica one of `members`, the voters of a new cluster. Every
    /// replica that forms the cluster must pass the same members (openraft's rule: the same
    /// first membership entry on each, or two clusters could form).
    pub async fn initialize_with(&self, members: BTreeMap<NodeId, ReplicaNode>) -> Result<(), ClusterError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                Err(ClusterError::Membership(format!("already initialized: {e}")))
            }
            Err(e) => Err(ClusterError::Membership(e.to_string())),
        }
    }

    /// Applies a command through the leader and answers what apply answered it with. See
    /// [`Self::write_command`].
    pub async fn write<W: Write>(&self, command: W) -> Result<W::Output, ClusterError> {
        Self::typed::<W>(self.write_command(command.into()).await?)
    }

    /// [`Self::write`] under a request id the caller chose: the same id again (a call sent
    /// again after its answer was lost) is answered with the first answer.
    pub async fn write_as<W: Write>(&self, command: W, id: RequestId) -> Result<W::Output, ClusterError> {
        let command = command.into().idempotent_for_caller(id).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Self::typed::<W>(self.write_command(command).await?)
    }

    fn typed<W: Write>(response: Response) -> Result<W::Output, ClusterError> {
        if let Outcome::RequestIdReused(id) = response.outcome {
            return Err(ClusterError::RequestIdReused(id));
        }
        W::output(response.outcome).map_err(|other| {
            tracing::error!(?other, "a write was answered with another command's outcome");
            ClusterError::MismatchedOutcome(format!("{other:?}").chars().take(200).collect())
        })
    }

    /// Applies a command through the leader, forwarding it when this replica does not lead.
    /// Returns once the command is committed and applied on the leader and, when forwarded,
    /// on this replica too: a caller that reads here next sees its own write.
    ///
    /// The command goes under a request id of this replica (unless it has one already), so
    /// when a leader took it and its answer was lost (the leader died, or lost its
    /// leadership, between commit and answer), it is sent again, to whichever replica leads
    /// then, and applied at most once: a second copy is answered with the first one's answer.
    pub async fn write_command(&self, command: Command) -> Result<Response, ClusterError> {
        let command = command.idempotent(self.requests.next());
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        // Why an earlier try's outcome is unknown, if one's is.
        let mut unknown: Option<String> = None;
        loop {
            // Refused at once when cut off, unless an earlier try may have been applied:
            // then only the next leader can say, and it is waited for.
            if let (Some(silent), None) = (self.cut_off(), &unknown) {
                return Err(ClusterError::NoLeaderContact(silent));
            }
            let was_leader = self.is_leader();
            let stopped_before = self.fault().is_some();
            let attempt = match self.proposer.write(command.clone()).await {
                Ok(response) => return Ok(response),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    // openraft answers "not the leader" also for a write it took into its
                    // log and then lost the leadership with: the next leader may commit it.
                    if was_leader {
                        unknown = Some("this replica stopped leading with the write in its log".into());
                    }
                    match (f.leader_id, f.leader_node) {
                        (Some(id), Some(node)) if id != self.id => self.forward(id, &node, &command).await,
                        _ => Err(ClusterError::NoLeader),
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(ClusterError::Membership(e.to_string()))
                }
                // The core stopped on a fault (a full disk, a failed sync) while the write was
                // in it: it may already be on the followers, which can commit it under the
                // next leader. Only a core stopped before the write took nothing (below).
                Err(RaftError::Fatal(e)) => {
                    return Err(match unknown {
                        Some(why) => {
                            ClusterError::Uncertain(format!("{why}; then this replica's Raft core stopped: {e}"))
                        }
                        None if stopped_before => ClusterError::Unavailable(e.to_string()),
                        None => ClusterError::Uncertain(format!(
                            "this replica's Raft core stopped with the write in it: {e}"
                        )),
                    })
                }
            };
            match attempt {
                Ok(response) => {
                    // Forwarded and committed: wait until this replica has applied it too, so
                    // a caller that reads here next sees its own write.
                    if let Err(e) = self.linearizable_reader().await {
                        tracing::debug!(error = %e, "a forwarded write is committed but not yet applied here");
                    }
                    return Ok(response);
                }
                // Anything but these is final; these may be sent again under the same id.
                // An error after a try that may have been applied leaves the outcome unknown.
                Err(e)
                    if tokio::time::Instant::now() >= deadline
                        || !matches!(
                            e,
                            ClusterError::NoLeader | ClusterError::LeaderUnreachable(_) | ClusterError::Uncertain(_)
                        ) =>
                {
                    return Err(match (e, unknown) {
                        (e @ ClusterError::Uncertain(_), _) => e,
                        (e, Some(why)) => ClusterError::Uncertain(format!("{why}; then {e}")),
                        (e, None) => e,
                    })
                }
                Err(e) => {
                    if let ClusterError::Uncertain(why) = &e {
                        unknown = Some(why.clone());
                        metrics::counter!("testudo_raft_write_resent_total").increment(1);
                        tracing::info!(error = %e, "a forwarded write's answer was lost; sending it again");
                    } else {
                        tracing::debug!(error = %e, "write not yet served; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Whether this replica is cut off from writes and reads: a follower that has heard from
    /// no leader for longer than a failover takes (how long, if so).
    fn cut_off(&self) -> Option<Duration> {
        let silent = self.contact.silent_for();
        (silent > self.cut_off_after && !self.is_leader()).then_some(silent)
    }

    /// Sends a write to `leader`. Stops waiting for its answer as soon as this replica learns
    /// that another replica leads (or that none does): the answer may never come, and the
    /// write is sent again, under its request id, to whoever leads then.
    async fn forward(&self, leader: NodeId, node: &ReplicaNode, command: &Command) -> Result<Response, ClusterError> {
        let mut metrics = self.raft.metrics();
        let leader_changed = async move {
            let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
        };
        let answer = tokio::select! {
            answer = self.client.forward_write(leader, &node.raft_address, command) => answer,
            () = leader_changed => {
                return Err(ClusterError::Uncertain(format!("replica {leader} stopped leading before it answered")));
            }
        };
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(ForwardError::NotLeader { .. })) => Err(ClusterError::NoLeader),
            Ok(Err(ForwardError::Refused(e))) => Err(ClusterError::Unavailable(e)),
            Ok(Err(ForwardError::Unavailable(e))) => Err(ClusterError::Uncertain(e)),
            Err(e @ (CallError::Cut(_) | CallError::Unreachable { .. })) => {
                Err(ClusterError::LeaderUnreachable(e.to_string()))
            }
            Err(e) => Err(ClusterError::Uncertain(e.to_string())),
        }
    }

    /// A reader that sees at least every write committed before this call (read index:
    /// the leader confirms it still leads; this replica waits until it has applied that far).
    pub async fn linearizable_reader(&self) -> Result<&StoreReader, ClusterError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            if let Some(silent) = self.cut_off() {
                return Err(ClusterError::NoLeaderContact(silent));
            }
            let attempt = self.read_index().await;
            match attempt {
                Ok(index) => {
                    if let Some(index) = index {
                        self.raft
                            .wait(Some(deadline.saturating_duration_since(tokio::time::Instant::now())))
                            .applied_index_at_least(Some(index), "read index")
                            .await
                            .map_err(|_| ClusterError::Timeout)?;
                    }
                    return Ok(&self.reader);
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Reads with `read` here, and when that finds nothing, again after a read index: a
    /// write committed through another replica may not be applied here yet. Used to turn
    /// away unknown secrets (join tokens, invites) before proposing anything: a miss costs
    /// one leader round trip, never a log entry.
    pub async fn read_or_confirm_absent<T, F, Fut>(&self, read: F) -> Result<Option<T>, ClusterError>
    where
        F: Fn(StoreReader) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, crate::ReadError>>,
    {
        if let Some(found) = read(self.reader.clone()).await? {
            return Ok(Some(found));
        }
        let reader = self.linearizable_reader().await?.clone();
        Ok(read(reader).await?)
    }

    async fn read_index(&self) -> Result<Option<u64>, ClusterError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                match (f.leader_id, f.leader_node) {
                    (Some(id), Some(node)) if id != self.id => {
                        match self.client.read_index(id, &node.raft_address).await {
                            Ok(Ok(log_id)) => Ok(log_id.map(|l| l.index)),
                            Ok(Err(e)) => Err(ClusterError::Unavailable(e.to_string())),
                            Err(e) => Err(ClusterError::LeaderUnreachable(e.to_string())),
                        }
                    }
                    _ => Err(ClusterError::NoLeader),
                }
            }
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }

    /// Where this replica's apply announces what it changed.
    pub fn applied(&self) -> &AppliedFeed {
        &self.applied
    }

    /// This replica's applied state, which may lag the leader by a moment.
    pub fn local_reader(&self) -> &StoreReader {
        &self.reader
    }

    /// Adds a replica as a learner and waits until it has caught up. Leader only.
    pub async fn add_learner(&self, id: NodeId, node: ReplicaNode) -> Result<(), ClusterError> {
        self.raft.add_learner(id, node, true).await.map(|_| ()).map_err(membership_error)
    }

    /// Makes a learner a voter. Leader only.
    pub async fn promote(&self, id: NodeId) -> Result<(), ClusterError> {
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        self.raft.change_membership(change, false).await.map(|_| ()).map_err(membership_error)
    }

    /// Removes a member (voter or learner) from the cluster. Leader only.
    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        let metrics = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        if voters.contains(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(membership_error)?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// Makes replica `id` a voter from any replica: the leader adds it as a learner and
    /// promotes it once it has caught up. Returns when `id` votes, or fails after `within`.
    pub async fn add_member(&self, id: NodeId, node: ReplicaNode, within: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let step = match add_member_step(&self.raft, id, node.clone()).await {
                Err(ForwardError::NotLeader { leader: Some((leader, leader_node)) }) if leader != self.id => {
                    self.admin_at_leader(leader, &leader_node, AdminRequest::AddMember { id, node: node.clone() }).await
                }
                other => other.map(Some),
            };
            let last = match step {
                Ok(Some(AddProgress::Voter)) => return Ok(()),
                Ok(Some(AddProgress::CatchingUp { lag })) => {
                    ClusterError::Membership(format!("replica {id} is still catching up (lag {lag:?})"))
                }
                Ok(None) => ClusterError::Membership("the leader gave no progress".into()),
                Err(e) => retryable(e)?,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes this replica a voter of a cluster it is not yet a member of, by asking the
    /// replicas at `addresses` (following their leader hints) until it votes or `within`
    /// passes. Used right after a new replica has been admitted.
    pub async fn join_through(&self, addresses: &[String], within: Duration) -> Result<(), ClusterError> {
        self.ask_to_join(addresses, AdminRequest::AddMember { id: self.id, node: self.node.clone() }, within).await
    }

    /// As [`Self::join_through`], and once this replica votes the leader removes the other
    /// members at its cluster address: this replica takes their place.
    pub async fn replace_through(&self, addresses: &[String], within: Duration) -> Result<(), ClusterError> {
        self.ask_to_join(addresses, AdminRequest::ReplaceMember { id: self.id, node: self.node.clone() }, within).await
    }

    async fn ask_to_join(
        &self,
        addresses: &[String],
        request: AdminRequest,
        within: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut targets: Vec<String> = addresses.to_vec();
        let mut next = 0;
        loop {
            let target = targets[next % targets.len().max(1)].clone();
            let last = match self.client.admin(0, &target, &request).await {
                Ok(Ok(Some(AddProgress::Voter))) => {
                    let left =
                        deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(5));
                    return self.wait_until_voter(left).await;
                }
                Ok(Ok(progress)) => ClusterError::Membership(format!("still catching up ({progress:?})")),
                Ok(Err(ForwardError::NotLeader { leader: Some((_, leader)) })) => {
                    if !targets.contains(&leader.raft_address) {
                        targets.push(leader.raft_address.clone());
                    }
                    next = targets.iter().position(|t| *t == leader.raft_address).unwrap_or(0);
                    continue;
                }
                Ok(Err(ForwardError::Refused(m))) => return Err(ClusterError::Membership(m)),
                Ok(Err(e)) => {
                    next += 1;
                    ClusterError::Unavailable(e.to_string())
                }
                Err(e) => {
                    next += 1;
                    ClusterError::LeaderUnreachable(e.to_string())
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until this replica's own membership has it as a voter. The leader reports the
    /// change once a quorum holds it, which need not include this replica yet; until it does,
    /// a status read here would still show the old members.
    async fn wait_until_voter(&self, within: Duration) -> Result<(), ClusterError> {
        let id = self.id;
        self.raft
            .wait(Some(within))
            .metrics(|m| m.membership_config.membership().voter_ids().any(|v| v == id), "this replica to be a voter")
            .await
            .map(|_| ())
            .map_err(|_| {
                ClusterError::Membership(
                    "the leader made this replica a voter, but it has not received that membership yet".into(),
                )
            })
    }

    /// Waits until this replica knows a leader, up to `within`.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<NodeId, ClusterError> {
        let mut metrics = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(leader) = metrics.borrow().current_leader {
                return Ok(leader);
            }
            if !matches!(tokio::time::timeout_at(deadline, metrics.changed()).await, Ok(Ok(()))) {
                return Err(ClusterError::NoLeader);
            }
        }
    }

    /// Removes a member (voter or learner) from any replica, through the leader.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let result = match remove_member(&self.raft, id).await {
                Err(ForwardError::NotLeader { leader: Some((leader, leader_node)) }) if leader != self.id => {
                    self.admin_at_leader(leader, &leader_node, AdminRequest::RemoveMember { id }).await.map(|_| ())
                }
                other => other,
            };
            let last = match result {
                Ok(()) => return Ok(()),
                Err(e) => retryable(e)?,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn admin_at_leader(
        &self,
        leader: NodeId,
        node: &ReplicaNode,
        request: AdminRequest,
    ) -> Result<Option<AddProgress>, ForwardError> {
        match self.client.admin(leader, &node.raft_address, &request).await {
            Ok(result) => result,
            Err(e) => Err(ForwardError::Unavailable(format!("leader {leader} unreachable: {e}"))),
        }
    }

    /// Hands leadership to voter `to` (from any replica: the request goes to the leader).
    /// Returns once `to` leads. See `transfer` for how, on openraft 0.9.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), ClusterError> {
        self.transfer.transfer_leadership(to).await.map_err(|e| match e {
            ForwardError::NotLeader { .. } => ClusterError::NoLeader,
            ForwardError::Unavailable(m) | ForwardError::Refused(m) => {
                ClusterError::Membership(format!("leader transfer to {to} failed: {m}"))
            }
        })?;
        // The new leader has taken over, but this replica learns so only from its first
        // heartbeat; until then a status read here would still name the old leader.
        // Not an error if that takes longer: the transfer itself is done.
        let _ = self.raft.wait(Some(Duration::from_secs(5))).current_leader(to, "the new leader").await;
        Ok(())
    }

    /// Leader, term, and each member's matched index and lag (lag is known on the leader).
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = match &m.replication {
                    Some(replication) => replication.get(id).and_then(|l| l.map(|l| l.index)),
                    None if *id == self.id => last,
                    None => None,
                };
                let lag = match (&m.replication, matched, last) {
                    (Some(_), Some(matched), Some(last)) => Some(last.saturating_sub(matched)),
                    (Some(_), None, Some(last)) => Some(last + 1),
                    _ => None,
                };
                MemberStatus {
                    node_id: *id,
                    node: node.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag,
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            members,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits until this replica leads (`leading`) or stops leading (`!leading`); returns
    /// at once if it already does. Also returns when Raft stops.
    pub async fn wait_until_leading(&self, leading: bool) {
        let mut metrics = self.raft.metrics();
        let _ = metrics.wait_for(|m| (m.state == ServerState::Leader) == leading).await;
    }

    /// Stops Raft and the RPC server, releasing the data directory.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

/// A membership step that failed: worth retrying (`Ok`, the error to report if time runs
/// out) or refused for good (`Err`).
fn retryable(e: ForwardError) -> Result<ClusterError, ClusterError> {
    match e {
        ForwardError::Refused(m) => Err(ClusterError::Membership(m)),
        ForwardError::NotLeader { .. } => Ok(ClusterError::NoLeader),
        ForwardError::Unavailable(m) => Ok(ClusterError::Unavailable(m)),
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ClusterError::Membership(format!("this replica does not lead; the leader is {:?}", f.leader_id))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::LearnerNotFound(l))) => {
            ClusterError::Membership(format!("replica {} must be added as a learner first", l.node_id))
        }
        other => ClusterError::Membership(other.to_string()),
    }
}
