//! Who runs the writer's rounds: the writer thread, or under `fsync = always` the appenders
//! themselves.
//!
//! Every command goes through one queue, in order, and a round takes what is queued under
//! the writer's lock, which is only ever held while a round runs (never across an `.await`).
//! Under `fsync = always` with inline syncs ([`Writer::appenders_lead`]) the appender whose
//! append finds no *leader* becomes it: it yields its task once, and, if the last round was
//! synced inline, while the cohort that round acknowledged re-appends (see
//! [`Writer::cohort_wait`]); then it runs the round on its own thread: it writes and syncs
//! with one `pwritev2(RWF_DSYNC)` and acknowledges (or, for a round spanning partitions,
//! hands it to the flusher). Acknowledgements and re-appends then stay on
//! the appenders' threads; with a writer thread in between, every round paid two
//! cross-thread wake-ups (tens of microseconds each on a VM, as long as the sync itself;
//! `docs/decisions.md`). This is the leader of a group commit as in RocksDB's write thread
//! or MySQL's binlog group commit.
//!
//! The writer thread stays for everything else: other policies (it holds the lock for
//! good), controls (flush, truncate, retention, shutdown; they ring its doorbell and it runs
//! them at once, leader or not, so a blocking control never waits on a yielded task), timed
//! retention, appends left queued when a leader stepped down, and stalls: while appends are
//! queued it looks every [`WATCH`], and runs them itself if no round ran since its last
//! look (a leader whose task awaits something else, or futures nobody polls).
//!
//! Invariants:
//! - No queued append is stranded: senders count themselves in `pending` before sending and
//!   try to lead after; a leader steps down before reading `pending` and rings the doorbell
//!   if it is non-zero. All four are `SeqCst`, so either the sender leads or the leader
//!   sees its command.
//! - The writer's lock is held only by a synchronous round, so waiting for it is bounded.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::error::{LogError, Result};
use crate::queue::CommandQueue;
use crate::writer::{Command, Writer};

/// How often the writer thread looks at retention when appenders run the rounds.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);

/// While appends are queued, the writer thread looks this often for a stall: queued
/// appends and no round run since its last look. That happens when a leader's future is
/// not polled again for a while (its task is awaiting something else, say a socket write),
/// or when appends are queued with futures nobody polls; the thread then runs the rounds.
const WATCH: Duration = Duration::from_millis(1);

/// Most rounds the writer thread runs before it looks at its doorbell and timers again.
const THREAD_ROUNDS: usize = 16;

/// The writer, its queue, and who leads its rounds.
pub struct Drive {
    queue: Arc<CommandQueue>,
    /// See [`Writer`]'s `pending`.
    pending: Arc<AtomicUsize>,
    /// Set while an appender leads (gathers its cohort, then runs the round).
    led: AtomicBool,
    /// Set by a control sent and not yet run: the writer thread runs it even under a leader.
    urgent: AtomicBool,
    writer: Mutex<Writer>,
    doorbell: Sender<()>,
    /// Appenders run rounds (`fsync = always` with inline syncs); fixed at open.
    by_appenders: bool,
    closed: AtomicBool,
    /// Set while the writer thread sleeps with nothing queued: the next sender rings it.
    dozing: AtomicBool,
    /// Rounds run so far, by anyone (the thread's stall watch compares it).
    rounds: AtomicU64,
}

impl Drive {
    /// Wraps `writer` (taking from `queue`) and starts the writer thread.
    pub fn start(
        queue: Arc<CommandQueue>,
        writer: Writer,
    ) -> std::io::Result<(Arc<Drive>, std::thread::JoinHandle<()>)> {
        let (doorbell, bell) = crossbeam_channel::bounded(1);
        let drive = Arc::new(Drive {
            queue,
            pending: writer.pending(),
            led: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            by_appenders: writer.appenders_lead(),
            writer: Mutex::new(writer),
            doorbell,
            closed: AtomicBool::new(false),
            dozing: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
        });
        let d = drive.clone();
        let thread = std::thread::Builder::new().name("axle-log-writer".into()).spawn(move || d.thread(bell))?;
        Ok((drive, thread))
    }

    /// Whether appenders run rounds (see the module doc).
    pub fn by_appenders(&self) -> bool {
        self.by_appenders
    }

