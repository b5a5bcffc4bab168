//! Checking what a cluster kept against what its publishers were told: every acknowledged
//! message is in the committed log, in order per publisher, duplicated only where the
//! publisher sent it again, and every replica holds the same records at the same offsets.
//! Pure functions over payloads and offsets, so the rules are unit-tested without a broker.

use std::collections::{HashMap, HashSet};

/// One message of a load: the publisher stream that sent it (one MQTT client publishing to
/// one topic, so all its records go to one partition) and its sequence number in that stream
/// (0, 1, 2, ... in the order the client handed them to MQTT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    pub publisher: u32,
    pub seq: u64,
}

/// The payload of `id`: `"{publisher}:{seq}:"` padded with `.` to `size` bytes.
pub fn encode(id: MsgId, size: usize) -> Vec<u8> {
    let mut body = format!("{}:{}:", id.publisher, id.seq).into_bytes();
    if body.len() < size {
        body.resize(size, b'.');
    }
    body
}

/// The id in a payload made by [`encode`]; `None` for anything else.
pub fn decode(payload: &[u8]) -> Option<MsgId> {
    let mut it = payload.splitn(3, |b| *b == b':');
    let publisher = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    let seq = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    it.next()?;
    Some(MsgId { publisher, seq })
}

/// What the publishers of a load did, as they saw it.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Messages whose PUBACK arrived, in the order the PUBACKs arrived.
    pub acked: Vec<MsgId>,
    /// Messages handed to more than one connection (resent with DUP after the connection they
    /// were first handed to failed or timed out unacknowledged): only these may appear twice.
    pub retried: HashSet<MsgId>,
    /// Per publisher stream, how many messages were handed to MQTT (seq `0..sent`).
    pub sent: HashMap<u32, u64>,
}

/// One partition's records as read from one node: `(offset, payload)` in offset order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionLog {
    pub partition: u32,
    pub records: Vec<(u64, Vec<u8>)>,
}

/// Counts from a successful [`check_log`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// Records in all partitions.
    pub records: usize,
    pub acked: usize,
    /// Distinct messages in the log.
    pub distinct: usize,
    /// Extra copies (records minus distinct messages); each of a retried message.
    pub duplicates: usize,
    /// Messages in the log that were never acknowledged (their PUBACK was lost or the load
    /// stopped first): allowed.
    pub unacked_present: usize,
    /// Records per partition, in the order of the logs given.
    pub per_partition: Vec<usize>,
}

/// Most problems listed in one failure (the count of all is given).
const SHOWN: usize = 25;

fn problems(mut all: Vec<String>) -> String {
    let n = all.len();
    all.truncate(SHOWN);
    let more = if n > SHOWN { format!("\n  ... and {} more", n - SHOWN) } else { String::new() };
    format!("{n} problem(s):\n  {}{more}", all.join("\n  "))
}

/// How many times each message is in `logs`, and in which partition each publisher is.
fn copies(logs: &[PartitionLog], errs: &mut Vec<String>) -> (HashMap<MsgId, usize>, HashMap<u32, u32>) {
    let mut count: HashMap<MsgId, usize> = HashMap::new();
    let mut home: HashMap<u32, u32> = HashMap::new();
    for log in logs {
        for (offset, payload) in &log.records {
            let Some(id) = decode(payload) else {
                errs.push(format!(
                    "partition {} offset {offset}: a record no publisher of the load wrote: {:?}",
                    log.partition,
                    String::from_utf8_lossy(&payload[..payload.len().min(40)])
                ));
                continue;
            };
            *count.entry(id).or_default() += 1;
            let p = *home.entry(id.publisher).or_insert(log.partition);
            if p != log.partition {
                errs.push(format!(
                    "publisher {} has records in partitions {p} and {} (one topic must map to one partition)",
                    id.publisher, log.partition
                ));
            }
        }
    }
    (count, home)
}

