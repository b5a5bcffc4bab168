//! MQTT topic-filter matching, shared by stream routing and subscription matching.
//!
//! Rules (MQTT 5.0 §4.7): `+` matches exactly one level, `#` matches the parent level and any
//! number of levels below, and a filter starting with a wildcard does not match a topic
//! starting with `$`. Filters are assumed valid (the codec validates them).

/// True if `topic` (a topic name, no wildcards) matches `filter`. Compares level by level
/// on bytes (`/`, `+` and `#` are ASCII, so byte positions are character boundaries).
pub fn matches(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    // Start of the next level of each, `None` once its last level was taken. A name has at
    // least one (possibly empty) level, as `str::split` would give.
    let (mut fp, mut tp) = (Some(0usize), Some(0usize));
    loop {
        let Some(fs) = fp else { return tp.is_none() };
        let fe = level_end(f, fs);
        fp = (fe < f.len()).then_some(fe + 1);
        let level = &f[fs..fe];
        if level == b"#" {
            return true;
        }
        let Some(ts) = tp else { return false };
        let te = level_end(t, ts);
        tp = (te < t.len()).then_some(te + 1);
        if level != b"+" && level != &t[ts..te] {
            return false;
        }
    }
}

/// Index of the `/` that ends the level starting at `start`, or `s.len()`.
fn level_end(s: &[u8], start: usize) -> usize {
    s[start..].iter().position(|&b| b == b'/').map_or(s.len(), |p| start + p)
}

/// The first `n` levels of `topic` joined by `/`, or `None` if it has fewer levels.
pub fn first_levels(topic: &str, n: usize) -> Option<&str> {
    if n == 0 {
        return Some("");
    }
    let mut seen = 0;
    for (i, b) in topic.bytes().enumerate() {
        if b == b'/' {
            seen += 1;
            if seen == n {
                return Some(&topic[..i]);
            }
        }
    }
    (seen + 1 == n).then_some(topic)
}

/// If every topic matching `filter` has the same first `n` levels, those levels: a
/// subscription like `v/VIN123/#` pins the key `v/VIN123` of a stream keyed by 2 levels.
pub fn pinned_prefix(filter: &str, n: usize) -> Option<&str> {
    let prefix = first_levels(filter, n)?;
    if prefix.split('/').any(|l| l == "+" || l == "#") {
        return None;
    }
    // `v/VIN123/#` also matches `v/VIN123` itself, which has the same first two levels.
    Some(prefix)
}

/// True if some topic name matches both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with('+') || f.starts_with('#');
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_per_the_spec() {
        assert!(matches("a/b/c", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("a/+/c", "a/x/c"));
        assert!(!matches("a/+/c", "a/x/y/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/x"));
        assert!(matches("+", ""));
        assert!(!matches("a/b", "a/b/"));
        assert!(matches("a/b/+", "a/b/"));
    }

    /// The matcher before it worked on bytes: `str::split` level by level.
    fn matches_by_split(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let (mut f, mut t) = (filter.split('/'), topic.split('/'));
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(fl), Some(tl)) if fl == tl => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Every string of up to `n` characters over `alphabet`.
    fn strings(alphabet: &[char], n: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..n {
            last = last.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_byte_matcher_agrees_with_level_splitting_on_every_small_case() {
        let valid_filter = |f: &str| {
            let levels: Vec<&str> = f.split('/').collect();
            levels.iter().enumerate().all(|(i, l)| {
                (!l.contains(['+', '#']) || *l == "+" || *l == "#") && (*l != "#" || i == levels.len() - 1)
            })
        };
        let filters: Vec<String> =
            strings(&['a', 'b', '/', '+', '#', '$'], 5).into_iter().filter(|f| valid_filter(f)).collect();
        let topics = strings(&['a', 'b', '/', '$'], 5);
        for f in &filters {
            for t in &topics {
                assert_eq!(matches(f, t), matches_by_split(f, t), "filter {f:?} topic {t:?}");
            }
        }
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/+", "$SYS/x"));
    }

    #[test]
    fn filters_overlap_when_a_topic_matches_both() {
        assert!(overlaps("v/+/telemetry", "v/VIN1/#"));
        assert!(overlaps("v/+/telemetry", "#"));
        assert!(!overlaps("v/+/telemetry", "v/VIN1/cmd"));
        assert!(overlaps("a/#", "a"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(overlaps("$SYS/#", "$SYS/+"));
    }

    #[test]
    fn key_prefixes_follow_levels() {
        assert_eq!(first_levels("v/VIN1/telemetry", 2), Some("v/VIN1"));
        assert_eq!(first_levels("v/VIN1", 2), Some("v/VIN1"));
        assert_eq!(first_levels("v", 2), None);
        assert_eq!(pinned_prefix("v/VIN1/#", 2), Some("v/VIN1"));
        assert_eq!(pinned_prefix("v/+/cmd", 2), None);
        assert_eq!(pinned_prefix("v/#", 2), None);
    }
}
