//! Wire contracts: the SPIFFE Workload API, the SPIRE-compatible server APIs, Envoy SDS and
//! the internal cluster RPC, as `.proto` files and their generated tonic/prost code. Filled
//! by the server and agent issues.
#![forbid(unsafe_code)]