/// Checks one node's committed log (every partition of the stream, read from offset 0 to the
/// high watermark) against `ledger`:
/// - offsets are 0, 1, 2, ... with no gap;
/// - every record is a message the load sent (`seq < sent`), each publisher in one partition;
/// - every acknowledged message is present;
/// - a message is present more than once only if it was retried;
/// - per publisher, the first copies of the acknowledged messages that were written once
///   (not retried) are in sequence order. Retried messages are left out of the order check:
///   a resend on a new connection may legitimately land after later messages.
pub fn check_log(ledger: &Ledger, logs: &[PartitionLog]) -> Result<LogSummary, String> {
    let mut errs = Vec::new();
    for log in logs {
        for (i, (offset, _)) in log.records.iter().enumerate() {
            if *offset != i as u64 {
                errs.push(format!("partition {}: record {i} has offset {offset} (a gap or reordering)", log.partition));
                break;
            }
        }
    }
    let (count, _) = copies(logs, &mut errs);
    for id in count.keys() {
        let sent = ledger.sent.get(&id.publisher).copied().unwrap_or(0);
        if id.seq >= sent {
            errs.push(format!("{id:?} is in the log but publisher {} only sent seq 0..{sent}", id.publisher));
        }
    }
    let acked: HashSet<MsgId> = ledger.acked.iter().copied().collect();
    let mut missing: Vec<MsgId> = acked.iter().filter(|id| !count.contains_key(id)).copied().collect();
    missing.sort();
    for id in &missing {
        errs.push(format!("{id:?} was acknowledged (PUBACK received) and is not in the committed log"));
    }
    let mut dups: Vec<(MsgId, usize)> =
        count.iter().filter(|(id, n)| **n > 1 && !ledger.retried.contains(id)).map(|(id, n)| (*id, *n)).collect();
    dups.sort();
    for (id, n) in dups {
        errs.push(format!("{id:?} is in the log {n} times but its publisher sent it only once"));
    }
    for log in logs {
        let mut last: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut seen: HashSet<MsgId> = HashSet::new();
        for (offset, payload) in &log.records {
            let Some(id) = decode(payload) else { continue };
            if !seen.insert(id) || !acked.contains(&id) || ledger.retried.contains(&id) {
                continue;
            }
            if let Some((prev, prev_offset)) = last.get(&id.publisher) {
                if id.seq < *prev {
                    errs.push(format!(
                        "partition {}: publisher {} seq {} (offset {offset}) comes after seq {prev} (offset \
                         {prev_offset}): acknowledged messages out of order",
                        log.partition, id.publisher, id.seq
                    ));
                }
            }
            last.insert(id.publisher, (id.seq, *offset));
        }
    }
    if !errs.is_empty() {
        return Err(problems(errs));
    }
    let records: usize = logs.iter().map(|l| l.records.len()).sum();
    Ok(LogSummary {
        records,
        acked: acked.len(),
        distinct: count.len(),
        duplicates: records - count.len(),
        unacked_present: count.keys().filter(|id| !acked.contains(id)).count(),
        per_partition: logs.iter().map(|l| l.records.len()).collect(),
    })
}

