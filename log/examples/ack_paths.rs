//! Experiment (2026-12-07): the smallest `fsync = always` group commit there is, with no log
//! around it, to see where target 2 of `log-append` can get on this machine at all.
//!
//! 64 tokio tasks each append a 154-byte record and wait for its acknowledgement; a round
//! writes the cohort with one `pwritev2(RWF_DSYNC)` into a pre-zeroed file and acknowledges.
//! Modes, alternated, each followed by the 4 KB write + fdatasync ceiling of `log-append`:
//! - `CHAN`: a writer thread gathers (polling, as the log's writer thread does); one
//!   channel message per append; appenders on a 2-worker runtime;
//! - `SHARED`: the same, but appenders copy into one locked round buffer;
//! - `CHAN1`: `CHAN` with the appenders on a current-thread runtime;
//! - `LOCAL2`, `LOCAL`: no writer thread: the round is a task on the appenders' own runtime
//!   (2 workers, or current-thread) that blocks it in the sync, so acknowledging and
//!   re-appending wake no other thread. On 2026-12-07 `LOCAL` reached 0.93-1.01 of the
//!   ceiling where `CHAN` reached 0.40-0.48: the design of `log/src/drive.rs`;
//! - `LANES`: two `LOCAL` lanes, each a thread with its own current-thread runtime, 32
//!   appenders and round, writing to one file (positions reserved atomically), so each
//!   lane's CPU work runs while the other's sync is in the disk. Measured 0.80-0.99 bare,
//!   and about twice `LOCAL` with `WORK_NS` of CPU per append; but only with a queue per
//!   lane. With the log's one queue the lanes did not form (`docs/decisions.md`,
//!   "Two rounds in flight: measured, not kept").
//!
//! - `URING`, `URING1`: one current-thread runtime; the round is submitted through io_uring
//!   (`writev` with `RWF_DSYNC`) without blocking the thread, at most 2 (or 1) at once, each
//!   with at most its share of the appenders: the cohort splits in two *in time*, one half
//!   re-appending while the other's sync is in the disk. It hides CPU per append well, but
//!   io_uring hands a buffered `RWF_DSYNC` write to an io-wq worker, and a round then takes
//!   about 85 µs instead of 45 µs (`docs/benchmarks.md`, "2026-12-07 06:15–06:35 UTC").
//!
//! `MODES=LANES,LOCAL` picks modes (default: all); `WORK_NS=N` spins N ns per append, to
//! stand in for the log's own per-append CPU; `DIRECT=1` opens the file with `O_DIRECT` and
//! writes each round as a zero-padded, 4 KB-aligned copy (io_uring then issues the write
//! without an io-wq worker).
//!
//! `cargo run --release -p axle-log --example ack_paths -- DIR PAIRS`
mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{unbounded, TryRecvError};
use tokio::sync::oneshot;

struct Cmd {
    data: Bytes,
    reply: oneshot::Sender<u64>,
}
#[derive(Default)]
struct Round {
    buf: Vec<u8>,
    acks: Vec<oneshot::Sender<u64>>,
}

/// `DIRECT=1`: the data file is opened with `O_DIRECT`, and every round is copied into a
/// 4096-aligned buffer padded with zeros to a whole number of 4 KB blocks.
fn direct() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var("DIRECT").is_ok_and(|v| v == "1"))
}

/// A 4096-aligned, zero-padded copy of a round (for `O_DIRECT`).
struct Aligned {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: owns its allocation.
unsafe impl Send for Aligned {}
impl Aligned {
    fn of(data: &[u8]) -> Aligned {
        let len = data.len().div_ceil(4096).max(1) * 4096;
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size; the copy stays inside the allocation.
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout);
            assert!(!ptr.is_null());
            std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len());
            Aligned { ptr, len }
        }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes were allocated.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, std::alloc::Layout::from_size_align(self.len, 4096).expect("layout")) }
    }
}

/// Opens the data file (with `O_DIRECT` under `DIRECT=1`).
fn open_data(path: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct() {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).expect("open data file")
}

