//! `[export]` and `[streams.export]`: the Parquet exporter's settings (see `axle-query`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError};

/// `[export]`: where and how exported Parquet files are written (see `docs/architecture.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Root of the exported files, one subdirectory per stream [default: `<data_dir>/export`].
    pub dir: Option<PathBuf>,
    /// Rows per Parquet row group, at most [default: 131072].
    pub row_group_rows: usize,
    /// zstd compression level, 1..=22 [default: 1].
    pub zstd_level: i32,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection {
            dir: None,
            row_group_rows: axle_query::DEFAULT_ROW_GROUP_ROWS,
            zstd_level: axle_query::DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// `[streams.export]`: Parquet export of one stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamExportSection {
    /// Export this stream inside `axle serve` (`axle export` exports it either way when the
    /// table is present) [default: true].
    pub enabled: bool,
    /// Rows per file, at most [default: 1000000].
    pub roll_rows: u64,
    /// Approximate compressed bytes per file, at most [default: 134217728 = 128 MiB].
    pub roll_bytes: u64,
    /// Seconds a file stays open after its first row before it is closed and visible, also
    /// when the stream is idle [default: 300].
    pub roll_age_secs: u64,
    /// Typed columns, e.g. `{ name = "speed", type = "f64", from = "$.speed" }`. `type`:
    /// `utf8`, `f64`, `i64`, `bool`, `timestamp_ms`; `from`: `topic:N` (topic level, from 1),
    /// `prop:NAME` (MQTT 5 user property) or a JSON path `$.a.b` into the payload.
    pub columns: Vec<ExportColumn>,
}

impl Default for StreamExportSection {
    fn default() -> Self {
        StreamExportSection {
            enabled: true,
            roll_rows: 1_000_000,
            roll_bytes: 128 << 20,
            roll_age_secs: 300,
            columns: Vec::new(),
        }
    }
}

/// One typed column of an exported stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub from: String,
}

impl Config {
    /// The export root: `export.dir`, or `<data_dir>/export`.
    pub fn export_dir(&self) -> PathBuf {
        self.export.dir.clone().unwrap_or_else(|| self.data_dir.join("export"))
    }

    /// Shared export settings.
    pub fn export_settings(&self) -> axle_query::ExportSettings {
        axle_query::ExportSettings {
            root: self.export_dir(),
            row_group_rows: self.export.row_group_rows,
            zstd_level: self.export.zstd_level,
        }
    }

    /// The streams with a `[streams.export]` table; with `enabled_only`, only those with
    /// `enabled = true` (what `axle serve` exports).
    pub fn export_configs(&self, enabled_only: bool) -> Result<Vec<axle_query::ExportConfig>, ConfigError> {
        let mut out = Vec::new();
        for (i, s) in self.streams.iter().enumerate() {
            let Some(e) = &s.export else { continue };
            if enabled_only && !e.enabled {
                continue;
            }
            let invalid = |m: String| {
                ConfigError::invalid(format!("streams[{i}].export"), format!("stream {} export: {m}", s.name))
            };
            if e.roll_rows == 0 || e.roll_bytes == 0 || e.roll_age_secs == 0 {
                return Err(invalid("roll_rows, roll_bytes and roll_age_secs must be at least 1".into()));
            }
            let columns = e
                .columns
                .iter()
                .map(|c| {
                    axle_query::TypedColumn::parse(&c.name, &c.ty, &c.from).map_err(|err| invalid(err.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            axle_query::schema::validate_columns(&columns).map_err(|err| invalid(err.to_string()))?;
            out.push(axle_query::ExportConfig {
                stream: s.name.clone(),
                roll: axle_query::RollPolicy {
                    max_rows: e.roll_rows,
                    max_bytes: e.roll_bytes,
                    max_age: Duration::from_secs(e.roll_age_secs),
                },
                columns,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_export_tables_parse_and_bad_columns_are_named() {
        let cfg: Config = toml::from_str(
            r#"
            data_dir = "/d"
            [[streams]]
            name = "telemetry"
            filters = ["v/+/telemetry"]
            [streams.export]
            roll_rows = 500
            columns = [
              { name = "vin", type = "utf8", from = "topic:2" },
              { name = "speed", type = "f64", from = "$.speed" },
            ]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let e = &cfg.export_configs(true).unwrap()[0];
        assert_eq!(e.roll.max_rows, 500);
        assert_eq!(e.roll.max_age, Duration::from_secs(300));
        assert_eq!(e.columns[1].name, "speed");
        assert_eq!(cfg.export_dir(), PathBuf::from("/d/export"));
        let bad: Config = toml::from_str(
            "[[streams]]\nname = \"t\"\nfilters = [\"#\"]\n[streams.export]\ncolumns = [{ name = \"x\", type = \"f32\", from = \"$.x\" }]\n",
        )
        .unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("stream t export") && err.contains("f32"), "{err}");
        let unknown =
            toml::from_str::<Config>("[[streams]]\nname = \"t\"\nfilters = [\"#\"]\n[streams.export]\nroll_age = 5\n");
        assert!(unknown.unwrap_err().to_string().contains("roll_age"));
    }
}
