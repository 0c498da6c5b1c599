//! Entries between the API and the data model: every field checked, each refusal naming it.

use identity::{Selector, SpiffeId, TrustDomain};
use proto::spire::api::types as pb;
use raft_store::model::RegistrationEntry;
use tonic::Status;

use crate::api::convert::{spiffe_id_from_pb, spiffe_id_to_pb};

/// Longest entry id a caller may choose (SPIRE's limit).
const MAX_ID_LEN: usize = 255;
const MAX_HINT_LEN: usize = 1024;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// An entry id a caller chose: non-empty, at most 255 bytes, printable ASCII without spaces.
pub fn check_entry_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("id", "cannot be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid("id", format!("longer than {MAX_ID_LEN} bytes")));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("id", "may contain only printable ASCII characters without spaces"));
    }
    Ok(())
}

/// A new entry id (UUID v4 text form, as SPIRE's): random, or drawn from the call's request
/// id so a call sent again proposes the same one.
pub fn new_entry_id() -> Result<String, Status> {
    let mut b = crate::api::request_id::fresh_bytes()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

/// Checks an API entry and turns it into the model. `id` is the id to store under (the
/// caller's, checked, or a fresh one); `now` stamps `created_at`.
pub fn entry_from_pb(
    entry: &pb::Entry,
    trust_domain: &TrustDomain,
    id: String,
    now: i64,
) -> Result<RegistrationEntry, Status> {
    let spiffe_id = spiffe_id_from_pb(entry.spiffe_id.as_ref(), "spiffe_id")?;
    check_workload_id(&spiffe_id, trust_domain, "spiffe_id")?;
    let parent_id = spiffe_id_from_pb(entry.parent_id.as_ref(), "parent_id")?;
    if parent_id.trust_domain() != trust_domain {
        return Err(invalid("parent_id", format!("{parent_id} is not in trust domain {}", trust_domain.name())));
    }
    if entry.selectors.is_empty() {
        return Err(invalid("selectors", "at least one selector is required"));
    }
    let selectors = entry
        .selectors
        .iter()
        .map(|s| {
            Selector::new(&s.r#type, &s.value)
                .map_err(|e| invalid("selectors", format!("{}:{}: {e}", s.r#type, s.value)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if entry.x509_svid_ttl < 0 {
        return Err(invalid("x509_svid_ttl", "must not be negative"));
    }
    if entry.jwt_svid_ttl < 0 {
        return Err(invalid("jwt_svid_ttl", "must not be negative"));
    }
    if entry.expires_at < 0 {
        return Err(invalid("expires_at", "must not be negative"));
    }
    let federates_with = entry
        .federates_with
        .iter()
        .map(|td| {
            let td = TrustDomain::parse(td.trim_start_matches("spiffe://"))
                .map_err(|e| invalid("federates_with", format!("{td:?}: {e}")))?;
            if &td == trust_domain {
                return Err(invalid("federates_with", "an entry cannot federate with its own trust domain"));
            }
            Ok(td)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for name in &entry.dns_names {
        check_dns_name(name)?;
    }
    if entry.hint.len() > MAX_HINT_LEN {
        return Err(invalid("hint", format!("longer than {MAX_HINT_LEN} bytes")));
    }
    let mut model = RegistrationEntry::new(id, spiffe_id, parent_id, selectors);
    model.x509_svid_ttl = entry.x509_svid_ttl;
    model.jwt_svid_ttl = entry.jwt_svid_ttl;
    model.federates_with = federates_with;
    model.admin = entry.admin;
    model.downstream = entry.downstream;
    model.expires_at = entry.expires_at;
    model.dns_names = entry.dns_names.clone();
    model.store_svid = entry.store_svid;
    model.hint = entry.hint.clone();
    model.created_at = now;
    model.normalize();
    Ok(model)
}

/// Workload IDs: in our trust domain, with a path, outside `/spire/`; `field` names the
/// request field in a refusal.
pub fn check_workload_id(id: &SpiffeId, trust_domain: &TrustDomain, field: &str) -> Result<(), Status> {
    if id.trust_domain() != trust_domain {
        return Err(invalid(field, format!("{id} is not in trust domain {}", trust_domain.name())));
    }
    if id.path().is_empty() {
        return Err(invalid(field, format!("{id} has no path")));
    }
    if id.path() == "/spire" || id.path().starts_with("/spire/") {
        return Err(invalid(field, format!("{id} is reserved: paths under /spire/ belong to the server and agents")));
    }
    Ok(())
}

fn check_dns_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            let label = if i == 0 && label == "*" { "a" } else { label };
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid("dns_names", format!("{name:?} is not a valid DNS name")))
    }
}

/// The model as the API shows it, with the fields `mask` asks for (all without a mask).
pub fn entry_to_pb(entry: &RegistrationEntry, mask: Option<&pb::EntryMask>) -> pb::Entry {
    let m = mask.cloned().unwrap_or(pb::EntryMask {
        spiffe_id: true,
        parent_id: true,
        selectors: true,
        x509_svid_ttl: true,
        federates_with: true,
        admin: true,
        downstream: true,
        expires_at: true,
        dns_names: true,
        revision_number: true,
        store_svid: true,
        jwt_svid_ttl: true,
        hint: true,
        created_at: true,
    });
    pb::Entry {
        id: entry.id.clone(),
        spiffe_id: m.spiffe_id.then(|| spiffe_id_to_pb(&entry.spiffe_id)),
        parent_id: m.parent_id.then(|| spiffe_id_to_pb(&entry.parent_id)),
        selectors: if m.selectors {
            entry
                .selectors
                .iter()
                .map(|s| pb::Selector { r#type: s.kind().to_owned(), value: s.value().to_owned() })
                .collect()
        } else {
            vec![]
        },
        x509_svid_ttl: if m.x509_svid_ttl { entry.x509_svid_ttl } else { 0 },
        federates_with: if m.federates_with {
            entry.federates_with.iter().map(|td| td.name().to_owned()).collect()
        } else {
            vec![]
        },
        admin: m.admin && entry.admin,
        downstream: m.downstream && entry.downstream,
        expires_at: if m.expires_at { entry.expires_at } else { 0 },
        dns_names: if m.dns_names { entry.dns_names.clone() } else { vec![] },
        revision_number: if m.revision_number { entry.revision_number } else { 0 },
        store_svid: m.store_svid && entry.store_svid,
        jwt_svid_ttl: if m.jwt_svid_ttl { entry.jwt_svid_ttl } else { 0 },
        hint: if m.hint { entry.hint.clone() } else { String::new() },
        created_at: if m.created_at { entry.created_at } else { 0 },
    }
}

/// `stored` with the fields `mask` names taken from `update` (all without a mask),
/// checked as a whole.
pub fn apply_update(
    stored: &RegistrationEntry,
    update: &pb::Entry,
    mask: Option<&pb::EntryMask>,
    trust_domain: &TrustDomain,
) -> Result<RegistrationEntry, Status> {
    let mut merged = entry_to_pb(stored, None);
    let all = mask.is_none();
    let m = mask.cloned().unwrap_or_default();
    if all || m.spiffe_id {
        merged.spiffe_id = update.spiffe_id.clone();
    }
    if all || m.parent_id {
        merged.parent_id = update.parent_id.clone();
    }
    if all || m.selectors {
        merged.selectors = update.selectors.clone();
    }
    if all || m.x509_svid_ttl {
        merged.x509_svid_ttl = update.x509_svid_ttl;
    }
    if all || m.jwt_svid_ttl {
        merged.jwt_svid_ttl = update.jwt_svid_ttl;
    }
    if all || m.federates_with {
        merged.federates_with = update.federates_with.clone();
    }
    if all || m.admin {
        merged.admin = update.admin;
    }
    if all || m.downstream {
        merged.downstream = update.downstream;
    }
    if all || m.expires_at {
        merged.expires_at = update.expires_at;
    }
    if all || m.dns_names {
        merged.dns_names = update.dns_names.clone();
    }
    if all || m.store_svid {
        merged.store_svid = update.store_svid;
    }
    if all || m.hint {
        merged.hint = update.hint.clone();
    }
    let mut entry = entry_from_pb(&merged, trust_domain, stored.id.clone(), stored.created_at)?;
    entry.revision_number = stored.revision_number;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn id(td: &str, path: &str) -> Option<pb::Spiffeid> {
        Some(pb::Spiffeid { trust_domain: td.into(), path: path.into() })
    }

    fn good() -> pb::Entry {
        pb::Entry {
            spiffe_id: id("example.org", "/web"),
            parent_id: id("example.org", "/spire/agent/x"),
            selectors: vec![pb::Selector { r#type: "unix".into(), value: "uid:1000".into() }],
            ..Default::default()
        }
    }

    fn refusal(change: impl FnOnce(&mut pb::Entry)) -> String {
        let mut e = good();
        change(&mut e);
        let status = entry_from_pb(&e, &td(), "e1".into(), 0).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status.message().to_string()
    }

    #[test]
    fn a_good_entry_round_trips() {
        let model = entry_from_pb(&good(), &td(), "e1".into(), 42).unwrap();
        assert_eq!((model.id.as_str(), model.created_at), ("e1", 42));
        let back = entry_to_pb(&model, None);
        assert_eq!(back.spiffe_id, good().spiffe_id);
        assert_eq!(back.selectors, good().selectors);
    }

    #[test]
    fn every_bad_field_is_named() {
        assert!(refusal(|e| e.spiffe_id = None).starts_with("spiffe_id: required"));
        assert!(refusal(|e| e.spiffe_id = id("example.org", "web")).starts_with("spiffe_id:"));
        assert!(refusal(|e| e.spiffe_id = id("example.org", "/spire/agent/y")).contains("reserved"));
        assert!(refusal(|e| e.spiffe_id = id("other.org", "/web")).contains("not in trust domain"));
        assert!(refusal(|e| e.parent_id = id("other.org", "/x")).starts_with("parent_id:"));
        assert!(refusal(|e| e.selectors.clear()).starts_with("selectors: at least one"));
        assert!(refusal(|e| e.selectors[0].value.clear()).starts_with("selectors:"));
        assert!(refusal(|e| e.x509_svid_ttl = -1).starts_with("x509_svid_ttl"));
        assert!(refusal(|e| e.jwt_svid_ttl = -1).starts_with("jwt_svid_ttl"));
        assert!(refusal(|e| e.expires_at = -1).starts_with("expires_at"));
        assert!(refusal(|e| e.federates_with = vec!["example.org".into()]).contains("own trust domain"));
        assert!(refusal(|e| e.federates_with = vec!["Bad TD".into()]).starts_with("federates_with"));
        assert!(refusal(|e| e.dns_names = vec!["-bad.example".into()]).starts_with("dns_names"));
        assert!(refusal(|e| e.hint = "x".repeat(2000)).starts_with("hint"));
        assert!(check_entry_id("has space").is_err());
        assert!(check_entry_id(&"x".repeat(256)).is_err());
        assert!(check_entry_id("").is_err());
        assert!(check_entry_id("custom-id_1.2").is_ok());
    }

    #[test]
    fn updates_take_only_masked_fields() {
        let stored = entry_from_pb(&good(), &td(), "e1".into(), 7).unwrap();
        let mut change = good();
        change.hint = "new".into();
        change.selectors.clear(); // not in the mask, so not taken
        let mask = pb::EntryMask { hint: true, ..Default::default() };
        let updated = apply_update(&stored, &change, Some(&mask), &td()).unwrap();
        assert_eq!(updated.hint, "new");
        assert_eq!(updated.selectors, stored.selectors);
        assert_eq!(updated.created_at, 7);
        // Without a mask every field is taken, and checked.
        assert!(apply_update(&stored, &change, None, &td()).is_err());
    }

    #[test]
    fn generated_ids_are_uuids() {
        let id = new_entry_id().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_entry_id().unwrap());
    }
}
