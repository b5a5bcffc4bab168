//! Access control from an ACL file: ordered allow/deny rules on publish and subscribe.
//!
//! The format (documented for users in `docs/acl.md`), one rule per line; a line whose first
//! non-blank character is `#` is a comment (`#` elsewhere is the wildcard):
//!
//! ```text
//! # verdict  who            action     filter
//! allow      user:fleet     subscribe  v/+/telemetry
//! allow      all            pubsub     v/%c/#
//! deny       all            subscribe  #
//! ```
//!
//! - `who` is `all`, `user:<username>` or `client:<client id>`.
//! - `action` is `publish`, `subscribe` or `pubsub` (both).
//! - `filter` is an MQTT topic filter; `%c` becomes the client id and `%u` the username
//!   (a client without a username matches no `%u` rule).
//!
//! Rules are tried in file order and the first that applies decides. With an ACL file
//! configured, anything no rule applies to is denied: a file is a whitelist with exceptions.
//! For a publish, a rule applies when its filter matches the topic name. For a subscription,
//! an `allow` applies only when every topic the subscription can match is inside the rule's
//! filter (`v/%c/#` allows `v/c1/cmd` but not `v/+/cmd`), and a `deny` applies as soon as the
//! two overlap (`deny all subscribe v/secret/#` refuses `v/#`): a subscription is never let
//! through to topics a rule denies.

use std::path::Path;

use axle_engine::topic;

/// What a client wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    All,
    User(String),
    Client(String),
}

#[derive(Debug, Clone)]
struct Rule {
    allow: bool,
    who: Who,
    publish: bool,
    subscribe: bool,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

/// An ACL file that cannot be used; the broker refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("ACL file line {line}: {message}")]
    Syntax { line: usize, message: String },
}

impl Acl {
    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AclError::Read { path: path.display().to_string(), source })?;
        Acl::parse(&text)
    }

    /// Parses ACL text; every defect names its line.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            // `#` is also the multi-level wildcard, so only whole lines are comments.
            let content = if raw.trim_start().starts_with('#') { "" } else { raw };
            let words: Vec<&str> = content.split_whitespace().collect();
            if words.is_empty() {
                continue;
            }
            let err = |message: String| AclError::Syntax { line, message };
            if words.len() != 4 {
                return Err(err(format!(
                    "expected `allow|deny <who> <action> <filter>`, found {} words: {}",
                    words.len(),
                    content.trim()
                )));
            }
            let allow = match words[0] {
                "allow" => true,
                "deny" => false,
                other => return Err(err(format!("verdict must be `allow` or `deny`, not `{other}`"))),
            };
            let who = match words[1] {
                "all" => Who::All,
                w => match w.split_once(':') {
                    Some(("user", name)) if !name.is_empty() => Who::User(name.to_string()),
                    Some(("client", id)) if !id.is_empty() => Who::Client(id.to_string()),
                    _ => return Err(err(format!("who must be `all`, `user:<name>` or `client:<id>`, not `{w}`"))),
                },
            };
            let (publish, subscribe) = match words[2] {
                "publish" => (true, false),
                "subscribe" => (false, true),
                "pubsub" => (true, true),
                other => return Err(err(format!("action must be `publish`, `subscribe` or `pubsub`, not `{other}`"))),
            };
            let filter = words[3].to_string();
            let probe = filter.replace("%c", "c").replace("%u", "u");
            if let Err(e) = crate::codec::validate_topic_filter(&probe) {
                return Err(err(format!("`{filter}` is not a valid topic filter: {e}")));
            }
            rules.push(Rule { allow, who, publish, subscribe, filter });
        }
        Ok(Acl { rules })
    }

    /// Appends a rule that applies to every client (the form JWT `acl` claims take): `allow`
    /// or deny, for `action` or, with `None`, for both. The filter may use `%c` and `%u`.
    pub fn push_rule(&mut self, allow: bool, action: Option<Action>, filter: &str) -> Result<(), String> {
        let probe = filter.replace("%c", "c").replace("%u", "u");
        crate::codec::validate_topic_filter(&probe)
            .map_err(|e| format!("`{filter}` is not a valid topic filter: {e}"))?;
        let (publish, subscribe) = match action {
            Some(Action::Publish) => (true, false),
            Some(Action::Subscribe) => (false, true),
            None => (true, true),
        };
        self.rules.push(Rule { allow, who: Who::All, publish, subscribe, filter: filter.to_string() });
        Ok(())
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `client_id` (with `username`) may publish to the topic name or subscribe to
    /// the filter `target`, denying what no rule applies to (the ACL file's own default).
    /// Shared-subscription filters are checked by their inner filter.
    pub fn permits(&self, client_id: &str, username: Option<&str>, action: Action, target: &str) -> bool {
        self.decide(client_id, username, action, target).unwrap_or(false)
    }

    /// The verdict of the first rule that applies (`Some(true)` allow, `Some(false)` deny),
    /// or `None` when no rule does and the caller's default decides.
    pub fn decide(&self, client_id: &str, username: Option<&str>, action: Action, target: &str) -> Option<bool> {
        for r in &self.rules {
            let who = match &r.who {
                Who::All => true,
                Who::User(u) => username == Some(u.as_str()),
                Who::Client(c) => c == client_id,
            };
            let acts = match action {
                Action::Publish => r.publish,
                Action::Subscribe => r.subscribe,
            };
            if !who || !acts {
                continue;
            }
            if r.filter.contains("%u") && username.is_none() {
                continue;
            }
            let filter = r.filter.replace("%c", client_id).replace("%u", username.unwrap_or(""));
            let applies = match (action, r.allow) {
                (Action::Publish, _) => topic::matches(&filter, target),
                (Action::Subscribe, true) => covers(&filter, target),
                (Action::Subscribe, false) => topic::overlaps(&filter, target),
            };
            if applies {
                return Some(r.allow);
            }
        }
        None
    }
}

