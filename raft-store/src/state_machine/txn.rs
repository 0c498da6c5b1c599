//! One command's changes: read-your-writes over the database, collected in a WriteBatch
//! that commits atomically with the revision, change log and last-applied log id.

use std::collections::HashMap;

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
    batch: WriteBatch,
    overlay: HashMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    changes: Vec<Change>,
}

impl<'a> Txn<'a> {
    pub fn new(db: &'a DB) -> Self {
        Self { db, batch: WriteBatch::default(), overlay: HashMap::new(), changes: Vec::new() }
    }

    pub fn get_raw(&self, table: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        if let Some(value) = self.overlay.get(&(table, key.to_vec())) {
            return Ok(value.clone());
        }
        Ok(self.db.get_cf(cf(self.db, table), key)?)
    }

    pub fn get<T: DeserializeOwned>(&self, table: Cf, key: &[u8], what: &'static str) -> Result<Option<T>, TxnError> {
        self.get_raw(table, key)?.map(|b| codec::decode(what, &b).map_err(TxnError::from)).transpose()
    }

    pub fn exists(&self, table: Cf, key: &[u8]) -> Result<bool, TxnError> {
        Ok(self.get_raw(table, key)?.is_some())
    }

    pub fn put_raw(&mut self, table: Cf, key: &[u8], value: Vec<u8>) {
        self.batch.put_cf(cf(self.db, table), key, &value);
        self.overlay.insert((table, key.to_vec()), Some(value));
    }

    pub fn put<T: Serialize>(&mut self, table: Cf, key: &[u8], what: &'static str, value: &T) -> Result<(), TxnError> {
        let bytes = codec::encode(what, value)?;
        self.put_raw(table, key, bytes);
        Ok(())
    }

    pub fn delete(&mut self, table: Cf, key: &[u8]) {
        self.batch.delete_cf(cf(self.db, table), key);
        self.overlay.insert((table, key.to_vec()), None);
    }

    /// Keys and values under `prefix`, in key order, including this transaction's writes,
    /// so the result never depends on how entries were grouped into one apply call.
    pub fn scan_prefix(&self, table: Cf, prefix: &[u8]) -> Result<Vec<Row>, TxnError> {
        let mut rows = std::collections::BTreeMap::new();
        for item in self.db.iterator_cf(cf(self.db, table), IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            rows.insert(key.to_vec(), value.to_vec());
        }
        for ((t, key), value) in &self.overlay {
            if *t == table && key.starts_with(prefix) {
                match value {
                    Some(v) => rows.insert(key.clone(), v.clone()),
                    None => rows.remove(key),
                };
            }
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

    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }
}
