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
