//! Golden bytes of what replicas write to their logs and send each other. A command in the
//! Raft log is read back by every later build, and during a rolling upgrade a replica of the
//! previous build applies what this one proposed: reordering a variant or a field changes
//! the bytes and must fail here, not in a cluster.
//!
//! The fixtures: `tests/fixtures/commands.hex` (one `Name hex` line per command),
//! `header.hex` (the data dir's format header) and `backup-format3.tsnp` (a backup, which is
//! the snapshot file format, of a state holding one row of most tables). Regenerate them
//! (after a deliberate format change, with a new on-disk format version and an upgrade
//! step) with `TESTUDO_BLESS=1 cargo test -p testudo-raft-store --test it durable_formats`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use identity::{Selector, SpiffeId, TrustDomain};
use raft_store::codec;
use raft_store::command::*;
use raft_store::model::*;
use time::OffsetDateTime;
use zeroize::Zeroizing;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn entry() -> RegistrationEntry {
    let mut entry = RegistrationEntry::new(
        "e-1".into(),
        id("spiffe://example.org/web"),
        id("spiffe://example.org/spire/agent/join_token/t"),
        vec![Selector::new("unix", "uid:1000").unwrap()],
    );
    entry.x509_svid_ttl = 3600;
    entry.federates_with = vec![td("partner.org")];
    entry.dns_names = vec!["web.example.org".into()];
    entry.hint = "h".into();
    entry.created_at = 1_700_000_000;
    entry
}

fn agent() -> AttestedAgent {
    AttestedAgent {
        spiffe_id: id("spiffe://example.org/spire/agent/join_token/t"),
        attestation_type: "join_token".into(),
        selectors: vec![Selector::new("join_token", "t").unwrap()],
        serial_number: "0a".into(),
        expires_at: 1_700_003_600,
        new_serial_number: String::new(),
        new_expires_at: 0,
        banned: false,
        can_reattest: true,
    }
}

fn bundle() -> StoredBundle {
    StoredBundle {
        trust_domain: td("example.org"),
        x509_authorities: vec![StoredX509Authority { der: vec![0x30, 0x01], tainted: false }],
        jwt_authorities: vec![StoredJwtKey {
            key_id: "k".into(),
            public_key: vec![0x30, 0x02],
            expires_at: 1_700_000_100,
            tainted: true,
        }],
        refresh_hint: 300,
        sequence_number: 7,
    }
}

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).unwrap()
}

fn x509_authority() -> X509CaAuthority {
    X509CaAuthority {
        key_id: "x509-CA-A-1".into(),
        certificate: vec![0x30, 0x03],
        upstream_chain: vec![vec![0x30, 0x04]],
        trust_anchors: vec![vec![0x30, 0x05]],
        not_before: at(1_700_000_000),
        not_after: at(1_700_086_400),
        private_key: Some(KeyMaterial::new(Zeroizing::new(vec![0x30, 0x06]))),
    }
}

fn jwt_authority() -> JwtKeyAuthority {
    JwtKeyAuthority {
        key_id: "JWT-Signer-A-2".into(),
        kid: "kid".into(),
        public_key: vec![0x30, 0x07],
        not_before: at(1_700_000_000),
        not_after: at(1_700_086_400),
        private_key: None,
    }
}

