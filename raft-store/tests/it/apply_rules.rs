//! The apply rules, command by command: SPIRE's entry uniqueness, join tokens consumed
//! once, agent serial promotion, bundle sequence numbers, and the change log.

use identity::{SpiffeId, TrustDomain};
use raft_store::command::*;
use raft_store::model::{
    AttestedAgent, BundleEndpointProfile, FederationRelationship, JoinToken, ReplicaInvite, StoredBundle, StoredJwtKey,
    StoredX509Authority,
};
use raft_store::{ApplyError, BundleScope, Command, Outcome, Table};

use crate::support::{entry, TestStore};

const NODE: &str = "spiffe://example.org/spire/agent/join_token/abc";

fn entries(outcome: Outcome) -> Vec<Result<raft_store::model::EntryWritten, ApplyError>> {
    match outcome {
        Outcome::Entries(e) => e,
        other => panic!("expected entries, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_follow_spires_uniqueness_rule() {
    let mut s = TestStore::new().await;
    let web = entry("e1", "spiffe://example.org/web", NODE, &["unix:uid:1000"]);
    let same_identity = entry("e2", "spiffe://example.org/web", NODE, &["unix:uid:1000"]);
    let other_selectors = entry("e3", "spiffe://example.org/web", NODE, &["unix:uid:1001"]);
    let results = entries(
        s.apply_one(Command::CreateEntries(CreateEntries(vec![
            web.clone(),
            same_identity,
            other_selectors,
            web.clone(),
        ])))
        .await,
    );
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(ApplyError::AlreadyExists(m)) if m.contains("similar entry \"e1\"")),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "different selectors are a different entry");
    assert!(matches!(&results[3], Err(ApplyError::AlreadyExists(m)) if m.contains("entry id")));
    let no_selectors = entry("e4", "spiffe://example.org/db", NODE, &[]);
    assert!(matches!(
        &entries(s.apply_one(Command::CreateEntries(CreateEntries(vec![no_selectors]))).await)[0],
        Err(ApplyError::InvalidArgument(_))
    ));

    let reader = &s.store.reader;
    assert_eq!(reader.entry("e1").await.unwrap().unwrap().selectors, web.selectors);
    assert_eq!(reader.entries_by_parent(NODE).await.unwrap().len(), 2);
    assert_eq!(reader.entries_by_spiffe_id("spiffe://example.org/web").await.unwrap().len(), 2);
    assert_eq!(reader.entries_by_selector("unix:uid:1001").await.unwrap()[0].id, "e3");

    // Updating e3 into e1's identity is refused; updating it elsewhere moves its indexes.
    let clash = entry("e3", "spiffe://example.org/web", NODE, &["unix:uid:1000"]);
    assert!(matches!(
        &entries(s.apply_one(Command::UpdateEntries(UpdateEntries(vec![clash]))).await)[0],
        Err(ApplyError::AlreadyExists(_))
    ));
    let moved = entry("e3", "spiffe://example.org/api", NODE, &["unix:uid:2000", "unix:gid:2000"]);
    let written =
        entries(s.apply_one(Command::UpdateEntries(UpdateEntries(vec![moved.clone()]))).await).remove(0).unwrap();
    let reader = &s.store.reader;
    let stored = reader.entry("e3").await.unwrap().unwrap();
    assert_eq!(stored.selectors[0].to_string(), "unix:gid:2000", "selectors are stored sorted");
    assert_eq!(written.stored(moved), stored, "the answer and the proposed entry give the stored entry");
    assert!(reader.entries_by_selector("unix:uid:1001").await.unwrap().is_empty());
    assert_eq!(reader.entries_by_spiffe_id("spiffe://example.org/api").await.unwrap()[0].id, "e3");
    let missing = entry("nope", "spiffe://example.org/x", NODE, &["a:b"]);
    assert!(matches!(
        &entries(s.apply_one(Command::UpdateEntries(UpdateEntries(vec![missing]))).await)[0],
        Err(ApplyError::NotFound(_))
    ));

    // Deleting frees the identity for a new entry.
    match s.apply_one(Command::DeleteEntries(DeleteEntries(vec!["e1".into(), "e1".into()]))).await {
        Outcome::DeletedEntries(r) => {
            assert!(r[0].is_ok());
            assert!(matches!(r[1], Err(ApplyError::NotFound(_))));
        }
        other => panic!("{other:?}"),
    }
    let again = entry("e5", "spiffe://example.org/web", NODE, &["unix:uid:1000"]);
    assert!(entries(s.apply_one(Command::CreateEntries(CreateEntries(vec![again]))).await)[0].is_ok());
    assert!(s.store.reader.entry("e1").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_bumps_the_revision_and_logs_its_changes() {
    let mut s = TestStore::new().await;
    let responses = s
        .apply(vec![
            Command::CreateEntries(CreateEntries(vec![entry("a", "spiffe://example.org/a", NODE, &["x:1"])])),
            Command::CreateEntries(CreateEntries(vec![entry("a", "spiffe://example.org/a", NODE, &["x:1"])])),
            Command::DeleteEntries(DeleteEntries(vec!["a".into()])),
        ])
        .await;
    let revisions: Vec<u64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [1, 2, 3]);
    match &responses[0].outcome {
        Outcome::Entries(e) => assert_eq!(e[0].as_ref().unwrap().revision_number, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.store.reader.revision().await.unwrap(), 3);
    let changes = s.store.reader.changes_since(0, 100).await.unwrap();
    let summary: Vec<(u64, Table, String, bool)> = changes
        .iter()
        .flat_map(|set| set.changes.iter().map(move |c| (set.revision, c.table, c.key.clone(), c.deleted)))
        .collect();
    assert_eq!(
        summary,
        [(1, Table::Entry, "a".to_owned(), false), (3, Table::Entry, "a".to_owned(), true)],
        "a refused command changes nothing"
    );
    assert_eq!(s.store.reader.changes_since(1, 100).await.unwrap().len(), 1);
    assert!(s.store.reader.changes_since(3, 100).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_entry_applies_each_command_with_its_own_revision() {
    let mut s = TestStore::new().await;
    s.apply_one(Command::CreateEntries(CreateEntries(vec![entry(
        "before",
        "spiffe://example.org/before",
        NODE,
        &["x:0"],
    )])))
    .await;
    let outcome = s
        .apply_one(Command::Batch(vec![
            Command::CreateEntries(CreateEntries(vec![entry("a", "spiffe://example.org/a", NODE, &["x:1"])])),
            // Sees the first command of the same batch: refused as a duplicate.
            Command::CreateEntries(CreateEntries(vec![entry("a", "spiffe://example.org/a", NODE, &["x:1"])])),
            Command::DeleteEntries(DeleteEntries(vec!["before".into()])),
        ]))
        .await;
    let Outcome::Batch(responses) = outcome else { panic!("expected a batch outcome, got {outcome:?}") };
    let revisions: Vec<u64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [2, 3, 4]);
    assert_eq!(entries(responses[0].outcome.clone())[0].as_ref().unwrap().revision_number, 2);
    assert!(matches!(entries(responses[1].outcome.clone())[0], Err(ApplyError::AlreadyExists(_))));
    assert!(matches!(&responses[2].outcome, Outcome::DeletedEntries(d) if d[0].is_ok()));
    let logged: Vec<u64> = s.store.reader.changes_since(1, 100).await.unwrap().iter().map(|c| c.revision).collect();
    assert_eq!(logged, [2, 4], "each command of the batch logs its own changes; the refused one none");
    assert_eq!(s.store.reader.revision().await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_consumed_exactly_once() {
    let mut s = TestStore::new().await;
    let token = JoinToken { token: "t1".into(), expires_at: 1000, agent_id: None };
    assert!(matches!(
        s.apply_one(Command::CreateJoinToken(CreateJoinToken(token.clone()))).await,
        Outcome::JoinToken(Ok(_))
    ));
    assert!(matches!(
        s.apply_one(Command::CreateJoinToken(CreateJoinToken(token.clone()))).await,
        Outcome::JoinToken(Err(ApplyError::AlreadyExists(_)))
    ));
    let outcomes = s
        .apply(vec![
            Command::ConsumeJoinToken(ConsumeJoinToken { token: "t1".into(), now: 500 }),
            Command::ConsumeJoinToken(ConsumeJoinToken { token: "t1".into(), now: 500 }),
        ])
        .await;
    assert_eq!(outcomes[0].outcome, Outcome::JoinToken(Ok(token)));
    assert!(matches!(outcomes[1].outcome, Outcome::JoinToken(Err(ApplyError::NotFound(_)))));

    let expired = JoinToken { token: "t2".into(), expires_at: 1000, agent_id: None };
    s.apply_one(Command::CreateJoinToken(CreateJoinToken(expired))).await;
    assert!(matches!(
        s.apply_one(Command::ConsumeJoinToken(ConsumeJoinToken { token: "t2".into(), now: 1001 })).await,
        Outcome::JoinToken(Err(ApplyError::FailedPrecondition(_)))
    ));
    assert!(s.store.reader.join_token("t2").await.unwrap().is_none(), "an expired token is gone after the attempt");

    for (t, exp) in [("a", 10), ("b", 20), ("c", 30)] {
        s.apply_one(Command::CreateJoinToken(CreateJoinToken(JoinToken {
            token: t.into(),
            expires_at: exp,
            agent_id: None,
        })))
        .await;
    }
    assert_eq!(s.apply_one(Command::PruneJoinTokens(PruneJoinTokens { expired_before: 25 })).await, Outcome::Pruned(2));
    assert!(s.store.reader.join_token("c").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_invites_are_consumed_exactly_once_and_never_as_join_tokens() {
    let mut s = TestStore::new().await;
    let hash = "ab".repeat(32);
    let invite = ReplicaInvite { secret_sha256: hash.clone(), expires_at: 1000 };
    assert!(matches!(
        s.apply_one(Command::CreateReplicaInvite(CreateReplicaInvite(invite.clone()))).await,
        Outcome::ReplicaInvite(Ok(_))
    ));
    assert!(matches!(
        s.apply_one(Command::CreateReplicaInvite(CreateReplicaInvite(ReplicaInvite {
            secret_sha256: "not-hex".into(),
            expires_at: 1000
        })))
        .await,
        Outcome::ReplicaInvite(Err(ApplyError::InvalidArgument(_)))
    ));
    // The agent join-token table is separate: the hash is not an agent token.
    assert!(matches!(
        s.apply_one(Command::ConsumeJoinToken(ConsumeJoinToken { token: hash.clone(), now: 500 })).await,
        Outcome::JoinToken(Err(ApplyError::NotFound(_)))
    ));
    let consume = || Command::ConsumeReplicaInvite(ConsumeReplicaInvite { secret_sha256: hash.clone(), now: 500 });
    let outcomes = s.apply(vec![consume(), consume()]).await;
    assert_eq!(outcomes[0].outcome, Outcome::ReplicaInvite(Ok(invite)));
    assert!(matches!(outcomes[1].outcome, Outcome::ReplicaInvite(Err(ApplyError::NotFound(_)))));

    let late = ReplicaInvite { secret_sha256: "cd".repeat(32), expires_at: 1000 };
    s.apply_one(Command::CreateReplicaInvite(CreateReplicaInvite(late))).await;
    assert!(matches!(
        s.apply_one(Command::ConsumeReplicaInvite(ConsumeReplicaInvite { secret_sha256: "cd".repeat(32), now: 1001 }))
            .await,
        Outcome::ReplicaInvite(Err(ApplyError::FailedPrecondition(_)))
    ));
    assert!(
        matches!(
            s.apply_one(Command::ConsumeReplicaInvite(ConsumeReplicaInvite {
                secret_sha256: "cd".repeat(32),
                now: 900
            }))
            .await,
            Outcome::ReplicaInvite(Err(ApplyError::NotFound(_))),
        ),
        "an expired invite is gone after the attempt"
    );

    // Pruning removes the invites that expired before the given time, and only those.
    for (hash, expires_at) in [("e1", 100), ("e2", 200), ("e3", 300)] {
        let invite = ReplicaInvite { secret_sha256: hash.repeat(32), expires_at };
        s.apply_one(Command::CreateReplicaInvite(CreateReplicaInvite(invite))).await;
    }
    assert_eq!(s.store.reader.earliest_invite_expiry().await.unwrap(), Some(100));
    let pruned = s.apply_one(Command::PruneReplicaInvites(PruneReplicaInvites { expired_before: 250 })).await;
    assert_eq!(pruned, Outcome::Pruned(2));
    assert_eq!(s.store.reader.earliest_invite_expiry().await.unwrap(), Some(300));
}

fn agent(serial: &str) -> AttestedAgent {
    AttestedAgent {
        spiffe_id: SpiffeId::parse(NODE).unwrap(),
        attestation_type: "join_token".into(),
        selectors: vec![],
        serial_number: serial.into(),
        expires_at: 100,
        new_serial_number: String::new(),
        new_expires_at: 0,
        banned: false,
        can_reattest: false,
    }
}

/// Deleting a join-token agent deletes the alias entry its token made (parented to it, with
/// the one selector `spiffe_id:<agent>`), as SPIRE does; the operator's entries under it stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_join_token_agent_deletes_its_alias_entry_only() {
    let mut s = TestStore::new().await;
    s.apply_one(Command::CreateAgent(CreateAgent(agent("01")))).await;
    let alias_selector = format!("spiffe_id:{NODE}");
    s.apply_one(Command::CreateEntries(CreateEntries(vec![
        entry("alias", "spiffe://example.org/nodes/web", NODE, &[&alias_selector]),
        entry("workload", "spiffe://example.org/web", NODE, &["unix:uid:1000"]),
        entry("elsewhere", "spiffe://example.org/nodes/db", "spiffe://example.org/spire/agent/x", &[&alias_selector]),
    ])))
    .await;
    let deleted = s.apply_one(Command::DeleteAgent(DeleteAgent { spiffe_id: NODE.into() })).await;
    assert!(matches!(deleted, Outcome::Deleted(Ok(()))), "{deleted:?}");
    assert!(s.store.reader.entry("alias").await.unwrap().is_none());
    assert!(s.store.reader.entry("workload").await.unwrap().is_some());
    assert!(s.store.reader.entry("elsewhere").await.unwrap().is_some());
    assert!(s.store.reader.entries_by_parent(NODE).await.unwrap().len() == 1, "the parent index forgot the alias");
}

/// A re-attestation read the agent unbanned, then a ban was applied before its write: the
/// write must not undo the ban. Deleting the agent is what lifts a ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattestation_cannot_undo_a_ban_applied_after_it_read() {
    let mut s = TestStore::new().await;
    assert!(matches!(s.apply_one(Command::CreateAgent(CreateAgent(agent("01")))).await, Outcome::Agent(Ok(_))));
    assert!(matches!(s.apply_one(Command::BanAgent(BanAgent { spiffe_id: NODE.into() })).await, Outcome::Agent(Ok(_))));
    let reattested = s.apply_one(Command::UpdateAgent(UpdateAgent(agent("02")))).await;
    assert!(matches!(reattested, Outcome::Agent(Err(ApplyError::FailedPrecondition(_)))), "{reattested:?}");
    let stored = s.store.reader.agent(NODE).await.unwrap().unwrap();
    assert!(stored.banned && stored.serial_number != "02", "{stored:?}");
    s.apply_one(Command::DeleteAgent(DeleteAgent { spiffe_id: NODE.into() })).await;
    assert!(matches!(s.apply_one(Command::CreateAgent(CreateAgent(agent("03")))).await, Outcome::Agent(Ok(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renewal_promotes_the_new_serial_only_when_used() {
    let mut s = TestStore::new().await;
    assert!(matches!(s.apply_one(Command::CreateAgent(CreateAgent(agent("01")))).await, Outcome::Agent(Ok(_))));
    assert!(matches!(
        s.apply_one(Command::CreateAgent(CreateAgent(agent("01")))).await,
        Outcome::Agent(Err(ApplyError::AlreadyExists(_)))
    ));
    s.apply_one(Command::SetAgentNewSerial(SetAgentNewSerial {
        spiffe_id: NODE.into(),
        serial_number: "02".into(),
        expires_at: 200,
    }))
    .await;
    let stored = s.store.reader.agent(NODE).await.unwrap().unwrap();
    assert_eq!((stored.serial_number.as_str(), stored.new_serial_number.as_str()), ("01", "02"));
    // The old SVID is still current until the new one is seen in use.
    assert!(matches!(
        s.apply_one(Command::PromoteAgentSerial(PromoteAgentSerial {
            spiffe_id: NODE.into(),
            serial_number: "03".into()
        }))
        .await,
        Outcome::Agent(Err(ApplyError::FailedPrecondition(_)))
    ));
    match s
        .apply_one(Command::PromoteAgentSerial(PromoteAgentSerial {
            spiffe_id: NODE.into(),
            serial_number: "02".into(),
        }))
        .await
    {
        Outcome::Agent(Ok(a)) => {
            assert_eq!((a.serial_number.as_str(), a.new_serial_number.as_str(), a.expires_at), ("02", "", 200))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(
            s.apply_one(Command::PromoteAgentSerial(PromoteAgentSerial {
                spiffe_id: NODE.into(),
                serial_number: "02".into()
            }))
            .await,
            Outcome::Agent(Ok(_))
        ),
        "repeating is harmless"
    );
    match s.apply_one(Command::BanAgent(BanAgent { spiffe_id: NODE.into() })).await {
        Outcome::Agent(Ok(a)) => assert!(a.banned && a.serial_number.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.apply_one(Command::SetAgentNewSerial(SetAgentNewSerial {
            spiffe_id: NODE.into(),
            serial_number: "04".into(),
            expires_at: 1
        }))
        .await,
        Outcome::Agent(Err(ApplyError::FailedPrecondition(_)))
    ));
    assert_eq!(
        s.apply_one(Command::DeleteAgent(DeleteAgent { spiffe_id: NODE.into() })).await,
        Outcome::Deleted(Ok(()))
    );
    assert!(matches!(
        s.apply_one(Command::DeleteAgent(DeleteAgent { spiffe_id: NODE.into() })).await,
        Outcome::Deleted(Err(ApplyError::NotFound(_)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_sequence_numbers_rise_on_every_change() {
    let mut s = TestStore::new().await;
    let x509 = |b: u8| StoredX509Authority { der: vec![b], tainted: false };
    let jwt =
        |kid: &str, exp: i64| StoredJwtKey { key_id: kid.into(), public_key: vec![1], expires_at: exp, tainted: false };
    let seq = |o: Outcome| match o {
        Outcome::Bundle(Ok(b)) => b.sequence_number,
        other => panic!("{other:?}"),
    };
    let append = |x: Vec<StoredX509Authority>, j: Vec<StoredJwtKey>| {
        Command::AppendBundle(AppendBundle {
            scope: BundleScope::Local,
            trust_domain: "example.org".into(),
            x509: x,
            jwt: j,
        })
    };
    assert_eq!(seq(s.apply_one(append(vec![x509(1)], vec![jwt("k1", 50)])).await), 1);
    assert_eq!(seq(s.apply_one(append(vec![x509(1)], vec![])).await), 1, "nothing new, no change");
    assert_eq!(seq(s.apply_one(append(vec![x509(2)], vec![jwt("k2", 500)])).await), 2);
    let prune = Command::PruneBundle(PruneBundle {
        scope: BundleScope::Local,
        trust_domain: "example.org".into(),
        expired_before: 100,
        expired_x509: vec![vec![1]],
    });
    let pruned = match s.apply_one(prune).await {
        Outcome::Bundle(Ok(b)) => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(pruned.sequence_number, 3);
    assert_eq!(pruned.x509_authorities, vec![x509(2)]);
    assert_eq!(pruned.jwt_authorities, vec![jwt("k2", 500)]);
    let last = Command::PruneBundle(PruneBundle {
        scope: BundleScope::Local,
        trust_domain: "example.org".into(),
        expired_before: 0,
        expired_x509: vec![vec![2]],
    });
    assert!(
        matches!(s.apply_one(last).await, Outcome::Bundle(Err(ApplyError::FailedPrecondition(_)))),
        "the local bundle keeps an X.509 authority"
    );

    // An upstream authority an admin distrusts: tainted once, then revoked, never the last.
    let taint = |b: u8| {
        Command::TaintLocalX509Authority(TaintLocalX509Authority { trust_domain: "example.org".into(), der: vec![b] })
    };
    let revoke = |b: u8| {
        Command::RevokeLocalX509Authority(RevokeLocalX509Authority { trust_domain: "example.org".into(), der: vec![b] })
    };
    assert_eq!(seq(s.apply_one(append(vec![x509(3)], vec![])).await), 4);
    assert!(
        matches!(s.apply_one(revoke(3)).await, Outcome::Bundle(Err(ApplyError::FailedPrecondition(_)))),
        "only a tainted one is revoked"
    );
    assert!(matches!(s.apply_one(taint(7)).await, Outcome::Bundle(Err(ApplyError::NotFound(_)))));
    match s.apply_one(taint(3)).await {
        Outcome::Bundle(Ok(b)) => assert_eq!(
            (b.sequence_number, b.x509_authorities.clone()),
            (5, vec![x509(2), StoredX509Authority { der: vec![3], tainted: true }])
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(s.apply_one(taint(3)).await, Outcome::Bundle(Err(ApplyError::FailedPrecondition(_)))),
        "tainted already"
    );
    assert!(
        matches!(s.apply_one(append(vec![x509(3)], vec![])).await, Outcome::Bundle(Ok(b)) if b.x509_authorities[1].tainted),
        "appending it again keeps the taint"
    );
    match s.apply_one(revoke(3)).await {
        Outcome::Bundle(Ok(b)) => assert_eq!((b.sequence_number, b.x509_authorities), (6, vec![x509(2)])),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.apply_one(taint(2)).await, Outcome::Bundle(Ok(_))));
    assert!(
        matches!(s.apply_one(revoke(2)).await, Outcome::Bundle(Err(ApplyError::FailedPrecondition(_)))),
        "the last one stays"
    );

    let federated = StoredBundle {
        trust_domain: TrustDomain::parse("other.org").unwrap(),
        x509_authorities: vec![x509(9)],
        jwt_authorities: vec![],
        refresh_hint: 300,
        sequence_number: 77,
    };
    assert_eq!(
        seq(s
            .apply_one(Command::SetBundle(SetBundle { scope: BundleScope::Federated, bundle: federated.clone() }))
            .await),
        1,
        "the stored sequence decides, not the caller's"
    );
    assert_eq!(
        seq(s.apply_one(Command::SetBundle(SetBundle { scope: BundleScope::Federated, bundle: federated })).await),
        2
    );
    assert!(
        s.store.reader.bundle(BundleScope::Local, "other.org").await.unwrap().is_none(),
        "scopes are separate tables"
    );
    assert_eq!(s.store.reader.list_bundles(BundleScope::Federated).await.unwrap().len(), 1);
    assert_eq!(
        s.apply_one(Command::DeleteBundle(DeleteBundle {
            scope: BundleScope::Federated,
            trust_domain: "other.org".into()
        }))
        .await,
        Outcome::Deleted(Ok(()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_relationships_crud() {
    let mut s = TestStore::new().await;
    let rel = FederationRelationship {
        trust_domain: TrustDomain::parse("other.org").unwrap(),
        bundle_endpoint_url: "https://other.org/bundle".into(),
        profile: BundleEndpointProfile::HttpsWeb,
    };
    assert!(matches!(
        s.apply_one(Command::CreateFederationRelationship(CreateFederationRelationship(rel.clone()))).await,
        Outcome::Relationship(Ok(_))
    ));
    assert!(matches!(
        s.apply_one(Command::CreateFederationRelationship(CreateFederationRelationship(rel.clone()))).await,
        Outcome::Relationship(Err(ApplyError::AlreadyExists(_)))
    ));
    let mut changed = rel.clone();
    changed.profile = BundleEndpointProfile::HttpsSpiffe {
        endpoint_spiffe_id: SpiffeId::parse("spiffe://other.org/spire/server").unwrap(),
    };
    assert!(matches!(
        s.apply_one(Command::UpdateFederationRelationship(UpdateFederationRelationship(changed.clone()))).await,
        Outcome::Relationship(Ok(_))
    ));
    assert_eq!(s.store.reader.relationship("other.org").await.unwrap(), Some(changed));
    assert_eq!(
        s.apply_one(Command::DeleteFederationRelationship(DeleteFederationRelationship {
            trust_domain: "other.org".into()
        }))
        .await,
        Outcome::Deleted(Ok(()))
    );
    assert!(matches!(
        s.apply_one(Command::UpdateFederationRelationship(UpdateFederationRelationship(rel))).await,
        Outcome::Relationship(Err(ApplyError::NotFound(_)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_entry() {
    let mut s = TestStore::new().await;
    let batch: Vec<_> =
        (0..25).map(|i| entry(&format!("id{i:02}"), &format!("spiffe://example.org/w{i}"), NODE, &["x:1"])).collect();
    s.apply_one(Command::CreateEntries(CreateEntries(batch))).await;
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = s.store.reader.list_entries(token, 10).await.unwrap();
        seen.extend(page.items.into_iter().map(|e| e.id));
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(seen.first().map(String::as_str), Some("id00"));
    assert_eq!(seen.last().map(String::as_str), Some("id24"));
}

fn ca(n: u8) -> raft_store::model::X509CaAuthority {
    raft_store::model::X509CaAuthority {
        key_id: format!("x509-CA-{n}"),
        certificate: vec![n],
        upstream_chain: vec![],
        trust_anchors: vec![vec![n]],
        not_before: time::OffsetDateTime::from_unix_timestamp(0).unwrap(),
        not_after: time::OffsetDateTime::from_unix_timestamp(100).unwrap(),
        private_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_journal_transitions_publish_in_the_same_command() {
    use raft_store::model::{JournalEvent, SlotEvent, SlotId, SlotStatus};
    let mut s = TestStore::new().await;
    let step = |event: SlotEvent<raft_store::model::X509CaAuthority>| {
        Command::CaJournal(RecordCaEvent { trust_domain: "example.org".into(), event: JournalEvent::X509(event) })
    };
    let journal = |o: Outcome| match o {
        Outcome::CaJournal(r) => r,
        other => panic!("{other:?}"),
    };
    let j = journal(s.apply_one(step(SlotEvent::Prepared { slot: SlotId::A, authority: ca(1) })).await).unwrap();
    assert_eq!(j.x509.prepared().unwrap().authority, ca(1));
    let bundle = s.store.reader.bundle(BundleScope::Local, "example.org").await.unwrap().unwrap();
    assert_eq!((bundle.x509_authorities.len(), bundle.sequence_number), (1, 1), "prepared means published");

    assert!(journal(s.apply_one(step(SlotEvent::Activated { slot: SlotId::A })).await).is_ok());
    assert!(journal(s.apply_one(step(SlotEvent::Prepared { slot: SlotId::B, authority: ca(2) })).await).is_ok());
    assert!(journal(s.apply_one(step(SlotEvent::Activated { slot: SlotId::B })).await).is_ok());
    // SPIRE's rules hold in replicated apply too: the active authority cannot be tainted.
    let refused = journal(s.apply_one(step(SlotEvent::Tainted { slot: SlotId::B })).await);
    assert!(matches!(refused, Err(ApplyError::FailedPrecondition(_))), "{refused:?}");
    let j = journal(s.apply_one(step(SlotEvent::Tainted { slot: SlotId::A })).await).unwrap();
    assert_eq!(j.x509.get(SlotId::A).unwrap().status, SlotStatus::Old);
    let bundle = s.store.reader.bundle(BundleScope::Local, "example.org").await.unwrap().unwrap();
    assert!(bundle.x509_authorities.iter().find(|a| a.der == vec![1]).unwrap().tainted);
    assert!(journal(s.apply_one(step(SlotEvent::Revoked { slot: SlotId::A })).await).is_ok());
    let bundle = s.store.reader.bundle(BundleScope::Local, "example.org").await.unwrap().unwrap();
    assert_eq!(bundle.x509_authorities.iter().map(|a| a.der.clone()).collect::<Vec<_>>(), vec![vec![2]]);
    assert_eq!(bundle.sequence_number, 4, "prepare A, prepare B, taint A, revoke A");
    assert_eq!(s.store.reader.ca_journal().await.unwrap().x509.active().unwrap().authority, ca(2));
}

/// A managed key's id is reserved before the key exists; the authority that records it
/// takes the reservation; a released id can no longer be recorded, so a key the sweep
/// deletes is never adopted by a slow creator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ca_keys_are_recorded_only_under_a_pending_reservation() {
    use raft_store::model::{CaKeyKind, JournalEvent, SlotEvent, SlotId, MAX_PENDING_KEYS};
    let mut s = TestStore::new().await;
    let prepare = |slot, key_id: &str| {
        let authority = raft_store::model::X509CaAuthority { key_id: key_id.to_owned(), ..ca(1) };
        Command::CaJournal(RecordCaEvent {
            trust_domain: "example.org".into(),
            event: JournalEvent::X509(SlotEvent::Prepared { slot, authority }),
        })
    };
    let journal = |o: Outcome| match o {
        Outcome::CaJournal(r) => r,
        other => panic!("{other:?}"),
    };
    let reserve = |slot| Command::ReserveCaKey(ReserveCaKey { kind: CaKeyKind::X509, slot, now: 1_000 });
    let reserved = |o: Outcome| match o {
        Outcome::KeyReserved(r) => r,
        other => panic!("{other:?}"),
    };

    // Before any reservation, journals written by earlier versions still apply.
    assert!(journal(s.apply_one(prepare(SlotId::A, "x509-CA-A-1")).await).is_ok());
    assert!(journal(
        s.apply_one(Command::CaJournal(RecordCaEvent {
            trust_domain: "example.org".into(),
            event: JournalEvent::X509(SlotEvent::Activated { slot: SlotId::A }),
        }))
        .await
    )
    .is_ok());

    // Ids are numbered after everything the journal prepared, and never handed out twice.
    let first = reserved(s.apply_one(reserve(SlotId::B)).await).unwrap();
    let second = reserved(s.apply_one(reserve(SlotId::B)).await).unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("x509-CA-B-2", "x509-CA-B-3"));
    assert_eq!(s.store.reader.key_intents().await.unwrap().pending.get(&first), Some(&1_000));

    // An id nobody reserved is refused, and so is a released one; a pending one is taken.
    let unreserved = journal(s.apply_one(prepare(SlotId::B, "x509-CA-B-99")).await);
    assert!(matches!(unreserved, Err(ApplyError::FailedPrecondition(_))), "{unreserved:?}");
    let released = s.apply_one(Command::ReleaseCaKeys(ReleaseCaKeys { key_ids: vec![first.clone()] })).await;
    assert_eq!(released, Outcome::Pruned(1));
    let late = journal(s.apply_one(prepare(SlotId::B, &first)).await);
    assert!(matches!(&late, Err(ApplyError::FailedPrecondition(m)) if m.contains("released")), "{late:?}");
    let j = journal(s.apply_one(prepare(SlotId::B, &second)).await).unwrap();
    assert_eq!(j.x509.prepared().unwrap().authority.key_id, second);
    assert!(s.store.reader.key_intents().await.unwrap().pending.is_empty());
    // Releasing a recorded id releases nothing: its key is in use.
    let again = s.apply_one(Command::ReleaseCaKeys(ReleaseCaKeys { key_ids: vec![second.clone()] })).await;
    assert_eq!(again, Outcome::Pruned(0));

    // Keys the journal carries (development key managers) need no reservation.
    let carried = raft_store::model::X509CaAuthority {
        key_id: "x509-CA-A-50".into(),
        private_key: Some(raft_store::model::KeyMaterial::new(zeroize::Zeroizing::new(vec![1, 2, 3]))),
        ..ca(3)
    };
    let shared = Command::CaJournal(RecordCaEvent {
        trust_domain: "example.org".into(),
        event: JournalEvent::X509(SlotEvent::Prepared { slot: SlotId::B, authority: carried }),
    });
    assert!(journal(s.apply_one(shared).await).is_ok());

    // Pending reservations are bounded.
    for _ in 0..MAX_PENDING_KEYS {
        reserved(s.apply_one(reserve(SlotId::A)).await).unwrap();
    }
    let full = reserved(s.apply_one(reserve(SlotId::A)).await);
    assert!(matches!(full, Err(ApplyError::FailedPrecondition(_))), "{full:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_can_be_pruned() {
    let mut s = TestStore::new().await;
    for i in 0..5 {
        s.apply_one(Command::CreateEntries(CreateEntries(vec![entry(
            &format!("p{i}"),
            &format!("spiffe://example.org/p{i}"),
            NODE,
            &["x:1"],
        )])))
        .await;
    }
    assert_eq!(s.apply_one(Command::PruneChangeLog(PruneChangeLog { before_revision: 4 })).await, Outcome::Pruned(3));
    let left: Vec<u64> = s.store.reader.changes_since(0, 100).await.unwrap().iter().map(|c| c.revision).collect();
    assert_eq!(left, [4, 5], "the prune itself changes no table, so it logs nothing");
    assert_eq!(s.store.reader.revision().await.unwrap(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_changes_since_a_revision_come_from_the_change_log_until_it_is_pruned() {
    let mut s = TestStore::new().await;
    s.apply(vec![
        Command::CreateEntries(CreateEntries(vec![
            entry("a", "spiffe://example.org/a", NODE, &["x:1"]),
            entry("b", "spiffe://example.org/b", NODE, &["x:2"]),
        ])),
        Command::CreateJoinToken(CreateJoinToken(JoinToken { token: "t".into(), expires_at: 10, agent_id: None })),
        Command::DeleteEntries(DeleteEntries(vec!["a".into()])),
        Command::CreateEntries(CreateEntries(vec![entry("c", "spiffe://example.org/c", NODE, &["x:3"])])),
    ])
    .await;
    let (revision, all) = s.store.reader.entries_at_revision().await.unwrap();
    assert_eq!(revision, 4);
    assert_eq!(all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["b", "c"]);

    let delta = s.store.reader.entry_changes_since(0, 100).await.unwrap().unwrap();
    assert_eq!(delta.revision, 4);
    let changed: Vec<(&str, bool)> = delta.changed.iter().map(|(id, e)| (id.as_str(), e.is_some())).collect();
    assert_eq!(changed, [("a", false), ("b", true), ("c", true)], "a deleted entry comes back as None");

    // A limit of two change sets stops after revision 2 (the token's, which changes no entry).
    let first = s.store.reader.entry_changes_since(0, 2).await.unwrap().unwrap();
    assert_eq!((first.revision, first.changed.len()), (2, 2));
    let rest = s.store.reader.entry_changes_since(first.revision, 2).await.unwrap().unwrap();
    assert_eq!((rest.revision, rest.changed.len()), (4, 2));
    assert!(s.store.reader.entry_changes_since(4, 100).await.unwrap().unwrap().changed.is_empty());

    s.apply_one(Command::PruneChangeLog(PruneChangeLog { before_revision: 4 })).await;
    assert!(
        s.store.reader.entry_changes_since(1, 100).await.unwrap().is_none(),
        "revisions 2 and 3 were pruned: reload"
    );
    assert!(
        s.store.reader.entry_changes_since(3, 100).await.unwrap().is_some(),
        "the log still reaches back to revision 4"
    );
}

fn rotation(outcome: Outcome) -> Result<raft_store::model::ClusterCaRotation, ApplyError> {
    match outcome {
        Outcome::ClusterCa(r) => r,
        other => panic!("expected a cluster CA rotation, got {other:?}"),
    }
}

/// A rotation of the cluster CA moves phase by phase, each only once every member reached
/// the one before; its key leaves the state when it retires; one rotation at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ca_rotations_advance_only_when_every_member_reached_the_phase() {
    use raft_store::model::{ClusterCaPhase::*, KeyMaterial};
    let mut s = TestStore::new().await;
    s.apply_membership(&[1, 2, 3]).await;
    let prepare = |generation| {
        Command::PrepareClusterCa(PrepareClusterCa {
            generation,
            cert_der: vec![generation as u8],
            key: KeyMaterial::new(zeroize::Zeroizing::new(vec![9])),
            previous_cert_der: vec![0],
        })
    };
    let advance = |from| Command::AdvanceClusterCa(AdvanceClusterCa { generation: 1, from });
    let reach = |phase, node_id| Command::ReachClusterCaPhase(ReachClusterCaPhase { generation: 1, phase, node_id });

    let err = rotation(s.apply_one(prepare(2)).await).unwrap_err();
    assert!(err.to_string().contains("next rotation of the cluster CA is 1"), "{err}");
    assert_eq!(rotation(s.apply_one(prepare(1)).await).unwrap().phase, Prepared);
    let err = rotation(s.apply_one(prepare(2)).await).unwrap_err();
    assert!(err.to_string().contains("under way"), "{err}");

    rotation(s.apply_one(reach(Prepared, 1)).await).unwrap();
    rotation(s.apply_one(reach(Prepared, 2)).await).unwrap();
    let err = rotation(s.apply_one(advance(Prepared)).await).unwrap_err();
    assert!(err.to_string().contains("[3] have not reached prepared"), "{err}");
    let err = rotation(s.apply_one(reach(Active, 3)).await).unwrap_err();
    assert!(matches!(err, ApplyError::FailedPrecondition(_)), "a report for another phase: {err}");
    // A member that leaves no longer holds the rotation up.
    s.apply_membership(&[1, 2]).await;
    let active = rotation(s.apply_one(advance(Prepared)).await).unwrap();
    assert_eq!((active.phase, active.reached.len(), active.key.is_some()), (Active, 0, true));
    assert!(rotation(s.apply_one(advance(Active)).await).is_err(), "nobody reached active yet");
    for id in [1, 2, 2] {
        rotation(s.apply_one(reach(Active, id)).await).unwrap();
    }
    let retired = rotation(s.apply_one(advance(Active)).await).unwrap();
    assert_eq!((retired.phase, retired.key.is_none()), (Retired, true), "the key leaves the state");
    assert_eq!(s.store.reader.cluster_ca_rotation().await.unwrap(), Some(retired));
    assert!(rotation(s.apply_one(advance(Retired)).await).is_err());
    assert_eq!(rotation(s.apply_one(prepare(2)).await).unwrap().generation, 2, "the next one may start");
}

/// A refresh of a federated bundle is recorded once per due time: the second leader to
/// record the same refresh is refused, and the bundle is stored in the same command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_refresh_is_recorded_once_per_due_time() {
    use raft_store::model::FederationRefresh;
    let mut s = TestStore::new().await;
    let td = TrustDomain::parse("other.org").unwrap();
    let rel = FederationRelationship {
        trust_domain: td.clone(),
        bundle_endpoint_url: "https://other.org/".into(),
        profile: BundleEndpointProfile::HttpsWeb,
    };
    s.apply_one(Command::CreateFederationRelationship(CreateFederationRelationship(rel))).await;
    let record = |expected, next_due, bundle: Option<StoredBundle>| {
        Command::RecordFederationRefresh(RecordFederationRefresh {
            trust_domain: "other.org".into(),
            expected_next_due: expected,
            refresh: FederationRefresh { last_attempt: 100, next_due, ..Default::default() },
            bundle,
        })
    };
    let mut bundle = StoredBundle::new(td.clone());
    bundle.x509_authorities.push(StoredX509Authority { der: vec![0x30, 0x01], tainted: false });
    assert!(matches!(s.apply_one(record(0, 400, Some(bundle.clone()))).await, Outcome::FederationRefresh(Ok(_))));
    assert!(
        matches!(
            s.apply_one(record(0, 400, None)).await,
            Outcome::FederationRefresh(Err(ApplyError::FailedPrecondition(_)))
        ),
        "the same refresh recorded twice"
    );
    let reader = &s.store.reader;
    assert_eq!(reader.federation_refreshes().await.unwrap()["other.org"].next_due, 400);
    let stored = reader.bundle(BundleScope::Federated, "other.org").await.unwrap().expect("stored with the refresh");
    assert_eq!((stored.x509_authorities.len(), stored.sequence_number), (1, 1));
    assert!(matches!(s.apply_one(record(400, 700, None)).await, Outcome::FederationRefresh(Ok(_))));

    s.apply_one(Command::DeleteFederationRelationship(DeleteFederationRelationship {
        trust_domain: "other.org".into(),
    }))
    .await;
    assert!(s.store.reader.federation_refreshes().await.unwrap().is_empty(), "the schedule goes with it");
    assert!(matches!(
        s.apply_one(record(0, 900, None)).await,
        Outcome::FederationRefresh(Err(ApplyError::NotFound(_)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_mirrors_its_upstreams_bundle_and_keeps_its_own_unpublished_keys() {
    use raft_store::model::{JournalEvent, JwtKeyAuthority, SlotEvent, SlotId};
    let mut s = TestStore::new().await;
    let x509 = |b: u8, tainted: bool| StoredX509Authority { der: vec![b], tainted };
    let jwt = |kid: &str| StoredJwtKey { key_id: kid.into(), public_key: vec![1], expires_at: 500, tainted: false };
    let mirror = |x: Vec<StoredX509Authority>, j: Vec<StoredJwtKey>| {
        Command::MirrorUpstreamBundle(MirrorUpstreamBundle { trust_domain: "example.org".into(), x509: x, jwt: j })
    };
    let bundle = |o: Outcome| match o {
        Outcome::Bundle(r) => r,
        other => panic!("{other:?}"),
    };
    // This cluster prepares a JWT key: published in its own bundle at once.
    let own = JwtKeyAuthority {
        key_id: "JWT-Signer-A-1".into(),
        kid: "ours".into(),
        public_key: vec![1],
        not_before: time::OffsetDateTime::from_unix_timestamp(0).unwrap(),
        not_after: time::OffsetDateTime::from_unix_timestamp(500).unwrap(),
        private_key: None,
    };
    s.apply_one(Command::CaJournal(RecordCaEvent {
        trust_domain: "example.org".into(),
        event: JournalEvent::Jwt(SlotEvent::Prepared { slot: SlotId::A, authority: own }),
    }))
    .await;
    // A key published earlier by someone else, and a root the upstream has since dropped.
    s.apply_one(Command::AppendBundle(AppendBundle {
        scope: BundleScope::Local,
        trust_domain: "example.org".into(),
        x509: vec![x509(9, false)],
        jwt: vec![jwt("stale")],
    }))
    .await;

    // The upstream does not list our key yet: it stays; the rest is the upstream's.
    let b = bundle(s.apply_one(mirror(vec![x509(1, false), x509(2, true)], vec![jwt("root-key")])).await).unwrap();
    assert_eq!(b.x509_authorities, vec![x509(1, false), x509(2, true)], "the upstream's roots, taint marks included");
    let kids: Vec<&str> = b.jwt_authorities.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(kids, ["root-key", "ours"]);
    let seq = b.sequence_number;
    // The same again changes nothing; the upstream listing our key keeps it once.
    let again = bundle(s.apply_one(mirror(vec![x509(1, false), x509(2, true)], vec![jwt("root-key")])).await);
    assert_eq!(again.unwrap().sequence_number, seq, "nothing new, no change");
    let b = bundle(s.apply_one(mirror(vec![x509(1, false)], vec![jwt("root-key"), jwt("ours")])).await).unwrap();
    assert_eq!(b.sequence_number, seq + 1);
    assert_eq!(b.x509_authorities, vec![x509(1, false)], "a root revoked upstream is gone here too");
    assert_eq!(b.jwt_authorities.iter().filter(|k| k.key_id == "ours").count(), 1);
    // An upstream bundle without a root is refused; the bundle stays.
    assert!(matches!(bundle(s.apply_one(mirror(vec![], vec![])).await), Err(ApplyError::InvalidArgument(_))));
    let kept = s.store.reader.bundle(BundleScope::Local, "example.org").await.unwrap().unwrap();
    assert_eq!(kept.x509_authorities, vec![x509(1, false)]);
}
