//! The two system-call paths that put segment data on disk, with identical semantics:
//! write every buffer of an operation fully at its position, then, if asked, `fdatasync` the
//! file, and report the write and the sync separately.
//!
//! - [`UringBackend`] submits one vectored write per partition linked to its `fdatasync`, for
//!   all partitions of a round in one `io_uring_enter`, so the kernel runs the partitions'
//!   syncs in parallel.
//! - [`PwriteBackend`] does the same with `pwritev` and `fdatasync`, one file at a time. It is
//!   used where io_uring is unavailable (old kernels, seccomp profiles that block it).

use std::io;
use std::os::unix::io::RawFd;

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};

use crate::config::IoBackendKind;
use crate::error::{LogError, Result};

/// One file's share of a group-commit round.
pub struct WriteOp<'a> {
    pub fd: RawFd,
    /// Byte position in the file of the first buffer.
    pub pos: u64,
    /// Written back to back; may be empty (sync only).
    pub bufs: &'a [Bytes],
    pub sync: bool,
    /// With `sync`: make bytes `[0, sync_len)` durable (0 = the whole file). io_uring syncs
    /// just that range, so a sync does not also chase pages the writer dirties meanwhile
    /// past it; the `fdatasync` fallback always syncs the whole file.
    pub sync_len: u64,
}

/// What happened to one [`WriteOp`].
#[derive(Debug)]
pub struct OpResult {
    pub write: io::Result<()>,
    /// `None` when no sync was asked for, or when the write failed (no sync was attempted).
    pub sync: Option<io::Result<()>>,
}

/// A way of writing and syncing.
pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// Performs every op. Returns one result per op, in order.
    fn submit(&mut self, ops: &[WriteOp<'_>]) -> Vec<OpResult>;
}

/// Chooses the backend for `kind`, probing io_uring at start-up.
pub fn select(kind: IoBackendKind) -> Result<Box<dyn Backend>> {
    match kind {
        IoBackendKind::Pwrite => Ok(Box::new(PwriteBackend)),
        IoBackendKind::IoUring => UringBackend::probe()
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| LogError::Config(format!("io_backend = io_uring, but io_uring is unavailable here: {e}"))),
        IoBackendKind::Auto => match UringBackend::probe() {
            Ok(b) => Ok(Box::new(b)),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring is unavailable; the log falls back to pwritev + fdatasync");
                Ok(Box::new(PwriteBackend))
            }
        },
    }
}

/// The writer's and the flusher's backends for `kind`, probing io_uring once and warning
/// once if it is unavailable.
///
/// `Auto` uses io_uring for the flusher's `fdatasync`s (issued in parallel across
/// partitions, off the writer thread) and `pwritev` for the writer's buffered writes. Buffered
/// writes submitted through io_uring are punted by ext4 to io-wq kernel workers, an extra hop
/// that measured 25-60 % slower here (`docs/benchmarks.md`); `IoUring` still forces io_uring
/// for both.
pub fn select_pair(kind: IoBackendKind) -> Result<(Box<dyn Backend>, Box<dyn Backend>)> {
    match kind {
        IoBackendKind::Pwrite => Ok((Box::new(PwriteBackend), Box::new(PwriteBackend))),
        IoBackendKind::IoUring => Ok((select(kind)?, select(kind)?)),
        IoBackendKind::Auto => {
            let flusher = select(kind)?;
            Ok((Box::new(PwriteBackend), flusher))
        }
    }
}

/// Builds iovecs for `bufs` skipping the first `skip` bytes.
fn iovecs_from<B: AsRef<[u8]>>(bufs: &[B], mut skip: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        let b = b.as_ref();
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        out.push(libc::iovec { iov_base: b[skip..].as_ptr() as *mut libc::c_void, iov_len: b.len() - skip });
        skip = 0;
    }
    // The kernel takes at most IOV_MAX vectors per call; the rest go in a later call.
    out.truncate(1024);
    out
}

fn total_len<B: AsRef<[u8]>>(bufs: &[B]) -> usize {
    bufs.iter().map(|b| b.as_ref().len()).sum()
}

/// `pwritev` + `fdatasync`.
pub struct PwriteBackend;

