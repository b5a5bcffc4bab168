//! Operator views of consumer groups (for the admin API and metrics) and offset resets.

use super::{stream_key, GroupError, GroupStoreError, Groups, Strategy, FAMILY};

/// One member of a live group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: String,
    /// Partition numbers of the group's stream this member owns in the current generation.
    pub partitions: Vec<u32>,
    /// Last join or heartbeat, in ms since the Unix epoch.
    pub last_seen_ms: i64,
    pub session_timeout_ms: u64,
}

/// A consumer group: live membership (if any) and committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    /// The stream it reads; `None` for a group that committed before streams were recorded.
    pub stream: Option<String>,
    /// The latest generation handed out.
    pub generation: u64,
    /// `None` when the group has no live members.
    pub strategy: Option<Strategy>,
    pub members: Vec<MemberInfo>,
    /// `(partition, next offset to read)` as committed, ascending by partition.
    pub committed: Vec<(u32, u64)>,
}

impl Groups {
    /// Every group known live or from storage, sorted by name.
    pub fn describe_all(&self) -> Result<Vec<GroupInfo>, GroupStoreError> {
        let mut names: Vec<String> = {
            let c = self.coordinator.lock();
            c.groups.keys().chain(c.last_generation.keys()).cloned().collect()
        };
        for (k, _) in self.meta.scan_prefix(FAMILY, b"stream\0")? {
            names.push(String::from_utf8_lossy(&k[b"stream\0".len()..]).to_string());
        }
        names.sort();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(g) = self.describe(&n)? {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// One group, or `None` if the broker has never seen it.
    pub fn describe(&self, group: &str) -> Result<Option<GroupInfo>, GroupStoreError> {
        let stored_stream = self.meta.get(FAMILY, &stream_key(group))?.map(|v| String::from_utf8_lossy(&v).to_string());
        let mut committed = self.committed(group, &[])?;
        committed.sort_unstable();
        let c = self.coordinator.lock();
        let generation = c.last_generation.get(group).copied().unwrap_or(0);
        let live = c.groups.get(group);
        if live.is_none() && stored_stream.is_none() && committed.is_empty() && generation == 0 {
            return Ok(None);
        }
        let members = live
            .map(|g| {
                g.members
                    .iter()
                    .map(|(id, m)| MemberInfo {
                        id: id.clone(),
                        partitions: g.assignment.get(id).cloned().unwrap_or_default(),
                        last_seen_ms: m.last_seen_ms,
                        session_timeout_ms: m.timeout_ms,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(GroupInfo {
            name: group.to_string(),
            stream: live.map(|g| g.stream.clone()).or(stored_stream),
            generation,
            strategy: live.map(|g| g.strategy),
            members,
            committed,
        }))
    }

    /// Overwrites `group`'s committed offsets (an operator's reset). Refused while the group
    /// has live members, as in Kafka: they would overwrite it with their next commit.
    pub fn reset_offsets(&self, group: &str, offsets: &[(u32, u64)]) -> Result<(), GroupStoreError> {
        let c = self.coordinator.lock();
        if c.groups.get(group).is_some_and(|g| !g.members.is_empty()) {
            return Err(GroupError::Active { group: group.to_string() }.into());
        }
        self.write_offsets(group, offsets)?;
        drop(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> (tempfile::TempDir, Groups) {
        let dir = tempfile::tempdir().unwrap();
        let meta = std::sync::Arc::new(crate::meta::MetaStore::open(dir.path()).unwrap());
        (dir, Groups::open(meta).unwrap())
    }

    #[test]
    fn live_group_is_described_with_members_assignment_and_commits() {
        let (_d, g) = groups();
        let j = g.join("analytics", "telemetry", 4, "", 10_000, None, 1_000).unwrap();
        g.commit("analytics", &j.member_id, j.generation, &[(0, 42)], 1_001).unwrap();
        let all = g.describe_all().unwrap();
        assert_eq!(all.len(), 1);
        let info = &all[0];
        assert_eq!((info.name.as_str(), info.stream.as_deref()), ("analytics", Some("telemetry")));
        assert_eq!(info.members.len(), 1);
        assert_eq!(info.members[0].partitions, vec![0, 1, 2, 3]);
        assert_eq!(info.committed, vec![(0, 42)]);
        assert!(g.describe("nobody").unwrap().is_none());
    }

    #[test]
    fn offsets_reset_only_when_the_group_has_no_members() {
        let (_d, g) = groups();
        let j = g.join("etl", "telemetry", 2, "", 10_000, None, 1_000).unwrap();
        assert!(matches!(g.reset_offsets("etl", &[(0, 0)]), Err(GroupStoreError::Group(GroupError::Active { .. }))));
        g.leave("etl", &j.member_id, 2_000).unwrap();
        g.reset_offsets("etl", &[(0, 7), (1, 9)]).unwrap();
        let info = g.describe("etl").unwrap().unwrap();
        assert_eq!(info.committed, vec![(0, 7), (1, 9)]);
        assert!(info.members.is_empty());
        assert_eq!(info.stream.as_deref(), Some("telemetry"), "the stream outlives the members");
    }
}