/// One value of every command variant (and of every journal event), named.
fn every_command() -> Vec<(&'static str, Command)> {
    let relationship = FederationRelationship {
        trust_domain: td("partner.org"),
        bundle_endpoint_url: "https://partner.org:8443".into(),
        profile: BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id: id("spiffe://partner.org/spire/server") },
    };
    let journal = |event| Command::CaJournal(RecordCaEvent { trust_domain: "example.org".into(), event });
    vec![
        ("CreateEntries", Command::CreateEntries(CreateEntries(vec![entry()]))),
        ("UpdateEntries", Command::UpdateEntries(UpdateEntries(vec![entry()]))),
        ("DeleteEntries", Command::DeleteEntries(DeleteEntries(vec!["e-1".into(), "e-2".into()]))),
        ("CreateAgent", Command::CreateAgent(CreateAgent(agent()))),
        ("UpdateAgent", Command::UpdateAgent(UpdateAgent(agent()))),
        (
            "SetAgentNewSerial",
            Command::SetAgentNewSerial(SetAgentNewSerial {
                spiffe_id: "spiffe://example.org/spire/agent/x".into(),
                serial_number: "0b".into(),
                expires_at: 1_700_007_200,
            }),
        ),
        (
            "PromoteAgentSerial",
            Command::PromoteAgentSerial(PromoteAgentSerial {
                spiffe_id: "spiffe://example.org/spire/agent/x".into(),
                serial_number: "0b".into(),
            }),
        ),
        ("BanAgent", Command::BanAgent(BanAgent { spiffe_id: "spiffe://example.org/spire/agent/x".into() })),
        ("DeleteAgent", Command::DeleteAgent(DeleteAgent { spiffe_id: "spiffe://example.org/spire/agent/x".into() })),
        (
            "CreateJoinToken",
            Command::CreateJoinToken(CreateJoinToken(JoinToken {
                token: "t".into(),
                expires_at: 1_700_000_600,
                agent_id: Some("spiffe://example.org/a".into()),
            })),
        ),
        ("ConsumeJoinToken", Command::ConsumeJoinToken(ConsumeJoinToken { token: "t".into(), now: 1_700_000_001 })),
        ("PruneJoinTokens", Command::PruneJoinTokens(PruneJoinTokens { expired_before: 1_700_000_002 })),
        ("SetBundle", Command::SetBundle(SetBundle { scope: BundleScope::Federated, bundle: bundle() })),
        (
            "AppendBundle",
            Command::AppendBundle(AppendBundle {
                scope: BundleScope::Local,
                trust_domain: "example.org".into(),
                x509: bundle().x509_authorities,
                jwt: bundle().jwt_authorities,
            }),
        ),
        (
            "PruneBundle",
            Command::PruneBundle(PruneBundle {
                scope: BundleScope::Local,
                trust_domain: "example.org".into(),
                expired_before: 1_700_000_003,
                expired_x509: vec![vec![0x30, 0x01]],
            }),
        ),
        (
            "DeleteBundle",
            Command::DeleteBundle(DeleteBundle { scope: BundleScope::Federated, trust_domain: "partner.org".into() }),
        ),
        (
            "CaJournal.X509.Prepared",
            journal(JournalEvent::X509(SlotEvent::Prepared { slot: SlotId::A, authority: x509_authority() })),
        ),
        ("CaJournal.X509.Activated", journal(JournalEvent::X509(SlotEvent::Activated { slot: SlotId::B }))),
        ("CaJournal.X509.Tainted", journal(JournalEvent::X509(SlotEvent::Tainted { slot: SlotId::A }))),
        ("CaJournal.X509.Revoked", journal(JournalEvent::X509(SlotEvent::Revoked { slot: SlotId::B }))),
        (
            "CaJournal.Jwt.Prepared",
            journal(JournalEvent::Jwt(SlotEvent::Prepared { slot: SlotId::B, authority: jwt_authority() })),
        ),
        ("CaJournal.Jwt.Activated", journal(JournalEvent::Jwt(SlotEvent::Activated { slot: SlotId::A }))),
        (
            "CreateFederationRelationship",
            Command::CreateFederationRelationship(CreateFederationRelationship(relationship.clone())),
        ),
        (
            "UpdateFederationRelationship",
            Command::UpdateFederationRelationship(UpdateFederationRelationship(FederationRelationship {
                profile: BundleEndpointProfile::HttpsWeb,
                ..relationship
            })),
        ),
        (
            "DeleteFederationRelationship",
            Command::DeleteFederationRelationship(DeleteFederationRelationship { trust_domain: "partner.org".into() }),
        ),
        ("PruneChangeLog", Command::PruneChangeLog(PruneChangeLog { before_revision: 42 })),
        (
            "CreateReplicaInvite",
            Command::CreateReplicaInvite(CreateReplicaInvite(ReplicaInvite {
                secret_sha256: "ab".into(),
                expires_at: 1_700_003_600,
            })),
        ),
        (
            "ConsumeReplicaInvite",
            Command::ConsumeReplicaInvite(ConsumeReplicaInvite { secret_sha256: "ab".into(), now: 1_700_000_004 }),
        ),
        (
            "Batch",
            Command::Batch(vec![
                Command::DeleteEntries(DeleteEntries(vec!["e-3".into()])),
                Command::PruneChangeLog(PruneChangeLog { before_revision: 1 }),
            ]),
        ),
        (
            "TaintLocalX509Authority",
            Command::TaintLocalX509Authority(TaintLocalX509Authority {
                trust_domain: "example.org".into(),
                der: vec![0x30, 0x08],
            }),
        ),
        (
            "RevokeLocalX509Authority",
            Command::RevokeLocalX509Authority(RevokeLocalX509Authority {
                trust_domain: "example.org".into(),
                der: vec![0x30, 0x09],
            }),
        ),
        ("PruneReplicaInvites", Command::PruneReplicaInvites(PruneReplicaInvites { expired_before: 1_700_000_005 })),
        ("PruneEntries", Command::PruneEntries(PruneEntries { expired_before: 1_700_000_006 })),
        (
            "PrepareClusterCa",
            Command::PrepareClusterCa(PrepareClusterCa {
                generation: 1,
                cert_der: vec![0x30, 0x0a],
                key: KeyMaterial::new(Zeroizing::new(vec![0x30, 0x0b])),
                previous_cert_der: vec![0x30, 0x0c],
            }),
        ),
        (
            "AdvanceClusterCa",
            Command::AdvanceClusterCa(AdvanceClusterCa { generation: 1, from: ClusterCaPhase::Active }),
        ),
        (
            "RecordFederationRefresh",
            Command::RecordFederationRefresh(RecordFederationRefresh {
                trust_domain: "partner.org".into(),
                expected_next_due: 1_700_000_100,
                refresh: FederationRefresh {
                    last_attempt: 1_700_000_101,
                    last_success: 1_700_000_101,
                    next_due: 1_700_000_400,
                    last_error: String::new(),
                    failures: 0,
                    last_sequence: 9,
                },
                bundle: Some(bundle()),
            }),
        ),
        (
            "MirrorUpstreamBundle",
            Command::MirrorUpstreamBundle(MirrorUpstreamBundle {
                trust_domain: "example.org".into(),
                x509: bundle().x509_authorities,
                jwt: bundle().jwt_authorities,
            }),
        ),
        (
            "RecordUpstreamStatus",
            Command::RecordUpstreamStatus(RecordUpstreamStatus(UpstreamStatus {
                last_success: 1_700_000_500,
                last_error_at: 1_700_000_600,
                last_error: "upstream away".into(),
            })),
        ),
        (
            "ReachClusterCaPhase",
            Command::ReachClusterCaPhase(ReachClusterCaPhase {
                generation: 1,
                phase: ClusterCaPhase::Prepared,
                node_id: 3,
            }),
        ),
        (
            "Idempotent",
            Command::BanAgent(BanAgent { spiffe_id: agent().spiffe_id.to_string() })
                .idempotent_for_caller(RequestId { client: *b"0123456789abcdef", seq: 42 })
                .unwrap(),
        ),
        (
            "ReserveCaKey",
            Command::ReserveCaKey(ReserveCaKey { kind: CaKeyKind::Jwt, slot: SlotId::B, now: 1_700_000_000 }),
        ),
        ("ReleaseCaKeys", Command::ReleaseCaKeys(ReleaseCaKeys { key_ids: vec!["x509-CA-A-7".into()] })),
    ]
}

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/commands.hex")
}

