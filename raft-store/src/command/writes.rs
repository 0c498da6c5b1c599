//! One type per command, each with the result apply answers it with. A caller writes
//! `replica.write(BanAgent { spiffe_id })` and gets that command's result back, never an
//! outcome of another kind to match on.

use serde::{Deserialize, Serialize};

use super::{ApplyError, BundleScope, Command, Outcome};
use crate::model::{
    AttestedAgent, CaJournal, CaKeyKind, ClusterCaPhase, ClusterCaRotation, EntryWritten, FederationRefresh,
    FederationRelationship, JoinToken, JournalEvent, KeyMaterial, RegistrationEntry, ReplicaInvite, SlotId,
    StoredBundle, StoredJwtKey, StoredX509Authority, UpstreamStatus,
};
use crate::types::NodeId;

/// A command with the type of its answer.
pub trait Write: Into<Command> + Send + 'static {
    /// What apply answers this command with.
    type Output: Send + 'static;

    /// Takes this command's answer out of an outcome; gives the outcome back if apply
    /// answered with another kind (a replica of another build, or a bug).
    fn output(outcome: Outcome) -> Result<Self::Output, Outcome>;
}

/// Creates entries; each fails alone (AlreadyExists for a duplicate id or for the same
/// SPIFFE ID, parent ID and selectors as an existing entry). Each written entry is the
/// proposed one with the fields of its `EntryWritten`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateEntries(pub Vec<RegistrationEntry>);

/// Replaces entries by id; each fails alone (NotFound, AlreadyExists).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateEntries(pub Vec<RegistrationEntry>);

/// Deletes entries by id; each fails alone (NotFound).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteEntries(pub Vec<String>);

/// Records a newly attested agent (AlreadyExists if one has that ID).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateAgent(pub AttestedAgent);

/// Replaces an agent's record (re-attestation, selector changes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateAgent(pub AttestedAgent);

/// Records the serial of an SVID a renewal issued, before the agent uses it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetAgentNewSerial {
    pub spiffe_id: String,
    pub serial_number: String,
    pub expires_at: i64,
}

/// The agent used its new SVID: the new serial becomes the current one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromoteAgentSerial {
    pub spiffe_id: String,
    pub serial_number: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanAgent {
    pub spiffe_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteAgent {
    pub spiffe_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateJoinToken(pub JoinToken);

/// Consumes a token: succeeds once, refuses an expired token (`now` from the proposer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumeJoinToken {
    pub token: String,
    pub now: i64,
}

/// Deletes tokens that expired before `expired_before`; answers how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneJoinTokens {
    pub expired_before: i64,
}

/// Replaces a bundle; its sequence number becomes one more than the stored one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetBundle {
    pub scope: BundleScope,
    pub bundle: StoredBundle,
}

/// Adds authorities to a bundle (creating it if absent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppendBundle {
    pub scope: BundleScope,
    pub trust_domain: String,
    pub x509: Vec<StoredX509Authority>,
    pub jwt: Vec<StoredJwtKey>,
}

/// Removes expired authorities: JWT keys expiring before `expired_before`, and the X.509
/// authorities the proposer found expired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneBundle {
    pub scope: BundleScope,
    pub trust_domain: String,
    pub expired_before: i64,
    pub expired_x509: Vec<Vec<u8>>,
}

/// Makes the local bundle of a nested (downstream) cluster its upstream's: the X.509
/// authorities become the upstream's, taint marks included, and the JWT keys the
/// upstream's plus this cluster's own keys the upstream does not list yet (they are
/// published upward a moment after they are prepared). Content already the same leaves
/// the sequence number alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorUpstreamBundle {
    pub trust_domain: String,
    pub x509: Vec<StoredX509Authority>,
    pub jwt: Vec<StoredJwtKey>,
}

/// Replaces the recorded status of a nested cluster's calls to its upstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordUpstreamStatus(pub UpstreamStatus);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteBundle {
    pub scope: BundleScope,
    pub trust_domain: String,
}