/// Bytes a round takes in the file.
fn footprint(len: usize) -> u64 {
    if direct() {
        (len.div_ceil(4096).max(1) * 4096) as u64
    } else {
        len as u64
    }
}

fn dsync(fd: i32, pos: u64, bufs: &[&[u8]]) {
    if direct() {
        let a = Aligned::of(&bufs.concat());
        return dsync_raw(fd, pos, &[a.as_slice()]);
    }
    dsync_raw(fd, pos, bufs)
}

fn dsync_raw(fd: i32, pos: u64, bufs: &[&[u8]]) {
    let iov: Vec<libc::iovec> =
        bufs.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() }).collect();
    // SAFETY: the iovecs point into `bufs`, which outlive the call.
    let n = unsafe { libc::pwritev2(fd, iov.as_ptr(), iov.len() as i32, pos as i64, libc::RWF_DSYNC) };
    assert!(n > 0, "pwritev2 failed: {}", std::io::Error::last_os_error());
}

/// Writes `round` durably at `pos`, acknowledges its appends and empties it; returns the new end.
fn commit_round(fd: i32, pos: u64, round: &mut Round, syncs: &AtomicU64) -> u64 {
    dsync(fd, pos, &[&round.buf]);
    syncs.fetch_add(1, Relaxed);
    let end = pos + footprint(round.buf.len());
    for a in round.acks.drain(..) {
        let _ = a.send(end);
    }
    round.buf.clear();
    end
}

fn encode(v: &mut Vec<u8>) {
    static WORK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let w = *WORK.get_or_init(|| std::env::var("WORK_NS").ok().and_then(|s| s.parse().ok()).unwrap_or(0));
    if w > 0 {
        let t = Instant::now();
        while (t.elapsed().as_nanos() as u64) < w {}
    }
    v.extend_from_slice(&[7u8; 154]);
    let c = crc32fast::hash(&v[v.len() - 154..]);
    let l = v.len();
    v[l - 154] = c as u8;
}

fn run(shared: bool, workers: usize, secs: f64, path: &str, syncs: Arc<AtomicU64>) -> f64 {
    let f = Arc::new(open_data(path));
    let (tx, rx) = unbounded::<Cmd>();
    let stop = Arc::new(AtomicBool::new(false));
    let round = Arc::new(Mutex::new(Round::default()));
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = {
        let f = f.clone();
        let stop = stop.clone();
        let round = round.clone();
        let queued = queued.clone();
        let syncs = syncs.clone();
        std::thread::spawn(move || {
            let mut pos = 0u64;
            let mut expected = 0usize;
            let mut spare = Round::default();
            while !stop.load(Relaxed) {
                if shared {
                    // wait for the first, spinning up to 100us then sleeping
                    let t0 = Instant::now();
                    while queued.load(Acquire) == 0 && !stop.load(Relaxed) {
                        if t0.elapsed() < Duration::from_micros(100) {
                            std::thread::yield_now();
                        } else {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                    let until = Instant::now() + Duration::from_micros(120);
                    while queued.load(Acquire) < expected && Instant::now() < until {
                        std::thread::yield_now();
                    }
                    {
                        let mut r = round.lock().expect("round lock");
                        std::mem::swap(&mut *r, &mut spare);
                        queued.store(0, Release);
                    }
                    let n = spare.acks.len();
                    if n == 0 {
                        continue;
                    }
                    expected = n.max(expected - expected / 8);
                    pos = commit_round(f.as_raw_fd(), pos, &mut spare, &syncs);
                } else {
                    let t0 = Instant::now();
                    let first = loop {
                        match rx.try_recv() {
                            Ok(c) => break Some(c),
                            Err(TryRecvError::Empty) => {
                                if t0.elapsed() < Duration::from_micros(100) {
                                    std::thread::yield_now();
                                } else {
                                    match rx.recv_timeout(Duration::from_millis(10)) {
                                        Ok(c) => break Some(c),
                                        Err(_) => break None,
                                    }
                                }
                            }
                            Err(_) => break None,
                        }
                    };
                    let Some(first) = first else { continue };
                    let mut bufs = vec![first.data];
                    let mut acks = vec![first.reply];
                    let until = Instant::now() + Duration::from_micros(120);
                    loop {
                        while let Ok(c) = rx.try_recv() {
                            bufs.push(c.data);
                            acks.push(c.reply);
                        }
                        if acks.len() >= expected || Instant::now() >= until {
                            break;
                        }
                        std::thread::yield_now();
                    }
                    expected = acks.len().max(expected - expected / 8);
                    let slices: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
                    let len: usize = slices.iter().map(|b| b.len()).sum();
                    dsync(f.as_raw_fd(), pos, &slices);
                    syncs.fetch_add(1, Relaxed);
                    pos += len as u64;
                    for a in acks {
                        let _ = a.send(pos);
                    }
                }
            }
        })
    };
    let rt = appender_runtime(workers);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let n: u64 = rt.block_on(async {
        let mut ts = Vec::new();
        for _ in 0..64 {
            let tx = tx.clone();
            let round = round.clone();
            let queued = queued.clone();
            ts.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (rtx, rrx) = oneshot::channel();
                    if shared {
                        let mut r = round.lock().expect("round lock");
                        encode(&mut r.buf);
                        r.acks.push(rtx);
                        queued.fetch_add(1, Release);
                    } else {
                        let mut v = Vec::with_capacity(170);
                        encode(&mut v);
                        tx.send(Cmd { data: Bytes::from(v), reply: rtx }).expect("writer gone");
                    }
                    rrx.await.expect("acknowledged");
                    lat.push(t.elapsed().as_secs_f64());
                    n += 1;
                }
                n
            }));
        }
        sum_of(ts).await
    });
    let el = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    drop(tx);
    writer.join().expect("writer thread");
    n as f64 / el
}

