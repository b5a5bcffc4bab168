//! SQL over exported files with DataFusion: every stream directory under the export root is
//! a table named after the stream, read as a Hive-partitioned listing table whose `date`
//! (`YYYY-MM-DD`) and `hour` (`HH`) partition columns are text, so that
//! `WHERE date = '2026-12-01' AND hour >= '08'` skips the other directories without opening
//! their files. Row-group statistics prune further (`WHERE ts >= ...`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use parquet::arrow::ArrowWriter;

use crate::file::writer_properties;
use crate::schema::PARTITION_COLUMNS;
use crate::{DEFAULT_ROW_GROUP_ROWS, DEFAULT_ZSTD_LEVEL};

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table (the whole result is collected first).
    Table,
    /// CSV with a header line; timestamps in RFC 3339.
    Csv,
    /// One JSON object per line.
    Json,
    /// A Parquet file (zstd), written as batches arrive.
    Parquet,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "table" => OutputFormat::Table,
            "csv" => OutputFormat::Csv,
            "json" => OutputFormat::Json,
            "parquet" => OutputFormat::Parquet,
            other => return Err(format!("output format {other:?} is not one of table, csv, json, parquet")),
        })
    }
}

/// Errors of `axle query`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL was refused or failed; `pointer` shows the position when DataFusion gives one.
    #[error("SQL error: {message}{pointer}")]
    Sql { message: String, pointer: String },
    #[error("export directory {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
    #[error("writing the result: {0}")]
    Output(String),
}

impl QueryError {
    fn from_df(e: DataFusionError, sql: &str) -> QueryError {
        use datafusion::sql::sqlparser::parser::ParserError;
        let (message, at_end) = match e.find_root() {
            DataFusionError::SQL(p, _) => match p.as_ref() {
                ParserError::ParserError(m) | ParserError::TokenizerError(m) => (m.clone(), m.ends_with("found: EOF")),
                other => (other.to_string(), false),
            },
            other => (other.strip_backtrace(), false),
        };
        let position = e
            .diagnostic()
            .and_then(|d| d.span)
            .filter(|s| s.start.line > 0)
            .map(|s| (s.start.line, s.start.column, s.end.column.max(s.start.column + 1) - s.start.column))
            .or_else(|| parser_position(&message).map(|(l, c)| (l, c, 1)))
            .or_else(|| at_end.then(|| end_position(sql)));
        let pointer = position.map(|(l, c, w)| pointer(sql, l, c, w)).unwrap_or_default();
        QueryError::Sql { message: message.trim().to_string(), pointer }
    }
}

/// Line and column just past the end of `sql` (where "found: EOF" points).
fn end_position(sql: &str) -> (u64, u64, u64) {
    let trimmed = sql.trim_end();
    let line = trimmed.lines().count().max(1) as u64;
    let col = trimmed.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, col, 1)
}

/// `Line: L, Column: C` as the SQL parser writes positions.
fn parser_position(message: &str) -> Option<(u64, u64)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?))
}

/// The SQL line `line` (1-based) with a `^^^` marker under columns `col..col + width`.
fn pointer(sql: &str, line: u64, col: u64, width: u64) -> String {
    let Some(text) = sql.lines().nth(line.saturating_sub(1) as usize) else { return String::new() };
    let pad: String =
        text.chars().take(col.saturating_sub(1) as usize).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    format!("\n  at line {line}, column {col}:\n    {text}\n    {pad}{}", "^".repeat(width.clamp(1, 200) as usize))
}

/// A DataFusion context with one table per stream directory under `root`. Returns the table
/// names; a stream directory without any file yet is left out.
pub async fn context(root: &Path) -> Result<(SessionContext, Vec<String>), QueryError> {
    let mut config = SessionConfig::new().with_information_schema(true);
    config.options_mut().sql_parser.collect_spans = true;
    let ctx = SessionContext::new_with_config(config);
    let root = root.canonicalize().map_err(|source| QueryError::Root { path: root.to_path_buf(), source })?;
    let entries = std::fs::read_dir(&root).map_err(|source| QueryError::Root { path: root.clone(), source })?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let is_stream =
            entry.path().is_dir() && !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !is_stream {
            continue;
        }
        let url = ListingTableUrl::parse(format!("{}/", entry.path().display()))
            .map_err(|e| QueryError::Sql { message: e.to_string(), pointer: String::new() })?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(PARTITION_COLUMNS.iter().map(|c| (c.to_string(), DataType::Utf8)).collect());
        let schema = match options.infer_schema(&ctx.state(), &url).await {
            Ok(s) => s,
            Err(_) => continue, // no files yet
        };
        let table =
            ListingTable::try_new(ListingTableConfig::new(url).with_listing_options(options).with_schema(schema))
                .map_err(|e| QueryError::from_df(e, ""))?;
        ctx.register_table(TableReference::bare(name.clone()), Arc::new(table))
            .map_err(|e| QueryError::from_df(e, ""))?;
        names.push(name);
    }
    names.sort();
    Ok((ctx, names))
}

