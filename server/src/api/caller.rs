//! Who is calling: the local admin socket, a peer that presented an X.509-SVID (verified in
//! the TLS handshake against the trust bundle), or an anonymous network caller. Each
//! listener's interceptor records it in the request; handlers authorize from it.

use identity::SpiffeId;
use tonic::{Request, Status};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Over the admin Unix socket: the file's permissions already decided.
    Local,
    /// Over the network with an SVID: its SPIFFE ID and certificate serial (hex).
    Peer { id: SpiffeId, serial: String },
    /// Over the network without a certificate.
    Anonymous,
}

/// Interceptor for the admin socket.
pub fn on_admin_socket(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(Caller::Local);
    Ok(request)
}

/// Interceptor for the network listener: the leaf of the verified client chain, if any.
pub fn on_network(mut request: Request<()>) -> Result<Request<()>, Status> {
    let caller = match request.peer_certs().as_deref().and_then(|certs| certs.first().cloned()) {
        None => Caller::Anonymous,
        Some(leaf) => {
            let facts = identity::x509::certificate_facts(leaf.as_ref())
                .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
            let id = facts
                .spiffe_ids
                .into_iter()
                .next()
                .ok_or_else(|| Status::unauthenticated("client certificate has no SPIFFE ID"))?;
            Caller::Peer { id, serial: hex::encode(&facts.serial) }
        }
    };
    request.extensions_mut().insert(caller);
    Ok(request)
}

/// The caller a listener recorded; a request that bypassed both interceptors is anonymous.
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous)
}
