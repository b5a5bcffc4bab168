//! Turning log records into Arrow rows: the fixed columns from the record and its MQTT
//! headers, the typed columns from the topic, user properties or JSON payload.
//!
//! A payload that is not valid JSON gives nulls in every JSON-sourced column of its row and
//! counts as a parse failure; a value of the wrong JSON type (a string where `f64` is
//! declared) gives a null and counts as a type mismatch. A missing key is a plain null. The
//! row itself is always kept.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, Int8Builder,
    ListArray, StringBuilder, StructArray, TimestampMillisecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use axle_engine::Message;
use axle_log::StoredRecord;

use crate::json::{unescape, Found, Kind, PathSet};
use crate::schema::{export_schema, user_property_fields, user_property_item, ColumnSource, ColumnType, TypedColumn};
use crate::ExportError;

/// How each typed column finds its value, precomputed from the declarations.
#[derive(Debug, Clone)]
pub struct Extractor {
    columns: Vec<TypedColumn>,
    /// JSON slot of each column (`None` for topic/property sources).
    json_slot: Vec<Option<usize>>,
    paths: PathSet,
    schema: SchemaRef,
}

/// Counters of one batch of extractions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtractCounts {
    /// Payloads that were not valid JSON while a JSON column was declared.
    pub parse_failures: u64,
    /// Values present but of a type the column cannot take.
    pub type_mismatches: u64,
}

