//! Starting and stopping the `axle` binary under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `axle` binary built in the same target directory as the running test.
pub fn axle_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    let bin = profile_dir.join("axle");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p axle-broker` (the test script does)",
        bin.display()
    );
    bin
}

/// A running `axle serve`.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

impl Server {
    /// Starts `axle serve` on `data_dir` with extra arguments; stderr goes to a file beside it.
    /// MQTT listens on an ephemeral loopback port unless `extra` sets `--mqtt-tcp`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        let log_path = data_dir.with_extension("stderr.log");
        let stderr = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(axle_bin());
        cmd.arg("serve").arg("--data-dir").arg(data_dir).args(extra);
        if !extra.contains(&"--mqtt-tcp") {
            cmd.args(["--mqtt-tcp", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--grpc") {
            cmd.args(["--grpc", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--http") {
            cmd.args(["--http", "127.0.0.1:0"]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        Ok(Server { child, data_dir: data_dir.to_path_buf(), log_path })
    }

    /// Starts the server and waits until it serves; returns it with its MQTT port.
    pub fn start_ready(data_dir: &Path, extra: &[&str]) -> anyhow::Result<(Server, u16)> {
        let s = Server::start(data_dir, extra)?;
        let port = s
            .wait_mqtt_port(Duration::from_secs(30))
            .ok_or_else(|| anyhow::anyhow!("server did not start:\n{}", s.output()))?;
        Ok((s, port))
    }

    /// Writes `toml` beside the data directory and starts the server with `--config` on it.
    pub fn start_with_config(data_dir: &Path, toml: &str, extra: &[&str]) -> anyhow::Result<(Server, u16)> {
        let cfg = data_dir.with_extension("toml");
        std::fs::write(&cfg, toml)?;
        let cfg = cfg.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 temp path"))?.to_string();
        let mut args: Vec<&str> = vec!["--config", &cfg];
        args.extend_from_slice(extra);
        Server::start_ready(data_dir, &args)
    }

    /// Stops the server with SIGTERM and checks that it exits cleanly.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(30)).expect("the server exits within 30 s of SIGTERM");
        assert!(status.success(), "exit status {status:?} after SIGTERM:\n{}", self.output());
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(30)).expect("the server dies after SIGKILL");
    }

    /// The MQTT port from the latest "axle serving" line, waiting up to `timeout`.
    pub fn wait_mqtt_port(&self, timeout: Duration) -> Option<u16> {
        self.wait_port("mqtt_tcp", timeout)
    }

    /// The gRPC port from the latest "axle serving" line, waiting up to `timeout`.
    pub fn wait_grpc_port(&self, timeout: Duration) -> Option<u16> {
        self.wait_port("grpc", timeout)
    }

    /// The address a `[[listeners.mqtt]]` listener named `name` bound (its "listener bound"
    /// log line), waiting up to `timeout`.
    pub fn listener_addr(&self, name: &str, timeout: Duration) -> Option<std::net::SocketAddr> {
        let start = Instant::now();
        let needle = format!(" listener={name} ");
        while start.elapsed() < timeout {
            let out = self.output();
            if let Some(line) = out.lines().rev().find(|l| l.contains("listener bound") && l.contains(&needle)) {
                let at = line.find(" addr=")? + " addr=".len();
                let addr: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
                return addr.parse().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The HTTP (metrics, admin API) port from the latest "axle serving" line.
    pub fn wait_http_port(&self, timeout: Duration) -> Option<u16> {
        self.wait_port("http", timeout)
    }

    /// The admin API token the server generated in its data directory.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.data_dir.join("admin.token"))?.trim().to_string())
    }

    /// The port of `field=ADDR` in the latest "axle serving" line, waiting up to `timeout`.
    fn wait_port(&self, field: &str, timeout: Duration) -> Option<u16> {
        let start = Instant::now();
        let needle = format!(" {field}=");
        while start.elapsed() < timeout {
            let out = self.output();
            if let Some(line) = out.lines().rev().find(|l| l.contains("axle serving")) {
                let at = line.find(&needle)? + needle.len();
                let addr: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
                return addr.rsplit(':').next()?.parse().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The server's stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`, up to `timeout`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits for exit up to `timeout`; returns the exit code, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
