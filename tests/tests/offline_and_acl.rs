//! The offline-queue bound, sparse per-key catch-up and the ACL file, driven with the real
//! `mosquitto_pub` and `mosquitto_sub` clients (Debian `mosquitto-clients`, installed by
//! `scripts/setup --tests`).

use std::path::Path;
use std::process::{Command, Output};

use axle_tests::server::Server;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?} (is mosquitto-clients installed?): {e}"));
    out
}

fn publish(port: u16, id: &str, topic: &str, msg: &str, qos: u8) -> Output {
    run(Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", id, "-q"])
        .arg(qos.to_string())
        .args(["-t", topic, "-m", msg]))
}

/// Connects a persistent session (clean session off), receives `count` messages (or gives up
/// after `wait_s` seconds) and disconnects. Returns the payloads, one per line.
fn receive(port: u16, id: &str, filter: &str, count: usize, wait_s: u32) -> Vec<String> {
    let out = run(Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", id, "-c", "-q", "1", "-t", filter])
        .args(["-C", &count.to_string(), "-W", &wait_s.to_string()]));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Subscribes `id` persistently to `filter` and leaves.
fn subscribe_and_leave(port: u16, id: &str, filter: &str) {
    let out = run(Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", id, "-c", "-q", "1", "-t", filter])
        .args(["-E"]));
    assert!(out.status.success(), "subscribe {id}: {}", String::from_utf8_lossy(&out.stderr));
}

fn start_with_config(dir: &Path, toml: &str) -> (Server, u16) {
    let cfg = dir.join("axle.toml");
    std::fs::write(&cfg, toml).unwrap();
    Server::start_ready(&dir.join("data"), &["--config", cfg.to_str().unwrap()]).unwrap()
}

#[test]
fn offline_backlog_over_the_bound_keeps_the_newest_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start_with_config(dir.path(), "[mqtt]\nmax_offline_messages = 3\n");
    subscribe_and_leave(port, "car1", "v/car1/cmd");
    for i in 0..10 {
        let out = publish(port, "backend", "v/car1/cmd", &format!("cmd-{i}"), 1);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let got = receive(port, "car1", "v/car1/cmd", 4, 3);
    assert_eq!(got, vec!["cmd-7", "cmd-8", "cmd-9"], "the 3 newest, nothing else\n{}", server.output());
    assert!(server.output().contains("oldest dropped"), "the drop is logged:\n{}", server.output());
}

#[test]
fn offline_session_gets_only_its_own_messages_among_many_vehicles() {
    let dir = tempfile::tempdir().unwrap();
    // One partition, so every vehicle's commands are interleaved in it.
    let (server, port) = start_with_config(
        dir.path(),
        "[[streams]]\nname = \"cmd\"\nfilters = [\"v/+/cmd\"]\npartitions = 1\nkey = \"levels:2\"\n",
    );
    subscribe_and_leave(port, "car3", "v/car3/cmd");
    for round in 0..5 {
        for car in 0..10 {
            let out = publish(port, "backend", &format!("v/car{car}/cmd"), &format!("car{car}-{round}"), 1);
            assert!(out.status.success());
        }
    }
    let got = receive(port, "car3", "v/car3/cmd", 6, 3);
    let want: Vec<String> = (0..5).map(|r| format!("car3-{r}")).collect();
    assert_eq!(got, want, "exactly car3's commands, in order, once\n{}", server.output());
    // Nothing is delivered twice on the next connection.
    assert!(receive(port, "car3", "v/car3/cmd", 1, 1).is_empty());
}

#[test]
fn acl_refuses_subscriptions_and_drops_publishes_it_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "# vehicles read their own commands; only the backend sends them
\
         allow all          subscribe v/%c/#\n\
         allow user:backend publish   v/+/cmd\n",
    )
    .unwrap();
    let (server, port) = start_with_config(dir.path(), &format!("acl_file = \"{}\"\n", acl.display()));
    // A refused subscription: SUBACK 0x87, which mosquitto_sub reports as denied.
    let out = run(Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-i",
        "car1",
        "-t",
        "v/car2/cmd",
        "-E",
        "-V",
        "mqttv5",
    ]));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.to_lowercase().contains("denied"), "refused subscription: {text}");
    // An allowed subscription, then a refused and an allowed publish into it.
    subscribe_and_leave(port, "car1", "v/car1/#");
    let mut denied = Command::new("mosquitto_pub");
    denied.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", "intruder", "-q", "1", "-V", "mqttv5"]);
    let denied = run(denied.args(["-t", "v/car1/cmd", "-m", "from-intruder"]));
    let text = String::from_utf8_lossy(&denied.stderr).to_lowercase();
    assert!(text.contains("not authori"), "PUBACK 0x87 reported: {text}");
    let mut ok = Command::new("mosquitto_pub");
    ok.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", "svc", "-u", "backend", "-q", "1"]);
    assert!(run(ok.args(["-t", "v/car1/cmd", "-m", "from-backend"])).status.success());
    let got = receive(port, "car1", "v/car1/#", 2, 2);
    assert_eq!(got, vec!["from-backend"], "the intruder's publish was dropped\n{}", server.output());
}

#[test]
fn a_broken_acl_file_stops_the_broker_with_the_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "allow all pubsub v/#\nallow all publish\n").unwrap();
    let cfg = dir.path().join("axle.toml");
    std::fs::write(&cfg, format!("acl_file = \"{}\"\n", acl.display())).unwrap();
    let out = Command::new(axle_tests::server::axle_bin())
        .args(["serve", "--config", cfg.to_str().unwrap(), "--mqtt-tcp", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ACL file line 2"), "stderr: {err}");
}

#[test]
fn a_will_on_a_topic_the_acl_forbids_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "allow all pubsub v/%c/#\n").unwrap();
    let (_server, port) = start_with_config(dir.path(), &format!("acl_file = \"{}\"\n", acl.display()));
    let connect = |will_topic: &str| {
        run(Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", "car1", "-t", "v/car1/cmd", "-E"])
            .args(["--will-topic", will_topic, "--will-payload", "gone"]))
    };
    let refused = connect("v/car2/status");
    assert!(!refused.status.success(), "refused CONNECT exits non-zero");
    let text = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(text.contains("not authori"), "CONNACK not authorised: {text}");
    assert!(connect("v/car1/status").status.success(), "a will on its own topic is fine");
}
