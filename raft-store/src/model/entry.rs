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

    /// Whether selectors and federated trust domains are sorted and free of duplicates, as
    /// [`Self::normalize`] leaves them.
    pub fn is_normalized(&self) -> bool {
        self.selectors.windows(2).all(|w| w[0] < w[1]) && self.federates_with.windows(2).all(|w| w[0] < w[1])
    }

    /// Sorts and deduplicates the selectors; apply stores entries in this form, and a
    /// proposer that sends them so spares every replica a copy of each entry.
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

/// What apply decided about a written entry: the entry as stored is the one proposed,
/// normalised, with these two fields. Apply answers with this rather than a copy of the
/// entry, which every replica would make and only the leader's caller would read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryWritten {
    /// The change-log revision of the write.
    pub revision_number: i64,
    /// When the entry was created: as proposed for a new entry, the stored entry's for an
    /// update.
    pub created_at: i64,
}

impl EntryWritten {
    /// The stored entry, from the one proposed for it.
    pub fn stored(self, mut proposed: RegistrationEntry) -> RegistrationEntry {
        proposed.normalize();
        proposed.revision_number = self.revision_number;
        proposed.created_at = self.created_at;
        proposed
    }
}

/// An entry as apply stores it, borrowed from the proposed one with the two fields apply
/// sets. It encodes exactly as the [`RegistrationEntry`] it stands for (the same fields in
/// the same order; `new` names every field, so a new one is not forgotten here).
#[derive(Serialize)]
pub(crate) struct StoredEntry<'a> {
    id: &'a String,
    spiffe_id: &'a SpiffeId,
    parent_id: &'a SpiffeId,
    selectors: &'a Vec<Selector>,
    x509_svid_ttl: i32,
    jwt_svid_ttl: i32,
    federates_with: &'a Vec<TrustDomain>,
    admin: bool,
    downstream: bool,
    expires_at: i64,
    dns_names: &'a Vec<String>,
    revision_number: i64,
    store_svid: bool,
    hint: &'a String,
    created_at: i64,
}

impl<'a> StoredEntry<'a> {
    pub(crate) fn new(entry: &'a RegistrationEntry, written: EntryWritten) -> Self {
        let RegistrationEntry {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl,
            jwt_svid_ttl,
            federates_with,
            admin,
            downstream,
            expires_at,
            dns_names,
            revision_number: _,
            store_svid,
            hint,
            created_at: _,
        } = entry;
        Self {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: *x509_svid_ttl,
            jwt_svid_ttl: *jwt_svid_ttl,
            federates_with,
            admin: *admin,
            downstream: *downstream,
            expires_at: *expires_at,
            dns_names,
            revision_number: written.revision_number,
            store_svid: *store_svid,
            hint,
            created_at: written.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_entry() -> RegistrationEntry {
        let id = |s: &str| SpiffeId::parse(s).expect("a SPIFFE ID");
        let mut entry = RegistrationEntry::new(
            "e1".into(),
            id("spiffe://example.org/web"),
            id("spiffe://example.org/agent"),
            vec![Selector::parse("unix:uid:1").expect("selector"), Selector::parse("k8s:ns:prod").expect("selector")],
        );
        entry.x509_svid_ttl = 60;
        entry.jwt_svid_ttl = 30;
        entry.federates_with = vec![TrustDomain::parse("b.org").expect("td"), TrustDomain::parse("a.org").expect("td")];
        entry.admin = true;
        entry.downstream = true;
        entry.expires_at = 1_900_000_000;
        entry.dns_names = vec!["web.example.org".into()];
        entry.revision_number = 7;
        entry.store_svid = true;
        entry.hint = "hint".into();
        entry.created_at = 1_700_000_000;
        entry
    }

    #[test]
    fn a_stored_entry_encodes_as_the_entry_it_stands_for() {
        let entry = full_entry();
        let written = EntryWritten { revision_number: 42, created_at: 1_600_000_000 };
        let borrowed = crate::codec::encode("entry", &StoredEntry::new(&entry, written)).expect("encodes");
        let owned = crate::codec::encode("entry", &written.stored(entry.clone())).expect("encodes");
        // `stored` normalises; the borrowed view encodes the selectors as given.
        let mut normalized = entry.clone();
        normalized.normalize();
        let borrowed_normalized =
            crate::codec::encode("entry", &StoredEntry::new(&normalized, written)).expect("encodes");
        assert_eq!(borrowed_normalized, owned);
        assert_ne!(borrowed, owned, "the fixture's selectors are out of order");
        let decoded: RegistrationEntry = crate::codec::decode("entry", &borrowed_normalized).expect("decodes");
        assert_eq!(decoded, written.stored(entry));
    }

    #[test]
    fn normalized_means_sorted_without_duplicates() {
        let mut entry = full_entry();
        assert!(!entry.is_normalized());
        entry.normalize();
        assert!(entry.is_normalized());
        entry.selectors.push(entry.selectors[0].clone());
        assert!(!entry.is_normalized());
    }
}
