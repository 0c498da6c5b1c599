//! The certificate authority: X.509 CA and JWT key slots, the rotation schedule, and the
//! manager that carries it out through a key manager and an optional upstream authority.

mod config;
mod journal;
mod manager;
mod publish;
mod rotation;
mod slot;

pub use config::{CaConfig, CaConfigError, DEFAULT_CA_TTL, DEFAULT_JWT_SVID_TTL, DEFAULT_X509_SVID_TTL};
pub use journal::{CaJournal, JournalError, JournalEvent, SlotEvent};
pub use manager::{CaError, CaManager};
pub use publish::{prune_expired, publish};
pub use rotation::{activation_threshold, next_step, preparation_threshold, RotationStep};
pub use slot::{Authority, JwtKeyAuthority, Slot, SlotId, SlotPair, SlotStatus, X509CaAuthority};
