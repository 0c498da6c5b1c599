//! The CLI's channel to the server's admin socket. Every call carries a request id
//! (`x-testudo-request-id`), and a call that could not be sent, or was answered Unavailable
//! with reason `CLUSTER_UNAVAILABLE` (the cluster could not commit or serve it: no leader)
//! or `OUTCOME_UNKNOWN` (a leader's answer was lost), is sent again under the same id a few
//! times. Other Unavailable
//! answers are final (a replica still joining a cluster, a federation endpoint down). The server applies a call's writes once per id
//! (`server::api::request_id`), so `entry create` whose first answer was "the cluster did not
//! commit the change" (a leader lost mid-write) is answered on a later try with what was
//! done, not done twice.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use proto::reason::Reason;
use proto::unix_socket;
use raft_store::command::RequestId;
use server::api::request_id;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many times a call is sent, at most, and the wait before the second.
const ATTEMPTS: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_millis(500);

/// A channel that names and resends calls (see the module doc).
#[derive(Clone)]
pub struct AdminChannel {
    channel: Channel,
    client: [u8; 16],
    next: Arc<AtomicU64>,
    first_wait: Duration,
}

/// Connects to the admin socket at `path`.
pub async fn connect(path: &Path) -> Result<AdminChannel, tonic::transport::Error> {
    Ok(AdminChannel::new(unix_socket::connect(path).await?, FIRST_WAIT))
}

impl AdminChannel {
    fn new(channel: Channel, first_wait: Duration) -> Self {
        Self { channel, client: RequestId::new_client(), next: Arc::default(), first_wait }
    }
}

/// Whether an answer says the cluster could not serve the call now, or lost its answer:
/// Unavailable with reason `CLUSTER_UNAVAILABLE` or `OUTCOME_UNKNOWN`, which a trailers-only
/// answer (every error answer) carries in its headers.
fn cluster_unavailable(response: &http::Response<Body>) -> bool {
    tonic::Status::from_header_map(response.headers()).is_some_and(|status| {
        status.code() == tonic::Code::Unavailable
            && matches!(Reason::of(&status), Some(Reason::ClusterUnavailable | Reason::OutcomeUnknown))
    })
}

impl tower::Service<http::Request<Body>> for AdminChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt readies a clone of the channel for itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.channel.clone();
        let id = request_id::format(&self.client, self.next.fetch_add(1, Ordering::Relaxed));
        let mut wait = self.first_wait;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // A unary call's body is one small message: kept, to be sent again.
            let body = body.collect().await?.to_bytes();
            parts.headers.insert(request_id::HEADER, http::HeaderValue::from_str(&id)?);
            let mut attempt = 1;
            loop {
                let mut again = http::Request::new(Body::new(Full::new(body.clone())));
                *again.method_mut() = parts.method.clone();
                *again.uri_mut() = parts.uri.clone();
                *again.version_mut() = parts.version;
                *again.headers_mut() = parts.headers.clone();
                let answer = channel.clone().oneshot(again).await;
                let unavailable = match &answer {
                    Ok(response) => cluster_unavailable(response),
                    Err(_) => true,
                };
                if !unavailable || attempt == ATTEMPTS {
                    return answer.map_err(Into::into);
                }
                attempt += 1;
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use proto::spire::api::server::entry::v1 as pb;
    use tonic::server::NamedService;

    use super::*;

    /// A server that answers the first CountEntries "cluster unavailable", later ones
    /// InvalidArgument, GetEntry always "cluster unavailable", ListEntries Unavailable for
    /// another reason, and notes each call's request id.
    #[derive(Clone, Default)]
    struct Flaky {
        seen: Arc<Mutex<Vec<(String, String)>>>,
    }

    impl NamedService for Flaky {
        const NAME: &'static str = "spire.api.server.entry.v1.Entry";
    }

    impl tower::Service<http::Request<Body>> for Flaky {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let id = request.headers().get(request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let method = request.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            let mut seen = self.seen.lock().unwrap();
            let counts_before = seen.iter().filter(|(m, _)| m == "CountEntries").count();
            seen.push((method.clone(), id));
            let status = if method == "CountEntries" && counts_before > 0 {
                tonic::Status::invalid_argument("second")
            } else if method == "ListEntries" {
                tonic::Status::unavailable("failed to refresh bundle")
            } else {
                Reason::ClusterUnavailable.status(tonic::Code::Unavailable, "the cluster did not commit the change")
            };
            std::future::ready(Ok(status.into_http()))
        }
    }

    #[tokio::test]
    async fn a_call_answered_unavailable_is_sent_again_under_its_request_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = unix_socket::bind(&path, 0o600).unwrap();
        let flaky = Flaky::default();
        let server = tonic::transport::Server::builder()
            .add_service(flaky.clone())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
        let server = tokio::spawn(server);
        let channel = AdminChannel::new(unix_socket::connect(&path).await.unwrap(), Duration::from_millis(1));
        let mut client = pb::entry_client::EntryClient::new(channel);

        let answer = client.count_entries(pb::CountEntriesRequest { filter: None }).await.unwrap_err();
        assert_eq!(
            (answer.code(), answer.message()),
            (tonic::Code::InvalidArgument, "second"),
            "not sent a third time"
        );
        let answer = client.get_entry(pb::GetEntryRequest { id: "e".into(), output_mask: None }).await.unwrap_err();
        assert_eq!(answer.code(), tonic::Code::Unavailable, "given up after {ATTEMPTS} tries");
        let answer = client.list_entries(pb::ListEntriesRequest::default()).await.unwrap_err();
        assert_eq!(answer.message(), "failed to refresh bundle", "another Unavailable is final");

        let seen = flaky.seen.lock().unwrap().clone();
        let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
        let mut expected = vec!["CountEntries"; 2];
        expected.extend(std::iter::repeat_n("GetEntry", ATTEMPTS as usize));
        expected.push("ListEntries");
        assert_eq!(methods, expected);
        assert!(request_id::parse(seen[0].1.as_bytes()).is_ok(), "{:?}", seen[0]);
        assert_eq!(seen[0].1, seen[1].1, "a call sent again keeps its id");
        assert!(seen[2..2 + ATTEMPTS as usize].iter().all(|(_, id)| *id == seen[2].1));
        assert_ne!(seen[0].1, seen[2].1, "each call has its own id");
        server.abort();
    }
}
