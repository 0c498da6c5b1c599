//! A call sent again under its request id (`x-testudo-request-id`, as the CLI sends it) is
//! answered with the first try's answer and applies nothing more, on a real server process.

use proto::spire::api::server::entry::v1 as pb;
use proto::spire::api::types;
use testkit::ServerProcess;

const HEADER: &str = "x-testudo-request-id";

fn entry(id: &str) -> types::Entry {
    let spiffe_id = |path: &str| Some(types::Spiffeid { trust_domain: "example.org".into(), path: path.into() });
    types::Entry {
        id: id.into(),
        spiffe_id: spiffe_id(&format!("/{id}")),
        parent_id: spiffe_id("/node"),
        selectors: vec![types::Selector { r#type: "unix".into(), value: "uid:1".into() }],
        ..Default::default()
    }
}

fn under<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(HEADER, request_id.parse().unwrap());
    request
}

fn code_of(status: &Option<types::Status>) -> tonic::Code {
    tonic::Code::from_i32(status.as_ref().map(|s| s.code).unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_again_under_its_request_id_is_answered_as_the_first_try() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let channel = proto::unix_socket::connect(&server.socket()).await.unwrap();
    let mut entries = pb::entry_client::EntryClient::new(channel);
    let create = |id: &str| pb::BatchCreateEntryRequest { entries: vec![entry(id)], output_mask: None };
    let delete = |id: &str| pb::BatchDeleteEntryRequest { ids: vec![id.into()] };
    let answer = entries.batch_create_entry(create("e1")).await.unwrap().into_inner();
    assert_eq!(code_of(&answer.results[0].status), tonic::Code::Ok);

    // Sent again under its id, a delete is answered OK again; without one it is a new
    // delete, of an entry that is gone.
    let first_try = format!("{}-1", "ab".repeat(16));
    let first = entries.batch_delete_entry(under(delete("e1"), &first_try)).await.unwrap().into_inner();
    assert_eq!(code_of(&first.results[0].status), tonic::Code::Ok);
    let again = entries.batch_delete_entry(under(delete("e1"), &first_try)).await.unwrap().into_inner();
    assert_eq!(again, first, "the first try's answer");
    let plain = entries.batch_delete_entry(delete("e1")).await.unwrap().into_inner();
    assert_eq!(code_of(&plain.results[0].status), tonic::Code::NotFound);

    // The same id for a write that differs: refused, and nothing written.
    let used = format!("{}-2", "ab".repeat(16));
    entries.batch_create_entry(under(create("e2"), &used)).await.unwrap();
    let refused = entries.batch_create_entry(under(create("e3"), &used)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("nothing was applied now"), "{refused:?}");
    // A junk id is refused before the call runs.
    let junk = entries.batch_create_entry(under(create("e4"), "not-an-id")).await.unwrap_err();
    assert_eq!(junk.code(), tonic::Code::InvalidArgument, "{junk:?}");
    for (id, present) in [("e2", true), ("e3", false), ("e4", false)] {
        let found = entries.get_entry(pb::GetEntryRequest { id: id.into(), output_mask: None }).await;
        assert_eq!(found.is_ok(), present, "{id}: {found:?}");
    }
}

/// What the server chooses for a call (an entry's id and creation time, a join token and its
/// expiry) is chosen once: the call sent again a clock second later gets the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_server_chose_are_answered_again_not_chosen_anew() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let channel = proto::unix_socket::connect(&server.socket()).await.unwrap();
    let mut entries = pb::entry_client::EntryClient::new(channel.clone());
    let mut agents = proto::spire::api::server::agent::v1::agent_client::AgentClient::new(channel);
    let unnamed = pb::BatchCreateEntryRequest {
        entries: vec![types::Entry { id: String::new(), ..entry("web") }],
        output_mask: None,
    };
    let token = proto::spire::api::server::agent::v1::CreateJoinTokenRequest { ttl: 600, ..Default::default() };

    let call = format!("{}-7", "cd".repeat(16));
    let first = entries.batch_create_entry(under(unnamed.clone(), &call)).await.unwrap().into_inner();
    let call_token = format!("{}-8", "cd".repeat(16));
    let first_token = agents.create_join_token(under(token.clone(), &call_token)).await.unwrap().into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(code_of(&first.results[0].status), tonic::Code::Ok, "{first:?}");
    let again = entries.batch_create_entry(under(unnamed.clone(), &call)).await.unwrap().into_inner();
    assert_eq!(again, first, "the generated id and creation time of the first try");
    let again_token = agents.create_join_token(under(token.clone(), &call_token)).await.unwrap().into_inner();
    assert_eq!(again_token, first_token, "the first token and its expiry");

    // One entry was made; a call without an id (or with another) makes another.
    let listed = |entries: &mut pb::entry_client::EntryClient<_>| {
        let mut entries = entries.clone();
        async move { entries.count_entries(pb::CountEntriesRequest::default()).await.unwrap().into_inner().count }
    };
    assert_eq!(listed(&mut entries).await, 1);
    let other = entries.batch_create_entry(under(unnamed.clone(), &format!("{}-9", "cd".repeat(16)))).await;
    assert_eq!(code_of(&other.unwrap().into_inner().results[0].status), tonic::Code::AlreadyExists, "same selectors");
    let token_again = agents.create_join_token(token).await.unwrap().into_inner();
    assert_ne!(token_again.value, first_token.value);
}
