//! The memo tail: the newest batches of a partition, kept in memory in a form their appender
//! chose, so that readers following the tail need not read back what was just written.
//!
//! An appender may hand the log, with a batch, an opaque value (a [`Memo`]): typically the
//! records in the appender's own decoded form. The writer thread files it under the offsets
//! the batch gets. A tail reader that reaches that batch takes the memo instead of reading
//! and decoding the batch from the file. The log never looks inside a memo.
//!
//! Memos serve one reader per partition, the one that follows the tail (the engine's
//! dispatcher): taking a memo retires it and every older one, so that they are freed by the
//! reader that used them, right after use, instead of lingering until evicted by the writer
//! thread (measured: holding ~20k messages per partition for the eviction bound cost more
//! allocator time than reading the batches back saved). Other readers of the partition read
//! from the file, as they would without memos.
//!
//! Invariants:
//! - Entries are sorted by base offset and never overlap. A batch appended without a memo
//!   leaves a gap; readers read such batches from the file.
//! - A memo is returned only for a batch entirely below the reader-visible end and at or
//!   above `log_start`, so it is never a way to read what a file read would refuse.
//! - Truncation and failed rounds forget every entry at or past the cut (the offsets will be
//!   reused by other records).
//! - A memo is handed out at most once.
//! - At most [`MAX_BYTES`] bytes of batches (their encoded length) and [`MAX_ENTRIES`]
//!   entries per partition; the oldest go first. The memory a memo holds is the appender's
//!   business and may exceed the encoded length; these bounds keep it proportional.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

/// An appender's in-memory form of one batch; see the module documentation.
pub type Memo = Arc<dyn Any + Send + Sync>;

/// Encoded bytes of the batches one partition keeps memos for. Tail readers that keep up
/// stay within a few rounds of the end, far less than this; the bound is for a reader that
/// falls behind for a while (a publish flood on 2 cores: 8 MiB is ~50 ms of one partition
/// at 600k msg/s of 200 B spread over 4), after which it reads from the file.
pub const MAX_BYTES: usize = 8 << 20;
/// Batches one partition keeps memos for. Batches of one or two messages (slow publishers)
/// make this the bound that binds first; 1,024 was measured too few under a flood
/// (`docs/benchmarks.md`, 2026-12-07).
pub const MAX_ENTRIES: usize = 16384;

/// A memo with the offsets of its batch.
#[derive(Clone)]
pub struct MemoBatch {
    /// Offset of the batch's first record.
    pub base: u64,
    /// Records in the batch.
    pub count: u32,
    pub memo: Memo,
}

impl std::fmt::Debug for MemoBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoBatch").field("base", &self.base).field("count", &self.count).finish_non_exhaustive()
    }
}

struct Entry {
    batch: MemoBatch,
    /// Encoded length of the batch, in bytes.
    len: usize,
}

/// The memos of one partition (see the module invariants).
#[derive(Default)]
pub struct MemoTail {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl std::fmt::Debug for MemoTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.lock();
        f.debug_struct("MemoTail").field("entries", &g.entries.len()).field("bytes", &g.bytes).finish()
    }
}

impl MemoTail {
    /// Files `memo` for the batch at `base..base + count` of `len` encoded bytes. Called by
    /// the writer as it gives the batch its offsets, so bases only grow between cuts.
    pub fn push(&self, base: u64, count: u32, len: usize, memo: Memo) {
        let mut g = self.inner.lock();
        if g.entries.back().is_some_and(|e| e.batch.base + u64::from(e.batch.count) > base) {
            // Offsets went back without a cut being reported: trust nothing older.
            g.entries.clear();
            g.bytes = 0;
        }
        g.entries.push_back(Entry { batch: MemoBatch { base, count, memo }, len });
        g.bytes += len;
        while g.entries.len() > MAX_ENTRIES || (g.bytes > MAX_BYTES && g.entries.len() > 1) {
            if let Some(old) = g.entries.pop_front() {
                g.bytes -= old.len;
            }
        }
    }