    /// Queues an append; the caller then leads or waits ([`Drive::try_lead`]).
    pub fn send_append(&self, c: Command) -> Result<()> {
        if !self.by_appenders {
            // The writer thread runs every round and blocks on the queue: nothing to count.
            return self.queue.send(c).map_err(|_| LogError::Closed);
        }
        self.pending.fetch_add(1, SeqCst);
        self.queue.send(c).map_err(|_| {
            self.pending.fetch_sub(1, SeqCst);
            LogError::Closed
        })?;
        // Pairs with the thread's store of `dozing` before its load of `pending`: either it
        // sees this command, or this sees it dozing and wakes it to watch.
        if self.dozing.load(SeqCst) {
            let _ = self.doorbell.try_send(());
        }
        Ok(())
    }

    /// Queues a control command and makes sure it is run soon.
    pub fn send(&self, c: Command) -> Result<()> {
        self.send_append(c)?;
        self.nudge();
        Ok(())
    }

    /// Has the writer thread run what is queued now, leader or not: for callers about to
    /// block their thread, which may be the one a parked leader needs.
    pub fn nudge(&self) {
        if self.by_appenders {
            self.urgent.store(true, SeqCst);
            let _ = self.doorbell.try_send(());
        }
    }

    /// Becomes the leader if there is none (appenders only).
    pub fn try_lead(&self) -> bool {
        // Load before the compare-exchange: under load a leader is usually there, and a
        // failing exchange still costs a locked instruction per append. Seeing `led` set
        // in the same total order as the exchange would keeps the invariant above.
        self.by_appenders && !self.led.load(SeqCst) && self.led.compare_exchange(false, true, SeqCst, SeqCst).is_ok()
    }

    /// For the leader: until when to wait for the cohort before running a round, or `None`
    /// to run it now (the cohort is in).
    pub fn cohort_wait(&self) -> Option<Instant> {
        self.writer.lock().cohort_wait(self.pending.load(SeqCst))
    }

    /// Runs rounds until the queue is empty or `max_rounds` have run. Returns true once the
    /// writer has shut down.
    pub fn run_queued(&self, max_rounds: usize) -> bool {
        let mut w = self.writer.lock();
        for _ in 0..max_rounds {
            let Some(first) = w.try_next() else { break };
            self.rounds.fetch_add(1, SeqCst);
            if w.round(first) {
                break;
            }
        }
        if w.is_closed() {
            self.closed.store(true, SeqCst);
        }
        w.is_closed()
    }

    /// Steps down as leader, ringing the writer thread if commands are left in the queue
    /// (or the writer shut down, which the thread must notice).
    pub fn step_down(&self) {
        self.led.store(false, SeqCst);
        if self.pending.load(SeqCst) > 0 || self.closed.load(SeqCst) {
            let _ = self.doorbell.try_send(());
        }
    }

    fn thread(self: Arc<Self>, bell: Receiver<()>) {
        crate::cohort::fine_timer_slack();
        if !self.by_appenders {
            self.writer.lock().run();
            self.closed.store(true, SeqCst);
            return;
        }
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
        // Rounds seen at the last look, and since when nothing has moved with appends queued.
        let mut seen = (self.rounds.load(SeqCst), Instant::now());
        loop {
            let mut deadline = next_housekeeping;
            if self.pending.load(SeqCst) == 0 {
                self.dozing.store(true, SeqCst);
            }
            let dozed = self.pending.load(SeqCst) == 0;
            if !dozed {
                deadline = deadline.min(Instant::now() + WATCH);
            }
            let got = bell.recv_deadline(deadline);
            self.dozing.store(false, SeqCst);
            if matches!(got, Err(RecvTimeoutError::Disconnected)) || self.closed.load(SeqCst) {
                // `self` holds the doorbell's sender, so only `closed` ends the loop.
                return;
            }
            let now = Instant::now();
            let rounds = self.rounds.load(SeqCst);
            let queued = self.pending.load(SeqCst) > 0;
            // The stall clock runs only while appends stay queued with no round run.
            if rounds != seen.0 || !queued || dozed {
                seen = (rounds, now);
            }
            let urgent = self.urgent.swap(false, SeqCst);
            // Appends under a leader are the leader's while it makes progress: it rings
            // when it steps down with anything left.
            let leftover = queued && !self.led.load(SeqCst);
            let stalled = queued && now.duration_since(seen.1) >= WATCH;
            if urgent || leftover || stalled {
                if self.run_queued(THREAD_ROUNDS) {
                    return;
                }
                seen = (self.rounds.load(SeqCst), Instant::now());
            }
            if now >= next_housekeeping {
                let mut w = self.writer.lock();
                w.housekeeping();
                next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
                if w.is_closed() {
                    return;
                }
            }
        }
    }
}
