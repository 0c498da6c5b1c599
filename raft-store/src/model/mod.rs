//! The replicated data model: what the state machine stores, table by table.

mod agent;
mod bundle;
mod entry;
mod federation;
mod join_token;

pub use agent::AttestedAgent;
pub use bundle::{StoredBundle, StoredJwtKey, StoredX509Authority};
pub use entry::RegistrationEntry;
pub use federation::{BundleEndpointProfile, FederationRelationship};
pub use join_token::JoinToken;
