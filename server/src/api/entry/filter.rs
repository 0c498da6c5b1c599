//! ListEntries and CountEntries filters, as SPIRE defines them: every given filter must hold.

use std::collections::BTreeSet;

use identity::TrustDomain;
use proto::spire::api::server::entry::v1::list_entries_request::Filter;
use proto::spire::api::types::{federates_with_match, selector_match, FederatesWithMatch, SelectorMatch};
use raft_store::model::RegistrationEntry;
use tonic::Status;

use crate::api::convert::spiffe_id_from_pb;

/// A checked filter.
#[derive(Debug, Default)]
pub struct EntryFilter {
    pub spiffe_id: Option<String>,
    pub parent_id: Option<String>,
    selectors: Option<(BTreeSet<String>, i32)>,
    federates_with: Option<(BTreeSet<String>, i32)>,
    hint: Option<String>,
    downstream: Option<bool>,
}

impl EntryFilter {
    /// CountEntries' filter, which is its own message with ListEntries' fields.
    pub fn from_count_pb(
        filter: Option<proto::spire::api::server::entry::v1::count_entries_request::Filter>,
    ) -> Result<Self, Status> {
        let filter = filter.map(|f| Filter {
            by_spiffe_id: f.by_spiffe_id,
            by_parent_id: f.by_parent_id,
            by_selectors: f.by_selectors,
            by_federates_with: f.by_federates_with,
            by_hint: f.by_hint,
            by_downstream: f.by_downstream,
        });
        Self::from_pb(filter.as_ref())
    }

    pub fn from_pb(filter: Option<&Filter>) -> Result<Self, Status> {
        let Some(f) = filter else { return Ok(Self::default()) };
        let spiffe_id = f
            .by_spiffe_id
            .as_ref()
            .map(|id| spiffe_id_from_pb(Some(id), "filter.by_spiffe_id").map(|id| id.to_string()))
            .transpose()?;
        let parent_id = f
            .by_parent_id
            .as_ref()
            .map(|id| spiffe_id_from_pb(Some(id), "filter.by_parent_id").map(|id| id.to_string()))
            .transpose()?;
        let selectors = f.by_selectors.as_ref().map(selector_set).transpose()?;
        let federates_with = f.by_federates_with.as_ref().map(trust_domain_set).transpose()?;
        Ok(Self {
            spiffe_id,
            parent_id,
            selectors,
            federates_with,
            hint: f.by_hint.clone(),
            downstream: f.by_downstream,
        })
    }

    pub fn matches(&self, entry: &RegistrationEntry) -> bool {
        self.spiffe_id.as_ref().is_none_or(|id| *id == entry.spiffe_id.to_string())
            && self.parent_id.as_ref().is_none_or(|id| *id == entry.parent_id.to_string())
            && self.selectors.as_ref().is_none_or(|(want, how)| {
                let have: BTreeSet<String> = entry.selectors.iter().map(ToString::to_string).collect();
                set_matches(&have, want, *how)
            })
            && self.federates_with.as_ref().is_none_or(|(want, how)| {
                let have: BTreeSet<String> = entry.federates_with.iter().map(|td| td.name().to_owned()).collect();
                set_matches(&have, want, *how)
            })
            && self.hint.as_ref().is_none_or(|hint| *hint == entry.hint)
            && self.downstream.is_none_or(|d| d == entry.downstream)
    }
}

/// SPIRE's match behaviours: 0 exact, 1 subset (entry's ⊆ given), 2 superset, 3 any.
fn set_matches(have: &BTreeSet<String>, want: &BTreeSet<String>, how: i32) -> bool {
    match how {
        0 => have == want,
        1 => have.is_subset(want),
        2 => have.is_superset(want),
        _ => !have.is_disjoint(want),
    }
}

fn selector_set(m: &SelectorMatch) -> Result<(BTreeSet<String>, i32), Status> {
    if m.selectors.is_empty() {
        return Err(Status::invalid_argument("filter.by_selectors: at least one selector is required"));
    }
    let how = selector_match::MatchBehavior::try_from(m.r#match)
        .map_err(|_| Status::invalid_argument(format!("filter.by_selectors: unknown match {}", m.r#match)))?;
    let set = m
        .selectors
        .iter()
        .map(|s| {
            identity::Selector::new(&s.r#type, &s.value)
                .map(|s| s.to_string())
                .map_err(|e| Status::invalid_argument(format!("filter.by_selectors: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok((set, how as i32))
}

fn trust_domain_set(m: &FederatesWithMatch) -> Result<(BTreeSet<String>, i32), Status> {
    if m.trust_domains.is_empty() {
        return Err(Status::invalid_argument("filter.by_federates_with: at least one trust domain is required"));
    }
    let how = federates_with_match::MatchBehavior::try_from(m.r#match)
        .map_err(|_| Status::invalid_argument(format!("filter.by_federates_with: unknown match {}", m.r#match)))?;
    let set = m
        .trust_domains
        .iter()
        .map(|td| {
            TrustDomain::parse(td.trim_start_matches("spiffe://"))
                .map(|td| td.name().to_owned())
                .map_err(|e| Status::invalid_argument(format!("filter.by_federates_with: {td:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok((set, how as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn match_behaviours_are_spires() {
        let have = set(&["a", "b"]);
        assert!(set_matches(&have, &set(&["a", "b"]), 0));
        assert!(!set_matches(&have, &set(&["a"]), 0));
        assert!(set_matches(&have, &set(&["a", "b", "c"]), 1), "subset: the entry's are all among the given");
        assert!(!set_matches(&have, &set(&["a"]), 1));
        assert!(set_matches(&have, &set(&["a"]), 2), "superset: the entry has all the given");
        assert!(!set_matches(&have, &set(&["a", "c"]), 2));
        assert!(set_matches(&have, &set(&["c", "b"]), 3));
        assert!(!set_matches(&have, &set(&["c"]), 3));
    }

    #[test]
    fn empty_or_bad_filters_are_refused() {
        let filter =
            Filter { by_selectors: Some(SelectorMatch { selectors: vec![], r#match: 0 }), ..Default::default() };
        assert!(EntryFilter::from_pb(Some(&filter)).is_err());
        let filter = Filter {
            by_federates_with: Some(FederatesWithMatch { trust_domains: vec!["Bad TD".into()], r#match: 0 }),
            ..Default::default()
        };
        assert!(EntryFilter::from_pb(Some(&filter)).is_err());
        let filter = Filter {
            by_selectors: Some(SelectorMatch {
                selectors: vec![proto::spire::api::types::Selector { r#type: "unix".into(), value: "uid:1".into() }],
                r#match: 9,
            }),
            ..Default::default()
        };
        assert!(EntryFilter::from_pb(Some(&filter)).unwrap_err().message().contains("unknown match"));
    }
}
