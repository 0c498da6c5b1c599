//! When to prepare and activate the next authority: plain functions of (slots, now).
//!
//! SPIRE's schedule: prepare the next authority once `now` passes
//! `notAfter − min(lifetime/2, 30d)` of the active one, and activate it once `now` passes
//! `notAfter − min(lifetime/6, 7d)`. Validators thus learn of the next authority long
//! before anything is signed with it.

use std::time::Duration;

use time::OffsetDateTime;

use raft_store::model::{Authority, SlotId, SlotPair, SlotStatus};

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
}
