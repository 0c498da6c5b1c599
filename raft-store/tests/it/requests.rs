//! Idempotent writes: a command under a request id is applied once however often it is
//! proposed, answered alike every time while its answer is in the window, and the window
//! travels in snapshots.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use raft_store::command::*;
use raft_store::model::JoinToken;
use raft_store::{ApplyError, Command, Outcome, REQUEST_WINDOW};

use crate::support::{entry, TestStore};

const NODE: &str = "spiffe://example.org/spire/agent/x";

fn id(seq: u64) -> RequestId {
    RequestId { client: [7; 16], seq }
}

fn create(entry_id: &str) -> Command {
    Command::CreateEntries(CreateEntries(vec![entry(
        entry_id,
        &format!("spiffe://example.org/{entry_id}"),
        NODE,
        &["unix:uid:1"],
    )]))
}

fn token(name: &str) -> Command {
    Command::CreateJoinToken(CreateJoinToken(JoinToken { token: name.into(), expires_at: 10, agent_id: None }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_again_is_answered_with_its_first_answer() {
    let mut s = TestStore::new().await;
    let once = create("e1").idempotent(id(1));
    let first = s.apply(vec![once.clone()]).await.remove(0);
    assert!(matches!(&first.outcome, Outcome::Entries(r) if r.len() == 1 && r[0].is_ok()), "{first:?}");

    // Again in a later entry, twice in one apply call, and inside a proposer's batch.
    let again = s.apply(vec![once.clone(), once.clone()]).await;
    assert_eq!(again, [first.clone(), first.clone()], "the first answer, with its revision");
    let batched = s.apply(vec![Command::Batch(vec![once.clone(), token("t").idempotent(id(2))])]).await.remove(0);
    let Outcome::Batch(answers) = batched.outcome else { panic!("{batched:?}") };
    assert_eq!(answers[0], first);
    assert!(matches!(answers[1].outcome, Outcome::JoinToken(Ok(_))));
    assert_eq!(answers[1].revision, first.revision + 1, "only the new command took a revision");

    // Without a request id the same command is a second write, refused as a duplicate.
    let plain = s.apply_one(create("e1")).await;
    assert!(matches!(&plain, Outcome::Entries(r) if matches!(r[0], Err(ApplyError::AlreadyExists(_)))), "{plain:?}");
    assert_eq!(s.store.reader.entries_by_parent(NODE).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_request_id_used_for_another_command_applies_nothing() {
    let mut s = TestStore::new().await;
    let first = s.apply_one(create("e1").idempotent_for_caller(id(1)).unwrap()).await;
    assert_eq!(s.apply_one(create("e1").idempotent_for_caller(id(1)).unwrap()).await, first, "the same command");
    // Sent again, the proposer stamps it later: the caller asked for the same thing.
    let mut later = create("e1");
    let Command::CreateEntries(CreateEntries(entries)) = &mut later else { unreachable!() };
    entries[0].created_at += 5;
    assert_eq!(s.apply_one(later.idempotent_for_caller(id(1)).unwrap()).await, first, "stamped later");
    let mut longer = token("t");
    let Command::CreateJoinToken(CreateJoinToken(stored)) = &mut longer else { unreachable!() };
    let first_token = s.apply_one(token("t").idempotent_for_caller(id(2)).unwrap()).await;
    stored.expires_at += 5;
    assert_eq!(s.apply_one(longer.idempotent_for_caller(id(2)).unwrap()).await, first_token, "expiry read later");
    let reused = s.apply_one(create("e2").idempotent_for_caller(id(1)).unwrap()).await;
    assert_eq!(reused, Outcome::RequestIdReused(id(1)));
    assert!(s.store.reader.entry("e2").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_kept_for_the_window_then_dropped_oldest_first() {
    let mut s = TestStore::new().await;
    let first = s.apply_one(token("first").idempotent(id(0))).await;
    assert!(matches!(first, Outcome::JoinToken(Ok(_))));
    // The window fills with other writes, in a few large applies.
    let mut seq = 1;
    while seq < REQUEST_WINDOW {
        let end = (seq + 5_000).min(REQUEST_WINDOW);
        let commands = (seq..end)
            .map(|n| Command::PruneJoinTokens(PruneJoinTokens { expired_before: 0 }).idempotent(id(n)))
            .collect();
        s.apply(commands).await;
        seq = end;
    }
    assert_eq!(s.apply_one(token("first").idempotent(id(0))).await, first, "still in the window");
    let newest = id(REQUEST_WINDOW - 1);
    let newest_answer =
        s.apply_one(Command::PruneJoinTokens(PruneJoinTokens { expired_before: 0 }).idempotent(newest)).await;
    // One more write pushes the oldest answer out: sent again, the write is applied again
    // (and refused, since the token exists), while later answers stay.
    s.apply_one(token("pushes-out").idempotent(id(REQUEST_WINDOW))).await;
    let resent = s.apply_one(token("first").idempotent(id(0))).await;
    assert!(matches!(resent, Outcome::JoinToken(Err(ApplyError::AlreadyExists(_)))), "{resent:?}");
    assert_eq!(
        s.apply_one(Command::PruneJoinTokens(PruneJoinTokens { expired_before: 0 }).idempotent(newest)).await,
        newest_answer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_the_answers() {
    let mut leader = TestStore::new().await;
    let once = create("e1").idempotent(id(1));
    let first = leader.apply(vec![once.clone()]).await.remove(0);
    let mut builder = leader.store.state_machine.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();

    let mut follower = TestStore::new().await;
    let data = snapshot.snapshot.into_inner();
    follower.store.state_machine.install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(data))).await.unwrap();
    assert_eq!(follower.apply(vec![once]).await.remove(0), first);
}
