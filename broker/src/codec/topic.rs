//! Topic names, topic filters, shared subscriptions (`$share/{group}/{filter}`) and matching.

/// Why a topic name or topic filter is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("it is empty; topics need at least one character")]
    Empty,
    #[error("it is {len} bytes long; topics hold at most 65535 bytes")]
    TooLong { len: usize },
    #[error("it contains the null character U+0000")]
    NullCharacter,
    #[error("it contains a wildcard ('+' or '#'); wildcards are only allowed in subscriptions")]
    WildcardInName,
    #[error("'#' must be the last character of the filter and fill its whole level, as in \"a/#\"")]
    MultiLevelWildcardMisplaced,
    #[error("'+' must fill a whole level, as in \"a/+/b\"")]
    SingleLevelWildcardMisplaced,
    #[error("the shared subscription group name is empty; use \"$share/{{group}}/{{filter}}\"")]
    EmptyShareGroup,
    #[error("the shared subscription group name contains a wildcard; group names must not contain '+' or '#'")]
    WildcardInShareGroup,
    #[error("the shared subscription has no topic filter after the group; use \"$share/{{group}}/{{filter}}\"")]
    MissingSharedFilter,
}

const MAX_TOPIC_LEN: usize = 65_535;

fn check_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: text.len() });
    }
    if text.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name as used in PUBLISH: non-empty, no wildcards, no U+0000.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    // One pass over the bytes (every character looked for is ASCII); the common checks
    // then say which defect it is.
    if !topic.is_empty() && topic.len() <= MAX_TOPIC_LEN && !topic.bytes().any(|b| matches!(b, 0 | b'+' | b'#')) {
        return Ok(());
    }
    check_common(topic)?;
    Err(TopicError::WildcardInName)
}

/// Checks a topic filter as used in SUBSCRIBE and UNSUBSCRIBE, including the shared form
/// `$share/{group}/{filter}`.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    match filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, inner) = rest.split_once('/').ok_or(TopicError::MissingSharedFilter)?;
            if group.is_empty() {
                return Err(TopicError::EmptyShareGroup);
            }
            if group.contains(['+', '#']) {
                return Err(TopicError::WildcardInShareGroup);
            }
            if inner.is_empty() {
                return Err(TopicError::MissingSharedFilter);
            }
            validate_plain_filter(inner)
        }
        None => validate_plain_filter(filter),
    }
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcardMisplaced);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcardMisplaced);
        }
    }
    Ok(())
}

/// Splits a shared subscription `$share/{group}/{filter}` into `(group, filter)`.
/// Returns `None` for filters that are not shared. It does not validate the parts; use
/// [`validate_topic_filter`] for that.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

/// Whether `topic` (a topic name) matches `filter` (a plain topic filter, i.e. for shared
/// subscriptions the part after the group). Filters beginning with a wildcard do not match
/// topics beginning with `$`, so `#` does not see `$SYS/...`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_reject_wildcards_empty_and_nul() {
        assert_eq!(validate_topic_name("v/VIN123/telemetry"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+/b"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        let long = "a".repeat(65_536);
        assert_eq!(validate_topic_name(&long), Err(TopicError::TooLong { len: 65_536 }));
    }

    #[test]
    fn multi_level_wildcard_must_be_last_and_alone() {
        for ok in ["#", "a/#", "/#", "+/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/a", "a/b#", "##"] {
            assert_eq!(validate_topic_filter(bad), Err(TopicError::MultiLevelWildcardMisplaced), "{bad}");
        }
    }

    #[test]
    fn single_level_wildcard_must_fill_its_level() {
        for ok in ["+", "+/+", "a/+/b", "/+", "+/"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a+", "a/b+/c", "++", "+a"] {
            assert_eq!(validate_topic_filter(bad), Err(TopicError::SingleLevelWildcardMisplaced), "{bad}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_subscriptions_need_a_plain_group_and_a_valid_filter() {
        assert_eq!(validate_topic_filter("$share/tsp/v/+/telemetry"), Ok(()));
        assert_eq!(validate_topic_filter("$share/g/#"), Ok(()));
        assert_eq!(validate_topic_filter("$share//a"), Err(TopicError::EmptyShareGroup));
        assert_eq!(validate_topic_filter("$share/g+/a"), Err(TopicError::WildcardInShareGroup));
        assert_eq!(validate_topic_filter("$share/#/a"), Err(TopicError::WildcardInShareGroup));
        assert_eq!(validate_topic_filter("$share/g"), Err(TopicError::MissingSharedFilter));
        assert_eq!(validate_topic_filter("$share/g/"), Err(TopicError::MissingSharedFilter));
        assert_eq!(validate_topic_filter("$share/"), Err(TopicError::MissingSharedFilter));
        assert_eq!(validate_topic_filter("$share/g/a/#/b"), Err(TopicError::MultiLevelWildcardMisplaced));
    }

    #[test]
    fn parse_shared_splits_group_and_filter() {
        assert_eq!(parse_shared("$share/tsp/v/+/telemetry"), Some(("tsp", "v/+/telemetry")));
        assert_eq!(parse_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(parse_shared("v/+/telemetry"), None);
        assert_eq!(parse_shared("$share/g"), None);
        assert_eq!(parse_shared("$sharex/g/a"), None);
    }

    #[test]
    fn wildcards_match_levels() {
        assert!(topic_matches("v/+/telemetry", "v/VIN1/telemetry"));
        assert!(!topic_matches("v/+/telemetry", "v/VIN1/x/telemetry"));
        assert!(topic_matches("sport/#", "sport"));
        assert!(topic_matches("sport/#", "sport/tennis/player1"));
        assert!(!topic_matches("sport/+", "sport"));
        assert!(topic_matches("sport/+", "sport/"));
        assert!(topic_matches("+/+", "/finance"));
        assert!(topic_matches("/+", "/finance"));
        assert!(!topic_matches("+", "/finance"));
        assert!(topic_matches("#", "a/b/c"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        assert!(!topic_matches("#", "$SYS/broker/uptime"));
        assert!(!topic_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(topic_matches("$SYS/+/uptime", "$SYS/broker/uptime"));
    }
}
