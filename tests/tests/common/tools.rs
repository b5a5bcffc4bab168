//! External clients: Python paho-mqtt scripts (tests/python/) and the mosquitto CLI.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Python interpreter: `AXLE_TEST_PYTHON` (the venv scripts/test makes) or `python3`.
pub fn python() -> String {
    std::env::var("AXLE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fails the test, loudly, if paho-mqtt 2.x cannot be imported.
pub fn require_paho() {
    let py = python();
    let out = Command::new(&py)
        .args([
            "-c",
            "import paho.mqtt, sys; v = paho.mqtt.__version__; print(v); sys.exit(0 if v.startswith('2.') else 3)",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the Python interpreter {py:?}: {e}; set AXLE_TEST_PYTHON (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "paho-mqtt 2.x is not importable with {py:?} (set AXLE_TEST_PYTHON to the venv python scripts/test creates \
         from tests/python/requirements.txt):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join(name)
}

/// Runs `tests/python/<name>` with `args`, waits (bounded) and parses its JSON output.
pub fn run_python(name: &str, args: &[&str]) -> serde_json::Value {
    require_paho();
    let child = Command::new(python())
        .arg(script(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let out = wait_output(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} {args:?} failed ({:?}):\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| {
        panic!("{name} printed no JSON:\nstdout: {stdout}\nstderr: {stderr}");
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: bad JSON {line:?}: {e}"))
}

/// Waits for `child` up to `timeout` (killing it after that) and returns its output.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
}

/// Runs `mosquitto_pub` with `args` against `port` and checks it succeeds.
pub fn mosquitto_pub(port: u16, args: &[&str]) {
    let child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed (apt-get install mosquitto-clients; scripts/setup --tests does)");
    let out = wait_output(child, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `mosquitto_sub` with `args` against `port`; stdout is piped.
pub fn mosquitto_sub(port: u16, args: &[&str]) -> Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed (apt-get install mosquitto-clients; scripts/setup --tests does)")
}
