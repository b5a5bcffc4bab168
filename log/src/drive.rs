//! Who runs the writer's rounds: the writer thread, or under `fsync = always` the appenders
//! themselves.
//!
//! Every command goes through one queue, in order, and a round takes what is queued under
//! the writer's lock, which is only ever held while a round runs (never across an `.await`).
//! Under `fsync = always` with inline syncs ([`Writer::syncs_inline`]) the appender whose
//! append finds no *leader* becomes it: it yields its task while the cohort the last round
//! acknowledged re-appends, then runs the round on its own thread: it writes and syncs with
//! one `pwritev2(RWF_DSYNC)` and acknowledges. Acknowledgements and re-appends then stay on
//! the appenders' threads; with a writer thread in between, every round paid two
//! cross-thread wake-ups (tens of microseconds each on a VM, as long as the sync itself;
//! `docs/decisions.md`). This is the leader of a group commit as in RocksDB's write thread
//! or MySQL's binlog group commit.
//!
//! The writer thread stays for everything else: other policies (it holds the lock for
//! good), controls (flush, truncate, retention, shutdown; they ring its doorbell and it runs
//! them at once, leader or not, so a blocking control never waits on a yielded task), timed
//! retention, and appends left queued when a leader stepped down.
//!
//! Invariants:
//! - No queued append is stranded: senders count themselves in `pending` before sending and
//!   try to lead after; a leader steps down before reading `pending` and rings the doorbell
//!   if it is non-zero. All four are `SeqCst`, so either the sender leads or the leader
//!   sees its command.
//! - The writer's lock is held only by a synchronous round, so waiting for it is bounded.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::error::{LogError, Result};
use crate::writer::{Command, Writer};

/// How often the writer thread looks at retention when appenders run the rounds.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);

/// The writer, its queue, and who leads its rounds.
pub struct Drive {
    tx: Sender<Command>,
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
}

impl Drive {
    /// Wraps `writer` (built over the receiving end of `tx`, counting in `pending`) and starts
    /// the writer thread.
    pub fn start(
        tx: Sender<Command>,
        pending: Arc<AtomicUsize>,
        writer: Writer,
    ) -> std::io::Result<(Arc<Drive>, std::thread::JoinHandle<()>)> {
        let (doorbell, bell) = crossbeam_channel::bounded(1);
        let drive = Arc::new(Drive {
            tx,
            pending,
            led: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            by_appenders: writer.syncs_inline(),
            writer: Mutex::new(writer),
            doorbell,
            closed: AtomicBool::new(false),
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
        self.pending.fetch_add(1, SeqCst);
        self.tx.send(c).map_err(|_| {
            self.pending.fetch_sub(1, SeqCst);
            LogError::Closed
        })
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
        self.by_appenders && self.led.compare_exchange(false, true, SeqCst, SeqCst).is_ok()
    }

    /// For the leader: until when to wait for the cohort before running a round, or `None`
    /// to run it now.
    pub fn cohort_wait(&self) -> Option<Instant> {
        self.writer.lock().cohort_wait(self.pending.load(SeqCst))
    }

    /// For the leader: whether the cohort is still gathering (see [`Drive::cohort_wait`]).
    pub fn wants_more(&self) -> bool {
        self.writer.lock().cohort_wait(self.pending.load(SeqCst)).is_some()
    }

    /// Runs rounds until the queue is empty. Returns true once the writer has shut down.
    pub fn run_queued(&self) -> bool {
        let mut w = self.writer.lock();
        while let Some(first) = w.try_next() {
            if w.round(first, false) {
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
        loop {
            let timed_out = match bell.recv_deadline(next_housekeeping) {
                Ok(()) => false,
                Err(RecvTimeoutError::Timeout) => true,
                // `self` holds the sender: cannot happen.
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if self.closed.load(SeqCst) {
                return;
            }
            let urgent = self.urgent.swap(false, SeqCst);
            // Appends under a leader are the leader's: it rings again when it steps down
            // with anything left.
            let leftover = self.pending.load(SeqCst) > 0 && !self.led.load(SeqCst);
            if !(timed_out || urgent || leftover) {
                continue;
            }
            if self.run_queued() {
                return;
            }
            if timed_out {
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
