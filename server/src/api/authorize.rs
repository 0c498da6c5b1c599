//! The one place that decides whether a call may go on, in front of every service on both
//! listeners: it names the caller (the admin socket; an SVID verified in the TLS handshake;
//! nobody), looks the method up in [`super::policy`], and checks the caller is of a kind
//! the method admits, before the request body is read. Handlers find the caller, and an
//! agent caller's record, in the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use proto::reason::Reason;
use raft_store::model::AttestedAgent;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::caller::Caller;
use super::{agent_auth, policy, request_id, ApiContext};

/// Which listener a layer guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    AdminSocket,
    Network,
}

/// An agent caller's record, as the authorization found it.
#[derive(Clone, Debug)]
pub struct AuthorizedAgent(pub Arc<AttestedAgent>);

#[derive(Clone)]
pub struct AuthorizeLayer {
    context: ApiContext,
    listener: Listener,
}

impl AuthorizeLayer {
    pub fn new(context: ApiContext, listener: Listener) -> Self {
        Self { context, listener }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner, context: self.context.clone(), listener: self.listener }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    context: ApiContext,
    listener: Listener,
}

impl<S, B, R> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service made ready goes with this call; a clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let context = self.context.clone();
        let caller = match self.listener {
            Listener::AdminSocket => Ok(Caller::Local),
            Listener::Network => network_caller(request.extensions()),
        };
        Box::pin(async move {
            let caller = match caller {
                Ok(caller) => caller,
                Err(status) => return Ok(status.into_http()),
            };
            let decided = authorize(&context, request.uri().path(), &caller).await;
            let request_id = request.headers().get(request_id::HEADER).map(|v| v.as_bytes().to_vec());
            request.extensions_mut().insert(caller.clone());
            match decided {
                Ok(agent) => {
                    if let Some(agent) = agent {
                        request.extensions_mut().insert(AuthorizedAgent(agent));
                    }
                    match request_id::CallScope::new(&caller, request_id.as_deref()) {
                        Ok(scope) => scope.run(inner.call(request)).await,
                        Err(status) => Ok(status.into_http()),
                    }
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The leaf of the client chain verified in the handshake, if the caller sent one.
fn network_caller(extensions: &http::Extensions) -> Result<Caller, Status> {
    let certs = extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(TlsConnectInfo::peer_certs);
    let Some(leaf) = certs.as_deref().and_then(|certs| certs.first().cloned()) else {
        return Ok(Caller::Anonymous);
    };
    let facts = identity::x509::certificate_facts(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    let id = facts
        .spiffe_ids
        .into_iter()
        .next()
        .ok_or_else(|| Status::unauthenticated("client certificate has no SPIFFE ID"))?;
    Ok(Caller::Peer { id, serial: hex::encode(&facts.serial) })
}

fn not_allowed(message: String) -> Status {
    Reason::CallerNotAllowed.status(Code::PermissionDenied, message)
}

/// Whether `caller` may call `method`; an agent caller's record when it is let in as one.
pub async fn authorize(
    context: &ApiContext,
    method: &str,
    caller: &Caller,
) -> Result<Option<Arc<AttestedAgent>>, Status> {
    let Some(allowed) = policy::allowed(method) else {
        return Err(not_allowed(format!("{method} is not a method this server serves")));
    };
    if allowed.any {
        return Ok(None);
    }
    let (id, serial) = match caller {
        Caller::Local if allowed.local => return Ok(None),
        Caller::Local => {
            return Err(not_allowed(format!(
                "{method} cannot be called on the admin socket; it needs {}",
                allowed.describe()
            )))
        }
        Caller::Anonymous => return Err(not_allowed(format!("{method} needs {}", allowed.describe()))),
        Caller::Peer { id, serial } => (id, serial),
    };
    if allowed.admin && context.is_admin(id).await? {
        return Ok(None);
    }
    if allowed.downstream && context.downstream_entry(id).await?.is_some() {
        return Ok(None);
    }
    if allowed.agent && id.path().starts_with("/spire/agent/") {
        // An agent's refusal says why (evicted, banned, superseded): agents act on it.
        return agent_auth::check_agent(context, id, serial).await.map(Some);
    }
    Err(not_allowed(format!("{id} may not call {method}: it needs {}", allowed.describe())))
}
