//! Consumer groups: which member of a group reads which partitions of a stream, and the
//! offsets the group committed.
//!
//! The coordinator is a pure state machine driven with the current time (ms), so tests run it
//! without clocks or sockets. Its protocol, simpler than Kafka's but with the same guarantees:
//! - Every membership change (a new member, a leave, a heartbeat timeout) starts a new
//!   *generation* and recomputes the assignment at once (range or round-robin over the
//!   members sorted by id).
//! - Members learn about a new generation from `heartbeat` (`rebalance_needed`) and call
//!   `join` again with their member id; a rejoin that changes nothing keeps the generation.
//! - Commits carry the member's generation and are refused unless it is the current one and
//!   the member owns the partitions: a member that missed a rebalance cannot overwrite the
//!   new owner's progress (fencing).
//!
//! Delivery is at least once: between a rebalance and the old owner's next heartbeat, both
//! the old and the new owner may process the same records; only the current owner's commits
//! count. Membership lives in memory (members rejoin after a broker restart); the generation
//! counter and committed offsets live in RocksDB (`groups` column family), so generations
//! never repeat across restarts.

use std::collections::{BTreeMap, HashMap};

mod describe;

pub use describe::{GroupInfo, MemberInfo};

/// How partitions are dealt to members (sorted by member id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Contiguous ranges; the first `partitions % members` members get one extra.
    #[default]
    Range,
    /// Partition `p` goes to member `p % members`.
    RoundRobin,
}

/// Why a group request was refused. Each message says what the client should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error(
        "member {member} is not in group {group} (it left, timed out, or the broker restarted): call JoinGroup again"
    )]
    UnknownMember { group: String, member: String },
    #[error("group {group} is at generation {current}, the request is for generation {given}: call JoinGroup again")]
    StaleGeneration { group: String, given: u64, current: u64 },
    #[error("group {group} reads stream {existing}, not {requested}: use another group name")]
    StreamMismatch { group: String, existing: String, requested: String },
    #[error("group {group} uses the {existing:?} strategy, not {requested:?}")]
    StrategyMismatch { group: String, existing: Strategy, requested: Strategy },
    #[error("member {member} of group {group} does not own partition {partition} in generation {generation}")]
    NotOwner { group: String, member: String, partition: u32, generation: u64 },
    #[error("session timeout {0} ms is outside 1000..=300000")]
    BadTimeout(u32),
    #[error("group {group} has live members: stop its consumers (or wait for their session timeout) before resetting offsets")]
    Active { group: String },
}

/// A member's view after joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<u32>,
    pub members: Vec<String>,
}

#[derive(Debug, Clone)]
struct Member {
    timeout_ms: u64,
    last_seen_ms: i64,
}

#[derive(Debug, Clone)]
struct Group {
    stream: String,
    partitions: u32,
    strategy: Strategy,
    generation: u64,
    members: BTreeMap<String, Member>,
    assignment: HashMap<String, Vec<u32>>,
}

impl Group {
    fn rebalance(&mut self, next_generation: u64) {
        self.generation = next_generation;
        let ids: Vec<&String> = self.members.keys().collect();
        self.assignment = assign(self.strategy, self.partitions, &ids);
    }
}

/// Deals `partitions` to `members` (already sorted).
pub fn assign(strategy: Strategy, partitions: u32, members: &[&String]) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = members.iter().map(|m| ((*m).clone(), Vec::new())).collect();
    let n = members.len() as u32;
    if n == 0 {
        return out;
    }
    for p in 0..partitions {
        let i = match strategy {
            Strategy::RoundRobin => p % n,
            Strategy::Range => {
                let (base, extra) = (partitions / n, partitions % n);
                // The first `extra` members hold base + 1 partitions each.
                let big = extra * (base + 1);
                if p < big {
                    p / (base + 1)
                } else {
                    extra + (p - big) / base.max(1)
                }
            }
        };
        out.entry(members[i as usize].clone()).or_default().push(p);
    }
    out
}

/// All groups' membership. `generation_floor` is where generations continue after a restart.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: HashMap<String, Group>,
    /// The highest generation handed out (or loaded), per group: the next one is larger.
    last_generation: HashMap<String, u64>,
    next_member: u64,
}

