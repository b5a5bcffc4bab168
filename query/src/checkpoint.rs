//! Export checkpoints: per log partition, the offset of the first record not yet in a
//! renamed-into-place file. Kept in the engine's metadata store (column family `exports`,
//! key = log partition name, value = the offset as 8 bytes little-endian), written with
//! `sync`, and only after the file it covers is durable under its final name.

use axle_engine::MetaStore;

use crate::ExportError;

/// The metadata column family holding export checkpoints.
pub const FAMILY: &str = "exports";

/// The checkpoint of `partition` (a log partition name such as `telemetry-0`); 0 if none.
pub fn load(meta: &MetaStore, partition: &str) -> Result<u64, ExportError> {
    match meta.get(FAMILY, partition.as_bytes())? {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| ExportError::BadCheckpoint { partition: partition.to_string(), len: v.len() })?;
            Ok(u64::from_le_bytes(b))
        }
    }
}

/// Durably records that everything before `next` of `partition` is exported.
pub fn store(meta: &MetaStore, partition: &str, next: u64) -> Result<(), ExportError> {
    meta.put(FAMILY, partition.as_bytes(), &next.to_le_bytes(), true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_survive_reopen_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = MetaStore::open(dir.path()).unwrap();
            assert_eq!(load(&m, "t-0").unwrap(), 0);
            store(&m, "t-0", 1234).unwrap();
            m.put(FAMILY, b"t-1", b"xyz", true).unwrap();
        }
        let m = MetaStore::open(dir.path()).unwrap();
        assert_eq!(load(&m, "t-0").unwrap(), 1234);
        assert!(load(&m, "t-1").unwrap_err().to_string().contains("t-1"));
    }
}
