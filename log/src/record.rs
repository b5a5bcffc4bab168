//! Records as callers hand them to the log and as readers get them back.

use bytes::Bytes;

/// One header of a record: a UTF-8 name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

/// A record to append. Key, value and header values are reference-counted buffers: the log
/// copies their bytes exactly once, into the batch buffer that is written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Milliseconds since the Unix epoch. `None` means "now", taken when the batch is encoded.
    pub timestamp: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

impl Record {
    /// A record with only a value, stamped with the current time.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Record { value: value.into(), ..Record::default() }
    }

    /// Sets the key (used by partition-key indexes and by compaction-style readers).
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the timestamp in milliseconds since the Unix epoch.
    pub fn with_timestamp(mut self, ts_ms: i64) -> Self {
        self.timestamp = Some(ts_ms);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header { key: key.into(), value: value.into() });
        self
    }
}

/// A record read back from the log. Its buffers are slices of the read buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
    /// Leader epoch of the batch that holds the record.
    pub leader_epoch: u32,
}

/// A record inside a batch's bytes, as [`crate::for_each_record`] and
/// [`crate::Partition::read_map`] hand it out: nothing is copied or allocated until asked
/// for. The batch was validated before the view was made (every field in bounds, header
/// names UTF-8).
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Leader epoch of the batch that holds the record.
    pub leader_epoch: u32,
    pub(crate) batch: &'a Bytes,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: &'a [u8],
    /// The encoded header list (`header_count` pairs).
    pub(crate) headers: &'a [u8],
    pub(crate) header_count: usize,
}

impl<'a> RecordView<'a> {
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    /// `part` (the key, the value or a header value of this record) as a [`Bytes`] that
    /// shares the batch's buffer instead of copying; bytes from elsewhere are copied.
    pub fn share(&self, part: &[u8]) -> Bytes {
        let base = self.batch.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        match at.checked_sub(base) {
            Some(start) if !part.is_empty() && start + part.len() <= self.batch.len() => {
                self.batch.slice(start..start + part.len())
            }
            _ => Bytes::copy_from_slice(part),
        }
    }

    /// The headers as (name, value) pairs, in stored order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { buf: self.headers, pos: 0, left: self.header_count }
    }

    /// An owned copy of the record (its buffers still share the batch's).
    pub fn to_stored(&self) -> StoredRecord {
        StoredRecord {
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.map(|k| self.share(k)),
            value: self.share(self.value),
            headers: self.headers().map(|(k, v)| Header { key: k.to_string(), value: self.share(v) }).collect(),
            leader_epoch: self.leader_epoch,
        }
    }
}

/// The headers of a [`RecordView`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    buf: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The batch was validated when the view was made; a failure here ends the list.
        let mut field = || {
            let len = crate::batch::get_varint(self.buf, &mut self.pos).ok()? as usize;
            let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len())?;
            let out = &self.buf[self.pos..end];
            self.pos = end;
            Some(out)
        };
        let name = std::str::from_utf8(field()?).ok()?;
        let value = field()?;
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// Current wall-clock time in milliseconds since the Unix epoch.
///
/// Every append of a record without its own timestamp reads it, so it is read from the CPU's
/// time-stamp counter (through `quanta`, 12 ns a read on the 2-vCPU VM of
/// `docs/benchmarks.md`) rather than from the system clock (30 ns). Each thread anchors the
/// counter to the system clock and re-anchors at least once a second, so a step of the
/// system clock shows within a second, and between anchors the error is the counter's drift
/// against a slewing clock: at most NTP's 500 ppm, 0.5 ms. Within a thread it never goes back
/// by less than a second (a re-anchor that lands behind the last value repeats it), and it is
/// never below 0. Where the counter is unusable, `quanta` reads the monotonic clock instead
/// and this stays correct, only slower.
pub fn now_ms() -> i64 {
    use std::cell::Cell;
    // (counter at the anchor, system time at the anchor in ns since the epoch, last value
    // returned); counter 0 = no anchor yet.
    thread_local! {
        static ANCHOR: Cell<(u64, i64, i64)> = const { Cell::new((0, 0, 0)) };
    }
    const REANCHOR_NS: u64 = 1_000_000_000;
    let clock = counter_clock();
    let raw = clock.raw();
    ANCHOR.with(|anchor| {
        let (mut raw0, mut ns0, last) = anchor.get();
        // `delta_as_nanos` is 0 when the counter is not past the anchor.
        let since = clock.delta_as_nanos(raw0, raw);
        let ns = if raw0 != 0 && since > 0 && since < REANCHOR_NS {
            ns0 + since as i64
        } else {
            (raw0, ns0) = (raw, system_ns());
            ns0
        };
        let ms = ns.div_euclid(1_000_000);
        // A re-anchor may land up to the drift behind the last value: never go back within a
        // second (a larger step back is the system clock's own, and is followed).
        let ms = if ms < last && last - ms < 1000 { last } else { ms.max(0) };
        anchor.set((raw0, ns0, ms));
        ms
    })
}

/// The counter clock behind [`now_ms`], calibrated on first use (up to 200 ms of spinning,
/// which [`crate::Log::open`] pays rather than a first append).
pub(crate) fn counter_clock() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// The system clock in ns since the Unix epoch (negative before it).
fn system_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_time_agrees_with_the_system_clock_within_a_few_milliseconds() {
        for _ in 0..1000 {
            let before = system_ns().div_euclid(1_000_000);
            let t = now_ms();
            let after = system_ns().div_euclid(1_000_000);
            // The counter may drift from a slewing clock by at most 0.5 ms per second.
            assert!(t >= before - 2 && t <= after + 2, "{before} <= {t} <= {after}");
        }
    }

    #[test]
    fn counter_time_is_re_anchored_after_a_second_and_never_goes_back() {
        let mut last = now_ms();
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1300);
        while std::time::Instant::now() < until {
            let t = now_ms();
            assert!(t >= last, "{t} after {last}");
            last = t;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let now = now_ms();
        assert!(now >= last);
        let sys = system_ns().div_euclid(1_000_000);
        assert!((now - sys).abs() <= 2, "{now} against the system clock's {sys}");
    }

    #[test]
    fn counter_time_moves_with_the_clock_across_a_pause() {
        let t0 = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let t1 = now_ms();
        let sys = system_ns().div_euclid(1_000_000);
        assert!(t1 - t0 >= 19, "{t0} then {t1}");
        assert!((t1 - sys).abs() <= 2, "{t1} against the system clock's {sys}");
    }
}