/// Default and bounds of a member's session timeout (ms).
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;
const TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 1_000..=300_000;

impl Coordinator {
    /// Continues `group`'s generations above `generation` (loaded from storage).
    pub fn restore_generation(&mut self, group: &str, generation: u64) {
        let g = self.last_generation.entry(group.to_string()).or_default();
        *g = (*g).max(generation);
    }

    fn bump(&mut self, group: &str) -> u64 {
        let g = self.last_generation.entry(group.to_string()).or_default();
        *g += 1;
        *g
    }

    /// Joins (or rejoins) `member_id` (empty: a new member) to `group` reading `stream` with
    /// `partitions` partitions. Returns the member's assignment and whether the generation
    /// changed (the caller persists it).
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        group: &str,
        stream: &str,
        partitions: u32,
        member_id: &str,
        timeout_ms: u32,
        strategy: Option<Strategy>,
        now_ms: i64,
    ) -> Result<(Joined, bool), GroupError> {
        let timeout_ms = if timeout_ms == 0 { DEFAULT_SESSION_TIMEOUT_MS } else { timeout_ms };
        if !TIMEOUT_RANGE.contains(&timeout_ms) {
            return Err(GroupError::BadTimeout(timeout_ms));
        }
        self.expire(now_ms);
        if let Some(g) = self.groups.get(group) {
            if g.stream != stream {
                return Err(GroupError::StreamMismatch {
                    group: group.into(),
                    existing: g.stream.clone(),
                    requested: stream.into(),
                });
            }
            if let Some(s) = strategy {
                if s != g.strategy {
                    return Err(GroupError::StrategyMismatch {
                        group: group.into(),
                        existing: g.strategy,
                        requested: s,
                    });
                }
            }
        }
        let member_id = if member_id.is_empty() {
            self.next_member += 1;
            format!("{group}-member-{:x}-{}", rand::random::<u32>(), self.next_member)
        } else {
            member_id.to_string()
        };
        let known = self.groups.get(group).is_some_and(|g| g.members.contains_key(&member_id));
        let resized = self.groups.get(group).is_some_and(|g| g.partitions != partitions);
        let changed = !known || resized;
        let next = if changed { Some(self.bump(group)) } else { None };
        let g = self.groups.entry(group.to_string()).or_insert_with(|| Group {
            stream: stream.to_string(),
            partitions,
            strategy: strategy.unwrap_or_default(),
            generation: 0,
            members: BTreeMap::new(),
            assignment: HashMap::new(),
        });
        g.members.insert(member_id.clone(), Member { timeout_ms: u64::from(timeout_ms), last_seen_ms: now_ms });
        g.partitions = partitions;
        if let Some(gen) = next {
            g.rebalance(gen);
        }
        Ok((joined(g, &member_id), changed))
    }

    /// Records a heartbeat. `Ok(true)` means the member must rejoin (new generation).
    pub fn heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        generation: u64,
        now_ms: i64,
    ) -> Result<(bool, u64), GroupError> {
        self.expire(now_ms);
        let g = self.member_group(group, member_id)?;
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen_ms = now_ms;
        }
        Ok((generation != g.generation, g.generation))
    }

    /// Removes a member; the others rebalance. Returns the new generation, if any.
    pub fn leave(&mut self, group: &str, member_id: &str, now_ms: i64) -> Result<Option<u64>, GroupError> {
        self.expire(now_ms);
        self.member_group(group, member_id)?;
        Ok(self.remove_member(group, member_id))
    }

    /// Checks that `member_id` may commit `partitions` in `generation`.
    pub fn check_commit(
        &mut self,
        group: &str,
        member_id: &str,
        generation: u64,
        partitions: &[u32],
        now_ms: i64,
    ) -> Result<(), GroupError> {
        self.expire(now_ms);
        let g = self.member_group(group, member_id)?;
        if generation != g.generation {
            return Err(GroupError::StaleGeneration { group: group.into(), given: generation, current: g.generation });
        }
        let owned = g.assignment.get(member_id).cloned().unwrap_or_default();
        if let Some(p) = partitions.iter().find(|p| !owned.contains(p)) {
            return Err(GroupError::NotOwner {
                group: group.into(),
                member: member_id.into(),
                partition: *p,
                generation,
            });
        }
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_seen_ms = now_ms;
        }
        Ok(())
    }

    /// The stream a group reads, if the group exists.
    pub fn stream_of(&self, group: &str) -> Option<&str> {
        self.groups.get(group).map(|g| g.stream.as_str())
    }

    /// Removes members whose session timed out. Returns the groups whose generation changed,
    /// with the new generation.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(String, u64)> {
        let mut gone: Vec<(String, String)> = Vec::new();
        for (name, g) in &self.groups {
            for (id, m) in &g.members {
                if now_ms.saturating_sub(m.last_seen_ms) > m.timeout_ms as i64 {
                    gone.push((name.clone(), id.clone()));
                }
            }
        }
        let mut changed = Vec::new();
        for (group, member) in gone {
            tracing::info!(%group, %member, "consumer group member timed out");
            if let Some(gen) = self.remove_member(&group, &member) {
                changed.retain(|(g, _): &(String, u64)| *g != group);
                changed.push((group, gen));
            }
        }
        changed
    }

    fn member_group(&mut self, group: &str, member_id: &str) -> Result<&mut Group, GroupError> {
        match self.groups.get_mut(group) {
            Some(g) if g.members.contains_key(member_id) => Ok(g),
            _ => Err(GroupError::UnknownMember { group: group.into(), member: member_id.into() }),
        }
    }

    fn remove_member(&mut self, group: &str, member_id: &str) -> Option<u64> {
        let removed = self.groups.get_mut(group).is_some_and(|g| g.members.remove(member_id).is_some());
        if !removed {
            return None;
        }
        let gen = self.bump(group);
        let g = self.groups.get_mut(group)?;
        g.rebalance(gen);
        // An empty group keeps its stream binding and generation until a member joins again.
        Some(gen)
    }
}

