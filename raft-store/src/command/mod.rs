//! Commands: the only way replicated state changes. One closed enum, applied
//! deterministically: everything that depends on time, randomness or keys is decided by the
//! proposer and carried in the command.

mod writes;

use serde::{Deserialize, Serialize};

pub use writes::*;

use crate::model::{
    AttestedAgent, CaJournal, ClusterCaRotation, EntryWritten, FederationRefresh, FederationRelationship, JoinToken,
    ReplicaInvite, StoredBundle, UpstreamStatus,
};

/// Which bundle table a bundle command addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleScope {
    /// The trust domain's own bundle.
    Local,
    /// A bundle fetched from (or set for) a federated trust domain.
    Federated,
}

/// A change to replicated state: one of the commands in [`writes`], each of which names the
/// result apply answers it with ([`Write::Output`]). Only `Batch`, which the proposer forms,
/// has no type of its own.
///
/// The log and the cluster wire carry this enum (bincode): variants and fields keep their
/// order, new ones go at the end, and `tests/it/durable_formats.rs` pins every encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateEntries(CreateEntries),
    UpdateEntries(UpdateEntries),
    DeleteEntries(DeleteEntries),

    CreateAgent(CreateAgent),
    UpdateAgent(UpdateAgent),
    SetAgentNewSerial(SetAgentNewSerial),
    PromoteAgentSerial(PromoteAgentSerial),
    BanAgent(BanAgent),
    DeleteAgent(DeleteAgent),

    CreateJoinToken(CreateJoinToken),
    ConsumeJoinToken(ConsumeJoinToken),
    PruneJoinTokens(PruneJoinTokens),

    SetBundle(SetBundle),
    AppendBundle(AppendBundle),
    PruneBundle(PruneBundle),
    DeleteBundle(DeleteBundle),

    CaJournal(RecordCaEvent),

    CreateFederationRelationship(CreateFederationRelationship),
    UpdateFederationRelationship(UpdateFederationRelationship),
    DeleteFederationRelationship(DeleteFederationRelationship),

    PruneChangeLog(PruneChangeLog),

    CreateReplicaInvite(CreateReplicaInvite),
    ConsumeReplicaInvite(ConsumeReplicaInvite),

    /// Several commands proposed together (group commit, see `proposer`): applied in order,
    /// each with its own revision and outcome, answered with `Outcome::Batch`.
    Batch(Vec<Command>),

    TaintLocalX509Authority(TaintLocalX509Authority),
    RevokeLocalX509Authority(RevokeLocalX509Authority),
    PruneReplicaInvites(PruneReplicaInvites),
    PruneEntries(PruneEntries),
    PrepareClusterCa(PrepareClusterCa),
    AdvanceClusterCa(AdvanceClusterCa),
    ReachClusterCaPhase(ReachClusterCaPhase),
    RecordFederationRefresh(RecordFederationRefresh),
    MirrorUpstreamBundle(MirrorUpstreamBundle),
    RecordUpstreamStatus(RecordUpstreamStatus),
    /// A command under a request id: applied once, however many times it is proposed
    /// (see `state_machine::requests`).
    Idempotent(Idempotent),
    ReserveCaKey(ReserveCaKey),
    ReleaseCaKeys(ReleaseCaKeys),
}

/// Names one write of one client, so that sending it again (its answer was lost) is
/// answered with the first answer instead of being applied twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Random, one per client: a replica process, a CLI call.
    pub client: [u8; 16],
    /// The client's count of its writes.
    pub seq: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.client {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "/{}", self.seq)
    }
}

impl RequestId {
    /// A fresh random client id.
    pub fn new_client() -> [u8; 16] {
        let mut client = [0; 16];
        if aws_lc_rs::rand::fill(&mut client).is_err() {
            // No system randomness: the time and process id still keep clients apart.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let seed = format!("{}:{}", now.as_nanos(), std::process::id());
            client.copy_from_slice(
                &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed.as_bytes()).as_ref()[..16],
            );
        }
        client
    }
}

/// The request ids of one client: a random client id and a counter.
#[derive(Debug)]
pub struct RequestIds {
    client: [u8; 16],
    next: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { client: RequestId::new_client(), next: std::sync::atomic::AtomicU64::new(0) }
    }
}