/// `LOCAL`: the writer is a task on the appenders' own single-threaded runtime, and blocks
/// it in `pwritev2(RWF_DSYNC)`: acknowledging and re-appending wake no other thread.
fn run_local(workers: usize, secs: f64, path: &str, syncs: Arc<AtomicU64>) -> f64 {
    run_lane(workers, 64, secs, path, syncs, Arc::new(AtomicU64::new(0)))
}

/// A `LOCAL` round loop over `appenders` appenders, reserving its write positions in `end`
/// (shared by lanes writing one file).
fn run_lane(
    workers: usize,
    appenders: usize,
    secs: f64,
    path: &str,
    syncs: Arc<AtomicU64>,
    end: Arc<AtomicU64>,
) -> f64 {
    let f = Arc::new(open_data(path));
    let round = Arc::new(Mutex::new(Round::default()));
    let ready = Arc::new(tokio::sync::Notify::new());
    let rt = appender_runtime(workers);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let (n, el) = rt.block_on(async {
        let writer = {
            let stop = stop.clone();
            let round = round.clone();
            let ready = ready.clone();
            let syncs = syncs.clone();
            let end = end.clone();
            tokio::spawn(async move {
                let mut expected = 0usize;
                let mut spare = Round::default();
                while !stop.load(Relaxed) {
                    let have = round.lock().expect("round lock").acks.len();
                    if have == 0 {
                        let _ = tokio::time::timeout(Duration::from_millis(10), ready.notified()).await;
                        continue;
                    }
                    let until = Instant::now() + Duration::from_micros(100);
                    while round.lock().expect("round lock").acks.len() < expected && Instant::now() < until {
                        // Let the appenders just woken run first.
                        tokio::task::yield_now().await;
                    }
                    {
                        let mut r = round.lock().expect("round lock");
                        std::mem::swap(&mut *r, &mut spare);
                    }
                    let n = spare.acks.len();
                    expected = n.max(expected - expected / 8);
                    let pos = end.fetch_add(footprint(spare.buf.len()), SeqCst);
                    commit_round(f.as_raw_fd(), pos, &mut spare, &syncs);
                    tokio::task::yield_now().await;
                }
            })
        };
        let ts =
            (0..appenders).map(|_| tokio::spawn(append_loop(round.clone(), Some(ready.clone()), deadline))).collect();
        let n = sum_of(ts).await;
        let el = started.elapsed().as_secs_f64();
        stop.store(true, Relaxed);
        ready.notify_one();
        let _ = writer.await;
        (n, el)
    });
    n as f64 / el
}

