//! Answered requests: the answer the state machine gave each of the last
//! [`REQUEST_WINDOW`] idempotent writes, by request id, so that a write sent again after its
//! answer was lost (a leader that died between commit and answer) is answered again instead
//! of applied twice.
//!
//! Kept in `Cf::SmMeta` beside the other state, so snapshots and backups carry it, and
//! bounded by count, not time: apply reads no clock. Each answered write takes a slot of a
//! ring of [`REQUEST_WINDOW`] slots; the write that takes a slot drops the answer that held
//! it. At 4,400 writes a second (the write benchmark's rate) the window is 11 seconds; a
//! retry comes within the 10 s a replica retries for.

use serde::{Deserialize, Serialize};

use super::txn::{Txn, TxnError};
use crate::codec;
use crate::command::{Idempotent, Outcome, RequestId, Response};
use crate::schema::{sm_key, Cf};

/// How many answers are kept.
pub const REQUEST_WINDOW: u64 = 50_000;

const ANSWER_PREFIX: &[u8] = b"request:";
const SLOT_PREFIX: &[u8] = b"request_slot:";

/// What was answered, and to which command (a caller's request ids only): a request id
/// sent again with another command is a caller's bug, or a call whose server-chosen values
/// changed; it is refused rather than answered with another write's answer.
#[derive(Serialize, Deserialize)]
struct Answered {
    fingerprint: Option<[u8; 32]>,
    response: Response,
}

fn answer_key(id: &RequestId) -> Vec<u8> {
    let mut key = Vec::with_capacity(ANSWER_PREFIX.len() + 24);
    key.extend_from_slice(ANSWER_PREFIX);
    key.extend_from_slice(&id.client);
    key.extend_from_slice(&codec::u64_key(id.seq));
    key
}

fn slot_key(slot: u64) -> Vec<u8> {
    let mut key = SLOT_PREFIX.to_vec();
    key.extend_from_slice(&codec::u64_key(slot));
    key
}

/// The answer given to `once`'s id before, if it is still in the window; `RequestIdReused`
/// (at `revision`, nothing applied) if both carry fingerprints and they differ.
pub(super) fn answered(txn: &Txn<'_>, once: &Idempotent, revision: u64) -> Result<Option<Response>, TxnError> {
    let Some(answered) = txn.get::<Answered>(Cf::SmMeta, &answer_key(&once.id), "answered request")? else {
        return Ok(None);
    };
    match (answered.fingerprint, once.fingerprint) {
        (Some(first), Some(now)) if first != now => {
            Ok(Some(Response { revision, outcome: Outcome::RequestIdReused(once.id) }))
        }
        _ => Ok(Some(answered.response)),
    }
}

/// Keeps the answer to `once`, dropping the oldest kept answer once the window is full.
pub(super) fn remember(txn: &mut Txn<'_>, once: &Idempotent, response: &Response) -> Result<(), TxnError> {
    let seen: u64 = txn.get(Cf::SmMeta, sm_key::REQUESTS_SEEN, "requests seen")?.unwrap_or(0);
    let slot = slot_key(seen % REQUEST_WINDOW);
    if let Some(oldest) = txn.get::<RequestId>(Cf::SmMeta, &slot, "request slot")? {
        txn.delete(Cf::SmMeta, &answer_key(&oldest));
    }
    txn.put(Cf::SmMeta, &slot, "request slot", &once.id)?;
    let answered = Answered { fingerprint: once.fingerprint, response: response.clone() };
    txn.put(Cf::SmMeta, &answer_key(&once.id), "answered request", &answered)?;
    txn.put(Cf::SmMeta, sm_key::REQUESTS_SEEN, "requests seen", &(seen + 1))
}
