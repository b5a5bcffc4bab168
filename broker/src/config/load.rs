//! Reading the configuration: the TOML file, then `AXLE_SECTION__KEY` environment overrides,
//! then validation. Every error names what the user has to fix: the key, and the file and
//! line it came from, or the environment variable.
//!
//! Environment overrides: a variable `AXLE_A__B__C=value` sets key `a.b.c` (lower-cased, `__`
//! separates levels), e.g. `AXLE_MQTT__MAX_KEEPALIVE=60` or `AXLE_LOG__FSYNC=5ms`. The
//! top-level keys also have single-level names (`AXLE_NODE_ID`, `AXLE_ACL_FILE`,
//! `AXLE_DATA_DIR`, `AXLE_DEFAULT_STREAM_PARTITIONS`). The value is read as a TOML value
//! (`60`, `true`, `["a", "b"]`) and, where the key wants text, as plain text. Arrays of tables
//! (`[[streams]]`, `[[auto_subscribe]]`) cannot be set from the environment. An `AXLE_…__…`
//! variable naming an unknown key stops start-up like an unknown key in the file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Config;

/// Top-level keys that may be set as `AXLE_<KEY>` (without `__`).
const TOP_LEVEL_ENV: &[&str] = &["data_dir", "node_id", "acl_file", "default_stream_partitions"];

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}, line {line}, column {column}: {key}{message}")]
    Parse { path: PathBuf, line: usize, column: usize, key: String, message: String },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config file {path}, line {line}: {key}: {message}")]
    InvalidAt { path: PathBuf, line: usize, key: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A bad value of `key` (a dotted path such as `mqtt.receive_maximum` or `streams[0].key`).
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

/// One environment override: the variable, the key path it sets, and its raw value.
struct Override {
    var: String,
    path: Vec<String>,
    raw: String,
}

impl Config {
    /// Reads and validates a TOML file, with environment overrides from the process.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(Some(path), std::env::vars())
    }

    /// The defaults (no file) with the process's environment overrides, validated.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::load_with_env(None, std::env::vars())
    }

    /// Reads `path` (or starts from the defaults), applies the `AXLE_…` overrides in `env`
    /// and validates the result.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.into(), source })?,
            None => String::new(),
        };
        let file = path.unwrap_or(Path::new("(defaults)"));
        // Deserialize the file on its own first, so that its errors carry a line.
        let mut cfg: Config = toml::from_str(&text).map_err(|e| parse_error(file, &text, &e))?;
        let overrides = collect_overrides(env)?;
        if !overrides.is_empty() {
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| ConfigError::Syntax { path: file.into(), message: e.to_string() })?;
            for o in &overrides {
                apply_override(&mut table, o)?;
            }
            cfg = deserialize(&table).map_err(|message| ConfigError::Env {
                var: overrides.iter().map(|o| o.var.as_str()).collect::<Vec<_>>().join(", "),
                message,
            })?;
        }
        cfg.validate().map_err(|e| locate(e, file, &text, &overrides))?;
        Ok(cfg)
    }
}

fn deserialize(table: &toml::Table) -> Result<Config, String> {
    Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| e.message().to_string())
}

/// The `AXLE_…` variables that set configuration keys.
fn collect_overrides(env: impl IntoIterator<Item = (String, String)>) -> Result<Vec<Override>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("AXLE_") else { continue };
        let path: Vec<String> = if rest.contains("__") {
            rest.split("__").map(str::to_ascii_lowercase).collect()
        } else if TOP_LEVEL_ENV.contains(&rest.to_ascii_lowercase().as_str()) {
            vec![rest.to_ascii_lowercase()]
        } else {
            // Other AXLE_ variables are command-line flags (clap reads them) or not ours.
            continue;
        };
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env { var, message: "empty key level (use `__` between levels only)".into() });
        }
        out.push(Override { var, path, raw });
    }
    out.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(out)
}

/// Sets the override's key in `table`: as a TOML value if the key accepts one, else as text.
fn apply_override(table: &mut toml::Table, o: &Override) -> Result<(), ConfigError> {
    let typed = toml::from_str::<toml::Table>(&format!("v = {}", o.raw)).ok().and_then(|mut t| t.remove("v"));
    let candidates: Vec<toml::Value> = match typed {
        Some(v) if !v.is_str() => vec![v, toml::Value::String(o.raw.clone())],
        _ => vec![toml::Value::String(o.raw.clone())],
    };
    let mut last = String::new();
    for value in candidates {
        let mut trial = table.clone();
        set_path(&mut trial, &o.path, value).map_err(|message| ConfigError::Env { var: o.var.clone(), message })?;
        match deserialize(&trial) {
            Ok(_) => {
                *table = trial;
                return Ok(());
            }
            Err(e) => last = e,
        }
    }
    Err(ConfigError::Env { var: o.var.clone(), message: format!("key {}: {last}", o.path.join(".")) })
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("no key")?;
    let mut t = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = t.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| format!("{} is not a section", path[..=i].join(".")))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// A deserialization error of the file, with its line, column and the dotted key.
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let Some(span) = e.span() else {
        return ConfigError::Syntax { path: path.into(), message: e.message().to_string() };
    };
    let (line, column) = line_col(text, span.start);
    let key = key_at(text, &span).map(|k| format!("{k}: ")).unwrap_or_default();
    ConfigError::Parse { path: path.into(), line, column, key, message: e.message().to_string() }
}

/// 1-based line and column of byte `pos` in `text`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted path of the key (or value) the span covers, if the text parses.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut found = None;
    walk(doc.as_table(), &mut Vec::new(), &mut |path, key_span, value_span| {
        let hit = |s: &Option<Range<usize>>| s.as_ref().is_some_and(|s| s.start <= span.start && span.end <= s.end);
        if hit(&key_span) || hit(&value_span) {
            // Deeper matches come later and win: they are more precise.
            found = Some(path.to_string());
        }
    });
    found
}