/// `URING`: one current-thread runtime and one cohort split in two *in time*: the round is
/// submitted through io_uring (`writev` with `RWF_DSYNC`) instead of blocking the thread,
/// at most `max_flights` at once and each with at most its share of the appenders, so the
/// thread acknowledges and takes in one half while the other half's sync is in the disk.
/// The writer task polls for completions between the appenders (it never lets the thread
/// sleep while a round is in flight).
fn run_uring(max_flights: usize, secs: f64, path: &str, syncs: Arc<AtomicU64>) -> f64 {
    use io_uring::{opcode, types, IoUring};
    use std::collections::VecDeque;
    /// An iovec kept with its flight until the completion is reaped.
    struct Iov(
        libc::iovec,
        #[allow(dead_code, reason = "owns the O_DIRECT copy the iovec points into")] Option<Aligned>,
    );
    // SAFETY: it points into the flight's own buffer, which moves with it.
    unsafe impl Send for Iov {}
    let f = Arc::new(open_data(path));
    let round = Arc::new(Mutex::new(Round::default()));
    let rt = appender_runtime(1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let (n, el) = rt.block_on(async {
        let writer = {
            let (stop, round, syncs, f) = (stop.clone(), round.clone(), syncs.clone(), f.clone());
            tokio::spawn(async move {
                let mut ring = IoUring::new(16).expect("io_uring");
                // (seq, round, iovec, done) in submission order.
                let mut flights: VecDeque<(u64, Round, Box<Iov>, bool)> = VecDeque::new();
                let mut seq = 0u64;
                let mut pos = 0u64;
                let mut first_queued: Option<Instant> = None;
                while !stop.load(Relaxed) || !flights.is_empty() {
                    if !flights.is_empty() {
                        // Enter the kernel so that completions posted as task work (direct
                        // I/O) reach the ring.
                        ring.submit().expect("enter");
                    }
                    let done: Vec<u64> = ring
                        .completion()
                        .map(|c| {
                            assert!(c.result() > 0, "write failed: {}", c.result());
                            c.user_data()
                        })
                        .collect();
                    for ud in done {
                        if let Some(fl) = flights.iter_mut().find(|fl| fl.0 == ud) {
                            fl.3 = true;
                        }
                    }
                    while flights.front().is_some_and(|fl| fl.3) {
                        let (_, mut r, _, _) = flights.pop_front().expect("front");
                        syncs.fetch_add(1, Relaxed);
                        for a in r.acks.drain(..) {
                            let _ = a.send(0);
                        }
                    }
                    let (have, up) = (
                        round.lock().expect("round lock").acks.len(),
                        flights.iter().map(|fl| fl.1.acks.len()).sum::<usize>(),
                    );
                    if have > 0 && first_queued.is_none() {
                        first_queued = Some(Instant::now());
                    }
                    let share = (have + up).div_ceil(max_flights);
                    let waited = first_queued.is_some_and(|t| t.elapsed() > Duration::from_micros(60));
                    if flights.len() < max_flights && have > 0 && (have >= share || waited) {
                        let mut r = Round::default();
                        {
                            let mut q = round.lock().expect("round lock");
                            let take = have.min(share.max(1));
                            let rest_acks = q.acks.split_off(take);
                            let rest_buf = q.buf.split_off(take * 154);
                            r.acks = std::mem::replace(&mut q.acks, rest_acks);
                            r.buf = std::mem::replace(&mut q.buf, rest_buf);
                        }
                        first_queued = None;
                        let iov = if direct() {
                            let a = Aligned::of(&r.buf);
                            Box::new(Iov(libc::iovec { iov_base: a.ptr as *mut _, iov_len: a.len }, Some(a)))
                        } else {
                            Box::new(Iov(
                                libc::iovec { iov_base: r.buf.as_ptr() as *mut _, iov_len: r.buf.len() },
                                None,
                            ))
                        };
                        let e = opcode::Writev::new(types::Fd(f.as_raw_fd()), &iov.0 as *const libc::iovec, 1)
                            .offset(pos)
                            .rw_flags(libc::RWF_DSYNC)
                            .build()
                            .user_data(seq);
                        pos += footprint(r.buf.len());
                        // SAFETY: the iovec and the buffer it points to live in `flights` until
                        // the completion is reaped.
                        unsafe { ring.submission().push(&e).expect("sq full") };
                        ring.submit().expect("submit");
                        flights.push_back((seq, r, iov, false));
                        seq += 1;
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let ts = (0..64).map(|_| tokio::spawn(append_loop(round.clone(), None, deadline))).collect();
        let n = sum_of(ts).await;
        let el = started.elapsed().as_secs_f64();
        stop.store(true, Relaxed);
        let _ = writer.await;
        (n, el)
    });
    n as f64 / el
}

/// One appender: appends a record to the shared round (telling `ready`, if any) and waits
/// for its acknowledgement, until `deadline`; returns how many were acknowledged.
async fn append_loop(round: Arc<Mutex<Round>>, ready: Option<Arc<tokio::sync::Notify>>, deadline: Instant) -> u64 {
    let mut n = 0u64;
    while Instant::now() < deadline {
        let (rtx, rrx) = oneshot::channel();
        {
            let mut r = round.lock().expect("round lock");
            encode(&mut r.buf);
            r.acks.push(rtx);
        }
        if let Some(ready) = &ready {
            ready.notify_one();
        }
        rrx.await.expect("acknowledged");
        n += 1;
    }
    n
}

/// The appenders' runtime: current-thread for 1 worker, else multi-thread.
fn appender_runtime(workers: usize) -> tokio::runtime::Runtime {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime")
    }
}

/// Total appends of the appender tasks.
async fn sum_of(tasks: Vec<tokio::task::JoinHandle<u64>>) -> u64 {
    let mut n = 0;
    for t in tasks {
        n += t.await.expect("appender task");
    }
    n
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let dir = a.get(1).cloned().unwrap_or_else(|| "target/exp".into());
    let reps: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    std::fs::create_dir_all(&dir).expect("create DIR");
    let path = format!("{dir}/data.dat");
    {
        let f = OpenOptions::new().create(true).truncate(true).write(true).open(&path).expect("open file");
        let z = vec![0u8; 1 << 20];
        for i in 0..512u64 {
            f.write_all_at(&z, i << 20).expect("zero-fill");
        }
        f.sync_all().expect("sync");
    }
    let modes: Vec<String> = std::env::var("MODES")
        .unwrap_or_else(|_| "CHAN,SHARED,CHAN1,LOCAL2,LOCAL,LANES,URING,URING1".into())
        .split(',')
        .map(|m| format!("{m:6}"))
        .collect();
    for _ in 0..reps {
        for mode in &modes {
            let mode = mode.as_str();
            let syncs = Arc::new(AtomicU64::new(0));
            let rps = match mode {
                "CHAN  " => run(false, 2, 2.0, &path, syncs.clone()),
                "SHARED" => run(true, 2, 2.0, &path, syncs.clone()),
                "CHAN1 " => run(false, 1, 2.0, &path, syncs.clone()),
                "LOCAL2" => run_local(2, 2.0, &path, syncs.clone()),
                "URING " => run_uring(2, 2.0, &path, syncs.clone()),
                "URING1" => run_uring(1, 2.0, &path, syncs.clone()),
                "LANES " => {
                    let end = Arc::new(AtomicU64::new(0));
                    let hs: Vec<_> = (0..2)
                        .map(|_| {
                            let (syncs, end, path) = (syncs.clone(), end.clone(), path.clone());
                            std::thread::spawn(move || run_lane(1, 32, 2.0, &path, syncs, end))
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().expect("lane")).sum()
                }
                _ => run_local(1, 2.0, &path, syncs.clone()),
            };
            let l = common::fdatasync_p50_ms(std::path::Path::new(&dir), 1.0) / 1e3;
            println!(
                "{}: {rps:.0} rec/s, {:.1}/sync, ceiling {:.3} ms, ratio {:.2}",
                mode,
                rps * 2.0 / syncs.load(Relaxed) as f64,
                l * 1e3,
                rps / (64.0 / l)
            );
        }
    }
}