    /// Takes the memo of the batch that starts exactly at `offset`, if it is kept and the
    /// whole batch lies in `log_start..end`, and retires every memo of an earlier batch (the
    /// reader is past them).
    pub fn take(&self, offset: u64, log_start: u64, end: u64) -> Option<MemoBatch> {
        let mut g = self.inner.lock();
        let mut retired = Vec::new();
        while g.entries.front().is_some_and(|e| e.batch.base < offset) {
            if let Some(old) = g.entries.pop_front() {
                g.bytes -= old.len;
                retired.push(old);
            }
        }
        let visible =
            |e: &Entry| e.batch.base == offset && offset >= log_start && e.batch.base + u64::from(e.batch.count) <= end;
        let taken = if g.entries.front().is_some_and(visible) {
            g.entries.pop_front().map(|e| {
                g.bytes -= e.len;
                e.batch
            })
        } else {
            None
        };
        drop(g);
        drop(retired);
        taken
    }

    /// Base offset of the first batch after `offset` that has a memo (visible or not).
    pub fn next_base_after(&self, offset: u64) -> Option<u64> {
        let g = self.inner.lock();
        let i = g.entries.partition_point(|e| e.batch.base <= offset);
        g.entries.get(i).map(|e| e.batch.base)
    }

    /// Forgets every memo of a batch that ends past `offset` (truncation, failed writes).
    pub fn forget_from(&self, offset: u64) {
        let mut g = self.inner.lock();
        while g.entries.back().is_some_and(|e| e.batch.base + u64::from(e.batch.count) > offset) {
            if let Some(old) = g.entries.pop_back() {
                g.bytes -= old.len;
            }
        }
    }

    /// Entries kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo(v: u32) -> Memo {
        Arc::new(v)
    }

    fn value(b: &MemoBatch) -> u32 {
        *b.memo.clone().downcast::<u32>().expect("u32 memo")
    }

    #[test]
    fn memo_is_taken_only_at_its_base_once_visible_and_once() {
        let t = MemoTail::default();
        t.push(10, 5, 100, memo(1));
        t.push(15, 5, 100, memo(2));
        t.push(20, 5, 100, memo(3));
        assert!(t.take(10, 11, 100).is_none(), "below log start");
        assert_eq!(t.len(), 3, "a refused take retires nothing at or after its offset");
        assert!(t.take(12, 0, 100).is_none(), "inside a batch");
        assert_eq!(t.len(), 2, "the batch the reader is inside is retired");
        assert!(t.take(15, 0, 19).is_none(), "batch not wholly visible");
        assert_eq!(value(&t.take(15, 0, 20).expect("visible")), 2);
        assert!(t.take(15, 0, 20).is_none(), "taken once");
        assert_eq!(value(&t.take(20, 0, 100).expect("next batch")), 3);
        assert!(t.take(25, 0, 100).is_none(), "nothing there");
    }

    #[test]
    fn truncation_forgets_memos_past_the_cut() {
        let t = MemoTail::default();
        t.push(0, 10, 100, memo(1));
        t.push(10, 10, 100, memo(2));
        t.push(20, 10, 100, memo(3));
        t.forget_from(15);
        assert_eq!(t.len(), 1);
        t.push(15, 1, 10, memo(4));
        assert!(t.take(10, 0, 100).is_none(), "forgotten");
        assert_eq!(value(&t.take(15, 0, 100).expect("new batch")), 4);
    }

    #[test]
    fn oldest_memos_go_first_at_the_byte_bound() {
        let t = MemoTail::default();
        let big = MAX_BYTES / 4 + 1;
        for i in 0..5u32 {
            t.push(u64::from(i) * 10, 10, big, memo(i));
        }
        assert_eq!(t.len(), 3);
        assert!(t.take(0, 0, 100).is_none(), "evicted");
        assert_eq!(value(&t.take(40, 0, 100).expect("newest kept")), 4);
    }

    #[test]
    fn offsets_going_back_without_a_cut_drop_older_memos() {
        let t = MemoTail::default();
        t.push(0, 10, 100, memo(1));
        t.push(5, 10, 100, memo(2));
        assert_eq!(t.len(), 1);
        assert_eq!(value(&t.take(5, 0, 100).expect("kept")), 2);
    }
}
