//! The certificate authority: X.509 CA and JWT key slots, the rotation schedule, and the
//! manager that carries it out through a key manager and an optional upstream authority.

pub mod config;
mod keys;
pub mod local_authority;
mod manager;
mod prune;
pub mod replicated;
mod rotation;
mod signing;

pub use config::{
    CaConfig, CaConfigError, DEFAULT_CA_TTL, DEFAULT_JWT_SVID_TTL, DEFAULT_KEY_SWEEP_GRACE, DEFAULT_X509_SVID_TTL,
};
pub use keys::{CaKeys, CaSigner};
pub use manager::{CaError, CaManager, JournalSink};
pub use prune::{expired_x509, prune_expired};
/// The journal and its slots are replicated state, so they live in raft-store's model.
pub use raft_store::model::{
    publish, Authority, CaJournal, JournalError, JournalEvent, JwtKeyAuthority, Slot, SlotEvent, SlotId, SlotPair,
    SlotStatus, X509CaAuthority,
};
pub use rotation::{activation_threshold, next_step, preparation_threshold, tainted_upstream_step, RotationStep};
pub use signing::{MintRefusal, MintedSvid, Signing, SvidRequest};
