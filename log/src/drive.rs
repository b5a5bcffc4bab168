//! Who runs the writer's rounds: the writer thread, or under `fsync = always` the appenders
//! themselves.
//!
//! Every command goes through one queue, in order, and a round is run by whoever holds the
//! *role* (one holder at a time). Under `fsync = always` with inline syncs
//! ([`Writer::syncs_inline`]) the appender whose append finds the role free takes it, waits
//! (by yielding its task) for the cohort acknowledged by the previous round to re-append,
//! and runs the round on its own thread: it writes and syncs with one `pwritev2(RWF_DSYNC)`
//! and acknowledges. Acknowledgements and re-appends then stay on the appenders' threads;
//! with a writer thread in between, every round paid two cross-thread wake-ups (tens of
//! microseconds each on a VM, as long as the sync itself; `docs/decisions.md`). This is the
//! leader of a group commit as in RocksDB's write thread or MySQL's binlog group commit.
//!
//! The writer thread stays for everything else: other policies (it holds the role for
//! good), controls (flush, truncate, retention, shutdown) that ring its doorbell, timed
//! retention, and appends whose holder let the role go with commands still queued.
//!
//! Invariants:
//! - Only the role holder locks the writer, so that lock is never contended.
//! - No queued command is stranded: senders count themselves in `pending` before sending
//!   and try for the role after; a holder gives the role up before reading `pending` and
//!   rings the doorbell if it is non-zero. All four are `SeqCst`, so either the sender
//!   gets the role or the holder sees its command.

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

/// The writer, its queue and the role that decides who runs it.
pub struct Drive {
    tx: Sender<Command>,
    /// See [`Writer`]'s `pending`.
    pending: Arc<AtomicUsize>,
    role: AtomicBool,
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
            role: AtomicBool::new(false),
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

    /// Queues an append; the caller then drives or waits ([`Drive::try_take_role`]).
    pub fn send_append(&self, c: Command) -> Result<()> {
        self.pending.fetch_add(1, SeqCst);
        self.tx.send(c).map_err(|_| {
            self.pending.fetch_sub(1, SeqCst);
            LogError::Closed
        })
    }

    /// Queues a control command (or a non-append write) and makes sure it is run soon.
    pub fn send(&self, c: Command) -> Result<()> {
        self.send_append(c)?;
        if self.by_appenders {
            let _ = self.doorbell.try_send(());
        }
        Ok(())
    }

    /// Takes the role if it is free (appenders only; the thread holds it otherwise).
    pub fn try_take_role(&self) -> bool {
        self.by_appenders && self.role.compare_exchange(false, true, SeqCst, SeqCst).is_ok()
    }

    /// For the role holder: until when to wait for the cohort before running a round,
    /// or `None` to run it now.
    pub fn cohort_wait(&self) -> Option<Instant> {
        self.writer.lock().cohort_wait(self.pending.load(SeqCst))
    }

    /// For the role holder: whether the cohort is still gathering (see [`Drive::cohort_wait`]).
    pub fn wants_more(&self) -> bool {
        self.writer.lock().cohort_wait(self.pending.load(SeqCst)).is_some()
    }

    /// For the role holder: runs rounds until the queue is empty. Returns true once the
    /// writer has shut down.
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

    /// Gives the role up, ringing the writer thread if commands are left in the queue (or
    /// the writer shut down, which the thread must notice).
    pub fn release_role(&self) {
        self.role.store(false, SeqCst);
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
            if !timed_out && self.pending.load(SeqCst) == 0 {
                continue;
            }
            // A busy role means an appender is running rounds: it rings again on release
            // if anything is left, and housekeeping can wait for the next timeout.
            if self.role.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
                if timed_out {
                    next_housekeeping = Instant::now() + Duration::from_millis(100);
                }
                continue;
            }
            let closed = self.run_queued() || {
                let mut w = self.writer.lock();
                if timed_out {
                    w.housekeeping();
                    next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
                }
                w.is_closed()
            };
            self.role.store(false, SeqCst);
            if closed {
                return;
            }
            if self.pending.load(SeqCst) > 0 {
                let _ = self.doorbell.try_send(());
            }
        }
    }
}
