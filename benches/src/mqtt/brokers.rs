//! Starting and watching the brokers under test: Axle (our binary), mosquitto (Debian) and
//! rumqttd (`cargo install rumqttd`), each on its own free port with its own configuration, data
//! directory and output file.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where the brokers' binaries are and how Axle is configured.
#[derive(Clone, Debug)]
pub struct BrokerSpec {
    pub axle_bin: PathBuf,
    pub axle_fsync: String,
    pub mosquitto_bin: PathBuf,
    pub rumqttd_bin: PathBuf,
    /// Parent of each run's data directory (must be on the disk under test, not tmpfs).
    pub data_root: PathBuf,
    /// Where each broker's stdout/stderr is kept after the run.
    pub log_dir: PathBuf,
}

/// A running broker; killed and reaped on drop.
pub struct Broker {
    pub name: String,
    pub port: u16,
    child: Child,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `VmRSS`/`VmHWM` reading of a process, in MiB.
#[derive(Clone, Copy, Debug)]
pub struct Rss {
    pub rss_mib: f64,
    pub peak_mib: f64,
}

pub fn read_rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    Rss { rss_mib: field("VmRSS:"), peak_mib: field("VmHWM:") }
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss(&self) -> Rss {
        read_rss(self.child.id())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the broker's output.
    pub fn output_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// An error naming the exit status and the broker's last output if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting on the broker process")? {
            bail!(self.died(status));
        }
        Ok(())
    }

    fn died(&self, status: ExitStatus) -> String {
        format!("{} exited ({status}); last output ({}):\n{}", self.name, self.log_path.display(), self.output_tail(15))
    }

    /// Starts `name` (axle, mosquitto or rumqttd) and waits until it accepts connections.
    pub fn start(name: &str, spec: &BrokerSpec, tag: &str) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&spec.data_root)
            .with_context(|| format!("creating the data root {}", spec.data_root.display()))?;
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating the log directory {}", spec.log_dir.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("mqtt-load-{name}-"))
            .tempdir_in(&spec.data_root)
            .with_context(|| format!("creating a data directory under {}", spec.data_root.display()))?;
        let port = free_port()?;
        let log_path = spec.log_dir.join(format!("{name}-{tag}.log"));
        let out = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let mut cmd = match name {
            "axle" => {
                let mut c =
                    Command::new(require_bin(&spec.axle_bin, "build it: cargo build --release -p axle-broker")?);
                c.args([
                    "serve",
                    "--fsync",
                    &spec.axle_fsync,
                    "--mqtt-tcp",
                    &format!("0.0.0.0:{port}"),
                    "--http",
                    "127.0.0.1:0",
                    "--data-dir",
                ])
                .arg(dir.path().join("data"))
                .env("RUST_LOG", std::env::var("MQTT_LOAD_AXLE_LOG").unwrap_or_else(|_| "warn".into()));
                c
            }
            "mosquitto" => {
                let conf = dir.path().join("mosquitto.conf");
                std::fs::write(&conf, mosquitto_config(port)).with_context(|| format!("writing {}", conf.display()))?;
                let mut c = Command::new(require_bin(&spec.mosquitto_bin, "install it: apt-get install mosquitto")?);
                c.arg("-c").arg(&conf);
                c
            }
            "rumqttd" => {
                let conf = dir.path().join("rumqttd.toml");
                let v5_port = free_port()?;
                std::fs::write(&conf, rumqttd_config(port, v5_port))
                    .with_context(|| format!("writing {}", conf.display()))?;
                let mut c = Command::new(require_bin(&spec.rumqttd_bin, "install it: cargo install rumqttd")?);
                c.arg("--quiet").arg("--config").arg(&conf);
                c
            }
            other => bail!("unknown broker {other:?}: use axle, mosquitto or rumqttd"),
        };
        let child =
            spawn_tied(&mut cmd, out, err).with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let mut b = Broker { name: name.to_string(), port, child, log_path, _dir: dir };
        b.wait_listening(Duration::from_secs(30))?;
        Ok(b)
    }

    fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().context("waiting on the broker process")? {
                bail!("{} did not start: {}", self.name, self.died(status));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not listen on port {} within {limit:?}; last output ({}):\n{}",
            self.name,
            self.port,
            self.log_path.display(),
            self.output_tail(15)
        )
    }
}

fn require_bin(path: &Path, hint: &str) -> anyhow::Result<PathBuf> {
    if path.components().count() > 1 {
        if !path.is_file() {
            bail!("{} not found; {hint}", path.display());
        }
        return Ok(path.to_path_buf());
    }
    // A bare name: look it up on PATH so a missing binary gets a clear message.
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(path)).find(|c| c.is_file()))
        .unwrap_or_default();
    found.with_context(|| format!("{} not found on PATH; {hint}", path.display()))
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port that was free a moment ago (the broker binds 0.0.0.0, never the system's 1883).
/// Spawns `cmd` with no stdin and the given stdout/stderr, as a process that gets SIGKILL
/// when this tool dies (even by SIGKILL), so no broker outlives a benchmark.
pub fn spawn_tied(cmd: &mut Command, out: File, err: File) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe; the child dies with this tool.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()
}

pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("finding a free port")?.port())
}

/// mosquitto without persistence, unbounded queues (`0` = no limit) and the same in-flight
/// window as the clients.
pub fn mosquitto_config(port: u16) -> String {
    format!(
        "listener {port}\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_queued_bytes 0\n\
         max_inflight_messages 100\nmax_connections -1\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n\
         log_type warning\n"
    )
}

/// rumqttd (format of its `rumqttd.toml`): a v4 server (used) and a v5 server, room for 120k
/// connections, 100 in flight per connection, and a large in-memory commit log (10 x 100 MB
/// segments per filter) so nothing is dropped for retention.
pub fn rumqttd_config(v4_port: u16, v5_port: u16) -> String {
    format!(
        r#"id = 0

[router]
id = 0
max_connections = 120000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
shared_subscriptions_strategy = "roundrobin"

[v4.1]
name = "v4-1"
listen = "0.0.0.0:{v4_port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "0.0.0.0:{v5_port}"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
"#
    )
}

/// Raises this process's open-file soft limit to the hard limit (the brokers inherit it).
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this process with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Load average (1 min) and the machine's CPU count, for the report.
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one = load.split_whitespace().next().unwrap_or("?");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("load average {one} on {cpus} CPUs")
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}
