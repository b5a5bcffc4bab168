//! A consumer group across rebalances with the real Python grpcio client
//! (`tests/python/consumer_group.py`): two members share a 4-partition stream while records
//! are published, one joins late and the other leaves; no record is lost, every duplicate is
//! inside the at-least-once window of a handover, and the final committed offsets are the
//! high watermarks. The interpreter is `AXLE_TEST_PYTHON` (scripts/test sets it to its venv,
//! which has grpcio) or `python3`; without grpcio the test fails, it never skips.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axle_tests::server::Server;

const CONFIG: &str = "
[[streams]]
name = \"telemetry\"
filters = [\"v/+/telemetry\"]
partitions = 4
key = \"levels:2\"
";

const RECORDS: u64 = 3000;

fn python() -> String {
    std::env::var("AXLE_TEST_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join("consumer_group.py")
}

/// Fails with a clear message when the interpreter cannot import the gRPC client.
fn require_grpc(python: &str) {
    let out = Command::new(python)
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (set AXLE_TEST_PYTHON to a Python 3 interpreter): {e}"));
    assert!(
        out.status.success(),
        "{python} cannot import grpc and grpc_tools: install tests/python/requirements.txt \
         (scripts/test does it in its venv and sets AXLE_TEST_PYTHON):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("summary has no number {key:?}: {v}"))
}

#[test]
fn two_python_members_share_a_stream_across_rebalances_without_losing_records() {
    let python = python();
    require_grpc(&python);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("axle.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let (server, _mqtt) =
        Server::start_ready(&dir.path().join("data"), &["--config", cfg.to_str().unwrap(), "--fsync", "never"])
            .unwrap();
    let grpc = server.wait_grpc_port(Duration::from_secs(10)).expect("grpc port in the log");

    // Output goes to files (no pipe to drain while waiting); the script has its own hang guard
    // (--timeout), this one only catches a wedged interpreter.
    let (out_path, err_path) = (dir.path().join("py.stdout"), dir.path().join("py.stderr"));
    let mut child = Command::new(&python)
        .arg(script())
        .arg(format!("127.0.0.1:{grpc}"))
        .args(["--records", &RECORDS.to_string(), "--timeout", "240"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run the Python consumer-group scenario");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Python scenario hung; stderr:\n{}", std::fs::read_to_string(&err_path).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert_ne!(status.code(), Some(3), "{python} lacks the gRPC client:\n{stderr}");
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary ({status}):\n{stdout}\n{stderr}"));
    assert!(
        status.success() && summary["ok"] == true,
        "scenario failed ({status}): {:#}\nstderr:\n{stderr}\nserver log:\n{}",
        summary["errors"],
        server.output()
    );
    eprintln!("{summary}");

    // The script checks every record, duplicate and offset; the summary must say so too.
    assert_eq!(num(&summary, "records"), RECORDS);
    assert_eq!(num(&summary, "unique_processed"), RECORDS, "every published record processed");
    assert_eq!(num(&summary, "lost"), 0);
    assert_eq!(num(&summary, "processed"), RECORDS + num(&summary, "duplicates"));
    assert!(num(&summary, "published_while_consuming") > 0, "records published while the members ran");
    assert_eq!(num(&summary, "rebalances"), 2, "B joining and A leaving, each a new generation");
    let per_member = &summary["processed_per_member"];
    assert!(num(per_member, "A") > 0 && num(per_member, "B") > 0, "both members processed: {per_member}");
    let hw = &summary["high_watermarks"];
    assert_eq!(summary["final_committed"], *hw, "final committed offsets are the high watermarks");
    let total: u64 = (0..4).map(|p| num(hw, &p.to_string())).sum();
    assert_eq!(total, RECORDS);
}