/// Checks that `other` (a replica read from another node) holds exactly the records of
/// `reference`, partition by partition, at the same offsets.
pub fn check_same_log(reference: &[PartitionLog], other: &[PartitionLog]) -> Result<(), String> {
    let mut errs = Vec::new();
    for r in reference {
        let Some(o) = other.iter().find(|o| o.partition == r.partition) else {
            errs.push(format!("partition {} is missing", r.partition));
            continue;
        };
        if o.records.len() != r.records.len() {
            errs.push(format!(
                "partition {}: {} records, the reference has {}",
                r.partition,
                o.records.len(),
                r.records.len()
            ));
        }
        if let Some((a, b)) = r.records.iter().zip(&o.records).find(|(a, b)| a != b) {
            errs.push(format!(
                "partition {}: first difference at offset {}: reference {:?} (offset {}), this node {:?} (offset {})",
                r.partition,
                a.0,
                decode(&a.1),
                a.0,
                decode(&b.1),
                b.0
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(problems(errs))
    }
}

/// One PUBLISH a subscriber received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: MsgId,
    /// The DUP flag: the broker is sending this again (an unacknowledged delivery resent).
    pub dup: bool,
}

/// Counts from a successful [`check_deliveries`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliverySummary {
    pub deliveries: usize,
    pub distinct: usize,
    /// Deliveries with DUP set.
    pub with_dup: usize,
    /// Deliveries without DUP beyond the copies in the log (only tolerated with `overlap`).
    pub plain_redeliveries: usize,
}

/// Checks what a subscriber to every topic of the load received against the committed log
/// `logs` (read after the load stopped):
/// - every message in the log, so every acknowledged one, was delivered;
/// - nothing outside the log was delivered (a subscriber must only see committed records);
/// - a message was delivered without DUP at most as often as it is in the log (a second copy
///   in the log, from a publisher's retry, is a second message); resends carry DUP;
/// - per publisher, the first deliveries of acknowledged, non-retried messages are in
///   sequence order.
///
/// `overlap`: two connections of the session were live at once (a take-over across nodes,
/// until the old node learns of it), so both may have sent the newest messages without DUP;
/// such copies are counted in [`DeliverySummary::plain_redeliveries`] instead of failing
/// the check. Everything else (nothing missing, nothing foreign, order) is checked the same.
pub fn check_deliveries(
    ledger: &Ledger,
    logs: &[PartitionLog],
    got: &[Delivery],
    overlap: bool,
) -> Result<DeliverySummary, String> {
    let mut errs = Vec::new();
    let (count, _) = copies(logs, &mut errs);
    let mut delivered: HashMap<MsgId, (usize, usize)> = HashMap::new();
    for d in got {
        let e = delivered.entry(d.id).or_default();
        e.0 += 1;
        if !d.dup {
            e.1 += 1;
        }
    }
    let acked: HashSet<MsgId> = ledger.acked.iter().copied().collect();
    let mut missing: Vec<MsgId> = count.keys().filter(|id| !delivered.contains_key(id)).copied().collect();
    missing.sort();
    for id in &missing {
        let what = if acked.contains(id) { "acknowledged" } else { "committed (not acknowledged)" };
        errs.push(format!("{id:?} is {what} and was never delivered to the subscriber"));
    }
    let mut plain_redeliveries = 0;
    let mut extra: Vec<(MsgId, usize, usize)> = delivered
        .iter()
        .filter_map(|(id, (all, plain))| {
            let copies = count.get(id).copied().unwrap_or(0);
            (copies == 0 || *plain > copies).then_some((*id, *all, *plain))
        })
        .collect();
    extra.sort();
    for (id, all, plain) in extra {
        match count.get(&id).copied().unwrap_or(0) {
            0 => errs.push(format!("{id:?} was delivered {all} time(s) and is not in the committed log")),
            n if overlap => plain_redeliveries += plain - n,
            n => errs.push(format!("{id:?} was delivered {plain} times without DUP; the log has {n} copies")),
        }
    }
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut seen: HashSet<MsgId> = HashSet::new();
    for (i, d) in got.iter().enumerate() {
        if !seen.insert(d.id) || !acked.contains(&d.id) || ledger.retried.contains(&d.id) {
            continue;
        }
        if let Some(prev) = last.get(&d.id.publisher) {
            if d.id.seq < *prev {
                errs.push(format!(
                    "delivery {i}: publisher {} seq {} after seq {prev}: out of order",
                    d.id.publisher, d.id.seq
                ));
            }
        }
        last.insert(d.id.publisher, d.id.seq);
    }
    if !errs.is_empty() {
        return Err(problems(errs));
    }
    Ok(DeliverySummary {
        deliveries: got.len(),
        distinct: delivered.len(),
        with_dup: got.iter().filter(|d| d.dup).count(),
        plain_redeliveries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(publisher: u32, seq: u64) -> MsgId {
        MsgId { publisher, seq }
    }

    fn log(partition: u32, ids: &[MsgId]) -> PartitionLog {
        PartitionLog { partition, records: ids.iter().enumerate().map(|(i, m)| (i as u64, encode(*m, 32))).collect() }
    }

    fn ledger(acked: &[MsgId], retried: &[MsgId], sent: &[(u32, u64)]) -> Ledger {
        Ledger {
            acked: acked.to_vec(),
            retried: retried.iter().copied().collect(),
            sent: sent.iter().copied().collect(),
        }
    }

    #[test]
    fn payloads_round_trip_and_foreign_ones_are_rejected() {
        assert_eq!(decode(&encode(id(7, 123456), 64)), Some(id(7, 123456)));
        assert_eq!(encode(id(7, 1), 64).len(), 64);
        assert_eq!(decode(&encode(id(1, 2), 0)), Some(id(1, 2)));
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(b"1:x:"), None);
    }

    #[test]
    fn a_complete_log_with_an_unacked_extra_passes() {
        let l = ledger(&[id(0, 0), id(0, 1), id(1, 0)], &[], &[(0, 3), (1, 1)]);
        let s = check_log(&l, &[log(0, &[id(0, 0), id(0, 1), id(0, 2)]), log(1, &[id(1, 0)])]).unwrap();
        assert_eq!((s.records, s.distinct, s.duplicates, s.unacked_present), (4, 4, 0, 1));
        assert_eq!(s.per_partition, vec![3, 1]);
    }

    #[test]
    fn an_acked_message_missing_from_the_log_fails() {
        let l = ledger(&[id(0, 0), id(0, 1)], &[], &[(0, 2)]);
        let e = check_log(&l, &[log(0, &[id(0, 0)])]).unwrap_err();
        assert!(e.contains("MsgId { publisher: 0, seq: 1 } was acknowledged"), "{e}");
    }

    #[test]
    fn a_duplicate_is_allowed_only_for_a_retried_message() {
        let records = [id(0, 0), id(0, 1), id(0, 1), id(0, 2)];
        let acked = [id(0, 0), id(0, 1), id(0, 2)];
        assert!(check_log(&ledger(&acked, &[id(0, 1)], &[(0, 3)]), &[log(0, &records)]).is_ok());
        let e = check_log(&ledger(&acked, &[], &[(0, 3)]), &[log(0, &records)]).unwrap_err();
        assert!(e.contains("2 times but its publisher sent it only once"), "{e}");
    }

    #[test]
    fn acked_messages_out_of_order_fail_unless_retried() {
        let records = [id(0, 0), id(0, 2), id(0, 1)];
        let acked = [id(0, 0), id(0, 1), id(0, 2)];
        let e = check_log(&ledger(&acked, &[], &[(0, 3)]), &[log(0, &records)]).unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        // seq 1 was resent on a new connection after seq 2 went through: allowed.
        assert!(check_log(&ledger(&acked, &[id(0, 1)], &[(0, 3)]), &[log(0, &records)]).is_ok());
    }

    #[test]
    fn gaps_foreign_records_unsent_seqs_and_split_publishers_fail() {
        let l = ledger(&[], &[], &[(0, 2)]);
        let mut gap = log(0, &[id(0, 0), id(0, 1)]);
        gap.records[1].0 = 5;
        assert!(check_log(&l, &[gap]).unwrap_err().contains("gap"));
        let mut foreign = log(0, &[id(0, 0)]);
        foreign.records.push((1, b"junk".to_vec()));
        assert!(check_log(&l, &[foreign]).unwrap_err().contains("no publisher of the load wrote"));
        assert!(check_log(&l, &[log(0, &[id(0, 0), id(0, 7)])]).unwrap_err().contains("only sent seq 0..2"));
        let e = check_log(&l, &[log(0, &[id(0, 0)]), log(1, &[id(0, 1)])]).unwrap_err();
        assert!(e.contains("partitions 0 and 1"), "{e}");
    }

    #[test]
    fn replicas_must_match_record_for_record() {
        let a = [log(0, &[id(0, 0), id(0, 1)])];
        assert!(check_same_log(&a, &a.clone()).is_ok());
        assert!(check_same_log(&a, &[log(0, &[id(0, 0)])]).unwrap_err().contains("1 records, the reference has 2"));
        let e = check_same_log(&a, &[log(0, &[id(0, 0), id(0, 5)])]).unwrap_err();
        assert!(e.contains("first difference at offset 1"), "{e}");
        assert!(check_same_log(&a, &[log(1, &[])]).unwrap_err().contains("partition 0 is missing"));
    }

    #[test]
    fn deliveries_cover_the_log_and_duplicates_need_dup_or_a_second_copy() {
        let logs = [log(0, &[id(0, 0), id(0, 1), id(0, 1)])];
        let l = ledger(&[id(0, 0), id(0, 1)], &[id(0, 1)], &[(0, 2)]);
        let d = |seq, dup| Delivery { id: id(0, seq), dup };
        // Two copies in the log: two plain deliveries, plus a DUP resend, are fine.
        let s = check_deliveries(&l, &logs, &[d(0, false), d(1, false), d(1, false), d(1, true)], false).unwrap();
        assert_eq!((s.deliveries, s.distinct, s.with_dup), (4, 2, 1));
        let e = check_deliveries(&l, &logs, &[d(0, false), d(0, false), d(1, false)], false).unwrap_err();
        assert!(e.contains("2 times without DUP; the log has 1"), "{e}");
        // After the subscriber's own node crashed, such a replay is counted, not refused.
        let s = check_deliveries(&l, &logs, &[d(0, false), d(0, false), d(1, false)], true).unwrap();
        assert_eq!(s.plain_redeliveries, 1);
        let e = check_deliveries(&l, &logs, &[d(1, false)], true).unwrap_err();
        assert!(e.contains("never delivered"), "{e}");
        let e = check_deliveries(&l, &logs, &[d(1, false)], false).unwrap_err();
        assert!(e.contains("never delivered"), "{e}");
    }

    #[test]
    fn a_delivery_of_an_uncommitted_message_fails() {
        let logs = [log(0, &[id(0, 0)])];
        let l = ledger(&[id(0, 0)], &[], &[(0, 2)]);
        let got = [Delivery { id: id(0, 0), dup: false }, Delivery { id: id(0, 1), dup: false }];
        assert!(check_deliveries(&l, &logs, &got, false).unwrap_err().contains("not in the committed log"));
    }

    #[test]
    fn deliveries_out_of_order_fail() {
        let logs = [log(0, &[id(0, 0), id(0, 1)])];
        let l = ledger(&[id(0, 0), id(0, 1)], &[], &[(0, 2)]);
        let got = [Delivery { id: id(0, 1), dup: false }, Delivery { id: id(0, 0), dup: false }];
        assert!(check_deliveries(&l, &logs, &got, false).unwrap_err().contains("out of order"));
    }
}
