//! The subscription trie: topic filters → subscribers, matched against topic names.
//!
//! Levels are nodes; `+` and `#` are children named `+` and `#`. Shared subscriptions
//! (`$share/{group}/{filter}`) sit at their filter's node as named groups of members. Per the
//! spec, a filter that starts with a wildcard does not match a topic starting with `$`.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Identifies one connected session in the broker (never reused while the process runs).
pub type SubscriberId = u64;

/// Every PUBLISH looks up each of its topic levels here, so the map uses foldhash rather
/// than SipHash (see `docs/decisions.md`, "Hashing in the hot path").
type Children = foldhash::HashMap<String, Node>;

#[derive(Default, Debug)]
struct Node {
    children: Children,
    subscribers: Vec<SubscriberId>,
    /// group name → the group at this node's filter.
    shared: BTreeMap<String, SharedAt>,
}

/// A shared group at one filter: its key, made once when the group is created so that
/// matching a topic allocates nothing, and its members in join order.
#[derive(Debug)]
struct SharedAt {
    key: Arc<str>,
    members: Vec<SubscriberId>,
}

/// The key that identifies shared group `group` on `filter` across the broker:
/// `{group}\0{filter}`.
pub fn shared_key(group: &str, filter: &str) -> String {
    format!("{group}\u{0}{filter}")
}

/// The (group, filter) a [`shared_key`] was made of.
pub fn split_shared_key(key: &str) -> (&str, &str) {
    key.split_once('\u{0}').unwrap_or((key, ""))
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

/// A match for one topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a> {
    Subscriber(SubscriberId),
    /// A shared group: deliver to one of `members`. `key` identifies the group across calls.
    Shared {
        key: &'a Arc<str>,
        members: &'a [SubscriberId],
    },
}

#[derive(Default, Debug)]
pub struct TopicTree {
    root: Node,
    /// Entries (subscriber or shared-group member under a filter) in the tree.
    len: usize,
}

impl TopicTree {
    /// Adds `id` under `filter` (the inner filter for shared subscriptions). Idempotent.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, id: SubscriberId) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.to_string()).or_default();
        }
        let list = match group {
            Some(g) => {
                &mut node
                    .shared
                    .entry(g.to_string())
                    .or_insert_with(|| SharedAt { key: shared_key(g, filter).into(), members: Vec::new() })
                    .members
            }
            None => &mut node.subscribers,
        };
        if !list.contains(&id) {
            list.push(id);
            self.len += 1;
        }
    }

    /// Removes `id` from `filter`; prunes empty nodes. Returns whether it was there.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, id: SubscriberId) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, id);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Subscriptions in the tree (one per subscriber and filter, shared members included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` for every subscriber and shared group whose filter matches `topic`. A
    /// subscriber with several matching filters is reported once per filter.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(Match<'a>)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, 0, dollar, &mut f);
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// The members of shared group `group` on `filter` (empty if there is none).
    pub fn shared_members(&self, filter: &str, group: &str) -> Vec<SubscriberId> {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return Vec::new(),
            }
        }
        node.shared.get(group).map(|g| g.members.clone()).unwrap_or_default()
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, id: SubscriberId) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            Some(g) => {
                let Some(at) = node.shared.get_mut(g) else { return false };
                let before = at.members.len();
                at.members.retain(|m| *m != id);
                let removed = at.members.len() != before;
                if at.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
            None => {
                let before = node.subscribers.len();
                node.subscribers.retain(|m| *m != id);
                node.subscribers.len() != before
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else { return false };
    let removed = remove_at(child, rest, group, id);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn report<'a>(node: &'a Node, f: &mut dyn FnMut(Match<'a>)) {
    for id in &node.subscribers {
        f(Match::Subscriber(*id));
    }
    for at in node.shared.values() {
        f(Match::Shared { key: &at.key, members: &at.members });
    }
}

/// `depth` 0 is the root.
fn walk<'a>(node: &'a Node, levels: &[&str], depth: usize, dollar: bool, f: &mut dyn FnMut(Match<'a>)) {
    let at_root_dollar = dollar && depth == 0;
    // `#` here matches this level and everything below.
    if let Some(hash) = node.children.get("#") {
        if !at_root_dollar {
            report(hash, f);
        }
    }
    let Some((level, rest)) = levels.split_first() else {
        return;
    };
    let visit = |child: &'a Node, f: &mut dyn FnMut(Match<'a>)| {
        if rest.is_empty() {
            report(child, f);
            // `a/#` also matches `a`.
            if let Some(h) = child.children.get("#") {
                report(h, f);
            }
        } else {
            walk(child, rest, depth + 1, dollar, f);
        }
    };
    if let Some(child) = node.children.get(*level) {
        visit(child, f);
    }
    if !at_root_dollar {
        if let Some(plus) = node.children.get("+") {
            visit(plus, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribers(t: &TopicTree, topic: &str) -> Vec<SubscriberId> {
        let mut v = Vec::new();
        t.for_each_match(topic, |m| {
            if let Match::Subscriber(id) = m {
                v.push(id)
            }
        });
        v.sort_unstable();
        v
    }

    #[test]
    fn filters_match_like_the_spec_says() {
        let mut t = TopicTree::default();
        t.insert("v/+/telemetry", None, 1);
        t.insert("v/VIN1/#", None, 2);
        t.insert("#", None, 3);
        t.insert("v/VIN1/telemetry", None, 4);
        t.insert("$SYS/#", None, 5);
        t.insert("+/+/+", None, 6);
        assert_eq!(subscribers(&t, "v/VIN1/telemetry"), vec![1, 2, 3, 4, 6]);
        assert_eq!(subscribers(&t, "v/VIN2/telemetry"), vec![1, 3, 6]);
        assert_eq!(subscribers(&t, "v/VIN1"), vec![2, 3]);
        assert_eq!(subscribers(&t, "$SYS/uptime"), vec![5]);
        assert_eq!(subscribers(&t, "$SYS/a/b"), vec![5]);
    }

    #[test]
    fn removing_the_last_subscriber_prunes_the_tree() {
        let mut t = TopicTree::default();
        t.insert("a/b/c", None, 1);
        t.insert("a/b/c", Some("g"), 2);
        assert!(t.remove("a/b/c", None, 1));
        assert!(!t.remove("a/b/c", None, 1));
        assert!(!t.is_empty());
        assert!(t.remove("a/b/c", Some("g"), 2));
        assert!(t.is_empty());
    }

    #[test]
    fn shared_groups_are_reported_once_with_their_members() {
        let mut t = TopicTree::default();
        t.insert("v/+/telemetry", Some("tsp"), 1);
        t.insert("v/+/telemetry", Some("tsp"), 2);
        t.insert("v/+/telemetry", Some("other"), 3);
        let mut groups = Vec::new();
        t.for_each_match("v/X/telemetry", |m| {
            if let Match::Shared { key, members } = m {
                groups.push((key.to_string(), members.to_vec()));
            }
        });
        groups.sort();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].1, vec![1, 2]);
        assert_eq!(groups[1].0, shared_key("tsp", "v/+/telemetry"));
    }
}
