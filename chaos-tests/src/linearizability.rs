//! A linearizability checker for histories of single-key register operations, in the
//! manner of Wing & Gong's search with Lowe's memoisation (as Porcupine does it): find an
//! order of the operations that respects real time (an operation that returned before
//! another was invoked comes first) and in which every read sees the latest write.
//!
//! Keys are independent (linearizability is compositional), so a history is checked key
//! by key. An operation whose result is unknown (the client timed out) may have taken effect
//! at any moment after its invocation, or never: it is given no return time, so the search
//! may place it anywhere after its invocation, including after everything else. A failed
//! operation (refused, known not to have happened) is left out.

use std::collections::{BTreeMap, HashSet};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Set the key to `Some(value)`, or remove it with `None`.
    Write(Option<String>),
    /// Read the key.
    Read,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; for a read, the value it saw.
    Ok(Option<String>),
    /// Refused: it did not happen.
    Failed,
    /// No answer: it may or may not have happened.
    Unknown,
}

/// One operation as a client recorded it. Times are on one clock (e.g. nanoseconds since
/// the run began); `returned` is when the answer (or the give-up) came.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub invoked: u64,
    pub returned: u64,
    pub outcome: Outcome,
}

/// The verdict for a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The first key (in key order) with no valid order, and how many operations it had.
    NotLinearizable {
        key: String,
        operations: usize,
    },
}

/// One operation prepared for the search.
#[derive(Clone, Debug)]
struct Call {
    op: Op,
    /// The value a read must see; `None` when unconstrained.
    read_result: Option<Option<String>>,
    invoked: u64,
    /// `None`: never returned (unknown outcome).
    returned: Option<u64>,
}

/// Checks a history; `initial` is every key's value before the history (usually absent).
pub fn check(history: &[Recorded], initial: Option<String>) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Call>> = BTreeMap::new();
    for r in history {
        let call = match (&r.op, &r.outcome) {
            (_, Outcome::Failed) => continue,
            // A read with no answer constrains nothing.
            (Op::Read, Outcome::Unknown) => continue,
            (Op::Read, Outcome::Ok(seen)) => {
                Call { op: Op::Read, read_result: Some(seen.clone()), invoked: r.invoked, returned: Some(r.returned) }
            }
            (op @ Op::Write(_), Outcome::Ok(_)) => {
                Call { op: op.clone(), read_result: None, invoked: r.invoked, returned: Some(r.returned) }
            }
            (op @ Op::Write(_), Outcome::Unknown) => {
                Call { op: op.clone(), read_result: None, invoked: r.invoked, returned: None }
            }
        };
        by_key.entry(r.key.as_str()).or_default().push(call);
    }
    for (key, calls) in by_key {
        if !check_key(&calls, initial.clone()) {
            return Verdict::NotLinearizable { key: key.to_owned(), operations: calls.len() };
        }
    }
    Verdict::Linearizable
}

/// The register model: applying `call` to `state`, if the call's observed result allows.
fn step(state: &Option<String>, call: &Call) -> Option<Option<String>> {
    match &call.op {
        Op::Write(value) => Some(value.clone()),
        Op::Read => match &call.read_result {
            Some(seen) if seen != state => None,
            _ => Some(state.clone()),
        },
    }
}

/// The search for one key. Operations are linearized one at a time; an operation may be
/// next only if it was invoked before every not-yet-linearized operation returned (no
/// pending operation finished before it began). Memoised on (set linearized, state).
fn check_key(calls: &[Call], initial: Option<String>) -> bool {
    let n = calls.len();
    if n == 0 {
        return true;
    }
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut state = initial;
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // The stack of choices: (operation linearized, state before it, next candidate to try
    // at this depth after backtracking).
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut next_candidate = 0usize;
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    loop {
        if stack.len() == n {
            return true;
        }
        // The earliest return among pending operations bounds which may go next.
        let horizon =
            (0..n).filter(|&i| !is_done(&done, i)).filter_map(|i| calls[i].returned).min().unwrap_or(u64::MAX);
        let choice = (next_candidate..n).find_map(|i| {
            if is_done(&done, i) || calls[i].invoked > horizon {
                return None;
            }
            let after = step(&state, &calls[i])?;
            let mut key = done.clone();
            key[i / 64] |= 1 << (i % 64);
            seen.insert((key.clone(), after.clone())).then_some((i, key, after))
        });
        let advanced = choice.is_some();
        if let Some((i, key, after)) = choice {
            stack.push((i, std::mem::replace(&mut state, after)));
            done = key;
            next_candidate = 0;
        }
        if !advanced {
            let Some((i, before)) = stack.pop() else { return false };
            done[i / 64] &= !(1 << (i % 64));
            state = before;
            next_candidate = i + 1;
        }
    }
}

