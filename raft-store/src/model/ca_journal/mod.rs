//! The CA journal: the X.509 CA and JWT key slots, and what each change publishes in the
//! local bundle. Applying an event and publishing it happen in one command, so the journal
//! and the bundle never disagree.

mod journal;
mod key_intents;
mod key_material;
mod publish;
mod slot;

pub use journal::{CaJournal, JournalError, JournalEvent, SlotEvent};
pub use key_intents::{CaKeyKind, KeyIntents, MAX_PENDING_KEYS};
pub use key_material::KeyMaterial;
pub use publish::publish;
pub use slot::{Authority, JwtKeyAuthority, Slot, SlotId, SlotPair, SlotStatus, X509CaAuthority};
