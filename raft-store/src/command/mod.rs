//! Commands: the only way replicated state changes. One closed enum, applied
//! deterministically: everything that depends on time, randomness or keys is decided by the
//! proposer and carried in the command.

use serde::{Deserialize, Serialize};

use crate::model::{
    AttestedAgent, CaJournal, EntryWritten, FederationRelationship, JoinToken, JournalEvent, RegistrationEntry,
    ReplicaInvite, StoredBundle, StoredJwtKey, StoredX509Authority,
};

/// Which bundle table a bundle command addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleScope {
    /// The trust domain's own bundle.
    Local,
    /// A bundle fetched from (or set for) a federated trust domain.
    Federated,
}

/// A change to replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Creates entries; each fails alone (AlreadyExists for a duplicate id or for the same
    /// SPIFFE ID, parent ID and selectors as an existing entry).
    CreateEntries(Vec<RegistrationEntry>),
    /// Replaces entries by id; each fails alone (NotFound, AlreadyExists).
    UpdateEntries(Vec<RegistrationEntry>),
    /// Deletes entries by id; each fails alone (NotFound).
    DeleteEntries(Vec<String>),

    CreateAgent(AttestedAgent),
    /// Replaces an agent's record (re-attestation, selector changes).
    UpdateAgent(AttestedAgent),
    /// Records the serial of an SVID a renewal issued, before the agent uses it.
    SetAgentNewSerial {
        spiffe_id: String,
        serial_number: String,
        expires_at: i64,
    },
    /// The agent used its new SVID: the new serial becomes the current one.
    PromoteAgentSerial {
        spiffe_id: String,
        serial_number: String,
    },
    BanAgent {
        spiffe_id: String,
    },
    DeleteAgent {
        spiffe_id: String,
    },

    CreateJoinToken(JoinToken),
    /// Consumes a token: succeeds once, refuses an expired token (`now` from the proposer).
    ConsumeJoinToken {
        token: String,
        now: i64,
    },
    /// Deletes tokens that expired before `expired_before`.
    PruneJoinTokens {
        expired_before: i64,
    },

    /// Replaces a bundle; its sequence number becomes one more than the stored one.
    SetBundle {
        scope: BundleScope,
        bundle: StoredBundle,
    },
    /// Adds authorities to a bundle (creating it if absent).
    AppendBundle {
        scope: BundleScope,
        trust_domain: String,
        x509: Vec<StoredX509Authority>,
        jwt: Vec<StoredJwtKey>,
    },
    /// Removes expired authorities: JWT keys expiring before `expired_before`, and the X.509
    /// authorities the proposer found expired.
    PruneBundle {
        scope: BundleScope,
        trust_domain: String,
        expired_before: i64,
        expired_x509: Vec<Vec<u8>>,
    },
    DeleteBundle {
        scope: BundleScope,
        trust_domain: String,
    },

    /// A CA journal transition, published in the local bundle of `trust_domain` in the
    /// same command (refused as FailedPrecondition when the journal's rules forbid it).
    CaJournal {
        trust_domain: String,
        event: JournalEvent,
    },

    CreateFederationRelationship(FederationRelationship),
    UpdateFederationRelationship(FederationRelationship),
    DeleteFederationRelationship {
        trust_domain: String,
    },

    /// Drops change-log records of revisions before `before_revision`; readers further
    /// behind than that must resync from the tables instead of by delta.
    PruneChangeLog {
        before_revision: u64,
    },

    /// Creates a one-time invitation for a new replica (stored by the secret's hash).
    CreateReplicaInvite(ReplicaInvite),
    /// Consumes an invitation exactly once; expired ones are refused.
    ConsumeReplicaInvite {
        secret_sha256: String,
        now: i64,
    },

    /// Several commands proposed together (group commit, see `proposer`): applied in order,
    /// each with its own revision and outcome, answered with `Outcome::Batch`.
    Batch(Vec<Command>),

    /// Marks an X.509 authority of the local bundle tainted (an upstream authority an admin
    /// no longer trusts). NotFound if the bundle lacks it, FailedPrecondition if it is
    /// tainted already.
    TaintLocalX509Authority {
        trust_domain: String,
        der: Vec<u8>,
    },
    /// Removes a tainted X.509 authority from the local bundle. NotFound if the bundle lacks
    /// it, FailedPrecondition if it is not tainted or is the last one.
    RevokeLocalX509Authority {
        trust_domain: String,
        der: Vec<u8>,
    },
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
