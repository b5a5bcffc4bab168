//! Experiment: `fdatasync` latency of different write patterns on one filesystem, with the
//! patterns interleaved op by op (so background load hits them all alike).
//! `cargo run --release -p axle-log --example sync_patterns -- DIR SECONDS`
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

struct Pattern {
    name: &'static str,
    size: usize,
    zero: bool,
    dsync: bool,
    file: File,
    pos: u64,
    zeroed: u64,
    lat: Vec<f64>,
}

const LEN: u64 = 256 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).cloned().unwrap_or_else(|| "target/exp".into());
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    std::fs::create_dir_all(&dir).expect("dir");
    let specs: &[(&str, usize, bool, bool)] = &[
        ("4k falloc (ceiling)", 4096, false, false),
        ("6400 falloc", 6400, false, false),
        ("6400 falloc dsync", 6400, false, true),
        ("4k zero-ahead", 4096, true, false),
        ("6400 zero-ahead", 6400, true, false),
        ("6400 zero-ahead dsync", 6400, true, true),
    ];
    let mut pats: Vec<Pattern> = specs
        .iter()
        .enumerate()
        .map(|(i, &(name, size, zero, dsync))| {
            let path = format!("{dir}/pat-{i}.dat");
            let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).expect("open");
            let _ = std::fs::remove_file(&path);
            unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, LEN as libc::off_t) };
            Pattern { name, size, zero, dsync, file, pos: 0, zeroed: 0, lat: Vec::new() }
        })
        .collect();
    let zeros = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        for p in pats.iter_mut() {
            if p.pos + (2 << 20) > LEN {
                continue;
            }
            if p.zero && p.zeroed < p.pos + (512 << 10) {
                // as the log does: 1 MiB of zeros ahead, writeback started, not waited for
                let from = p.zeroed.max(p.pos);
                let to = ((p.pos + (512 << 10)) / (1 << 20) + 1) * (1 << 20);
                p.file.write_all_at(&zeros[..(to - from) as usize], from).expect("zero");
                unsafe {
                    libc::sync_file_range(
                        p.file.as_raw_fd(),
                        from as i64,
                        (to - from) as i64,
                        libc::SYNC_FILE_RANGE_WRITE,
                    )
                };
                p.zeroed = to;
            }
            let buf = vec![b'c'; p.size];
            let t = Instant::now();
            if p.dsync {
                let iov = libc::iovec { iov_base: buf.as_ptr() as *mut _, iov_len: p.size };
                let n = unsafe { libc::pwritev2(p.file.as_raw_fd(), &iov, 1, p.pos as i64, libc::RWF_DSYNC) };
                assert_eq!(n as usize, p.size);
            } else {
                p.file.write_all_at(&buf, p.pos).expect("write");
                p.file.sync_data().expect("sync");
            }
            p.lat.push(t.elapsed().as_secs_f64() * 1e3);
            p.pos += p.size as u64;
        }
    }
    for p in pats.iter_mut() {
        p.lat.sort_by(|a, b| a.total_cmp(b));
        let q = |f: f64| p.lat[((p.lat.len() - 1) as f64 * f) as usize];
        println!("{:>24}: n {:6}  p25 {:.3}  p50 {:.3}  p75 {:.3} ms", p.name, p.lat.len(), q(0.25), q(0.5), q(0.75));
    }
}
