//! Shared subscriptions (`$share/{group}/{filter}`) backed by the log.
//!
//! Each group hands every matching record to one member, round-robin over the members that
//! have *credit*: a member's credit is how many more shared deliveries it may hold unfinished
//! (queued, waiting for its window, or unacknowledged), so a slow member holds at most its
//! window plus `MEMBER_QUEUE` deliveries in memory. When no member has credit, the group
//! does not drop the record: it
//! starts *lagging* on that partition at the record's offset, and members pull the backlog
//! from the log as their credit comes back (acknowledgements). The log absorbs the backlog;
//! RAM stays flat.
//!
//! Per group and partition:
//! - `pos`: records below it were assigned (live or pulled); the dispatcher skips them.
//! - `lag`: when set, records from `lag.from` were not assigned yet; the dispatcher leaves
//!   matching records to the pullers and notes how far it got (`seen_upto`). A puller that
//!   reaches the end of what it read, with the dispatcher not past that point, ends the lag
//!   and sets `pos` there: records past it are the dispatcher's again, and none is handed out
//!   twice.
//!
//! Messages a departing member leaves unacknowledged go to the other members, or to the
//! group's redelivery queue when none has credit. A group exists while it has members; when
//! the last one leaves, its backlog is dropped (as in EMQX: a shared group without members
//! receives nothing).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axle_engine::{Engine, Message};
use parking_lot::{Mutex, RwLock};

use crate::hub::{Delivery, SessionHandle, UNKNOWN};
use crate::topic_tree::SubscriberId;

/// Shared deliveries a member may hold beyond its in-flight window (queued in memory, waiting
/// for acknowledgements): enough to ride out bursts without reading the log, small enough to
/// keep memory per member bounded (about 1024 × message size).
pub const MEMBER_QUEUE: usize = 1024;

/// Most records read from the log per pull step; a step reads about as many records as the
/// member has credit for (at least `PULL_MIN`), so a group whose filter matches most records
/// does not read far past what it can hand out.
const PULL_MAX: usize = 256;
const PULL_MIN: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Lag {
    from: u64,
    seen_upto: u64,
}

#[derive(Default)]
struct Group {
    rr: usize,
    pos: HashMap<usize, u64>,
    lag: HashMap<usize, Lag>,
    redeliver: VecDeque<Delivery>,
}

/// Every shared group's dispatch state, by group key (`{group}\0{filter}`).
#[derive(Default)]
pub struct SharedGroups {
    /// Read-locked on every dispatch run and pull; written only when a group appears or goes.
    groups: RwLock<foldhash::HashMap<String, Arc<Mutex<Group>>>>,
}

/// Takes one unit of `h`'s credit if it has any.
fn take_credit(h: &SessionHandle) -> bool {
    h.shared_credit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| (c > 0).then(|| c - 1)).is_ok()
}

impl SharedGroups {
    /// The group's state, created on first use. Called once per dispatched run, so the key
    /// is copied only when the group is new.
    fn group(&self, key: &str) -> Arc<Mutex<Group>> {
        if let Some(g) = self.groups.read().get(key) {
            return g.clone();
        }
        self.groups.write().entry(key.to_string()).or_default().clone()
    }

    /// True if members should pull: the group lags on some partition or holds redeliveries.
    pub fn needs_pull(&self, key: &str) -> bool {
        let g = self.groups.read().get(key).cloned();
        g.is_some_and(|g| {
            let g = g.lock();
            !g.lag.is_empty() || !g.redeliver.is_empty()
        })
    }

    /// Drops a group's state once it has no members left.
    pub fn forget(&self, key: &str) {
        if self.groups.write().remove(key).is_some() {
            tracing::debug!(group = %key.replace('\u{0}', " "), "shared group has no members left");
        }
    }

    /// Hands live records of partition `pid` (in offset order, all matching the group's
    /// filter) to members with credit, one each in turn, or starts the group lagging. One
    /// lookup and one lock of the group for the whole run.
    pub fn dispatch_run(
        &self,
        sessions: &HashMap<SubscriberId, Arc<SessionHandle>>,
        key: &Arc<str>,
        members: &[SubscriberId],
        pid: usize,
        run: &[(u64, Arc<Message>)],
    ) {
        let Some(&(last, _)) = run.last() else { return };
        if members.is_empty() {
            return;
        }
        let g = self.group(key);
        let mut g = g.lock();
        if let Some(lag) = g.lag.get_mut(&pid) {
            // Lagging: members read these from the log.
            lag.seen_upto = lag.seen_upto.max(last + 1);
            return;
        }
        // Read once: delivering an offset moves `pos` only to just past it, and the run is in
        // offset order, so only records below the starting `pos` are ever skipped.
        let handed_out = g.pos.get(&pid).copied().unwrap_or(0);
        for (offset, msg) in run {
            let offset = *offset;
            if offset < handed_out {
                continue; // a puller already handed it out
            }
            let d = Delivery { pid, offset, prev_end: UNKNOWN, msg: msg.clone(), shared: Some(key.clone()) };
            if !offer_to_one(&mut g, sessions, members, d) {
                g.lag.insert(pid, Lag { from: offset, seen_upto: last + 1 });
                tracing::debug!(group = %key.replace('\u{0}', " "), partition = pid, offset, "shared group lagging; members read the log");
                for m in members {
                    if let Some(h) = sessions.get(m) {
                        h.wake.notify_one();
                    }
                }
                return;
            }
        }
    }

