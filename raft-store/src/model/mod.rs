//! The replicated data model: what the state machine stores, table by table.

mod agent;
mod bundle;
mod ca_journal;
mod cluster_ca;
pub(crate) mod entry;
mod federation;
mod join_token;
mod replica_invite;
mod upstream;

pub use agent::AttestedAgent;
pub use bundle::{BundleConversionError, StoredBundle, StoredJwtKey, StoredX509Authority};
pub use ca_journal::{
    publish, Authority, CaJournal, CaKeyKind, JournalError, JournalEvent, JwtKeyAuthority, KeyIntents, KeyMaterial,
    Slot, SlotEvent, SlotId, SlotPair, SlotStatus, X509CaAuthority, MAX_PENDING_KEYS,
};
pub use cluster_ca::{ClusterCaPhase, ClusterCaRotation};
pub use entry::{EntryWritten, RegistrationEntry};
pub use federation::{BundleEndpointProfile, FederationRefresh, FederationRelationship};
pub use join_token::JoinToken;
pub use replica_invite::ReplicaInvite;
pub use upstream::UpstreamStatus;
