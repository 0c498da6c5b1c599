//! Federation relationships: which foreign trust domains' bundles are fetched, and how.

use identity::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

/// How the foreign bundle endpoint authenticates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleEndpointProfile {
    /// Web PKI: the endpoint's certificate chains to a public root.
    HttpsWeb,
    /// SPIFFE: the endpoint presents an SVID with this ID, checked against the stored bundle.
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
}

/// A trust domain this one federates with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRelationship {
    pub trust_domain: TrustDomain,
    pub bundle_endpoint_url: String,
    pub profile: BundleEndpointProfile,
}

/// Where the refresh of one federated trust domain's bundle stands: the leader's schedule,
/// replicated so that a new leader neither skips nor repeats a refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRefresh {
    /// Unix seconds of the last fetch attempt and of the last that succeeded (0: never).
    pub last_attempt: i64,
    pub last_success: i64,
    /// Unix seconds at which the next fetch is due.
    pub next_due: i64,
    /// Why the last attempt failed; empty after a success.
    pub last_error: String,
    /// Failed attempts since the last success (the backoff grows with it).
    pub failures: u32,
    /// Sequence number of the last bundle fetched (the partner's `spiffe_sequence`).
    pub last_sequence: u64,
}
