//! Registration entries: which SPIFFE ID a workload or node with given selectors gets.

use identity::{Selector, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

/// A registration entry, with SPIRE's fields (`spire.api.types.Entry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationEntry {
    /// Chosen by the proposer (never inside apply), unique.
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// Sorted and without duplicates, so equal sets compare equal.
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the server's default.
    pub x509_svid_ttl: i32,
    pub jwt_svid_ttl: i32,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    /// Unix seconds; 0 means never.
    pub expires_at: i64,
    pub dns_names: Vec<String>,
    /// The change-log revision that last wrote this entry (set by apply).
    pub revision_number: i64,
    pub store_svid: bool,
    pub hint: String,
    /// Unix seconds, set by the proposer.
    pub created_at: i64,
}

impl RegistrationEntry {
    /// An entry with the given identity and every other field at its default (server
    /// default TTLs, no DNS names, not admin or downstream, never expires).
    pub fn new(id: String, spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: Vec<Selector>) -> Self {
        Self {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            expires_at: 0,
            dns_names: vec![],
            revision_number: 0,
            store_svid: false,
            hint: String::new(),
            created_at: 0,
        }
    }

    /// Sorts and deduplicates the selectors; apply calls it so stored entries are canonical.
    pub fn normalize(&mut self) {
        self.selectors.sort();
        self.selectors.dedup();
        self.federates_with.sort();
        self.federates_with.dedup();
    }

    /// The key of the uniqueness rule: no two entries share SPIFFE ID, parent ID and
    /// selectors (SPIRE answers AlreadyExists).
    pub(crate) fn identity_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(128);
        self.spiffe_id.append_to(&mut key);
        key.push(0);
        self.parent_id.append_to(&mut key);
        for selector in &self.selectors {
            key.push(0);
            selector.append_to(&mut key);
        }
        key
    }
}