impl Extractor {
    pub fn new(columns: Vec<TypedColumn>) -> Extractor {
        let mut paths = PathSet::default();
        let json_slot = columns
            .iter()
            .map(|c| match &c.source {
                ColumnSource::JsonPath(keys) => {
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    Some(paths.add(&keys))
                }
                _ => None,
            })
            .collect();
        let schema = export_schema(&columns);
        Extractor { columns, json_slot, paths, schema }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn columns(&self) -> &[TypedColumn] {
        &self.columns
    }
}

enum TypedBuilder {
    Utf8(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMillisecondBuilder),
}

/// Rows being collected for the next Arrow record batch.
pub struct RowBuilder {
    ex: Arc<Extractor>,
    partition: i32,
    ts: TimestampMillisecondBuilder,
    topic: StringBuilder,
    part: Int32Builder,
    offset: Int64Builder,
    client: StringBuilder,
    qos: Int8Builder,
    prop_offsets: Vec<i32>,
    prop_keys: StringBuilder,
    prop_values: StringBuilder,
    payload: BinaryBuilder,
    typed: Vec<TypedBuilder>,
    found: Vec<Option<Found>>,
    rows: usize,
    /// Raw bytes of the rows collected (payload, topic, client id, properties).
    raw_bytes: usize,
    pub counts: ExtractCounts,
}

impl RowBuilder {
    /// A builder for rows of stream partition `partition`.
    pub fn new(ex: Arc<Extractor>, partition: u32) -> RowBuilder {
        let typed = ex
            .columns
            .iter()
            .map(|c| match c.ty {
                ColumnType::Utf8 => TypedBuilder::Utf8(StringBuilder::new()),
                ColumnType::F64 => TypedBuilder::F64(Float64Builder::new()),
                ColumnType::I64 => TypedBuilder::I64(Int64Builder::new()),
                ColumnType::Bool => TypedBuilder::Bool(BooleanBuilder::new()),
                ColumnType::TimestampMs => TypedBuilder::Ts(TimestampMillisecondBuilder::new().with_timezone("UTC")),
            })
            .collect();
        let found = vec![None; ex.paths.len()];
        RowBuilder {
            ex,
            partition: partition as i32,
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            topic: StringBuilder::new(),
            part: Int32Builder::new(),
            offset: Int64Builder::new(),
            client: StringBuilder::new(),
            qos: Int8Builder::new(),
            prop_offsets: vec![0],
            prop_keys: StringBuilder::new(),
            prop_values: StringBuilder::new(),
            payload: BinaryBuilder::new(),
            typed,
            found,
            rows: 0,
            raw_bytes: 0,
            counts: ExtractCounts::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn raw_bytes(&self) -> usize {
        self.raw_bytes
    }

    /// Adds one record. A record that the engine did not write (no topic header) is kept with
    /// an empty topic and client id and QoS 0.
    pub fn push(&mut self, rec: &StoredRecord) {
        let msg = Message::from_record(rec).unwrap_or_else(|| Message {
            payload: rec.value.clone(),
            timestamp: rec.timestamp,
            ..Message::default()
        });
        self.ts.append_value(rec.timestamp);
        self.topic.append_value(&msg.topic);
        self.part.append_value(self.partition);
        self.offset.append_value(rec.offset as i64);
        self.client.append_value(&msg.publisher);
        self.qos.append_value(msg.qos as i8);
        let mut raw = rec.value.len() + msg.topic.len() + msg.publisher.len();
        for (k, v) in &msg.user_properties {
            self.prop_keys.append_value(k);
            self.prop_values.append_value(v);
            raw += k.len() + v.len();
        }
        self.prop_offsets.push(self.prop_keys.len() as i32);
        self.payload.append_value(&rec.value);
        self.raw_bytes += raw;
        self.rows += 1;
        self.push_typed(&msg);
    }

    fn push_typed(&mut self, msg: &Message) {
        if self.typed.is_empty() {
            return;
        }
        let json_ok = if self.ex.paths.is_empty() {
            true
        } else {
            let ok = self.ex.paths.scan(&msg.payload, &mut self.found).is_ok();
            if !ok {
                self.counts.parse_failures += 1;
            }
            ok
        };
        let payload = &msg.payload[..];
        for (i, col) in self.ex.columns.iter().enumerate() {
            let value: Option<Value<'_>> = match &col.source {
                ColumnSource::TopicLevel(n) => msg.topic.split('/').nth(n - 1).map(|s| Value::Text(s.as_bytes())),
                ColumnSource::UserProperty(name) => {
                    msg.user_properties.iter().find(|(k, _)| k == name).map(|(_, v)| Value::Text(v.as_bytes()))
                }
                ColumnSource::JsonPath(_) => {
                    if json_ok {
                        self.ex.json_slot[i].and_then(|s| self.found[s]).map(|f| Value::Json(f, payload))
                    } else {
                        None
                    }
                }
            };
            if !append_typed(&mut self.typed[i], value) {
                self.counts.type_mismatches += 1;
            }
        }
    }

    /// The collected rows as a record batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, ExportError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.part.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.client.finish()),
            Arc::new(self.qos.finish()),
        ];
        let offsets = std::mem::replace(&mut self.prop_offsets, vec![0]);
        let entries = StructArray::try_new(
            user_property_fields(),
            vec![Arc::new(self.prop_keys.finish()), Arc::new(self.prop_values.finish())],
            None,
        )?;
        let list =
            ListArray::try_new(user_property_item(), OffsetBuffer::new(offsets.into()), Arc::new(entries), None)?;
        cols.push(Arc::new(list));
        cols.push(Arc::new(self.payload.finish()));
        for b in &mut self.typed {
            cols.push(match b {
                TypedBuilder::Utf8(b) => Arc::new(b.finish()),
                TypedBuilder::F64(b) => Arc::new(b.finish()),
                TypedBuilder::I64(b) => Arc::new(b.finish()),
                TypedBuilder::Bool(b) => Arc::new(b.finish()),
                TypedBuilder::Ts(b) => Arc::new(b.finish()),
            });
        }
        self.rows = 0;
        self.raw_bytes = 0;
        Ok(RecordBatch::try_new(self.ex.schema.clone(), cols)?)
    }
}

