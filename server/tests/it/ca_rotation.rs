//! Rotation over days of fake time: every SVID minted stays verifiable against the
//! published bundle for its whole life, and retired keys are deleted.

use std::sync::Arc;
use std::time::Duration;

use identity::crypto::{KeyType, LocalKey, Signer};
use identity::jwt::validate_jwt_svid;
use identity::x509::verify_x509_svid;
use identity::{SpiffeId, TrustDomain};
use kms::{KeyManager, KeyManagerConfig};
use server::ca::{CaConfig, CaKeys, CaManager, JournalEvent, SlotEvent, SlotId, SlotStatus};
use server::clock::{Clock, ManualClock};
use time::OffsetDateTime;

fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn config() -> CaConfig {
    CaConfig::new(TrustDomain::parse("example.org").unwrap())
}

async fn manager(clock: Arc<ManualClock>) -> (CaManager, Arc<dyn KeyManager>) {
    let keys = KeyManagerConfig::Memory.build().await.unwrap();
    (CaManager::new(config(), CaKeys::Managed(keys.clone()), None, clock).unwrap(), keys)
}

fn web() -> SpiffeId {
    SpiffeId::parse("spiffe://example.org/web").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_ca_prepares_and_activates_both_authorities() {
    let clock = Arc::new(ManualClock::new(start()));
    let (mut ca, keys) = manager(clock.clone()).await;
    let events = ca.rotate().await.unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            JournalEvent::X509(SlotEvent::Prepared { .. }) => "x509 prepared",
            JournalEvent::X509(SlotEvent::Activated { .. }) => "x509 activated",
            JournalEvent::Jwt(SlotEvent::Prepared { .. }) => "jwt prepared",
            JournalEvent::Jwt(SlotEvent::Activated { .. }) => "jwt activated",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["x509 prepared", "x509 activated", "jwt prepared", "jwt activated"]);
    assert!(ca.rotate().await.unwrap().is_empty(), "nothing more is due");
    let bundle = ca.bundle().unwrap();
    assert_eq!(bundle.x509_authorities().len(), 1);
    assert_eq!(bundle.jwt_authorities().len(), 1);
    assert_eq!(bundle.sequence_number, 2);
    let active = ca.journal().x509.active().unwrap();
    assert_eq!(active.id, SlotId::A);
    assert_eq!(active.authority.not_after - active.authority.not_before, time::Duration::seconds(86400 + 10));
    assert_eq!(keys.list_keys().await.unwrap().len(), 2);

    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let chain = ca.signing().unwrap().mint_x509_svid(web(), workload.public_key().clone(), None, vec![]).await.unwrap();
    assert_eq!(chain.len(), 2, "SVID and the CA certificate");
    let verified = verify_x509_svid(&chain, &ca.bundle().unwrap(), clock.now()).unwrap();
    assert_eq!(verified.spiffe_id, web());
    assert_eq!(verified.not_after, clock.now() + time::Duration::hours(1), "default X.509-SVID TTL is 1h");

    let token = ca.signing().unwrap().mint_jwt_svid(web(), vec!["db".into()], None).await.unwrap();
    let validated = validate_jwt_svid(&token, &ca.bundle().unwrap(), "db", clock.now()).unwrap();
    assert_eq!(validated.expiry, clock.now().unix_timestamp() + 300, "default JWT-SVID TTL is 5m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_days_of_rotation_keep_every_svid_verifiable() {
    let clock = Arc::new(ManualClock::new(start()));
    let (mut ca, keys) = manager(clock.clone()).await;
    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let mut issued: Vec<(Vec<Vec<u8>>, OffsetDateTime)> = Vec::new();
    let mut tokens: Vec<(String, i64)> = Vec::new();
    let mut x509_activations = 0;
    let mut jwt_activations = 0;
    let step = Duration::from_secs(20 * 60);
    for _ in 0..(10 * 24 * 3) {
        for event in ca.rotate().await.unwrap() {
            match event {
                JournalEvent::X509(SlotEvent::Activated { .. }) => x509_activations += 1,
                JournalEvent::Jwt(SlotEvent::Activated { .. }) => jwt_activations += 1,
                _ => {}
            }
        }
        let now = clock.now();
        let chain =
            ca.signing().unwrap().mint_x509_svid(web(), workload.public_key().clone(), None, vec![]).await.unwrap();
        issued.push((chain, now + time::Duration::hours(1)));
        tokens.push((
            ca.signing().unwrap().mint_jwt_svid(web(), vec!["db".into()], None).await.unwrap(),
            now.unix_timestamp() + 300,
        ));

        // Every SVID still within its life verifies against today's bundle.
        for (chain, expires) in issued.iter().filter(|(_, e)| *e > now) {
            verify_x509_svid(chain, &ca.bundle().unwrap(), now)
                .unwrap_or_else(|e| panic!("SVID expiring {expires} refused at {now}: {e}"));
        }
        for (token, exp) in tokens.iter().filter(|(_, e)| *e > now.unix_timestamp()) {
            validate_jwt_svid(token, &ca.bundle().unwrap(), "db", now)
                .unwrap_or_else(|e| panic!("JWT expiring {exp} refused at {now}: {e}"));
        }
        issued.retain(|(_, e)| *e > now);
        tokens.retain(|(_, e)| *e > now.unix_timestamp());

        let bundle = ca.bundle().unwrap();
        // At most: the old authority until it expires, the active one, and the next one.
        assert!(
            (1..=3).contains(&bundle.x509_authorities().len()),
            "{} X.509 authorities",
            bundle.x509_authorities().len()
        );
        assert!((1..=3).contains(&bundle.jwt_authorities().len()));
        assert!(keys.list_keys().await.unwrap().len() <= 4, "retired keys are deleted");
        let active = ca.journal().x509.active().unwrap();
        assert!(
            active.authority.not_after - now >= time::Duration::hours(4) - time::Duration::minutes(20),
            "activation leaves the CA at least lifetime/6"
        );
        clock.advance(step);
    }
    // Each CA is made at its predecessor's half-life and signs from its own age L/3 (the
    // predecessor's 5/6) to 5/6: one activation every L/2, so ten days of 24h CAs need ~20.
    assert!((19..=21).contains(&x509_activations), "{x509_activations} X.509 activations");
    assert!((19..=21).contains(&jwt_activations), "{jwt_activations} JWT activations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_resumes_a_rotation_from_the_journal() {
    let clock = Arc::new(ManualClock::new(start()));
    let keys = KeyManagerConfig::Memory.build().await.unwrap();
    let mut first = CaManager::new(config(), CaKeys::Managed(keys.clone()), None, clock.clone()).unwrap();
    first.rotate().await.unwrap();
    clock.advance(Duration::from_secs(13 * 3600));
    let events = first.rotate().await.unwrap();
    assert_eq!(events.len(), 2, "X.509 and JWT next authorities prepared at half-life");
    let prepared_x509 = first.journal().x509.prepared().unwrap().authority.clone();

    // The first leader dies; another replica picks up the same journal and bundle.
    let journal = first.journal().clone();
    let bundle = first.stored_bundle().clone();
    drop(first);
    let mut second =
        CaManager::resume(config(), CaKeys::Managed(keys.clone()), None, clock.clone(), journal, bundle).unwrap();
    assert!(second.rotate().await.unwrap().is_empty(), "nothing is redone");
    clock.advance(Duration::from_secs(8 * 3600));
    let events = second.rotate().await.unwrap();
    assert_eq!(events.len(), 2);
    let active = second.journal().x509.active().unwrap();
    assert_eq!(active.authority, prepared_x509, "the prepared CA is the one activated");
    assert_eq!(second.journal().x509.get(SlotId::A).unwrap().status, SlotStatus::Old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_down_past_its_expiry_recovers_at_once() {
    let clock = Arc::new(ManualClock::new(start()));
    let (mut ca, _) = manager(clock.clone()).await;
    ca.rotate().await.unwrap();
    clock.advance(Duration::from_secs(3 * 86400));
    let events = ca.rotate().await.unwrap();
    assert!(matches!(events[0], JournalEvent::X509(SlotEvent::Prepared { slot: SlotId::B, .. })));
    assert!(matches!(events[1], JournalEvent::X509(SlotEvent::Activated { slot: SlotId::B })));
    let bundle = ca.bundle().unwrap();
    assert_eq!(bundle.x509_authorities().len(), 1, "the expired CA was pruned");
    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let chain = ca.signing().unwrap().mint_x509_svid(web(), workload.public_key().clone(), None, vec![]).await.unwrap();
    verify_x509_svid(&chain, &ca.bundle().unwrap(), clock.now()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_are_capped_at_the_ca_and_jwts_at_the_key() {
    let clock = Arc::new(ManualClock::new(start()));
    let (mut ca, _) = manager(clock.clone()).await;
    ca.rotate().await.unwrap();
    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let chain = ca
        .signing()
        .unwrap()
        .mint_x509_svid(web(), workload.public_key().clone(), Some(Duration::from_secs(7 * 86400)), vec![])
        .await
        .unwrap();
    let leaf = identity::x509::certificate_facts(&chain[0]).unwrap();
    assert_eq!(leaf.not_after, ca.journal().x509.active().unwrap().authority.not_after);
    let token = ca
        .signing()
        .unwrap()
        .mint_jwt_svid(web(), vec!["db".into()], Some(Duration::from_secs(7 * 86400)))
        .await
        .unwrap();
    let v = validate_jwt_svid(&token, &ca.bundle().unwrap(), "db", clock.now()).unwrap();
    assert_eq!(v.expiry, ca.journal().jwt.active().unwrap().authority.not_after.unix_timestamp());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_keys_travel_in_the_journal_to_any_replica() {
    let clock = Arc::new(ManualClock::new(start()));
    let mut leader = CaManager::new(config(), CaKeys::Shared, None, clock.clone()).unwrap();
    leader.rotate().await.unwrap();
    let journal = leader.journal().clone();
    let active = journal.x509.active().unwrap().authority.clone();
    assert!(active.private_key.is_some(), "the shared key is in the journal");
    assert!(format!("{active:?}").contains("<redacted>"), "and never printed");

    // Another replica, with nothing but the replicated journal and bundle, signs with it.
    let other = CaManager::resume(
        config(),
        CaKeys::Shared,
        None,
        clock.clone(),
        journal.clone(),
        leader.stored_bundle().clone(),
    )
    .unwrap();
    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let chain =
        other.signing().unwrap().mint_x509_svid(web(), workload.public_key().clone(), None, vec![]).await.unwrap();
    verify_x509_svid(&chain, &leader.bundle().unwrap(), clock.now()).unwrap();
    let token = other.signing().unwrap().mint_jwt_svid(web(), vec!["db".into()], None).await.unwrap();
    validate_jwt_svid(&token, &leader.bundle().unwrap(), "db", clock.now()).unwrap();

    // A journal whose key was made by a key manager cannot be used in shared mode.
    let keys = KeyManagerConfig::Memory.build().await.unwrap();
    let mut managed = CaManager::new(config(), CaKeys::Managed(keys), None, clock.clone()).unwrap();
    managed.rotate().await.unwrap();
    let stranded = CaManager::resume(
        config(),
        CaKeys::Shared,
        None,
        clock.clone(),
        managed.journal().clone(),
        managed.stored_bundle().clone(),
    )
    .unwrap();
    let err = stranded.signing().err().expect("no signer for a key the journal lacks");
    assert!(err.to_string().contains("not in the journal"), "{err}");
}
