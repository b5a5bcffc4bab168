//! What the log examples share: the disk's own fdatasync latency, measured as
//! `log-append`'s ceiling for target 2 does.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Median latency, in milliseconds, of a 4 KB sequential write + `fdatasync` into freshly
/// fallocated space in `dir`, looped for `secs` seconds.
pub fn fdatasync_p50_ms(dir: &Path, secs: f64) -> f64 {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("ceiling.dat");
    let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).expect("open");
    // SAFETY: fallocate on an owned descriptor.
    unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 128 << 20) };
    let buf = vec![b'c'; 4096];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut pos = 0u64;
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        f.write_all_at(&buf, pos).expect("write");
        pos += 4096;
        let t = Instant::now();
        f.sync_data().expect("sync");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_by(|a, b| a.total_cmp(b));
    lat[lat.len() / 2]
}