fn read_fixture() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixture_path()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(' ').map(|(name, hex)| (name.to_owned(), hex.trim().to_owned())))
        .collect()
}

#[test]
fn every_command_keeps_its_encoding() {
    let commands = every_command();
    let encoded: Vec<(&str, String)> =
        commands.iter().map(|(name, c)| (*name, hex::encode(codec::encode("command", c).unwrap()))).collect();
    if std::env::var_os("TESTUDO_BLESS").is_some() {
        let mut text = String::from("# Golden encodings of every Command variant (see tests/it/durable_formats.rs).\n");
        for (name, hex) in &encoded {
            text.push_str(&format!("{name} {hex}\n"));
        }
        std::fs::write(fixture_path(), text).unwrap();
        return;
    }
    let fixture = read_fixture();
    let mut differ = Vec::new();
    for (name, hex) in &encoded {
        match fixture.get(*name) {
            Some(expected) if expected == hex => {}
            Some(expected) => differ.push(format!("{name}: encodes as {hex}, the fixture has {expected}")),
            None => differ.push(format!("{name}: not in the fixture (a new command goes at the end of the enum)")),
        }
    }
    assert!(differ.is_empty(), "command encodings changed:\n{}", differ.join("\n"));
    assert_eq!(fixture.len(), encoded.len(), "the fixture names commands this build no longer has");
}

