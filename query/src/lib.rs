//! The Parquet exporter and the SQL front end. It owns reading stream partitions from a
//! checkpointed offset, writing them as Hive-partitioned Parquet files, and running SQL over
//! those files. It knows records and streams, not MQTT packets or segment files.