impl RequestIds {
    pub fn next(&self) -> RequestId {
        RequestId { client: self.client, seq: self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) }
    }
}

/// A command with the request id it is deduplicated by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Idempotent {
    pub id: RequestId,
    /// The SHA-256 of the command's encoding, when the id came from outside (a caller's
    /// request id), so a second, different command under it is refused rather than answered
    /// with the first one's answer. A replica's own ids name one command object each and
    /// carry none: hashing every write would cost each replica's apply for nothing.
    pub fingerprint: Option<[u8; 32]>,
    pub command: Box<Command>,
}

impl Command {
    /// This command under this replica's request id `id`; a command that has one already
    /// keeps it.
    pub fn idempotent(self, id: RequestId) -> Command {
        match self {
            once @ Command::Idempotent(_) => once,
            command => Command::Idempotent(Idempotent { id, fingerprint: None, command: Box::new(command) }),
        }
    }

    /// This command under a caller's request id `id`, with its fingerprint: of what the
    /// caller chose, so a call sent again is answered with the first answer although the
    /// proposer stamped it with a later clock reading.
    pub fn idempotent_for_caller(self, id: RequestId) -> Result<Command, crate::codec::CodecError> {
        let encoded = crate::codec::encode("command", &self.without_proposer_clock())?;
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &encoded).as_ref());
        Ok(Command::Idempotent(Idempotent { id, fingerprint: Some(fingerprint), command: Box::new(self) }))
    }
}

impl Command {
    /// A copy with the times the proposer read off its clock (not the caller's choice)
    /// zeroed. Values the proposer draws at random for a call under a request id are drawn
    /// from the id (`server::api::request_id`), so they match without this.
    fn without_proposer_clock(&self) -> Command {
        let mut command = self.clone();
        match &mut command {
            Command::CreateEntries(CreateEntries(entries)) | Command::UpdateEntries(UpdateEntries(entries)) => {
                entries.iter_mut().for_each(|entry| entry.created_at = 0);
            }
            Command::CreateJoinToken(CreateJoinToken(token)) => token.expires_at = 0,
            Command::RecordFederationRefresh(record) => record.refresh.next_due = 0,
            _ => {}
        }
        command
    }
}

/// Why a command (or one item of a batch) was refused. Refusals are answers, not storage
/// failures: the command is still applied (and bumps the revision) with nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// The outcome of one applied command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Membership changes and blank entries carry no command.
    #[default]
    None,
    /// Per entry of a create or update, in order: the stored entry is the proposed one with
    /// these fields (`EntryWritten::stored`), or why it was refused.
    Entries(Vec<Result<EntryWritten, ApplyError>>),
    DeletedEntries(Vec<Result<String, ApplyError>>),
    Agent(Result<AttestedAgent, ApplyError>),
    JoinToken(Result<JoinToken, ApplyError>),
    Bundle(Result<StoredBundle, ApplyError>),
    Relationship(Result<FederationRelationship, ApplyError>),
    CaJournal(Result<Box<CaJournal>, ApplyError>),
    Deleted(Result<(), ApplyError>),
    Pruned(u64),
    ReplicaInvite(Result<ReplicaInvite, ApplyError>),
    /// One response per command of a `Command::Batch`, in order.
    Batch(Vec<Response>),
    ClusterCa(Result<ClusterCaRotation, ApplyError>),
    FederationRefresh(Result<FederationRefresh, ApplyError>),
    UpstreamStatus(UpstreamStatus),
    /// The request id was seen before with another command: nothing was applied.
    RequestIdReused(RequestId),
    /// The key id reserved, or why none was.
    KeyReserved(Result<String, ApplyError>),
}

/// What the state machine answers for a log entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The revision after this entry: every applied command bumps it by one.
    pub revision: u64,
    pub outcome: Outcome,
}

/// The tables a change can touch, as the change log names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Table {
    Entry,
    Agent,
    JoinToken,
    LocalBundle,
    FederatedBundle,
    FederationRelationship,
    CaJournal,
    ReplicaInvite,
}

/// One row written or deleted by a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub table: Table,
    pub key: String,
    pub deleted: bool,
}

/// Everything one revision changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub revision: u64,
    pub changes: Vec<Change>,
}
