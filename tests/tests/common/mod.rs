//! Helpers shared by the end-to-end tests: a broker in its own temporary data directory, and
//! thin wrappers over real clients (rumqttc, raw TCP, Python paho-mqtt, mosquitto CLI).
#![allow(dead_code)]

pub mod certs;
pub mod http;
pub mod mqtt;
pub mod raw;
pub mod tools;

use std::path::PathBuf;

use axle_tests::server::Server;

/// Generous bound for anything expected to happen; never a performance assertion.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A broker on its own data directory; restartable.
pub struct Broker {
    pub server: Server,
    pub port: u16,
    pub data: PathBuf,
    pub config: Option<String>,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// A broker with the default configuration.
    pub fn start() -> Broker {
        Broker::with_config("")
    }

    /// A broker with `toml` as its configuration file (empty = defaults).
    pub fn with_config(toml: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = (!toml.is_empty()).then(|| toml.to_string());
        let (server, port) = Broker::launch(&data, config.as_deref());
        Broker { server, port, data, config, _dir: dir }
    }

    fn launch(data: &std::path::Path, config: Option<&str>) -> (Server, u16) {
        match config {
            Some(t) => Server::start_with_config(data, t, &[]),
            None => Server::start_ready(data, &[]),
        }
        .expect("the broker starts")
    }

    /// SIGTERM, wait for a clean exit, start again on the same data directory.
    pub fn restart(&mut self) {
        self.server.stop();
        self.relaunch();
    }

    /// SIGKILL, then start again on the same data directory.
    pub fn kill_and_restart(&mut self) {
        self.server.kill9();
        self.relaunch();
    }

    /// Starts again after `server.stop()`.
    pub fn restart_stopped(&mut self) {
        self.relaunch();
    }

    /// Starts again after the server was already killed (e.g. `server.kill9()` mid-traffic).
    pub fn kill_and_restart_after_death(&mut self) {
        self.server.kill9();
        self.relaunch();
    }

    fn relaunch(&mut self) {
        let previous = self.server.output();
        let (server, port) = Broker::launch(&self.data, self.config.as_deref());
        // Keep the earlier run's log for failure messages.
        let old = self.data.with_extension("previous.log");
        let _ = std::fs::write(old, previous);
        self.server = server;
        self.port = port;
    }

    /// The server log (current run) for assertion messages.
    pub fn log(&self) -> String {
        let previous = std::fs::read_to_string(self.data.with_extension("previous.log")).unwrap_or_default();
        let current = self.server.output();
        let tail =
            |s: &str| s.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        if previous.is_empty() {
            format!("--- server log ---\n{}", tail(&current))
        } else {
            format!("--- previous run ---\n{}\n--- server log ---\n{}", tail(&previous), tail(&current))
        }
    }

    /// The address the `[[listeners.mqtt]]` listener `name` bound.
    pub fn listener(&self, name: &str) -> std::net::SocketAddr {
        self.server.listener_addr(name, WAIT).unwrap_or_else(|| panic!("listener {name} did not bind:\n{}", self.log()))
    }

    /// The HTTP side (metrics, admin API with the generated token).
    pub fn http(&self) -> http::Http {
        let port = self.server.wait_http_port(WAIT).expect("the broker logs its HTTP port");
        http::Http::new(port, self.server.admin_token().expect("the broker wrote its admin token"))
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.server.child.try_wait(), Ok(None))
    }
}
