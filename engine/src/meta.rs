//! The metadata store: RocksDB beside the log, one column family per kind of record
//! (sessions, subscriptions, cursors, retained messages, consumer-group offsets, export
//! checkpoints, broker users and bans). Values are opaque bytes here; each owner encodes its
//! own.
//!
//! Writes that must survive a crash together go through [`MetaStore::write_batch`], which
//! is atomic and, with `sync = true`, durable before it returns.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

/// The column families the engine uses. Adding one is compatible; removing one is not.
pub const COLUMN_FAMILIES: &[&str] = &[
    "sessions",
    "subscriptions",
    "cursors",
    "retained",
    "groups",
    "exports",
    "users",
    "bans",
    "replication",
    "owners",
];

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store at {path}: {source}")]
    Rocks {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("unknown metadata column family {0:?}; this is a bug in the engine")]
    UnknownFamily(String),
}

/// A RocksDB database holding Axle's metadata.
pub struct MetaStore {
    db: DB,
    path: String,
}

/// Keys and values in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// One change in an atomic batch.
#[derive(Debug, Clone, Copy)]
pub enum MetaOp<'a> {
    Put { family: &'a str, key: &'a [u8], value: &'a [u8] },
    Delete { family: &'a str, key: &'a [u8] },
}

impl MetaStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<MetaStore, MetaError> {
        let path = dir.display().to_string();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = COLUMN_FAMILIES.iter().map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|source| MetaError::Rocks { path: path.clone(), source })?;
        Ok(MetaStore { db, path })
    }

    fn err(&self, source: rocksdb::Error) -> MetaError {
        MetaError::Rocks { path: self.path.clone(), source }
    }

    fn cf(&self, family: &str) -> Result<&rocksdb::ColumnFamily, MetaError> {
        self.db.cf_handle(family).ok_or_else(|| MetaError::UnknownFamily(family.to_string()))
    }

    pub fn get(&self, family: &str, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.db.get_cf(self.cf(family)?, key).map_err(|e| self.err(e))
    }

    /// Applies `ops` atomically; with `sync` they are on disk when this returns.
    pub fn write_batch(&self, ops: &[MetaOp<'_>], sync: bool) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                MetaOp::Put { family, key, value } => batch.put_cf(self.cf(family)?, key, value),
                MetaOp::Delete { family, key } => batch.delete_cf(self.cf(family)?, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(|e| self.err(e))
    }

    pub fn put(&self, family: &str, key: &[u8], value: &[u8], sync: bool) -> Result<(), MetaError> {
        self.write_batch(&[MetaOp::Put { family, key, value }], sync)
    }

    pub fn delete(&self, family: &str, key: &[u8], sync: bool) -> Result<(), MetaError> {
        self.write_batch(&[MetaOp::Delete { family, key }], sync)
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, family: &str, prefix: &[u8]) -> Result<KeyValues, MetaError> {
        let cf = self.cf(family)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(cf, rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Flushes memtables and the WAL to disk (graceful shutdown).
    pub fn flush(&self) -> Result<(), MetaError> {
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name)?).map_err(|e| self.err(e))?;
        }
        self.db.flush_wal(true).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_atomic_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = MetaStore::open(dir.path()).unwrap();
            m.write_batch(
                &[
                    MetaOp::Put { family: "sessions", key: b"c1", value: b"s1" },
                    MetaOp::Put { family: "cursors", key: b"c1/t-0", value: b"42" },
                    MetaOp::Put { family: "cursors", key: b"c2/t-0", value: b"7" },
                ],
                true,
            )
            .unwrap();
            m.delete("cursors", b"c2/t-0", true).unwrap();
        }
        let m = MetaStore::open(dir.path()).unwrap();
        assert_eq!(m.get("sessions", b"c1").unwrap().as_deref(), Some(&b"s1"[..]));
        assert_eq!(m.scan_prefix("cursors", b"c").unwrap(), vec![(b"c1/t-0".to_vec(), b"42".to_vec())]);
        assert!(matches!(m.get("nope", b"x"), Err(MetaError::UnknownFamily(_))));
    }
}