/// A source value before conversion to the column's type.
#[derive(Clone, Copy)]
enum Value<'a> {
    /// Text from a topic level or a user property.
    Text(&'a [u8]),
    /// A JSON value found in the payload.
    Json(Found, &'a [u8]),
}

/// Appends `value` converted to the builder's type, or a null. Returns `false` when a value
/// was present but could not be converted (a type mismatch).
fn append_typed(b: &mut TypedBuilder, value: Option<Value<'_>>) -> bool {
    let Some(value) = value else {
        append_null(b);
        return true;
    };
    let ok = match value {
        Value::Text(t) => append_text(b, t),
        Value::Json(f, payload) => append_json(b, f, payload),
    };
    if !ok {
        append_null(b);
    }
    ok
}

fn append_null(b: &mut TypedBuilder) {
    match b {
        TypedBuilder::Utf8(b) => b.append_null(),
        TypedBuilder::F64(b) => b.append_null(),
        TypedBuilder::I64(b) => b.append_null(),
        TypedBuilder::Bool(b) => b.append_null(),
        TypedBuilder::Ts(b) => b.append_null(),
    }
}

/// Text (topic level, user property) into any column type; numbers and booleans are parsed.
fn append_text(b: &mut TypedBuilder, t: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(t) else { return false };
    match b {
        TypedBuilder::Utf8(b) => b.append_value(s),
        TypedBuilder::F64(b) => match s.parse::<f64>() {
            Ok(v) => b.append_value(v),
            Err(_) => return false,
        },
        TypedBuilder::I64(b) => match s.parse::<i64>() {
            Ok(v) => b.append_value(v),
            Err(_) => return false,
        },
        TypedBuilder::Ts(b) => match s.parse::<i64>() {
            Ok(v) => b.append_value(v),
            Err(_) => return false,
        },
        TypedBuilder::Bool(b) => match s {
            "true" => b.append_value(true),
            "false" => b.append_value(false),
            _ => return false,
        },
    }
    true
}

fn append_json(b: &mut TypedBuilder, f: Found, payload: &[u8]) -> bool {
    let span = &payload[f.start..f.end];
    if f.kind == Kind::Null {
        append_null(b);
        return true;
    }
    // Number spans are ASCII by construction.
    let num = || (f.kind == Kind::Num).then(|| std::str::from_utf8(span).ok()).flatten();
    match b {
        TypedBuilder::Utf8(b) => match f.kind {
            Kind::Str { escaped: true } => match unescape(span) {
                Some(s) => b.append_value(s),
                None => return false,
            },
            _ => match std::str::from_utf8(span) {
                Ok(s) => b.append_value(s),
                Err(_) => return false,
            },
        },
        TypedBuilder::F64(b) => match num().and_then(|s| s.parse::<f64>().ok()) {
            Some(v) => b.append_value(v),
            None => return false,
        },
        TypedBuilder::I64(b) => match num().and_then(|s| s.parse::<i64>().ok()) {
            Some(v) => b.append_value(v),
            None => return false,
        },
        TypedBuilder::Ts(b) => match num().and_then(|s| s.parse::<i64>().ok()) {
            Some(v) => b.append_value(v),
            None => return false,
        },
        TypedBuilder::Bool(b) => match f.kind {
            Kind::Bool(v) => b.append_value(v),
            _ => return false,
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    use bytes::Bytes;

    use super::*;

    fn record(offset: u64, topic: &str, payload: &str) -> StoredRecord {
        let m = Message {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: 1,
            publisher: "car-1".into(),
            user_properties: vec![("fw".into(), "1.2".into()), ("fw".into(), "1.3".into())],
            timestamp: 1_790_000_000_000 + offset as i64,
            ..Message::default()
        };
        let r = m.to_record("v/VIN1");
        StoredRecord {
            offset,
            timestamp: r.timestamp.unwrap_or_default(),
            key: r.key,
            value: r.value,
            headers: r.headers,
            leader_epoch: 0,
        }
    }

    fn columns() -> Vec<TypedColumn> {
        vec![
            TypedColumn::parse("vin", "utf8", "topic:2").unwrap(),
            TypedColumn::parse("speed", "f64", "$.speed").unwrap(),
            TypedColumn::parse("soc", "f64", "$.battery.soc").unwrap(),
            TypedColumn::parse("alarm", "bool", "$.alarm").unwrap(),
            TypedColumn::parse("odo", "i64", "$.odo").unwrap(),
            TypedColumn::parse("fw", "utf8", "prop:fw").unwrap(),
            TypedColumn::parse("note", "utf8", "$.note").unwrap(),
        ]
    }

    #[test]
    fn typed_columns_come_from_topic_properties_and_json() {
        let mut b = RowBuilder::new(Arc::new(Extractor::new(columns())), 3);
        b.push(&record(
            7,
            "v/VIN1/telemetry",
            r#"{"speed": 81.5, "battery": {"soc": 0.42}, "alarm": true, "odo": 12345, "note": "a\"b"}"#,
        ));
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 1);
        let col = |n: &str| batch.column_by_name(n).unwrap().clone();
        assert_eq!(col("vin").as_string::<i32>().value(0), "VIN1");
        assert_eq!(col("speed").as_primitive::<Float64Type>().value(0), 81.5);
        assert_eq!(col("soc").as_primitive::<Float64Type>().value(0), 0.42);
        assert!(col("alarm").as_boolean().value(0));
        assert_eq!(col("odo").as_primitive::<Int64Type>().value(0), 12345);
        assert_eq!(col("fw").as_string::<i32>().value(0), "1.2");
        assert_eq!(col("note").as_string::<i32>().value(0), "a\"b");
        assert_eq!(col("offset").as_primitive::<Int64Type>().value(0), 7);
        assert_eq!(col("partition").as_primitive::<arrow::datatypes::Int32Type>().value(0), 3);
        assert_eq!(col("client_id").as_string::<i32>().value(0), "car-1");
        let props = col("user_properties");
        let props = props.as_list::<i32>().value(0);
        let props = props.as_struct();
        assert_eq!(props.len(), 2);
        assert_eq!(props.column(1).as_string::<i32>().value(1), "1.3");
        assert_eq!(b.counts, ExtractCounts::default());
    }

    #[test]
    fn malformed_and_partial_json_give_nulls_and_keep_the_row() {
        let mut b = RowBuilder::new(Arc::new(Extractor::new(columns())), 0);
        b.push(&record(0, "v/VIN2/telemetry", r#"{"speed": 81.5, "battery": {"soc": 0."#)); // truncated
        b.push(&record(1, "v/VIN2/telemetry", "not json at all"));
        b.push(&record(2, "v/VIN2/telemetry", r#"{"speed": 12}"#)); // missing keys
        b.push(&record(3, "v/VIN2/telemetry", r#"{"speed": "fast", "alarm": 1, "odo": 1.5}"#)); // wrong types
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 4);
        let speed = batch.column_by_name("speed").unwrap().as_primitive::<Float64Type>().clone();
        assert!(speed.is_null(0) && speed.is_null(1) && speed.is_null(3));
        assert_eq!(speed.value(2), 12.0);
        let vin = batch.column_by_name("vin").unwrap().as_string::<i32>().clone();
        assert_eq!(vin.value(0), "VIN2", "topic columns do not depend on the payload");
        let soc = batch.column_by_name("soc").unwrap();
        assert_eq!(soc.null_count(), 4);
        assert_eq!(b.counts, ExtractCounts { parse_failures: 2, type_mismatches: 3 });
        let payload = batch.column_by_name("payload").unwrap().as_binary::<i32>().clone();
        assert_eq!(payload.value(1), b"not json at all");
    }

    #[test]
    fn finishing_resets_the_builder() {
        let mut b = RowBuilder::new(Arc::new(Extractor::new(Vec::new())), 0);
        b.push(&record(0, "a/b", "x"));
        assert_eq!(b.finish().unwrap().num_rows(), 1);
        assert!(b.is_empty());
        b.push(&record(1, "a/b", "y"));
        b.push(&record(2, "a/b", "z"));
        assert_eq!(b.finish().unwrap().num_rows(), 2);
    }
}
