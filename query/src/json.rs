//! Pulling a few values out of a JSON payload in one pass, without building a document tree.
//!
//! [`PathSet`] is a trie of the object paths the typed columns ask for (`$.speed`,
//! `$.battery.soc`). [`PathSet::scan`] walks the payload once: it checks the JSON grammar of
//! the whole text (so a truncated or malformed payload is refused as a whole), descends only
//! into objects on a requested path, skips everything else, and records for each requested
//! path the byte span of its value. Nothing is allocated unless a key contains escapes.
//!
//! Sans-IO and allocation-light on purpose: it runs once per exported row (see the `export`
//! benchmark), where building a `serde_json::Value` per row would dominate the cost.
//!
//! Limits: nesting deeper than [`MAX_DEPTH`] is refused as malformed. UTF-8 is checked only in
//! the values that are extracted as text, not in the parts that are skipped.

/// Deepest nesting of objects and arrays accepted.
pub const MAX_DEPTH: usize = 64;

/// The kind of a JSON value found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string; the span excludes the quotes. `escaped` tells whether it holds `\` escapes.
    Str {
        escaped: bool,
    },
    /// A number; the span is its text (valid JSON number grammar).
    Num,
    Bool(bool),
    Null,
    /// An object or array; the span is its raw JSON text.
    Composite,
}

/// A value found at a requested path: its kind and its byte range in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// Why a payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    /// Byte position where the grammar broke (the length of the text if it ended early).
    pub at: usize,
}

#[derive(Debug, Default, Clone)]
struct Node {
    children: Vec<(Box<[u8]>, usize)>,
    /// Slots of the requested paths that end here (two columns may read one path).
    slots: Vec<usize>,
}

/// The set of object paths to extract. Path `i` (in the order of [`PathSet::add`]) is written
/// to `out[i]` by [`PathSet::scan`].
#[derive(Debug, Clone)]
pub struct PathSet {
    nodes: Vec<Node>,
    len: usize,
}

impl Default for PathSet {
    fn default() -> Self {
        PathSet { nodes: vec![Node::default()], len: 0 }
    }
}

impl PathSet {
    /// Adds a path given as its object keys (`["battery", "soc"]` for `$.battery.soc`) and
    /// returns its slot. An empty path is the whole document.
    pub fn add(&mut self, keys: &[&str]) -> usize {
        let mut n = 0;
        for k in keys {
            let found = self.nodes[n].children.iter().find(|(name, _)| &name[..] == k.as_bytes()).map(|c| c.1);
            n = match found {
                Some(c) => c,
                None => {
                    self.nodes.push(Node::default());
                    let c = self.nodes.len() - 1;
                    self.nodes[n].children.push((k.as_bytes().into(), c));
                    c
                }
            };
        }
        let slot = self.len;
        self.len += 1;
        self.nodes[n].slots.push(slot);
        slot
    }

    /// Number of paths added.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Scans `text`, filling `out[slot]` with what each path points at (`None` when absent).
    /// `out` must have [`PathSet::len`] entries. On malformed JSON every entry is `None`.
    pub fn scan(&self, text: &[u8], out: &mut [Option<Found>]) -> Result<(), Malformed> {
        out.iter_mut().for_each(|o| *o = None);
        let mut s = Scanner { b: text, i: 0, set: self, out };
        let r = s.document();
        if r.is_err() {
            out.iter_mut().for_each(|o| *o = None);
        }
        r
    }

    fn record(&self, node: usize, found: Found, out: &mut [Option<Found>]) {
        for &slot in &self.nodes[node].slots {
            out[slot] = Some(found);
        }
    }
}

struct Scanner<'a, 'o> {
    b: &'a [u8],
    i: usize,
    set: &'a PathSet,
    out: &'o mut [Option<Found>],
}

impl Scanner<'_, '_> {
    fn err<T>(&self) -> Result<T, Malformed> {
        Err(Malformed { at: self.i })
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            match c {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                _ => break,
            }
        }
    }

    fn document(&mut self) -> Result<(), Malformed> {
        self.ws();
        let root = if self.set.is_empty() { None } else { Some(0) };
        self.value(root, 0)?;
        self.ws();
        if self.i != self.b.len() {
            return self.err();
        }
        Ok(())
    }

    /// Parses one value at `self.i`; `node` is the trie node this value sits at, if any.
    fn value(&mut self, node: Option<usize>, depth: usize) -> Result<(), Malformed> {
        let start = self.i;
        let kind = match self.b.get(self.i) {
            None => return self.err(),
            Some(b'{') => {
                self.object(node, depth + 1)?;
                Kind::Composite
            }
            Some(b'[') => {
                self.array(depth + 1)?;
                Kind::Composite
            }
            Some(b'"') => {
                let (s, e, escaped) = self.string()?;
                if let Some(n) = node {
                    self.set.record(n, Found { kind: Kind::Str { escaped }, start: s, end: e }, self.out);
                }
                return Ok(());
            }
            Some(b't') => self.literal(b"true", Kind::Bool(true))?,
            Some(b'f') => self.literal(b"false", Kind::Bool(false))?,
            Some(b'n') => self.literal(b"null", Kind::Null)?,
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Kind::Num
            }
            Some(_) => return self.err(),
        };
        if let Some(n) = node {
            self.set.record(n, Found { kind, start, end: self.i }, self.out);
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Result<Kind, Malformed> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(kind)
        } else {
            self.err()
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while matches!(self.b.get(self.i), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - from
    }

    fn number(&mut self) -> Result<(), Malformed> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err(),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err();
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err();
            }
        }
        Ok(())
    }

    /// Parses a string at `self.i` (on its opening quote); returns the span of its contents
    /// and whether it contains escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), Malformed> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            let Some(&c) = self.b.get(self.i) else { return self.err() };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok((start, self.i - 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6).ok_or(Malformed { at: self.b.len() })?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return self.err();
                            }
                            self.i += 6;
                        }
                        _ => return self.err(),
                    }
                }
                0..=0x1f => return self.err(),
                _ => self.i += 1,
            }
        }
    }

    fn object(&mut self, node: Option<usize>, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return self.err();
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.b.get(self.i) != Some(&b'"') {
                return self.err();
            }
            let (ks, ke, escaped) = self.string()?;
            let child = node.and_then(|n| self.child(n, ks, ke, escaped));
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return self.err();
            }
            self.i += 1;
            self.ws();
            self.value(child, depth)?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err(),
            }
        }
    }

    fn child(&self, node: usize, ks: usize, ke: usize, escaped: bool) -> Option<usize> {
        let children = &self.set.nodes[node].children;
        if children.is_empty() {
            return None;
        }
        let key = &self.b[ks..ke];
        if !escaped {
            return children.iter().find(|(name, _)| &name[..] == key).map(|c| c.1);
        }
        let key = unescape(key)?;
        children.iter().find(|(name, _)| name[..] == *key.as_bytes()).map(|c| c.1)
    }

    fn array(&mut self, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return self.err();
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(None, depth)?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err(),
            }
        }
    }
}

