//! Who is calling: the local admin socket, a peer that presented an X.509-SVID (verified in
//! the TLS handshake against the trust bundle), or an anonymous network caller. The
//! authorization layer (`authorize`) records it in the request.

use identity::SpiffeId;
use tonic::Request;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Over the admin Unix socket: the file's permissions already decided.
    Local,
    /// Over the network with an SVID: its SPIFFE ID and certificate serial (hex).
    Peer { id: SpiffeId, serial: String },
    /// Over the network without a certificate.
    Anonymous,
}

/// The caller the authorization layer recorded; a request without one is anonymous.
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous)
}