/// A CA journal transition, published in the local bundle of `trust_domain` in the same
/// command (refused as FailedPrecondition when the journal's rules forbid it). Answers the
/// journal as it stands after the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordCaEvent {
    pub trust_domain: String,
    pub event: JournalEvent,
}

/// Reserves a fresh key id for a key about to be made in a key manager for `slot` of the
/// `kind` authorities (`model::KeyIntents`), before the key exists. Answers the id;
/// FailedPrecondition when `MAX_PENDING_KEYS` ids already wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReserveCaKey {
    pub kind: CaKeyKind,
    pub slot: SlotId,
    /// Unix seconds, the proposer's clock: how old a reservation is, for the sweep.
    pub now: i64,
}

/// Releases reserved key ids whose keys were abandoned: from here on the journal refuses
/// an authority naming one. Answers how many of them were pending.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseCaKeys {
    pub key_ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateFederationRelationship(pub FederationRelationship);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateFederationRelationship(pub FederationRelationship);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteFederationRelationship {
    pub trust_domain: String,
}

/// Drops change-log records of revisions before `before_revision`; readers further behind
/// than that must resync from the tables instead of by delta. Answers how many went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneChangeLog {
    pub before_revision: u64,
}

/// Creates a one-time invitation for a new replica (stored by the secret's hash).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateReplicaInvite(pub ReplicaInvite);

/// Consumes an invitation exactly once; expired ones are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumeReplicaInvite {
    pub secret_sha256: String,
    pub now: i64,
}

/// Marks an X.509 authority of the local bundle tainted (an upstream authority an admin no
/// longer trusts). NotFound if the bundle lacks it, FailedPrecondition if it is tainted
/// already.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaintLocalX509Authority {
    pub trust_domain: String,
    pub der: Vec<u8>,
}

/// Removes a tainted X.509 authority from the local bundle. NotFound if the bundle lacks
/// it, FailedPrecondition if it is not tainted or is the last one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevokeLocalX509Authority {
    pub trust_domain: String,
    pub der: Vec<u8>,
}

/// Deletes invitations that expired before `expired_before`; answers how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneReplicaInvites {
    pub expired_before: i64,
}

/// Deletes registration entries whose `expires_at` is set and before `expired_before`;
/// answers how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneEntries {
    pub expired_before: i64,
}

/// Starts rotation `generation` of the cluster CA: every replica is to trust `cert_der` as
/// well as `previous_cert_der`. FailedPrecondition while another rotation is under way or
/// when `generation` is not the one after the last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareClusterCa {
    pub generation: u64,
    pub cert_der: Vec<u8>,
    pub key: KeyMaterial,
    pub previous_cert_der: Vec<u8>,
}

/// Moves rotation `generation` to the phase after `from`. FailedPrecondition unless the
/// rotation is in `from` and every member of the membership at this point of the log has
/// reached it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvanceClusterCa {
    pub generation: u64,
    pub from: ClusterCaPhase,
}

/// Replica `node_id` reached `phase` of rotation `generation`. FailedPrecondition when the
/// rotation is no longer there (a late report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReachClusterCaPhase {
    pub generation: u64,
    pub phase: ClusterCaPhase,
    pub node_id: NodeId,
}

/// The outcome of one refresh of `trust_domain`'s federated bundle: its new schedule and,
/// when the fetched bundle differs from the stored one, the bundle (stored with the next
/// sequence number, as `SetBundle` does). Applied only while the stored schedule still has
/// `expected_next_due` (0: none yet), so a refresh that another leader already recorded is
/// refused (FailedPrecondition) instead of counted twice; NotFound once the relationship
/// is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordFederationRefresh {
    pub trust_domain: String,
    pub expected_next_due: i64,
    pub refresh: FederationRefresh,
    pub bundle: Option<StoredBundle>,
}

