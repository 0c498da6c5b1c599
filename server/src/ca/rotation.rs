//! When to prepare and activate the next authority: plain functions of (slots, now).
//!
//! SPIRE's schedule: prepare the next authority once `now` passes
//! `notAfter − min(lifetime/2, 30d)` of the active one, and activate it once `now` passes
//! `notAfter − min(lifetime/6, 7d)`. Validators thus learn of the next authority long
//! before anything is signed with it.

use std::time::Duration;

use time::OffsetDateTime;

use identity::bundle::Bundle;
use identity::TrustDomain;
use raft_store::model::{Authority, SlotId, SlotPair, SlotStatus, StoredBundle, X509CaAuthority};

const THIRTY_DAYS: Duration = Duration::from_secs(30 * 86400);
const SEVEN_DAYS: Duration = Duration::from_secs(7 * 86400);

/// What to do next for one authority kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationStep {
    /// Make a new authority in `slot`; activate it at once when nothing valid signs now.
    Prepare { slot: SlotId, activate: bool },
    /// Start signing with the prepared authority in `slot`.
    Activate { slot: SlotId },
}

fn lifetime(a: &impl Authority) -> Duration {
    Duration::try_from(a.not_after() - a.not_before()).unwrap_or(Duration::ZERO)
}

/// When the next authority should be prepared.
pub fn preparation_threshold(active: &impl Authority) -> OffsetDateTime {
    active.not_after() - (lifetime(active) / 2).min(THIRTY_DAYS)
}

/// When the prepared authority should be activated.
pub fn activation_threshold(active: &impl Authority) -> OffsetDateTime {
    active.not_after() - (lifetime(active) / 6).min(SEVEN_DAYS)
}

/// The one step rotation needs now, if any. Call again after carrying it out: a fresh
/// cluster needs a prepare (with activation) and nothing more; a rotation needs a
/// prepare, then later an activate.
pub fn next_step<T: Authority>(slots: &SlotPair<T>, now: OffsetDateTime) -> Option<RotationStep> {
    let valid = |status| slots.with_status(status).filter(|s| now < s.authority.not_after());
    match (valid(SlotStatus::Active), valid(SlotStatus::Prepared)) {
        (None, Some(prepared)) => Some(RotationStep::Activate { slot: prepared.id }),
        (None, None) => {
            // Never prepare over a slot marked active, even an expired one.
            let slot = match slots.active() {
                Some(expired) => expired.id.other(),
                None => SlotId::A,
            };
            Some(RotationStep::Prepare { slot, activate: true })
        }
        (Some(active), None) => (now >= preparation_threshold(&active.authority))
            .then_some(RotationStep::Prepare { slot: active.id.other(), activate: false }),
        (Some(active), Some(prepared)) => {
            (now >= activation_threshold(&active.authority)).then_some(RotationStep::Activate { slot: prepared.id })
        }
    }
}

/// Whether `authority` (signed upstream) chains to a root `bundle` marks tainted: the
/// upstream distrusts it, so what it signed must be replaced. A self-signed CA never does
/// (tainting our own CA is the local authority API's business).
pub fn chains_to_tainted(
    authority: &X509CaAuthority,
    bundle: &StoredBundle,
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
) -> bool {
    // The leader asks every second: nothing is parsed unless a root is tainted.
    if authority.trust_anchors.contains(&authority.certificate) || !bundle.x509_authorities.iter().any(|a| a.tainted) {
        return false;
    }
    let mut tainted = Bundle::new(trust_domain.clone());
    for root in bundle.x509_authorities.iter().filter(|a| a.tainted) {
        if tainted.add_x509_authority(&root.der).is_err() {
            return false;
        }
    }
    let chain: Vec<&[u8]> = std::iter::once(authority.certificate.as_slice())
        .chain(authority.upstream_chain.iter().map(Vec::as_slice))
        .collect();
    identity::x509::verify_ca_chain(&chain, &tainted, now).is_ok()
}

