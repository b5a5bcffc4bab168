//! The schema of exported files: the fixed columns every file has, and the typed columns a
//! stream declares (taken from a topic level, a user property or a JSON path of the payload).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::ExportError;

/// Names of the fixed columns, in file order. Typed columns follow them.
pub const FIXED_COLUMNS: [&str; 8] =
    ["ts", "topic", "partition", "offset", "client_id", "qos", "user_properties", "payload"];

/// Names the Hive layout adds as partition columns when the files are read as a table.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];

/// The Arrow type of a typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text. From JSON: a string, or the JSON text of any other value.
    Utf8,
    /// 64-bit float. From JSON: a number.
    F64,
    /// 64-bit signed integer. From JSON: a number without fraction or exponent.
    I64,
    /// Boolean. From JSON: `true`/`false`; from text: `true`/`false`.
    Bool,
    /// Timestamp in ms since the Unix epoch, UTC. From JSON: an integer number of ms.
    TimestampMs,
}

impl std::str::FromStr for ColumnType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "utf8" | "string" => ColumnType::Utf8,
            "f64" | "float64" | "double" => ColumnType::F64,
            "i64" | "int64" | "bigint" => ColumnType::I64,
            "bool" | "boolean" => ColumnType::Bool,
            "timestamp_ms" => ColumnType::TimestampMs,
            other => return Err(format!("column type {other:?} is not one of utf8, f64, i64, bool, timestamp_ms")),
        })
    }
}

impl ColumnType {
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::F64 => DataType::Float64,
            ColumnType::I64 => DataType::Int64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::TimestampMs => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        }
    }
}

/// Where a typed column takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    /// `topic:N`: the N-th topic level, counting from 1 (`v/VIN1/telemetry`, `topic:2` = `VIN1`).
    TopicLevel(usize),
    /// `prop:NAME`: the first MQTT 5 user property named NAME.
    UserProperty(String),
    /// `$.a.b`: the value at that object path of the JSON payload. `$` alone is the whole
    /// document. Keys are separated by `.`; a key may not contain `.`.
    JsonPath(Vec<String>),
}

impl std::str::FromStr for ColumnSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(n) = s.strip_prefix("topic:") {
            let n: usize = n.parse().map_err(|_| format!("source {s:?}: {n:?} is not a topic level number"))?;
            if n == 0 {
                return Err(format!("source {s:?}: topic levels count from 1"));
            }
            return Ok(ColumnSource::TopicLevel(n));
        }
        if let Some(name) = s.strip_prefix("prop:") {
            if name.is_empty() {
                return Err(format!("source {s:?}: name the user property after `prop:`"));
            }
            return Ok(ColumnSource::UserProperty(name.to_string()));
        }
        if s == "$" {
            return Ok(ColumnSource::JsonPath(Vec::new()));
        }
        if let Some(path) = s.strip_prefix("$.") {
            let keys: Vec<String> = path.split('.').map(str::to_string).collect();
            if keys.iter().any(String::is_empty) {
                return Err(format!("source {s:?}: empty key in JSON path"));
            }
            return Ok(ColumnSource::JsonPath(keys));
        }
        Err(format!("source {s:?} is not `topic:N`, `prop:NAME` or a JSON path `$.a.b`"))
    }
}

/// A typed column declared by a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedColumn {
    pub name: String,
    pub ty: ColumnType,
    pub source: ColumnSource,
}

impl TypedColumn {
    /// Parses a column declaration from its three config strings.
    pub fn parse(name: &str, ty: &str, from: &str) -> Result<TypedColumn, ExportError> {
        let bad = |m: String| ExportError::Config(format!("typed column {name:?}: {m}"));
        let valid = !name.is_empty()
            && name.len() <= 100
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(bad("a column name is 1-100 characters of [A-Za-z0-9_], not starting with a digit".into()));
        }
        if FIXED_COLUMNS.contains(&name) || PARTITION_COLUMNS.contains(&name) {
            return Err(bad("the name is taken by a fixed column".into()));
        }
        Ok(TypedColumn { name: name.to_string(), ty: ty.parse().map_err(bad)?, source: from.parse().map_err(bad)? })
    }
}

/// Checks that column names are unique.
pub fn validate_columns(columns: &[TypedColumn]) -> Result<(), ExportError> {
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].iter().any(|o| o.name == c.name) {
            return Err(ExportError::Config(format!("typed column {:?} is declared twice", c.name)));
        }
    }
    Ok(())
}

/// The element type of `user_properties`: `{key: utf8, value: utf8}`, in publish order
/// (MQTT allows repeated names, so it is a list, not a map).
pub fn user_property_fields() -> Fields {
    Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Utf8, false)])
}

/// The item field of the `user_properties` list.
pub fn user_property_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(user_property_fields()), false))
}

/// The schema of a file of a stream with these typed columns.
///
/// `ts`: record timestamp, ms, UTC. `partition`: the stream partition number. `offset`: the
/// record's log offset. `qos`: 0..=2. Typed columns are nullable; fixed ones are not.
pub fn export_schema(columns: &[TypedColumn]) -> SchemaRef {
    let mut fields = vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("client_id", DataType::Utf8, false),
        Field::new("qos", DataType::Int8, false),
        Field::new("user_properties", DataType::List(user_property_item()), false),
        Field::new("payload", DataType::Binary, false),
    ];
    fields.extend(columns.iter().map(|c| Field::new(&c.name, c.ty.data_type(), true)));
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_declarations_parse_and_bad_ones_say_why() {
        let c = TypedColumn::parse("soc", "f64", "$.battery.soc").unwrap();
        assert_eq!(c.source, ColumnSource::JsonPath(vec!["battery".into(), "soc".into()]));
        assert_eq!(TypedColumn::parse("vin", "utf8", "topic:2").unwrap().source, ColumnSource::TopicLevel(2));
        assert_eq!(
            TypedColumn::parse("fw", "utf8", "prop:fw").unwrap().source,
            ColumnSource::UserProperty("fw".into())
        );
        let err = |n: &str, t: &str, f: &str| TypedColumn::parse(n, t, f).unwrap_err().to_string();
        assert!(err("x", "float", "$.x").contains("not one of"));
        assert!(err("x", "f64", "speed").contains("JSON path"));
        assert!(err("x", "f64", "$.a..b").contains("empty key"));
        assert!(err("x", "utf8", "topic:0").contains("count from 1"));
        assert!(err("ts", "f64", "$.ts").contains("fixed column"));
        assert!(err("hour", "i64", "$.h").contains("fixed column"));
        assert!(err("1x", "f64", "$.x").contains("column name"));
        let cols = vec![c.clone(), c];
        assert!(validate_columns(&cols).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn the_schema_has_fixed_columns_then_nullable_typed_ones() {
        let s = export_schema(&[TypedColumn::parse("speed", "f64", "$.speed").unwrap()]);
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(&names[..8], &FIXED_COLUMNS);
        assert_eq!(names[8], "speed");
        assert!(s.field(8).is_nullable());
        assert_eq!(s.field(0).data_type(), &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())));
    }
}
