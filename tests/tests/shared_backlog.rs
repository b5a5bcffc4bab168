//! Shared subscriptions under backpressure: members that can hold one message at a time
//! (Receive Maximum 1) still get every message exactly once between them, because the group
//! reads its backlog from the log instead of dropping. Real `mosquitto_sub`/`mosquitto_pub`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use axle_tests::server::Server;

#[test]
fn shared_members_with_a_window_of_one_get_every_message_once_between_them() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = Server::start_ready(&dir.path().join("data"), &["--fsync", "never"]).unwrap();
    let member = |id: &str| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", id, "-V", "mqttv5", "-q", "1"])
            .args(["-D", "connect", "receive-maximum", "1", "-t", "$share/workers/jobs/#", "-W", "15"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs (is mosquitto-clients installed?)")
    };
    let a = member("worker-a");
    let b = member("worker-b");
    std::thread::sleep(Duration::from_millis(500)); // both subscribed
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", "producer", "-q", "1", "-t", "jobs/x", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = publisher.stdin.take().unwrap();
        for i in 0..N {
            writeln!(stdin, "job-{i}").unwrap();
        }
    }
    assert!(publisher.wait().unwrap().success());
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_member = Vec::new();
    for m in [a, b] {
        let out = m.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        per_member.push(text.lines().count());
        for line in text.lines() {
            *count.entry(line.to_string()).or_default() += 1;
        }
    }
    let dups: Vec<_> = count.iter().filter(|(_, c)| **c > 1).map(|(k, _)| k.clone()).collect();
    assert!(dups.is_empty(), "delivered twice: {:?}", &dups[..dups.len().min(10)]);
    let missing: Vec<String> = (0..N).map(|i| format!("job-{i}")).filter(|k| !count.contains_key(k)).collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}; per member {per_member:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        server.output()
    );
    assert!(per_member.iter().all(|n| *n > 0), "both members took a share: {per_member:?}");
}