type Visit<'a> = dyn FnMut(&str, Option<Range<usize>>, Option<Range<usize>>) + 'a;

fn walk(table: &toml_edit::Table, path: &mut Vec<String>, visit: &mut Visit<'_>) {
    for (k, item) in table.iter() {
        path.push(k.to_string());
        let dotted = path.join(".");
        let key_span = table.key(k).and_then(|key| key.span());
        visit(&dotted, key_span, item.span());
        match item {
            toml_edit::Item::Table(t) => walk(t, path, visit),
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => walk_inline(t, path, visit),
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let last = path.len() - 1;
                    path[last] = format!("{k}[{i}]");
                    visit(&path.join("."), None, t.span());
                    walk(t, path, visit);
                }
            }
            _ => {}
        }
        path.pop();
    }
}

fn walk_inline(table: &toml_edit::InlineTable, path: &mut Vec<String>, visit: &mut Visit<'_>) {
    for (k, v) in table.iter() {
        path.push(k.to_string());
        visit(&path.join("."), table.key(k).and_then(|key| key.span()), v.span());
        path.pop();
    }
}

/// The line of `key` (dotted, `name[i]` for arrays of tables) in `text`.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut line = None;
    walk(doc.as_table(), &mut Vec::new(), &mut |path, key_span, value_span| {
        if path == key && line.is_none() {
            if let Some(s) = key_span.or(value_span) {
                line = Some(line_col(text, s.start).0);
            }
        }
    });
    line
}

/// Attaches where a bad value came from: the environment variable that set it, or the line
/// of the file.
fn locate(e: ConfigError, path: &Path, text: &str, overrides: &[Override]) -> ConfigError {
    let ConfigError::Invalid { key, message } = e else { return e };
    if let Some(o) = overrides.iter().find(|o| key == o.path.join(".")) {
        return ConfigError::Env { var: o.var.clone(), message: format!("{key}: {message}") };
    }
    // A key of an array element or a section: fall back to its closest ancestor in the file.
    let mut probe = key.as_str();
    loop {
        if let Some(line) = line_of(text, probe) {
            return ConfigError::InvalidAt { path: path.into(), line, key, message };
        }
        match probe.rfind('.') {
            Some(i) => probe = &probe[..i],
            None => return ConfigError::Invalid { key, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("axle.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_with_env(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn unknown_key_error_names_the_key_file_and_line() {
        let err = load("[mqtt]\nmax_keepalive = 10\nmax_keep_alive = 5\n", &[]).unwrap_err().to_string();
        assert!(err.contains("axle.toml, line 3"), "{err}");
        assert!(err.contains("mqtt.max_keep_alive"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn wrong_type_error_names_the_key_and_line() {
        let err = load("node_id = \"a\"\n\n[mqtt]\nmax_keepalive = \"ten\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("mqtt.max_keepalive"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn bad_value_error_names_the_key_and_its_line() {
        let err = load("[log]\nfsync = \"always\"\n[mqtt]\nreceive_maximum = 0\n", &[]).unwrap_err().to_string();
        assert!(err.contains("line 4") && err.contains("mqtt.receive_maximum"), "{err}");
    }

    #[test]
    fn bad_stream_key_points_at_its_stream() {
        let text = "[[streams]]\nname = \"a\"\nfilters = [\"a/#\"]\n\n[[streams]]\nname = \"b\"\nfilters = [\"b/#\"]\nkey = \"levels:x\"\n";
        let err = load(text, &[]).unwrap_err().to_string();
        assert!(err.contains("streams[1].key") && err.contains("line 8"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file_with_typed_and_text_values() {
        let cfg = load(
            "[mqtt]\nmax_keepalive = 10\n",
            &[
                ("AXLE_MQTT__MAX_KEEPALIVE", "60"),
                ("AXLE_LOG__FSYNC", "5ms"),
                ("AXLE_MQTT__ALLOW_ANONYMOUS", "true"),
                ("AXLE_NODE_ID", "123"),
                ("AXLE_LISTENERS__TCP", "127.0.0.1:1999"),
                ("AXLE_FSYNC", "never"), // a command-line flag's variable: not a config key
            ],
        )
        .unwrap();
        assert_eq!(cfg.mqtt.max_keepalive, 60);
        assert_eq!(cfg.log.fsync, "5ms");
        assert!(cfg.mqtt.allow_anonymous);
        assert_eq!(cfg.node_id, "123");
        assert_eq!(cfg.listeners.tcp.port(), 1999);
    }

    #[test]
    fn unknown_environment_key_is_refused_by_variable_name() {
        let err = load("", &[("AXLE_MQTT__MAX_KEEP_ALIVE", "5")]).unwrap_err().to_string();
        assert!(err.contains("AXLE_MQTT__MAX_KEEP_ALIVE") && err.contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_environment_value_is_reported_against_the_variable() {
        let err = load("", &[("AXLE_MQTT__RECEIVE_MAXIMUM", "0")]).unwrap_err().to_string();
        assert!(err.contains("AXLE_MQTT__RECEIVE_MAXIMUM"), "{err}");
        let err = load("", &[("AXLE_MQTT__MAX_KEEPALIVE", "soon")]).unwrap_err().to_string();
        assert!(err.contains("AXLE_MQTT__MAX_KEEPALIVE") && err.contains("max_keepalive"), "{err}");
    }

    #[test]
    fn broken_toml_reports_the_line() {
        let err = load("[mqtt\nmax_keepalive = 10\n", &[]).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
