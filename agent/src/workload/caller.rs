//! Who is calling: the caller's selectors from the socket's peer credentials, through every
//! enabled workload attestor (`attestor`), with a short time limit. Shared by the Workload API and SDS,
//! which differ only in what they ask of the request itself.

use std::time::Duration;

use identity::SelectorSet;
use tonic::transport::server::UdsConnectInfo;
use tonic::Status;

use super::attestor::WorkloadAttestors;
use super::unix::{self, PeerCredentials};

/// How long attesting a caller may take.
const ATTEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The selectors of the process on the other end of this request's connection.
pub async fn attest(attestors: &WorkloadAttestors, extensions: &http::Extensions) -> Result<SelectorSet, Status> {
    let info = extensions.get::<UdsConnectInfo>().ok_or_else(|| Status::internal("not a Unix socket connection"))?;
    let cred = info.peer_cred.ok_or_else(|| Status::internal("the socket gave no peer credentials"))?;
    let pid = cred.pid().ok_or_else(|| Status::internal("the socket gave no peer pid"))?;
    let peer = PeerCredentials { pid, uid: cred.uid(), gid: cred.gid() };
    let attestors = attestors.clone();
    let attested = tokio::time::timeout(
        ATTEST_TIMEOUT,
        tokio::task::spawn_blocking(move || unix::guarded(peer.pid, || attestors.attest(peer))),
    )
    .await
    .map_err(|_| Status::unavailable("workload attestation timed out"))?
    .map_err(|e| Status::internal(e.to_string()))?;
    let selectors = attested.map_err(|e| Status::permission_denied(format!("workload attestation failed: {e}")))?;
    tracing::debug!(pid, uid = peer.uid, selectors = selectors.len(), "workload attested");
    Ok(selectors)
}