fn joined(g: &Group, member_id: &str) -> Joined {
    Joined {
        member_id: member_id.to_string(),
        generation: g.generation,
        partitions: g.assignment.get(member_id).cloned().unwrap_or_default(),
        members: g.members.keys().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn range_and_round_robin_cover_every_partition_once() {
        for strategy in [Strategy::Range, Strategy::RoundRobin] {
            for members in 1..6 {
                for partitions in 0..13 {
                    let names = ids(members);
                    let refs: Vec<&String> = names.iter().collect();
                    let a = assign(strategy, partitions, &refs);
                    let mut all: Vec<u32> = a.values().flatten().copied().collect();
                    all.sort_unstable();
                    assert_eq!(all, (0..partitions).collect::<Vec<_>>(), "{strategy:?} {members} {partitions}");
                    let sizes: Vec<usize> = a.values().map(Vec::len).collect();
                    let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(hi - lo <= 1, "balanced: {sizes:?}");
                }
            }
        }
        let names = ids(2);
        let refs: Vec<&String> = names.iter().collect();
        assert_eq!(assign(Strategy::Range, 5, &refs)["m0"], vec![0, 1, 2]);
        assert_eq!(assign(Strategy::RoundRobin, 5, &refs)["m1"], vec![1, 3]);
    }

    #[test]
    fn a_join_rebalances_and_the_old_member_learns_it_from_its_heartbeat() {
        let mut c = Coordinator::default();
        let (a, changed) = c.join("g", "s", 4, "", 0, None, 0).unwrap();
        assert!(changed);
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        let (b, _) = c.join("g", "s", 4, "", 0, None, 10).unwrap();
        assert_eq!(b.generation, a.generation + 1);
        assert_eq!(c.heartbeat("g", &a.member_id, a.generation, 20).unwrap(), (true, b.generation));
        // The stale member cannot commit until it rejoins.
        let err = c.check_commit("g", &a.member_id, a.generation, &[0], 20).unwrap_err();
        assert!(matches!(err, GroupError::StaleGeneration { .. }), "{err}");
        let (a2, changed) = c.join("g", "s", 4, &a.member_id, 0, None, 30).unwrap();
        assert!(!changed, "a rejoin that changes nothing keeps the generation");
        assert_eq!(a2.generation, b.generation);
        let mut both: Vec<u32> = a2.partitions.iter().chain(&b.partitions).copied().collect();
        both.sort_unstable();
        assert_eq!(both, vec![0, 1, 2, 3]);
        c.check_commit("g", &a.member_id, a2.generation, &a2.partitions, 40).unwrap();
        let foreign = b.partitions[0];
        assert!(matches!(
            c.check_commit("g", &a.member_id, a2.generation, &[foreign], 40),
            Err(GroupError::NotOwner { .. })
        ));
    }

    #[test]
    fn a_member_that_stops_heartbeating_is_removed_after_its_timeout() {
        let mut c = Coordinator::default();
        let (a, _) = c.join("g", "s", 2, "", 1000, None, 0).unwrap();
        let (b, _) = c.join("g", "s", 2, "", 5000, None, 0).unwrap();
        c.heartbeat("g", &b.member_id, b.generation, 900).unwrap();
        let changed = c.expire(1500);
        assert_eq!(changed.len(), 1, "a timed out");
        assert!(matches!(c.heartbeat("g", &a.member_id, b.generation, 1500), Err(GroupError::UnknownMember { .. })));
        let (b2, _) = c.join("g", "s", 2, &b.member_id, 5000, None, 1600).unwrap();
        assert_eq!(b2.partitions, vec![0, 1]);
        assert_eq!(b2.members, vec![b.member_id.clone()]);
    }

    #[test]
    fn leaving_rebalances_and_generations_continue_after_a_restart() {
        let mut c = Coordinator::default();
        c.restore_generation("g", 41);
        let (a, _) = c.join("g", "s", 3, "", 0, Some(Strategy::RoundRobin), 0).unwrap();
        assert_eq!(a.generation, 42, "never reuses a generation from before the restart");
        let (b, _) = c.join("g", "s", 3, "", 0, None, 0).unwrap();
        assert_eq!(c.leave("g", &a.member_id, 1).unwrap(), Some(b.generation + 1));
        assert!(matches!(c.join("g", "other", 3, "", 0, None, 2), Err(GroupError::StreamMismatch { .. })));
        assert!(matches!(
            c.join("g", "s", 3, "", 0, Some(Strategy::Range), 2),
            Err(GroupError::StrategyMismatch { .. })
        ));
        assert!(matches!(c.join("g", "s", 3, "", 10, None, 2), Err(GroupError::BadTimeout(10))));
    }
}

/// A committed offset or group refusal from [`Groups`].
#[derive(Debug, thiserror::Error)]
pub enum GroupStoreError {
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
}

const FAMILY: &str = "groups";

fn generation_key(group: &str) -> Vec<u8> {
    [b"gen\0".as_slice(), group.as_bytes()].concat()
}

/// The stream a group reads, recorded at join so that it is known after its members leave.
fn stream_key(group: &str) -> Vec<u8> {
    [b"stream\0".as_slice(), group.as_bytes()].concat()
}

fn offsets_prefix(group: &str) -> Vec<u8> {
    [b"off\0".as_slice(), group.as_bytes(), b"\0"].concat()
}

fn offset_key(group: &str, partition: u32) -> Vec<u8> {
    [offsets_prefix(group).as_slice(), &partition.to_be_bytes()].concat()
}

/// The coordinator plus the group state kept in RocksDB: generations (so they never repeat)
/// and committed offsets. Cheap to share; one lock around the coordinator.
pub struct Groups {
    coordinator: parking_lot::Mutex<Coordinator>,
    meta: std::sync::Arc<crate::meta::MetaStore>,
}

impl Groups {
    /// Loads the stored generations.
    pub fn open(meta: std::sync::Arc<crate::meta::MetaStore>) -> Result<Groups, crate::meta::MetaError> {
        let mut c = Coordinator::default();
        for (k, v) in meta.scan_prefix(FAMILY, b"gen\0")? {
            let group = String::from_utf8_lossy(&k[4..]).to_string();
            if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                c.restore_generation(&group, u64::from_le_bytes(b));
            }
        }
        Ok(Groups { coordinator: parking_lot::Mutex::new(c), meta })
    }

    fn persist_generation(&self, group: &str, generation: u64) -> Result<(), crate::meta::MetaError> {
        self.meta.put(FAMILY, &generation_key(group), &generation.to_le_bytes(), false)
    }

    /// See [`Coordinator::join`].
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        group: &str,
        stream: &str,
        partitions: u32,
        member_id: &str,
        timeout_ms: u32,
        strategy: Option<Strategy>,
        now_ms: i64,
    ) -> Result<Joined, GroupStoreError> {
        let (joined, changed) =
            self.coordinator.lock().join(group, stream, partitions, member_id, timeout_ms, strategy, now_ms)?;
        if changed {
            self.persist_generation(group, joined.generation)?;
            self.meta.put(FAMILY, &stream_key(group), stream.as_bytes(), false)?;
        }
        Ok(joined)
    }

    /// See [`Coordinator::heartbeat`].
    pub fn heartbeat(
        &self,
        group: &str,
        member: &str,
        generation: u64,
        now_ms: i64,
    ) -> Result<(bool, u64), GroupStoreError> {
        Ok(self.coordinator.lock().heartbeat(group, member, generation, now_ms)?)
    }

    /// See [`Coordinator::leave`].
    pub fn leave(&self, group: &str, member: &str, now_ms: i64) -> Result<(), GroupStoreError> {
        if let Some(generation) = self.coordinator.lock().leave(group, member, now_ms)? {
            self.persist_generation(group, generation)?;
        }
        Ok(())
    }

    /// Removes timed-out members (call periodically).
    pub fn expire(&self, now_ms: i64) -> Result<(), GroupStoreError> {
        let changed = self.coordinator.lock().expire(now_ms);
        for (group, generation) in changed {
            self.persist_generation(&group, generation)?;
        }
        Ok(())
    }

    /// Stores `(partition, next offset)` pairs durably after fencing the member.
    pub fn commit(
        &self,
        group: &str,
        member: &str,
        generation: u64,
        offsets: &[(u32, u64)],
        now_ms: i64,
    ) -> Result<(), GroupStoreError> {
        let partitions: Vec<u32> = offsets.iter().map(|(p, _)| *p).collect();
        // Hold the lock across the write so a rebalance cannot slip between check and write.
        let mut c = self.coordinator.lock();
        c.check_commit(group, member, generation, &partitions, now_ms)?;
        self.write_offsets(group, offsets)?;
        drop(c);
        Ok(())
    }

    /// Stores `(partition, next offset)` pairs of `group` durably, in one batch. Callers hold
    /// the coordinator lock so that membership cannot change between their check and this.
    fn write_offsets(&self, group: &str, offsets: &[(u32, u64)]) -> Result<(), GroupStoreError> {
        let keys: Vec<(Vec<u8>, [u8; 8])> =
            offsets.iter().map(|(p, o)| (offset_key(group, *p), o.to_le_bytes())).collect();
        let ops: Vec<crate::meta::MetaOp<'_>> =
            keys.iter().map(|(k, v)| crate::meta::MetaOp::Put { family: FAMILY, key: k, value: v }).collect();
        self.meta.write_batch(&ops, true)?;
        Ok(())
    }

    /// Committed offsets of `group`, for `partitions` (all committed ones if empty).
    pub fn committed(&self, group: &str, partitions: &[u32]) -> Result<Vec<(u32, u64)>, GroupStoreError> {
        let prefix = offsets_prefix(group);
        let mut out = Vec::new();
        for (k, v) in self.meta.scan_prefix(FAMILY, &prefix)? {
            let (Ok(p), Ok(o)) = (<[u8; 4]>::try_from(&k[prefix.len()..]), <[u8; 8]>::try_from(v.as_slice())) else {
                continue;
            };
            let p = u32::from_be_bytes(p);
            if partitions.is_empty() || partitions.contains(&p) {
                out.push((p, u64::from_le_bytes(o)));
            }
        }
        Ok(out)
    }

    /// The stream a live group reads.
    pub fn stream_of(&self, group: &str) -> Option<String> {
        self.coordinator.lock().stream_of(group).map(str::to_string)
    }
}
