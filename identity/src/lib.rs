//! SPIFFE identity core: IDs, selectors, X.509-SVIDs, JWT-SVIDs and trust bundles.
//!
//! Pure: no I/O, no async. Every function takes the current time as an argument, so
//! callers (and tests) decide what "now" is.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod crypto;
pub mod jwt;
mod selector;
mod spiffe_id;
mod trust_domain;
pub mod x509;
pub mod x509pop;

pub use selector::{entry_matches, Selector, SelectorError, SelectorSet};
pub use spiffe_id::{IdError, SpiffeId, MAX_ID_BYTES, MAX_TRUST_DOMAIN_BYTES};
pub use trust_domain::TrustDomain;
