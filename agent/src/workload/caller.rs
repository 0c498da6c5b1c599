//! Who is calling: the selectors of the process pinned at connect (`peer_process`), through every
//! enabled workload attestor (`attestor`), with a short time limit. Shared by the Workload API and SDS,
//! which differ only in what they ask of the request itself.

use std::time::Duration;

use identity::SelectorSet;
use tonic::Status;

use super::attestor::WorkloadAttestors;
use super::peer_process::Caller;

/// How long attesting a caller may take.
const ATTEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The selectors of the process that opened this request's connection, while it lives.
pub async fn attest(attestors: &WorkloadAttestors, extensions: &http::Extensions) -> Result<SelectorSet, Status> {
    let caller = extensions.get::<Caller>().ok_or_else(|| Status::internal("not a Workload API connection"))?.clone();
    let peer = caller
        .pinned()
        .map_err(|e| Status::permission_denied(format!("workload attestation failed: {e}")))?
        .credentials;
    let attestors = attestors.clone();
    let attested = tokio::time::timeout(
        ATTEST_TIMEOUT,
        tokio::task::spawn_blocking(move || caller.pinned()?.guard(|| attestors.attest(peer))),
    )
    .await
    .map_err(|_| Status::unavailable("workload attestation timed out"))?
    .map_err(|e| Status::internal(e.to_string()))?;
    let selectors = attested.map_err(|e| Status::permission_denied(format!("workload attestation failed: {e}")))?;
    tracing::debug!(pid = peer.pid, uid = peer.uid, selectors = selectors.len(), "workload attested");
    Ok(selectors)
}