/// Decodes the contents of a JSON string (without quotes). `None` if it is not valid UTF-8
/// or holds a lone surrogate.
pub fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(raw.get(i + 2..i + 6)?)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    i += 6;
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                } else {
                    char::from_u32(hi)?
                }
            }
            _ => return None,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).ok()
}

fn hex4(h: &[u8]) -> Option<u32> {
    std::str::from_utf8(h).ok().and_then(|s| u32::from_str_radix(s, 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan<'a>(paths: &[&[&str]], text: &'a str) -> Result<Vec<Option<(Kind, &'a str)>>, Malformed> {
        let mut set = PathSet::default();
        for p in paths {
            set.add(p);
        }
        let mut out = vec![None; set.len()];
        set.scan(text.as_bytes(), &mut out)?;
        Ok(out.into_iter().map(|f| f.map(|f| (f.kind, &text[f.start..f.end]))).collect())
    }

    #[test]
    fn nested_paths_are_found_and_others_skipped() {
        let text = r#"{"vin":"V1","speed":81.5,"battery":{"soc":0.42,"temp":[1,2,{"x":3}]},"alarm":false,"n":null}"#;
        let got = scan(&[&["speed"], &["battery", "soc"], &["alarm"], &["vin"], &["n"], &["missing"]], text).unwrap();
        assert_eq!(
            got,
            vec![
                Some((Kind::Num, "81.5")),
                Some((Kind::Num, "0.42")),
                Some((Kind::Bool(false), "false")),
                Some((Kind::Str { escaped: false }, "V1")),
                Some((Kind::Null, "null")),
                None,
            ]
        );
    }

    #[test]
    fn a_path_through_a_non_object_is_absent_and_composites_keep_their_text() {
        let got = scan(&[&["a", "b"], &["c"]], r#"{"a": [1, 2], "c": {"d": [true]}}"#).unwrap();
        assert_eq!(got, vec![None, Some((Kind::Composite, r#"{"d": [true]}"#))]);
    }

    #[test]
    fn escaped_keys_match_and_the_same_path_feeds_two_slots() {
        let got = scan(&[&["sp\"d"], &["sp\"d"]], r#"{"sp\"d": 3}"#).unwrap();
        assert_eq!(got, vec![Some((Kind::Num, "3")), Some((Kind::Num, "3"))]);
        let got = scan(&[&["é"]], r#"{"\u00e9": "x"}"#).unwrap();
        assert_eq!(got, vec![Some((Kind::Str { escaped: false }, "x"))]);
    }

    #[test]
    fn truncated_and_malformed_payloads_are_refused_whole() {
        for bad in [
            r#"{"speed": 81.5, "soc": 0.4"#,
            r#"{"speed": 81.5,}"#,
            r#"{"speed": 01}"#,
            r#"{"speed": 1.}"#,
            r#"{"speed": -}"#,
            r#"{"a": tru}"#,
            r#"{"a": "x\q"}"#,
            "{\"a\": \"line\nbreak\"}",
            r#"{"a": 1} trailing"#,
            r#"{"a" 1}"#,
            "",
            "   ",
            "\u{0}",
        ] {
            assert!(scan(&[&["speed"]], bad).is_err(), "{bad:?} accepted");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(scan(&[&["a"]], &deep).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(scan(&[&["a"]], &ok).is_ok());
    }

    #[test]
    fn scalars_and_numbers_of_every_form_are_valid_documents() {
        for good in ["1", "-0.5e-3", "2E+10", "\"s\"", "true", "null", " [ ] ", "{}"] {
            assert!(scan(&[&["a"]], good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn unescape_decodes_escapes_and_surrogate_pairs() {
        assert_eq!(unescape(br#"a\"b\\c\/\n\u0041"#).as_deref(), Some("a\"b\\c/\nA"));
        assert_eq!(unescape(br#"\ud83d\ude97"#).as_deref(), Some("🚗"));
        assert_eq!(unescape(br#"\ud83d"#), None);
        assert_eq!(unescape(b"\xff"), None);
    }
}
