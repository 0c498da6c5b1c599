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