/// Acknowledged writes missing from the final state: for each key, the value the last
/// acknowledged write left must be what `final_state` holds, unless a later write with an
/// unknown outcome could have replaced it. Returns the keys that lost a write.
pub fn lost_writes(history: &[Recorded], final_state: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Recorded>> = BTreeMap::new();
    for r in history.iter().filter(|r| matches!(r.op, Op::Write(_)) && r.outcome != Outcome::Failed) {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }
    let mut lost = Vec::new();
    for (key, writes) in by_key {
        let actual = final_state.get(key).cloned().flatten();
        // Values some linearization could end with: those of writes that no acknowledged
        // write certainly followed (invoked after they returned).
        let possible: Vec<Option<String>> = writes
            .iter()
            .filter(|w| {
                !writes.iter().any(|later| {
                    matches!(later.outcome, Outcome::Ok(_))
                        && later.invoked > w.returned
                        && w.outcome != Outcome::Unknown
                })
            })
            .filter_map(|w| match &w.op {
                Op::Write(v) => Some(v.clone()),
                Op::Read => None,
            })
            .collect();
        let acknowledged = writes.iter().any(|w| matches!(w.outcome, Outcome::Ok(_)));
        if acknowledged && !possible.contains(&actual) {
            lost.push(key.to_owned());
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, value: Option<&str>, invoked: u64, returned: u64, outcome: Outcome) -> Recorded {
        Recorded { client, key: "k".into(), op: Op::Write(value.map(str::to_owned)), invoked, returned, outcome }
    }
    fn r(client: usize, seen: Option<&str>, invoked: u64, returned: u64) -> Recorded {
        Recorded {
            client,
            key: "k".into(),
            op: Op::Read,
            invoked,
            returned,
            outcome: Outcome::Ok(seen.map(str::to_owned)),
        }
    }
    fn ok() -> Outcome {
        Outcome::Ok(None)
    }

    #[test]
    fn sequential_and_concurrent_histories_that_are_linearizable() {
        assert_eq!(check(&[], None), Verdict::Linearizable);
        let h = [w(0, Some("a"), 0, 10, ok()), r(1, Some("a"), 20, 30), w(0, None, 40, 50, ok()), r(1, None, 60, 70)];
        assert_eq!(check(&h, None), Verdict::Linearizable);
        // Overlapping write and reads: one read sees the old value, one the new.
        let h = [w(0, Some("a"), 0, 100, ok()), r(1, None, 10, 20), r(2, Some("a"), 30, 40), r(1, Some("a"), 110, 120)];
        assert_eq!(check(&h, None), Verdict::Linearizable);
        // A write with an unknown outcome may have happened...
        let h = [w(0, Some("a"), 0, 10, Outcome::Unknown), r(1, Some("a"), 50, 60)];
        assert_eq!(check(&h, None), Verdict::Linearizable);
        // ...or not.
        let h = [w(0, Some("a"), 0, 10, Outcome::Unknown), r(1, None, 50, 60)];
        assert_eq!(check(&h, None), Verdict::Linearizable);
    }

    #[test]
    fn known_bad_histories_are_caught() {
        // A stale read: the write returned before the read began.
        let h = [w(0, Some("a"), 0, 10, ok()), r(1, None, 20, 30)];
        assert_eq!(check(&h, None), Verdict::NotLinearizable { key: "k".into(), operations: 2 });
        // A read of a value nobody wrote.
        let h = [w(0, Some("a"), 0, 10, ok()), r(1, Some("b"), 20, 30)];
        assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
        // Reads that see the new value and then the old one (no order allows both).
        let h = [w(0, Some("a"), 0, 100, ok()), r(1, Some("a"), 10, 20), r(2, None, 30, 40)];
        assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
        // A failed write did not happen: reading its value is wrong.
        let h = [w(0, Some("a"), 0, 10, Outcome::Failed), r(1, Some("a"), 20, 30)];
        assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
        // Two sequential writes read back in the wrong order.
        let h = [w(0, Some("a"), 0, 10, ok()), w(0, Some("b"), 20, 30, ok()), r(1, Some("a"), 40, 50)];
        assert!(matches!(check(&h, None), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn keys_are_checked_apart_and_large_histories_finish() {
        let mut h = Vec::new();
        // 200 clients writing and reading one key in overlapping pairs: linearizable.
        for i in 0..200u64 {
            let v = format!("v{i}");
            h.push(Recorded {
                client: (i % 7) as usize,
                key: "busy".into(),
                op: Op::Write(Some(v.clone())),
                invoked: i * 10,
                returned: i * 10 + 15,
                outcome: Outcome::Ok(None),
            });
            h.push(Recorded {
                client: 7,
                key: "busy".into(),
                op: Op::Read,
                invoked: i * 10 + 16,
                returned: i * 10 + 19,
                outcome: Outcome::Ok(Some(v)),
            });
        }
        h.push(Recorded {
            client: 9,
            key: "other".into(),
            op: Op::Read,
            invoked: 0,
            returned: 1,
            outcome: Outcome::Ok(Some("ghost".into())),
        });
        assert_eq!(check(&h, None), Verdict::NotLinearizable { key: "other".into(), operations: 1 });
        h.pop();
        assert_eq!(check(&h, None), Verdict::Linearizable);
    }

    #[test]
    fn lost_acknowledged_writes_are_found() {
        let h = [w(0, Some("a"), 0, 10, ok()), w(0, Some("b"), 20, 30, ok())];
        let state = |v: Option<&str>| BTreeMap::from([("k".to_owned(), v.map(str::to_owned))]);
        assert!(lost_writes(&h, &state(Some("b"))).is_empty());
        assert_eq!(lost_writes(&h, &state(Some("a"))), ["k"], "the later acknowledged write was lost");
        assert_eq!(lost_writes(&h, &state(None)), ["k"]);
        // With a later write of unknown outcome, either value may remain.
        let h = [w(0, Some("a"), 0, 10, ok()), w(1, Some("c"), 20, 30, Outcome::Unknown)];
        assert!(lost_writes(&h, &state(Some("a"))).is_empty());
        assert!(lost_writes(&h, &state(Some("c"))).is_empty());
        assert_eq!(lost_writes(&h, &state(Some("z"))), ["k"]);
    }

    /// Histories made by a register that is linearizable by construction: each operation
    /// takes effect at a point inside its [invoked, returned] interval, in point order.
    fn linearizable_history(plan: &[(bool, u8, u64, u64, u64)]) -> Vec<Recorded> {
        let mut state: Option<String> = None;
        let mut history = Vec::new();
        for (n, &(is_write, value, gap, before, after)) in plan.iter().enumerate() {
            // Linearization points are 1000 apart; intervals reach up to 2500 either side,
            // so neighbours overlap in every way.
            let point = (n as u64 + 1) * 1000 + gap % 100;
            let (invoked, returned) = (point.saturating_sub(before % 2500), point + after % 2500);
            if is_write {
                let v = (value % 4 != 0).then(|| format!("v{value}"));
                state = v.clone();
                history.push(Recorded {
                    client: n % 5,
                    key: "k".into(),
                    op: Op::Write(v),
                    invoked,
                    returned,
                    outcome: Outcome::Ok(None),
                });
            } else {
                history.push(Recorded {
                    client: n % 5,
                    key: "k".into(),
                    op: Op::Read,
                    invoked,
                    returned,
                    outcome: Outcome::Ok(state.clone()),
                });
            }
        }
        history
    }

    proptest::proptest! {
        #[test]
        fn whatever_a_linearizable_register_records_is_accepted(plan in proptest::collection::vec((proptest::bool::ANY, 0u8..8, 0u64..100, 0u64..5000, 0u64..5000), 0..40)) {
            let history = linearizable_history(&plan);
            proptest::prop_assert_eq!(check(&history, None), Verdict::Linearizable);
        }

        #[test]
        fn a_read_of_a_value_never_written_is_refused(plan in proptest::collection::vec((proptest::bool::ANY, 0u8..8, 0u64..100, 0u64..5000, 0u64..5000), 1..40), at in 0usize..40) {
            let mut history = linearizable_history(&plan);
            let at = at % history.len();
            history[at] = Recorded { op: Op::Read, outcome: Outcome::Ok(Some("never-written".into())), ..history[at].clone() };
            let verdict = check(&history, None);
            proptest::prop_assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{:?}", verdict);
        }
    }
}