/// The step a nested cluster needs when the upstream tainted the root its active CA chains
/// to: activate the prepared CA if that one is clean, else a new CA from the upstream
/// (which signs with its current authority) at once. SPIRE's downstreams do the same;
/// agents then replace the SVIDs that chain to the tainted root.
pub fn tainted_upstream_step(
    slots: &SlotPair<X509CaAuthority>,
    bundle: &StoredBundle,
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
) -> Option<RotationStep> {
    let active = slots.active()?;
    if !chains_to_tainted(&active.authority, bundle, trust_domain, now) {
        return None;
    }
    match slots.prepared() {
        Some(prepared) if !chains_to_tainted(&prepared.authority, bundle, trust_domain, now) => {
            Some(RotationStep::Activate { slot: prepared.id })
        }
        _ => Some(RotationStep::Prepare { slot: active.id.other(), activate: true }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_store::model::SlotEvent;

    fn apply_for_tests<T: Clone>(pair: &mut SlotPair<T>, event: SlotEvent<T>) {
        pair.apply(&event).expect("valid transition");
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Life(OffsetDateTime, OffsetDateTime);

    impl Authority for Life {
        fn not_before(&self) -> OffsetDateTime {
            self.0
        }
        fn not_after(&self) -> OffsetDateTime {
            self.1
        }
    }

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn thresholds_follow_spires_schedule() {
        let day = Life(t(0), t(86400));
        assert_eq!(preparation_threshold(&day), t(43200));
        assert_eq!(activation_threshold(&day), t(86400 - 14400));
        let year = Life(t(0), t(365 * 86400));
        assert_eq!(preparation_threshold(&year), t(335 * 86400), "capped at 30 days");
        assert_eq!(activation_threshold(&year), t(358 * 86400), "capped at 7 days");
    }

    /// Drives the pure decisions over many rotations with a fake clock, carrying out each
    /// step instantly, and checks the invariants operators rely on.
    #[test]
    fn many_rotations_keep_one_valid_authority_signing() {
        for (ttl, tick) in [(86400i64, 60i64), (3600, 7), (400 * 86400, 3600), (60, 1)] {
            let mut slots: SlotPair<Life> = SlotPair::default();
            let mut now = t(0);
            let mut activations = Vec::new();
            let mut prepared_at = None;
            let end = t(ttl * 20);
            while now < end {
                while let Some(step) = next_step(&slots, now) {
                    match step {
                        RotationStep::Prepare { slot, activate } => {
                            apply_for_tests(
                                &mut slots,
                                SlotEvent::Prepared {
                                    slot,
                                    authority: Life(
                                        now - time::Duration::seconds(10),
                                        now + time::Duration::seconds(ttl),
                                    ),
                                },
                            );
                            prepared_at = Some(now);
                            if activate {
                                apply_for_tests(&mut slots, SlotEvent::Activated { slot });
                                activations.push(now);
                            }
                        }
                        RotationStep::Activate { slot } => {
                            let p = prepared_at.expect("activation follows preparation");
                            // The next authority was published well before it signs anything:
                            // min(L/2, 30d) − min(L/6, 7d) ahead.
                            let lead = (ttl / 2).min(30 * 86400) - (ttl / 6).min(7 * 86400);
                            assert!(
                                now - p >= time::Duration::seconds(lead - 2 * tick),
                                "ttl {ttl}: published only {} before activation",
                                now - p
                            );
                            apply_for_tests(&mut slots, SlotEvent::Activated { slot });
                            activations.push(now);
                        }
                    }
                }
                let active = slots.active().expect("an authority is always active");
                assert!(now < active.authority.not_after(), "ttl {ttl}: active authority expired at {now}");
                // The active authority always has at least ~lifetime/6 left, so SVIDs are not cut short.
                let left = active.authority.not_after() - now;
                assert!(
                    left >= time::Duration::seconds((ttl / 6).min(7 * 86400) - tick),
                    "ttl {ttl}: only {left} left"
                );
                assert!(slots.iter().filter(|s| s.status == SlotStatus::Active).count() == 1);
                now += time::Duration::seconds(tick);
            }
            // At least one activation per lifetime, and no churn.
            assert!((20..=60).contains(&activations.len()), "ttl {ttl}: {} activations", activations.len());
        }
    }

    #[test]
    fn expired_active_is_replaced_without_touching_its_slot() {
        let mut slots: SlotPair<Life> = SlotPair::default();
        apply_for_tests(&mut slots, SlotEvent::Prepared { slot: SlotId::A, authority: Life(t(0), t(100)) });
        apply_for_tests(&mut slots, SlotEvent::Activated { slot: SlotId::A });
        assert_eq!(next_step(&slots, t(10)), None);
        assert_eq!(next_step(&slots, t(50)), Some(RotationStep::Prepare { slot: SlotId::B, activate: false }));
        // The server was down through the whole rotation window: recover at once.
        assert_eq!(next_step(&slots, t(200)), Some(RotationStep::Prepare { slot: SlotId::B, activate: true }));
        apply_for_tests(&mut slots, SlotEvent::Prepared { slot: SlotId::B, authority: Life(t(40), t(60)) });
        // A prepared authority that expired before activation is replaced too.
        assert_eq!(next_step(&slots, t(200)), Some(RotationStep::Prepare { slot: SlotId::B, activate: true }));
        assert_eq!(next_step(&slots, t(55)), None, "B waits for A's activation threshold");
        assert_eq!(next_step(&slots, t(90)), Some(RotationStep::Prepare { slot: SlotId::B, activate: false }));
    }

    /// A CA certificate for a new key: self-signed, or signed by `issuer` (cert, key).
    fn ca(issuer: Option<(&[u8], &identity::crypto::LocalKey)>) -> (Vec<u8>, identity::crypto::LocalKey) {
        use identity::crypto::{KeyType, LocalKey, Signer};
        use identity::x509::{mint_ca, CaTemplate, Issuer, Subject};
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let template = CaTemplate {
            trust_domain: TrustDomain::parse("example.org").unwrap(),
            public_key: key.public_key().clone(),
            ttl: Duration::from_secs(86400),
            subject: Subject::ca_default(),
            serial: None,
        };
        let now = OffsetDateTime::now_utc();
        let der = match issuer {
            Some((cert, signer)) => mint_ca(&template, Some(&Issuer::new(cert, signer).unwrap()), None, now),
            None => mint_ca(&template, None, Some(&key), now),
        }
        .unwrap()
        .der;
        (der, key)
    }

    fn authority(certificate: Vec<u8>, roots: &[&[u8]]) -> X509CaAuthority {
        X509CaAuthority {
            key_id: "k".into(),
            certificate,
            upstream_chain: vec![],
            trust_anchors: roots.iter().map(|r| r.to_vec()).collect(),
            not_before: OffsetDateTime::now_utc(),
            not_after: OffsetDateTime::now_utc() + time::Duration::days(1),
            private_key: None,
        }
    }

    #[test]
    fn a_root_tainted_upstream_rotates_the_intermediates_under_it_at_once() {
        use raft_store::model::StoredX509Authority;
        let td = TrustDomain::parse("example.org").unwrap();
        let now = OffsetDateTime::now_utc();
        let ((old_root, old_key), (new_root, new_key)) = (ca(None), ca(None));
        let (under_old, _) = ca(Some((&old_root, &old_key)));
        let (under_new, _) = ca(Some((&new_root, &new_key)));
        let bundle = |old_tainted: bool| StoredBundle {
            x509_authorities: vec![
                StoredX509Authority { der: old_root.clone(), tainted: old_tainted },
                StoredX509Authority { der: new_root.clone(), tainted: false },
            ],
            ..StoredBundle::new(td.clone())
        };
        let roots: [&[u8]; 2] = [&old_root, &new_root];
        let mut slots = SlotPair::default();
        apply_for_tests(&mut slots, SlotEvent::Prepared { slot: SlotId::A, authority: authority(under_old, &roots) });
        apply_for_tests(&mut slots, SlotEvent::Activated { slot: SlotId::A });

        assert_eq!(tainted_upstream_step(&slots, &bundle(false), &td, now), None, "nothing tainted");
        assert_eq!(
            tainted_upstream_step(&slots, &bundle(true), &td, now),
            Some(RotationStep::Prepare { slot: SlotId::B, activate: true }),
            "the active CA chains to the tainted root: a new one at once"
        );
        apply_for_tests(&mut slots, SlotEvent::Prepared { slot: SlotId::B, authority: authority(under_new, &roots) });
        assert_eq!(
            tainted_upstream_step(&slots, &bundle(true), &td, now),
            Some(RotationStep::Activate { slot: SlotId::B }),
            "a prepared CA under the clean root is activated"
        );
        apply_for_tests(&mut slots, SlotEvent::Activated { slot: SlotId::B });
        assert_eq!(tainted_upstream_step(&slots, &bundle(true), &td, now), None, "done");

        // A self-signed CA is never rotated for a taint mark: that is the local authority API.
        let mut own = SlotPair::default();
        apply_for_tests(
            &mut own,
            SlotEvent::Prepared { slot: SlotId::A, authority: authority(old_root.clone(), &[&old_root]) },
        );
        apply_for_tests(&mut own, SlotEvent::Activated { slot: SlotId::A });
        assert_eq!(tainted_upstream_step(&own, &bundle(true), &td, now), None);
    }
}