/// The schema and rows of `sql`, collected.
pub async fn collect(ctx: &SessionContext, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let df = ctx.sql(sql).await.map_err(|e| QueryError::from_df(e, sql))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(|e| QueryError::from_df(e, sql))?;
    Ok((schema, batches))
}

/// Runs `sql` and writes the result to `out` in `format`; returns the number of rows.
pub async fn run(
    ctx: &SessionContext,
    sql: &str,
    format: OutputFormat,
    out: Box<dyn Write + Send>,
) -> Result<u64, QueryError> {
    let df = ctx.sql(sql).await.map_err(|e| QueryError::from_df(e, sql))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let out_err = |e: &dyn std::fmt::Display| QueryError::Output(e.to_string());
    if format == OutputFormat::Table {
        let batches = df.collect().await.map_err(|e| QueryError::from_df(e, sql))?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| out_err(&e))?;
        let mut out = out;
        writeln!(out, "{text}").map_err(|e| out_err(&e))?;
        out.flush().map_err(|e| out_err(&e))?;
        return Ok(rows);
    }
    let mut stream = df.execute_stream().await.map_err(|e| QueryError::from_df(e, sql))?;
    let mut sink = Sink::new(format, schema, out)?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| QueryError::from_df(e, sql))?;
        rows += batch.num_rows() as u64;
        sink.write(&batch)?;
    }
    sink.finish()?;
    Ok(rows)
}

enum Sink {
    Csv(datafusion::arrow::csv::Writer<Box<dyn Write + Send>>),
    Json(datafusion::arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
    Parquet(ArrowWriter<Box<dyn Write + Send>>),
}

impl Sink {
    fn new(format: OutputFormat, schema: SchemaRef, out: Box<dyn Write + Send>) -> Result<Sink, QueryError> {
        let err = |e: &dyn std::fmt::Display| QueryError::Output(e.to_string());
        Ok(match format {
            OutputFormat::Csv => Sink::Csv(datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(out)),
            OutputFormat::Json => Sink::Json(datafusion::arrow::json::LineDelimitedWriter::new(out)),
            OutputFormat::Parquet | OutputFormat::Table => {
                let props = writer_properties(DEFAULT_ROW_GROUP_ROWS, DEFAULT_ZSTD_LEVEL).map_err(|e| err(&e))?;
                Sink::Parquet(ArrowWriter::try_new(out, schema, Some(props)).map_err(|e| err(&e))?)
            }
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        let r = match self {
            Sink::Csv(w) => nested_as_text(batch).and_then(|b| w.write(&b)).map_err(|e| e.to_string()),
            Sink::Json(w) => w.write(batch).map_err(|e| e.to_string()),
            Sink::Parquet(w) => w.write(batch).map_err(|e| e.to_string()),
        };
        r.map_err(QueryError::Output)
    }

    fn finish(self) -> Result<(), QueryError> {
        let r = match self {
            Sink::Csv(w) => w.into_inner().flush().map_err(|e| e.to_string()),
            Sink::Json(mut w) => {
                w.finish().map_err(|e| e.to_string()).and_then(|_| w.into_inner().flush().map_err(|e| e.to_string()))
            }
            Sink::Parquet(w) => {
                w.into_inner().map_err(|e| e.to_string()).and_then(|mut o| o.flush().map_err(|e| e.to_string()))
            }
        };
        r.map_err(QueryError::Output)
    }
}

/// `batch` with list, struct and map columns replaced by their text form (`[{key: a, value:
/// 1}]`), which CSV cannot hold otherwise.
fn nested_as_text(batch: &RecordBatch) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::{Array, StringBuilder};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

    if !batch.schema().fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if !f.data_type().is_nested() {
            fields.push(f.as_ref().clone());
            columns.push(col.clone());
            continue;
        }
        let fmt = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
        let mut b = StringBuilder::new();
        for i in 0..col.len() {
            if col.is_null(i) {
                b.append_null();
            } else {
                b.append_value(fmt.value(i).to_string());
            }
        }
        fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
        columns.push(Arc::new(b.finish()) as _);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_positions_become_a_pointer_under_the_sql() {
        let msg = "sql parser error: Expected: end of statement, found: FORM at Line: 1, Column: 10";
        assert_eq!(parser_position(msg), Some((1, 10)));
        let p = pointer("SELECT 1 FORM t", 1, 10, 4);
        assert!(p.ends_with("    SELECT 1 FORM t\n             ^^^^"), "{p}");
        assert_eq!(parser_position("no position here"), None);
        assert_eq!(pointer("x", 5, 1, 1), "");
        assert_eq!(end_position("SELECT 1 +\n  FROM  "), (2, 7, 1));
    }
}
