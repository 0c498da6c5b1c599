//! Selectors (`type:value`) and the rule that matches registration entries to workloads.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector must be of the form type:value")]
    MissingSeparator,
    #[error("selector type cannot be empty")]
    EmptyType,
    #[error("selector value cannot be empty")]
    EmptyValue,
    #[error("selector cannot contain control characters")]
    ControlCharacter,
}

/// One attribute of a node or workload, such as `unix:uid:1000`: a type (`unix`) and a
/// value (`uid:1000`) that may itself contain colons.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its parts, validating both.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        if kind.is_empty() {
            return Err(SelectorError::EmptyType);
        }
        if kind.contains(':') {
            return Err(SelectorError::MissingSeparator);
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue);
        }
        if kind.chars().chain(value.chars()).any(char::is_control) {
            return Err(SelectorError::ControlCharacter);
        }
        Ok(Self { kind: kind.to_owned(), value: value.to_owned() })
    }

    /// Parses `type:value`; the type ends at the first colon.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let (kind, value) = input.split_once(':').ok_or(SelectorError::MissingSeparator)?;
        Self::new(kind, value)
    }

    /// The selector's type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The selector's value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Appends `type:value` (as `Display` writes it) to `out`, without the formatter.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.kind.as_bytes());
        out.push(b':');
        out.extend_from_slice(self.value.as_bytes());
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A set of selectors, ordered and without duplicates.
pub type SelectorSet = BTreeSet<Selector>;

/// An entry matches a workload when the entry has at least one selector and every one of
/// them is among the workload's selectors.
pub fn entry_matches(entry_selectors: &SelectorSet, workload_selectors: &SelectorSet) -> bool {
    !entry_selectors.is_empty() && entry_selectors.is_subset(workload_selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> SelectorSet {
        items.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn value_may_contain_colons() {
        let s = Selector::parse("k8s:pod-label:app:web").unwrap();
        assert_eq!(s.kind(), "k8s");
        assert_eq!(s.value(), "pod-label:app:web");
        assert_eq!(s.to_string(), "k8s:pod-label:app:web");
        let mut bytes = Vec::new();
        s.append_to(&mut bytes);
        assert_eq!(bytes, b"k8s:pod-label:app:web");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Selector::parse("unix"), Err(SelectorError::MissingSeparator));
        assert_eq!(Selector::parse(":uid:0"), Err(SelectorError::EmptyType));
        assert_eq!(Selector::parse("unix:"), Err(SelectorError::EmptyValue));
        assert_eq!(Selector::parse("unix:uid\n0"), Err(SelectorError::ControlCharacter));
        assert_eq!(Selector::new("a:b", "c"), Err(SelectorError::MissingSeparator));
    }

    #[test]
    fn matching_is_subset_of_workload_selectors() {
        let workload = set(&["unix:uid:1000", "unix:gid:1000", "unix:user:web"]);
        assert!(entry_matches(&set(&["unix:uid:1000"]), &workload));
        assert!(entry_matches(&set(&["unix:uid:1000", "unix:gid:1000"]), &workload));
        assert!(!entry_matches(&set(&["unix:uid:1000", "unix:gid:0"]), &workload));
        assert!(!entry_matches(&set(&["unix:uid:0"]), &workload));
        assert!(!entry_matches(&set(&[]), &workload), "an entry without selectors matches nothing");
        assert!(!entry_matches(&set(&["unix:uid:1000"]), &set(&[])));
    }
}