/// True if every topic matching `sub` also matches `rule` (both are filters).
fn covers(rule: &str, sub: &str) -> bool {
    // Wildcards at the first level never match `$` topics.
    if sub.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut r = rule.split('/');
    let mut s = sub.split('/');
    loop {
        match (r.next(), s.next()) {
            (Some("#"), _) => return true,
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(rl), Some(sl)) if rl == sl && sl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
        # fleet backends read all telemetry
        allow user:fleet subscribe v/+/telemetry
        deny  all        subscribe v/secret/#
        allow all        pubsub    v/%c/#
        allow client:ops subscribe #
        allow user:%u    publish   u/%u
    ";

    fn acl() -> Acl {
        Acl::parse(FILE).unwrap()
    }

    #[test]
    fn first_matching_rule_decides_and_the_default_is_deny() {
        let a = acl();
        assert!(a.permits("car1", None, Action::Publish, "v/car1/telemetry"));
        assert!(!a.permits("car1", None, Action::Publish, "v/car2/telemetry"));
        assert!(a.permits("car1", None, Action::Subscribe, "v/car1/cmd"));
        assert!(a.permits("car1", None, Action::Subscribe, "v/car1/#"));
        assert!(!a.permits("car1", None, Action::Subscribe, "v/+/cmd"), "wider than the rule");
        assert!(a.permits("x", Some("fleet"), Action::Subscribe, "v/+/telemetry"));
        assert!(!a.permits("x", Some("fleet"), Action::Subscribe, "v/#"));
    }

    #[test]
    fn deny_applies_to_any_subscription_that_overlaps_it() {
        let a = acl();
        assert!(!a.permits("ops", None, Action::Subscribe, "v/#"), "v/# reaches v/secret/...");
        assert!(!a.permits("ops", None, Action::Subscribe, "v/secret/x"));
        assert!(a.permits("ops", None, Action::Subscribe, "other/#"));
    }

    #[test]
    fn username_placeholder_needs_a_username() {
        let a = Acl::parse("allow all publish u/%u\n").unwrap();
        assert!(a.permits("c", Some("bob"), Action::Publish, "u/bob"));
        assert!(!a.permits("c", Some("bob"), Action::Publish, "u/alice"));
        assert!(!a.permits("c", None, Action::Publish, "u/"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, needle) in [
            ("allow all publish\n", "line 1"),
            ("\nmaybe all publish a\n", "verdict"),
            ("allow everyone publish a\n", "who must be"),
            ("allow all read a\n", "action must be"),
            ("allow all publish a/#/b\n", "not a valid topic filter"),
        ] {
            let e = Acl::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e}");
        }
    }

    #[test]
    fn covering_is_a_subset_test_on_filters() {
        assert!(covers("#", "a/b"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+/c", "a/+/c"));
        assert!(covers("a/+/c", "a/b/c"));
        assert!(!covers("a/b/c", "a/+/c"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
    }
}
