//! SPIFFE IDs: `spiffe://<trust domain><path>`, validated as the SPIFFE-ID standard says.

use std::fmt;
use std::str::FromStr;

use crate::trust_domain::{validate_name, TrustDomain};

pub(crate) const SCHEME_PREFIX: &str = "spiffe://";
/// Longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;
/// Longest SPIFFE ID the standard allows, in bytes.
pub const MAX_ID_BYTES: usize = 2048;

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("SPIFFE ID cannot be empty")]
    Empty,
    #[error("SPIFFE ID cannot be longer than 2048 bytes")]
    TooLong,
    #[error("scheme is missing or invalid: a SPIFFE ID starts with lowercase \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain cannot be longer than 255 bytes")]
    TrustDomainTooLong,
    #[error("trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores")]
    BadTrustDomainChar,
    #[error("trust domain cannot include a port")]
    TrustDomainHasPort,
    #[error("trust domain cannot include userinfo")]
    TrustDomainHasUserInfo,
    #[error("a trust domain cannot have a path")]
    TrustDomainHasPath,
    #[error("path cannot contain empty segments")]
    EmptySegment,
    #[error("path cannot contain dot segments")]
    DotSegment,
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    #[error("path must start with a slash")]
    PathWithoutLeadingSlash,
    #[error("path segment characters are limited to letters, numbers, dots, dashes, and underscores")]
    BadPathChar,
    #[error("SPIFFE ID cannot contain percent-encoded characters")]
    PercentEncoded,
    #[error("SPIFFE ID cannot contain a query")]
    HasQuery,
    #[error("SPIFFE ID cannot contain a fragment")]
    HasFragment,
}

/// A validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg/seg…` with every segment validated.
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID such as `spiffe://example.org/ns/prod/sa/web`.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong);
        }
        let rest = input.strip_prefix(SCHEME_PREFIX).ok_or(IdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_name(td)?;
        validate_path(path)?;
        Ok(Self { trust_domain: TrustDomain::from_name(td)?, path: path.to_owned() })
    }

    /// Builds an ID from a trust domain and a path (`""` or `/a/b`), validating the path.
    pub fn new(trust_domain: TrustDomain, path: &str) -> Result<Self, IdError> {
        validate_path(path)?;
        let id = Self::from_parts(trust_domain, path.to_owned());
        if id.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong);
        }
        Ok(id)
    }

    /// Builds an ID from path segments, each validated (`["ns", "prod"]` → `/ns/prod`).
    pub fn from_segments(trust_domain: TrustDomain, segments: &[&str]) -> Result<Self, IdError> {
        let mut path = String::new();
        for segment in segments {
            path.push('/');
            path.push_str(segment);
        }
        Self::new(trust_domain, &path)
    }

    pub(crate) fn from_parts(trust_domain: TrustDomain, path: String) -> Self {
        Self { trust_domain, path }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        &self.trust_domain == trust_domain
    }

    fn len(&self) -> usize {
        SCHEME_PREFIX.len() + self.trust_domain.name().len() + self.path.len()
    }

    /// Appends the ID's text (as `Display` writes it) to `out`, without the formatter:
    /// storage keys are built from IDs for every entry written.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len());
        out.extend_from_slice(SCHEME_PREFIX.as_bytes());
        out.extend_from_slice(self.trust_domain.name().as_bytes());
        out.extend_from_slice(self.path.as_bytes());
    }
}

fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(IdError::PathWithoutLeadingSlash);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return Err(if i == last { IdError::TrailingSlash } else { IdError::EmptySegment });
        }
        if *segment == "." || *segment == ".." {
            return Err(IdError::DotSegment);
        }
        for c in segment.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '%' => return Err(IdError::PercentEncoded),
                '?' => return Err(IdError::HasQuery),
                '#' => return Err(IdError::HasFragment),
                _ => return Err(IdError::BadPathChar),
            }
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Valid IDs from the SPIFFE-ID standard and go-spiffe's conformance cases.
    #[test]
    fn valid_ids() {
        let cases = [
            ("spiffe://trustdomain", "trustdomain", ""),
            ("spiffe://trustdomain/path", "trustdomain", "/path"),
            ("spiffe://trustdomain/path1/path2", "trustdomain", "/path1/path2"),
            ("spiffe://example.org/ns/prod/sa/web-1_x", "example.org", "/ns/prod/sa/web-1_x"),
            ("spiffe://td/...", "td", "/..."),
            ("spiffe://td/a.b/.c/d.", "td", "/a.b/.c/d."),
            ("spiffe://a-b_c.1/UPPER/lower", "a-b_c.1", "/UPPER/lower"),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain().name(), td);
            assert_eq!(id.path(), path);
            assert_eq!(id.to_string(), input);
        }
    }

    #[test]
    fn invalid_ids_say_what_is_wrong() {
        let cases = [
            ("", IdError::Empty),
            ("spiffe://", IdError::MissingTrustDomain),
            ("spiffe:///path", IdError::MissingTrustDomain),
            ("SPIFFE://trustdomain", IdError::WrongScheme),
            ("Spiffe://trustdomain", IdError::WrongScheme),
            ("http://trustdomain/path", IdError::WrongScheme),
            ("spiffe:/trustdomain", IdError::WrongScheme),
            ("trustdomain/path", IdError::WrongScheme),
            ("spiffe://TrustDomain", IdError::BadTrustDomainChar),
            ("spiffe://trust$domain", IdError::BadTrustDomainChar),
            ("spiffe://trustdomain:8080/path", IdError::TrustDomainHasPort),
            ("spiffe://user:pass@trustdomain/path", IdError::TrustDomainHasUserInfo),
            ("spiffe://user@trustdomain/path", IdError::TrustDomainHasUserInfo),
            ("spiffe://trustdomain/", IdError::TrailingSlash),
            ("spiffe://trustdomain/path/", IdError::TrailingSlash),
            ("spiffe://trustdomain//path", IdError::EmptySegment),
            ("spiffe://trustdomain/path//other", IdError::EmptySegment),
            ("spiffe://trustdomain/./path", IdError::DotSegment),
            ("spiffe://trustdomain/path/..", IdError::DotSegment),
            ("spiffe://trustdomain/pa%20th", IdError::PercentEncoded),
            ("spiffe://trust%64omain", IdError::PercentEncoded),
            ("spiffe://trustdomain/path?query=1", IdError::HasQuery),
            ("spiffe://trustdomain?query", IdError::HasQuery),
            ("spiffe://trustdomain/path#frag", IdError::HasFragment),
            ("spiffe://trustdomain#frag", IdError::HasFragment),
            ("spiffe://trustdomain/pa th", IdError::BadPathChar),
            ("spiffe://trustdomain/päth", IdError::BadPathChar),
            ("spiffe://trustdomain/path*", IdError::BadPathChar),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn trailing_slash_message_is_the_one_operators_expect() {
        let err = SpiffeId::parse("spiffe://example.org/web/").unwrap_err();
        assert_eq!(err.to_string(), "path cannot have a trailing slash");
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(255);
        assert!(SpiffeId::parse(&format!("spiffe://{td}")).is_ok());
        let td = "a".repeat(256);
        assert_eq!(SpiffeId::parse(&format!("spiffe://{td}")), Err(IdError::TrustDomainTooLong));

        let prefix = "spiffe://td/";
        let ok = format!("{prefix}{}", "p".repeat(MAX_ID_BYTES - prefix.len()));
        assert_eq!(ok.len(), MAX_ID_BYTES);
        assert!(SpiffeId::parse(&ok).is_ok());
        let too_long = format!("{ok}p");
        assert_eq!(SpiffeId::parse(&too_long), Err(IdError::TooLong));

        let td = TrustDomain::parse("td").unwrap();
        let segment = "p".repeat(MAX_ID_BYTES);
        assert_eq!(SpiffeId::from_segments(td, &[&segment]), Err(IdError::TooLong));
    }

    #[test]
    fn from_segments_validates_each_segment() {
        let td = TrustDomain::parse("example.org").unwrap();
        let id = SpiffeId::from_segments(td.clone(), &["ns", "prod"]).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/prod");
        assert_eq!(SpiffeId::from_segments(td.clone(), &[""]), Err(IdError::TrailingSlash));
        assert_eq!(
            SpiffeId::from_segments(td.clone(), &["a/b"]).map(|i| i.to_string()).ok(),
            Some("spiffe://example.org/a/b".to_owned())
        );
        assert_eq!(SpiffeId::from_segments(td.clone(), &[".."]), Err(IdError::DotSegment));
        assert_eq!(SpiffeId::new(td, "noslash"), Err(IdError::PathWithoutLeadingSlash));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/web\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/web/\"").is_err());
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,12}".prop_filter("dot segment", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = SpiffeId::parse(&s);
            let _ = TrustDomain::parse(&s);
        }

        #[test]
        fn parse_never_panics_near_valid(s in "spiffe://[a-z0-9.%:@_-]{0,10}(/[A-Za-z0-9.%?#/ _-]{0,10}){0,4}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn display_then_parse_is_identity(td in "[a-z0-9._-]{1,40}", segments in proptest::collection::vec(segment(), 0..6)) {
            let td = TrustDomain::parse(&td).unwrap();
            let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
            let id = SpiffeId::from_segments(td, &refs).unwrap();
            prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id.clone());
            let mut bytes = b"prefix ".to_vec();
            id.append_to(&mut bytes);
            prop_assert_eq!(bytes, format!("prefix {id}").into_bytes());
        }
    }
}
