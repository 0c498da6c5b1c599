//! Upgrading a data dir of the previous on-disk format in place, in one step, when a
//! replica starts on it. Only the previous format is upgraded: a replica is upgraded one
//! release at a time, as a rolling upgrade of a cluster goes.
//!
//! Format 2 → 3: a log entry held its command inline; format 3 holds the command's
//! encoding as a length-prefixed byte string (`LoggedCommand`). Every log entry is
//! rewritten and the header's version raised in one synced batch, so a crash part-way
//! leaves the format-2 dir as it was, and the next start upgrades it again.

use openraft::{EntryPayload, Membership};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::Deserialize;

use super::{cf, synced, Header, FORMAT_VERSION};
use crate::codec::{self, CodecError};
use crate::command::Command;
use crate::schema::{meta_key, Cf};
use crate::types::{Entry, LogId, LoggedCommand, NodeId, ReplicaNode};

/// The format this build upgrades from.
pub const PREVIOUS_FORMAT: u32 = FORMAT_VERSION - 1;

/// A log entry as format 2 stored it: openraft's `Entry` with the command inline.
#[derive(Deserialize)]
struct EntryV2 {
    log_id: LogId,
    payload: PayloadV2,
}

/// openraft's `EntryPayload`, variant for variant.
#[derive(Deserialize)]
enum PayloadV2 {
    Blank,
    Normal(Command),
    Membership(Membership<NodeId, ReplicaNode>),
}

/// Why an upgrade failed; the data dir is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("log entry at index {index}: {source}")]
    Entry { index: u64, source: CodecError },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    RocksDb(#[from] rocksdb::Error),
}

/// Rewrites a format-2 store as format 3; returns the number of log entries rewritten.
/// Blocking.
pub fn from_previous(db: &DB, header: &Header) -> Result<usize, UpgradeError> {
    let logs = cf(db, Cf::Logs);
    let mut batch = WriteBatch::default();
    let mut rewritten = 0;
    for item in db.iterator_cf(logs, IteratorMode::Start) {
        let (key, value) = item?;
        let index = key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
        let old: EntryV2 =
            codec::decode("format-2 log entry", &value).map_err(|source| UpgradeError::Entry { index, source })?;
        let payload = match old.payload {
            PayloadV2::Blank => EntryPayload::Blank,
            PayloadV2::Normal(command) => EntryPayload::Normal(
                LoggedCommand::new(command).map_err(|source| UpgradeError::Entry { index, source })?,
            ),
            PayloadV2::Membership(membership) => EntryPayload::Membership(membership),
        };
        let entry = Entry { log_id: old.log_id, payload };
        batch.put_cf(logs, key, codec::encode("log entry", &entry)?);
        rewritten += 1;
    }
    let upgraded = Header { format_version: FORMAT_VERSION, ..header.clone() };
    batch.put_cf(cf(db, Cf::Meta), meta_key::HEADER, codec::encode("header", &upgraded)?);
    db.write_opt(batch, &synced())?;
    Ok(rewritten)
}