#[test]
fn every_fixture_decodes_to_the_command_it_names() {
    let fixture = read_fixture();
    for (name, command) in every_command() {
        let bytes = hex::decode(&fixture[name]).unwrap();
        let decoded: Command = codec::decode("command", &bytes).unwrap();
        assert_eq!(decoded, command, "{name}");
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn the_data_dir_header_keeps_its_encoding() {
    let header =
        raft_store::db::Header { format_version: raft_store::db::FORMAT_VERSION, node_id: 7, cluster_id: "c1".into() };
    let encoded = hex::encode(codec::encode("header", &header).unwrap());
    if std::env::var_os("TESTUDO_BLESS").is_some() {
        std::fs::write(fixture("header.hex"), format!("{encoded}\n")).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(fixture("header.hex")).unwrap();
    assert_eq!(encoded, expected.trim(), "the data dir header's encoding changed");
}

/// The commands whose state the backup fixture holds.
fn backup_state() -> Vec<Command> {
    vec![
        Command::CreateEntries(CreateEntries(vec![entry()])),
        Command::CreateAgent(CreateAgent(agent())),
        Command::CreateJoinToken(CreateJoinToken(JoinToken {
            token: "t".into(),
            expires_at: 1_900_000_000,
            agent_id: None,
        })),
        Command::SetBundle(SetBundle {
            scope: BundleScope::Federated,
            bundle: StoredBundle { trust_domain: td("partner.org"), ..bundle() },
        }),
        Command::CaJournal(RecordCaEvent {
            trust_domain: "example.org".into(),
            event: JournalEvent::X509(SlotEvent::Prepared { slot: SlotId::A, authority: x509_authority() }),
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_written_by_format_3_restores() {
    let path = fixture("backup-format3.tsnp");
    if std::env::var_os("TESTUDO_BLESS").is_some() {
        let mut store = crate::support::TestStore::new().await;
        store.apply(backup_state()).await;
        std::fs::write(&path, store.store.reader.backup().await.unwrap()).unwrap();
        return;
    }
    let backup = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = raft_store::ReplicaNode { raft_address: "127.0.0.1:1".into(), api_address: "127.0.0.1:2".into() };
    let index = raft_store::backup::restore(dir.path(), 3, "restored", node, &backup).unwrap();
    assert_eq!(index, backup_state().len() as u64, "the backup was taken after every command was applied");
    let opened = raft_store::open_store(dir.path(), 3, "restored").await.unwrap();
    let reader = &opened.reader;
    assert_eq!(reader.revision().await.unwrap(), backup_state().len() as u64);
    let stored = reader.entry("e-1").await.unwrap().expect("the entry");
    assert_eq!(
        (stored.spiffe_id, stored.created_at, stored.revision_number),
        (entry().spiffe_id, entry().created_at, 1)
    );
    assert_eq!(reader.agent(&agent().spiffe_id.to_string()).await.unwrap(), Some(agent()));
    assert_eq!(reader.join_token("t").await.unwrap().map(|t| t.expires_at), Some(1_900_000_000));
    let federated = reader.bundle(BundleScope::Federated, "partner.org").await.unwrap().expect("the federated bundle");
    assert_eq!(federated.jwt_authorities, bundle().jwt_authorities);
    let journal = reader.ca_journal().await.unwrap();
    assert_eq!(journal.x509.get(SlotId::A).map(|s| &s.authority), Some(&x509_authority()));
    assert_eq!(reader.entries_by_selector("unix:uid:1000").await.unwrap().len(), 1, "indexes come along");
}