/// `command => Command variant, Outcome variant: output type` for every typed command.
macro_rules! typed_writes {
    ($($command:ident => $variant:ident, $outcome:ident: $output:ty;)*) => {
        $(
            impl From<$command> for Command {
                fn from(command: $command) -> Self {
                    Command::$variant(command)
                }
            }

            impl Write for $command {
                type Output = $output;

                fn output(outcome: Outcome) -> Result<Self::Output, Outcome> {
                    match outcome {
                        Outcome::$outcome(output) => Ok(output),
                        other => Err(other),
                    }
                }
            }
        )*
    };
}

typed_writes! {
    CreateEntries => CreateEntries, Entries: Vec<Result<EntryWritten, ApplyError>>;
    UpdateEntries => UpdateEntries, Entries: Vec<Result<EntryWritten, ApplyError>>;
    DeleteEntries => DeleteEntries, DeletedEntries: Vec<Result<String, ApplyError>>;
    CreateAgent => CreateAgent, Agent: Result<AttestedAgent, ApplyError>;
    UpdateAgent => UpdateAgent, Agent: Result<AttestedAgent, ApplyError>;
    SetAgentNewSerial => SetAgentNewSerial, Agent: Result<AttestedAgent, ApplyError>;
    PromoteAgentSerial => PromoteAgentSerial, Agent: Result<AttestedAgent, ApplyError>;
    BanAgent => BanAgent, Agent: Result<AttestedAgent, ApplyError>;
    DeleteAgent => DeleteAgent, Deleted: Result<(), ApplyError>;
    CreateJoinToken => CreateJoinToken, JoinToken: Result<JoinToken, ApplyError>;
    ConsumeJoinToken => ConsumeJoinToken, JoinToken: Result<JoinToken, ApplyError>;
    PruneJoinTokens => PruneJoinTokens, Pruned: u64;
    SetBundle => SetBundle, Bundle: Result<StoredBundle, ApplyError>;
    AppendBundle => AppendBundle, Bundle: Result<StoredBundle, ApplyError>;
    PruneBundle => PruneBundle, Bundle: Result<StoredBundle, ApplyError>;
    DeleteBundle => DeleteBundle, Deleted: Result<(), ApplyError>;
    RecordCaEvent => CaJournal, CaJournal: Result<Box<CaJournal>, ApplyError>;
    CreateFederationRelationship => CreateFederationRelationship, Relationship: Result<FederationRelationship, ApplyError>;
    UpdateFederationRelationship => UpdateFederationRelationship, Relationship: Result<FederationRelationship, ApplyError>;
    DeleteFederationRelationship => DeleteFederationRelationship, Deleted: Result<(), ApplyError>;
    PruneChangeLog => PruneChangeLog, Pruned: u64;
    CreateReplicaInvite => CreateReplicaInvite, ReplicaInvite: Result<ReplicaInvite, ApplyError>;
    ConsumeReplicaInvite => ConsumeReplicaInvite, ReplicaInvite: Result<ReplicaInvite, ApplyError>;
    TaintLocalX509Authority => TaintLocalX509Authority, Bundle: Result<StoredBundle, ApplyError>;
    RevokeLocalX509Authority => RevokeLocalX509Authority, Bundle: Result<StoredBundle, ApplyError>;
    PruneReplicaInvites => PruneReplicaInvites, Pruned: u64;
    PruneEntries => PruneEntries, Pruned: u64;
    PrepareClusterCa => PrepareClusterCa, ClusterCa: Result<ClusterCaRotation, ApplyError>;
    AdvanceClusterCa => AdvanceClusterCa, ClusterCa: Result<ClusterCaRotation, ApplyError>;
    ReachClusterCaPhase => ReachClusterCaPhase, ClusterCa: Result<ClusterCaRotation, ApplyError>;
    RecordFederationRefresh => RecordFederationRefresh, FederationRefresh: Result<FederationRefresh, ApplyError>;
    MirrorUpstreamBundle => MirrorUpstreamBundle, Bundle: Result<StoredBundle, ApplyError>;
    RecordUpstreamStatus => RecordUpstreamStatus, UpstreamStatus: UpstreamStatus;
    ReserveCaKey => ReserveCaKey, KeyReserved: Result<String, ApplyError>;
    ReleaseCaKeys => ReleaseCaKeys, Pruned: u64;
}
