//! One command's changes: read-your-writes over the database, collected in a WriteBatch
//! that commits atomically with the revision, change log and last-applied log id.

use std::collections::BTreeMap;
use std::ops::Bound;

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, CodecError, Row};
use crate::command::{Change, Table};
use crate::db::cf;
use crate::schema::Cf;

/// A failure of the store itself (not a refused command).
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Reads and scans see the database plus this transaction's own writes. One transaction
/// spans every entry of an apply call, and commits them in one write.
pub struct Txn<'a> {
    db: &'a DB,
    /// Each key's last write (None: deleted), by column family. Only the last write of a
    /// key matters to the committed state, so the batch is built from these at the end:
    /// one copy of each value, and keys in order.
    writes: BTreeMap<Cf, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    changes: Vec<Change>,
}

impl<'a> Txn<'a> {
    pub fn new(db: &'a DB) -> Self {
        Self { db, writes: BTreeMap::new(), changes: Vec::new() }
    }

    /// This transaction's write of `key`: Some(None) if it deleted it.
    fn written(&self, table: Cf, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(&table).and_then(|rows| rows.get(key)).map(|value| value.as_deref())
    }

    pub fn get<T: DeserializeOwned>(&self, table: Cf, key: &[u8], what: &'static str) -> Result<Option<T>, TxnError> {
        let decode = |bytes: &[u8]| codec::decode(what, bytes).map_err(TxnError::from);
        match self.written(table, key) {
            Some(value) => value.map(decode).transpose(),
            None => self.db.get_pinned_cf(cf(self.db, table), key)?.map(|b| decode(&b)).transpose(),
        }
    }

    /// The stored value of `key`, as raw bytes.
    pub fn get_raw(&self, table: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        match self.written(table, key) {
            Some(value) => Ok(value.map(<[u8]>::to_vec)),
            None => Ok(self.db.get_pinned_cf(cf(self.db, table), key)?.map(|b| b.to_vec())),
        }
    }

    pub fn exists(&self, table: Cf, key: &[u8]) -> Result<bool, TxnError> {
        match self.written(table, key) {
            Some(value) => Ok(value.is_some()),
            None => Ok(self.db.get_pinned_cf(cf(self.db, table), key)?.is_some()),
        }
    }

    /// Writes `value` under `key`; both are kept as given, without a copy.
    pub fn put_raw(&mut self, table: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.writes.entry(table).or_default().insert(key, Some(value));
    }

    pub fn put<T: Serialize>(&mut self, table: Cf, key: &[u8], what: &'static str, value: &T) -> Result<(), TxnError> {
        let bytes = codec::encode(what, value)?;
        self.put_raw(table, key.to_vec(), bytes);
        Ok(())
    }

    pub fn delete(&mut self, table: Cf, key: &[u8]) {
        self.writes.entry(table).or_default().insert(key.to_vec(), None);
    }

    /// Keys and values under `prefix`, in key order, including this transaction's writes,
    /// so the result never depends on how entries were grouped into one apply call.
    pub fn scan_prefix(&self, table: Cf, prefix: &[u8]) -> Result<Vec<Row>, TxnError> {
        let mut rows = BTreeMap::new();
        for item in self.db.iterator_cf(cf(self.db, table), IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            rows.insert(key.to_vec(), value.to_vec());
        }
        let written = self
            .writes
            .get(&table)
            .into_iter()
            .flat_map(|w| w.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded)));
        for (key, value) in written.take_while(|(key, _)| key.starts_with(prefix)) {
            match value {
                Some(v) => rows.insert(key.clone(), v.clone()),
                None => rows.remove(key),
            };
        }
        Ok(rows.into_iter().collect())
    }

    /// Notes a changed row for the change log.
    pub fn record(&mut self, table: Table, key: &str, deleted: bool) {
        self.changes.push(Change { table, key: key.to_owned(), deleted });
    }

    /// The changes recorded since the last call: one command's worth.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Every write of the transaction, for one atomic RocksDB write.
    pub fn into_batch(self) -> WriteBatch {
        // Sized up front: a batch of a thousand entries otherwise grows (and is copied) a
        // dozen times. Each record also holds a tag, a column family id and two lengths.
        let size: usize = self
            .writes
            .values()
            .flat_map(|rows| rows.iter())
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        let mut batch = WriteBatch::with_capacity_bytes(size + 12);
        for (table, rows) in &self.writes {
            let handle = cf(self.db, *table);
            for (key, value) in rows {
                match value {
                    Some(value) => batch.put_cf(handle, key, value),
                    None => batch.delete_cf(handle, key),
                }
            }
        }
        batch
    }
}