impl Backend for PwriteBackend {
    fn name(&self) -> &'static str {
        "pwritev"
    }

    fn submit(&mut self, ops: &[WriteOp<'_>]) -> Vec<OpResult> {
        ops.iter()
            .map(|op| {
                let total = total_len(op.bufs);
                let mut done = 0usize;
                while done < total {
                    let iov = iovecs_from(op.bufs, done);
                    // SAFETY: the iovecs point into `op.bufs`, which outlive the call.
                    let n = unsafe {
                        libc::pwritev(
                            op.fd,
                            iov.as_ptr(),
                            iov.len() as libc::c_int,
                            (op.pos + done as u64) as libc::off_t,
                        )
                    };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        return OpResult { write: Err(e), sync: None };
                    }
                    if n == 0 {
                        return OpResult { write: Err(io::ErrorKind::WriteZero.into()), sync: None };
                    }
                    done += n as usize;
                }
                let sync = op.sync.then(|| {
                    // SAFETY: plain syscall on a valid descriptor.
                    if unsafe { libc::fdatasync(op.fd) } == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
                OpResult { write: Ok(()), sync }
            })
            .collect()
    }
}

/// io_uring with a linked `Writev` → `Fsync(DATASYNC)` chain per file.
pub struct UringBackend {
    ring: IoUring,
}

/// Ops handled per `io_uring_enter`; each takes at most two submission entries.
const OPS_PER_SUBMIT: usize = 64;

impl UringBackend {
    /// Creates a ring and round-trips a no-op through it, which fails where io_uring is
    /// disabled (`kernel.io_uring_disabled`), filtered by seccomp, or absent.
    pub fn probe() -> io::Result<UringBackend> {
        let mut ring = IoUring::new((OPS_PER_SUBMIT * 2) as u32)?;
        let nop = opcode::Nop::new().build().user_data(7);
        // SAFETY: a Nop references no memory.
        unsafe { ring.submission().push(&nop).map_err(|_| io::Error::other("submission queue full"))? };
        ring.submit_and_wait(1)?;
        let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no completion for the probe"))?;
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(UringBackend { ring })
    }

    fn submit_chunk(&mut self, ops: &[WriteOp<'_>]) -> Vec<OpResult> {
        let n = ops.len();
        let totals: Vec<usize> = ops.iter().map(|o| total_len(o.bufs)).collect();
        let mut written = vec![0usize; n];
        let mut write_err: Vec<Option<io::Error>> = (0..n).map(|_| None).collect();
        let mut sync_res: Vec<Option<io::Result<()>>> = (0..n).map(|_| None).collect();
        loop {
            let mut iovecs: Vec<Vec<libc::iovec>> = Vec::with_capacity(n);
            let mut entries: Vec<squeue::Entry> = Vec::with_capacity(2 * n);
            for (i, op) in ops.iter().enumerate() {
                if write_err[i].is_some() {
                    continue;
                }
                let need_write = written[i] < totals[i];
                let need_sync = op.sync && sync_res[i].is_none();
                if need_write {
                    let iov = iovecs_from(op.bufs, written[i]);
                    let mut e = opcode::Writev::new(types::Fd(op.fd), iov.as_ptr(), iov.len() as u32)
                        .offset(op.pos + written[i] as u64)
                        .build()
                        .user_data((i as u64) << 1);
                    iovecs.push(iov);
                    if need_sync {
                        e = e.flags(squeue::Flags::IO_LINK);
                    }
                    entries.push(e);
                }
                if need_sync {
                    entries.push(
                        opcode::Fsync::new(types::Fd(op.fd))
                            .len(u32::try_from(op.sync_len).unwrap_or(0))
                            .flags(types::FsyncFlags::DATASYNC)
                            .build()
                            .user_data(((i as u64) << 1) | 1),
                    );
                }
            }
            if entries.is_empty() {
                break;
            }
            let count = entries.len();
            let pushed = {
                let mut sq = self.ring.submission();
                // SAFETY: every entry points into `iovecs` and `ops[..].bufs`, which stay alive
                // and unmoved until all `count` completions are reaped below.
                unsafe { sq.push_multiple(&entries).is_ok() }
            };
            if !pushed {
                let e = io::Error::other("io_uring submission queue full");
                return fail_all(n, e.kind());
            }
            let mut reaped = 0;
            while reaped < count {
                if let Err(e) = self.ring.submit_and_wait(count - reaped) {
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Completions may still arrive for what was submitted; drain them before
                    // the buffers are dropped.
                    drain(&mut self.ring, count - reaped);
                    return fail_all(n, e.kind());
                }
                for cqe in self.ring.completion() {
                    reaped += 1;
                    let ud = cqe.user_data();
                    let i = (ud >> 1) as usize;
                    let res = cqe.result();
                    if ud & 1 == 0 {
                        if res < 0 {
                            write_err[i] = Some(io::Error::from_raw_os_error(-res));
                        } else if res == 0 {
                            write_err[i] = Some(io::ErrorKind::WriteZero.into());
                        } else {
                            written[i] += res as usize;
                        }
                    } else if res == -libc::ECANCELED {
                        // The linked write was short or failed; the sync is redone after it.
                    } else if res < 0 {
                        sync_res[i] = Some(Err(io::Error::from_raw_os_error(-res)));
                    } else {
                        sync_res[i] = Some(Ok(()));
                    }
                }
            }
            // A sync that completed before its write was whole does not count.
            for i in 0..n {
                if written[i] < totals[i] && matches!(sync_res[i], Some(Ok(()))) {
                    sync_res[i] = None;
                }
            }
            drop(iovecs);
        }
        (0..n)
            .map(|i| match write_err[i].take() {
                Some(e) => OpResult { write: Err(e), sync: None },
                None => OpResult { write: Ok(()), sync: if ops[i].sync { sync_res[i].take() } else { None } },
            })
            .collect()
    }
}

fn drain(ring: &mut IoUring, mut outstanding: usize) {
    while outstanding > 0 {
        if ring.submit_and_wait(1).is_err() {
            std::thread::yield_now();
        }
        outstanding -= ring.completion().count().min(outstanding);
    }
}

fn fail_all(n: usize, kind: io::ErrorKind) -> Vec<OpResult> {
    (0..n).map(|_| OpResult { write: Err(kind.into()), sync: None }).collect()
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn submit(&mut self, ops: &[WriteOp<'_>]) -> Vec<OpResult> {
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(OPS_PER_SUBMIT) {
            out.extend(self.submit_chunk(chunk));
        }
        out
    }
}

/// How [`pwritev_dsync`] failed.
#[derive(Debug)]
pub enum DsyncError {
    /// The kernel refused `RWF_DSYNC` itself (nothing was written): use another path.
    Unsupported,
    /// The write ran out of space (`ENOSPC`, `EDQUOT`, `EFBIG`): nothing of the failed call
    /// is known durable; the partition can go on once the round is cut off.
    Space(io::Error),
    /// Any other failure, which may have come from the sync: the file's state is unknown.
    Other(io::Error),
}

/// Writes `bufs` back to back at `pos` with `pwritev2(RWF_DSYNC)`: each call returns once
/// its bytes (and the metadata needed to read them back) are durable. The kernel syncs only
/// the written range, so pages dirtied past it (zero-fill ahead) are not waited for.
pub fn pwritev_dsync<B: AsRef<[u8]>>(fd: RawFd, pos: u64, bufs: &[B]) -> std::result::Result<(), DsyncError> {
    let total = total_len(bufs);
    let mut done = 0usize;
    while done < total {
        let iov = iovecs_from(bufs, done);
        // SAFETY: the iovecs point into `bufs`, which outlive the call.
        let n = unsafe {
            libc::pwritev2(
                fd,
                iov.as_ptr(),
                iov.len() as libc::c_int,
                (pos + done as u64) as libc::off_t,
                libc::RWF_DSYNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) if done == 0 => DsyncError::Unsupported,
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => DsyncError::Space(e),
                _ => DsyncError::Other(e),
            });
        }
        if n == 0 {
            return Err(DsyncError::Space(io::ErrorKind::WriteZero.into()));
        }
        done += n as usize;
    }
    Ok(())
}