    /// Re-offers what a departing member left unacknowledged to the other members; what
    /// none can take now waits in the group for the next pull.
    pub fn redispatch(
        &self,
        sessions: &HashMap<SubscriberId, Arc<SessionHandle>>,
        members_of: impl Fn(&str) -> Vec<SubscriberId>,
        deliveries: Vec<Delivery>,
    ) {
        for d in deliveries {
            let Some(key) = d.shared.clone() else { continue };
            let members = members_of(&key);
            if members.is_empty() {
                continue;
            }
            let g = self.group(&key);
            let mut g = g.lock();
            let mut left = Some(d);
            for m in &members {
                let Some(h) = sessions.get(m) else { continue };
                let Some(d) = left.take() else { break };
                if !take_credit(h) {
                    left = Some(d);
                    continue;
                }
                if let Err(
                    tokio::sync::mpsc::error::TrySendError::Full(back)
                    | tokio::sync::mpsc::error::TrySendError::Closed(back),
                ) = h.tx.try_send(d)
                {
                    h.shared_credit.fetch_add(1, Ordering::AcqRel);
                    left = Some(back);
                }
            }
            if let Some(d) = left {
                g.redeliver.push_back(d);
                for m in &members {
                    if let Some(h) = sessions.get(m) {
                        h.wake.notify_one();
                    }
                }
            }
        }
    }

    /// Takes, for member `me`, up to its credit of the group's redeliveries and lagging
    /// records (read from the log). `filter` is the group's topic filter.
    pub fn pull(&self, engine: &Engine, key: &str, filter: &str, me: &SessionHandle) -> Vec<Delivery> {
        let mut out = Vec::new();
        let Some(g) = self.groups.read().get(key).cloned() else { return out };
        let shared_key: Arc<str> = Arc::from(key);
        let mut g = g.lock();
        while me.shared_credit.load(Ordering::Acquire) > 0 {
            let Some(d) = g.redeliver.pop_front() else { break };
            if take_credit(me) {
                out.push(d);
            } else {
                g.redeliver.push_front(d);
            }
        }
        let pids: Vec<usize> = g.lag.keys().copied().collect();
        let now = axle_engine::log::now_ms();
        for pid in pids {
            let part = &engine.partitions()[pid].log;
            while me.shared_credit.load(Ordering::Acquire) > 0 {
                let Some(lag) = g.lag.get(&pid).copied() else { break };
                let want = (me.shared_credit.load(Ordering::Acquire).max(0) as usize).clamp(PULL_MIN, PULL_MAX);
                // (offset, message) of each record read; `None` for records that are not
                // messages. Built straight from the read buffer (no intermediate record).
                let records = match part
                    .read_map(lag.from, want, 1 << 20, |r| (r.offset, Message::from_view(&r).map(Arc::new)))
                {
                    Ok(r) => r,
                    Err(axle_engine::log::LogError::OffsetOutOfRange { log_start, end, .. }) => {
                        let to = if lag.from < log_start { log_start } else { end };
                        tracing::warn!(group = %key.replace('\u{0}', " "), partition = pid, from = lag.from, to, "shared backlog outside the log (retention); skipped");
                        if let Some(l) = g.lag.get_mut(&pid) {
                            l.from = to;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(group = %key.replace('\u{0}', " "), partition = pid, error = %e, "shared backlog read failed");
                        break;
                    }
                };
                let complete = records.len() < want;
                let mut from = lag.from;
                let mut stopped = false;
                for (offset, m) in records {
                    let Some(m) = m else {
                        from = offset + 1;
                        continue;
                    };
                    let wanted = axle_engine::topic::matches(filter, &m.topic) && m.expires_at.is_none_or(|x| x > now);
                    if wanted {
                        if !take_credit(me) {
                            stopped = true;
                            break;
                        }
                        out.push(Delivery { pid, offset, prev_end: UNKNOWN, msg: m, shared: Some(shared_key.clone()) });
                    }
                    from = offset + 1;
                }
                if !stopped && complete && lag.seen_upto <= from {
                    // Caught up with the dispatcher: records from `from` on are live again.
                    g.lag.remove(&pid);
                    g.pos.insert(pid, from);
                    break;
                }
                if let Some(l) = g.lag.get_mut(&pid) {
                    l.from = from;
                }
                if complete && !stopped {
                    // The dispatcher is ahead of what this read saw: read again.
                    continue;
                }
            }
        }
        out
    }
}

/// Offers `d` to the group's members round-robin, the first with credit and room taking it;
/// false if none could (the group must lag).
fn offer_to_one(
    g: &mut Group,
    sessions: &HashMap<SubscriberId, Arc<SessionHandle>>,
    members: &[SubscriberId],
    d: Delivery,
) -> bool {
    let (pid, offset) = (d.pid, d.offset);
    let start = g.rr;
    g.rr = g.rr.wrapping_add(1);
    let mut d = d;
    for i in 0..members.len() {
        let Some(h) = sessions.get(&members[(start + i) % members.len()]) else { continue };
        if !take_credit(h) {
            continue;
        }
        match h.tx.try_send(d) {
            Ok(()) => {
                g.pos.insert(pid, offset + 1);
                return true;
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(back))
            | Err(tokio::sync::mpsc::error::TrySendError::Closed(back)) => {
                h.shared_credit.fetch_add(1, Ordering::AcqRel);
                d = back;
            }
        }
    }
    false
}
