//! Rotations of the cluster CA: prepared, then advanced phase by phase, each step only once
//! every member has reported reaching the one before.

use std::collections::BTreeSet;

use crate::command::{AdvanceClusterCa, ApplyError, Outcome, PrepareClusterCa, ReachClusterCaPhase};
use crate::model::{ClusterCaPhase, ClusterCaRotation};
use crate::schema::{sm_key, Cf};
use crate::state_machine::txn::{Txn, TxnError};
use crate::types::{NodeId, StoredMembership};

const WHAT: &str = "cluster CA rotation";

fn refused(e: ApplyError) -> Outcome {
    Outcome::ClusterCa(Err(e))
}

fn stored(txn: &Txn<'_>) -> Result<Option<ClusterCaRotation>, TxnError> {
    txn.get(Cf::SmMeta, sm_key::CLUSTER_CA, WHAT)
}

fn save(txn: &mut Txn<'_>, rotation: ClusterCaRotation) -> Result<Outcome, TxnError> {
    txn.put(Cf::SmMeta, sm_key::CLUSTER_CA, WHAT, &rotation)?;
    Ok(Outcome::ClusterCa(Ok(rotation)))
}

pub fn prepare(txn: &mut Txn<'_>, c: &PrepareClusterCa) -> Result<Outcome, TxnError> {
    if c.cert_der.is_empty() || c.previous_cert_der.is_empty() || c.key.pkcs8_der().is_empty() {
        return Ok(refused(ApplyError::InvalidArgument("a cluster CA needs a certificate and a key".into())));
    }
    let last = stored(txn)?;
    if let Some(last) = &last {
        if last.phase != ClusterCaPhase::Retired {
            return Ok(refused(ApplyError::FailedPrecondition(format!(
                "rotation {} of the cluster CA is under way ({})",
                last.generation,
                last.phase.as_str()
            ))));
        }
    }
    let expected = last.map_or(1, |l| l.generation + 1);
    if c.generation != expected {
        return Ok(refused(ApplyError::FailedPrecondition(format!(
            "the next rotation of the cluster CA is {expected}, not {}",
            c.generation
        ))));
    }
    save(
        txn,
        ClusterCaRotation {
            generation: c.generation,
            cert_der: c.cert_der.clone(),
            key: Some(c.key.clone()),
            previous_cert_der: c.previous_cert_der.clone(),
            phase: ClusterCaPhase::Prepared,
            reached: BTreeSet::new(),
        },
    )
}

/// The rotation `generation` in `phase`, or why the command is refused.
fn in_phase(
    txn: &Txn<'_>,
    generation: u64,
    phase: ClusterCaPhase,
) -> Result<Result<ClusterCaRotation, ApplyError>, TxnError> {
    Ok(match stored(txn)? {
        Some(r) if r.generation == generation && r.phase == phase => Ok(r),
        Some(r) => Err(ApplyError::FailedPrecondition(format!(
            "the cluster CA is at rotation {} ({}), not {generation} ({})",
            r.generation,
            r.phase.as_str(),
            phase.as_str()
        ))),
        None => Err(ApplyError::NotFound(WHAT.into())),
    })
}

pub fn advance(txn: &mut Txn<'_>, c: &AdvanceClusterCa) -> Result<Outcome, TxnError> {
    let mut rotation = match in_phase(txn, c.generation, c.from)? {
        Ok(r) => r,
        Err(e) => return Ok(refused(e)),
    };
    let Some(next) = c.from.next() else {
        return Ok(refused(ApplyError::FailedPrecondition("a retired rotation has no next phase".into())));
    };
    let membership: Option<StoredMembership> = txn.get(Cf::SmMeta, sm_key::MEMBERSHIP, "membership")?;
    let behind: Vec<NodeId> = membership
        .iter()
        .flat_map(|m| m.membership().nodes().map(|(id, _)| *id).collect::<Vec<_>>())
        .filter(|id| !rotation.reached.contains(id))
        .collect();
    if !behind.is_empty() {
        return Ok(refused(ApplyError::FailedPrecondition(format!(
            "members {behind:?} have not reached {} yet",
            c.from.as_str()
        ))));
    }
    rotation.phase = next;
    rotation.reached.clear();
    if next == ClusterCaPhase::Retired {
        // Every member holds the new key in its data dir now.
        rotation.key = None;
    }
    save(txn, rotation)
}

pub fn reach(txn: &mut Txn<'_>, c: &ReachClusterCaPhase) -> Result<Outcome, TxnError> {
    let mut rotation = match in_phase(txn, c.generation, c.phase)? {
        Ok(r) => r,
        Err(e) => return Ok(refused(e)),
    };
    if rotation.reached.insert(c.node_id) {
        return save(txn, rotation);
    }
    Ok(Outcome::ClusterCa(Ok(rotation)))
}
