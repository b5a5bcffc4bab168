//! Built-in users: `axle user add/del/list` and logins with right and wrong passwords.

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rumqttc::ConnectReturnCode as V3Code;

use super::*;

const CHAIN: &str = "[auth]\nchain = [\"users\"]\n";

#[tokio::test]
async fn a_user_added_with_the_cli_logs_in_and_a_wrong_password_is_refused() {
    let site = Site::new();
    let text = ok(site.axle(&["user", "add", "alice", "--password-stdin"], "wonderland\n"));
    assert!(text.contains("added user alice"), "{text}");
    let (server, port) = site.start(CHAIN);
    let v5 = |user: &str, pw: &str| v5_opts("car1", port, Some(user), Some(pw));
    let v3 = |user: &str, pw: &str| v311_opts("car1", port, Some(user), Some(pw));
    assert_eq!(v5_connack(v5("alice", "wonderland")).await, V5Code::Success);
    assert_eq!(v5_connack(v5("alice", "wonderlandx")).await, V5Code::BadUserNamePassword);
    assert_eq!(v5_connack(v5("bob", "wonderland")).await, V5Code::BadUserNamePassword, "unknown user: same code");
    assert_eq!(v311_connack(v3("alice", "wonderland")).await, V3Code::Success);
    assert_eq!(v311_connack(v3("alice", "nope")).await, V3Code::BadUserNamePassword);
    // The broker log says why; the client only got the code.
    let log = server.output();
    assert!(log.contains("wrong password for user \"alice\""), "{log}");
    assert!(log.contains("no authenticator accepted the credentials"), "{log}");
    assert!(!log.contains("wonderland"), "passwords never reach the log");
}

#[tokio::test]
async fn user_commands_refuse_to_open_the_store_of_a_running_broker() {
    let site = Site::new();
    ok(site.axle(&["user", "add", "alice", "--password-stdin"], "pw1\n"));
    let (mut server, port) = site.start(CHAIN);
    let err = fails(site.axle(&["user", "add", "mallory", "--password-stdin"], "x\n"));
    assert!(err.contains("in use") && err.contains("stop the broker"), "{err}");
    let err = fails(site.axle(&["ban", "list"], ""));
    assert!(err.contains("in use"), "{err}");
    assert_eq!(v5_connack(v5_opts("c", port, Some("alice"), Some("pw1"))).await, V5Code::Success);
    server.stop();
    // Replace the password, list, delete.
    assert!(ok(site.axle(&["user", "add", "alice", "--password-stdin"], "pw2\n")).contains("updated user alice"));
    ok(site.axle(&["user", "add", "bob", "--password-stdin"], "pw\r\n"));
    assert_eq!(ok(site.axle(&["user", "list"], "")), "alice\nbob\n");
    let (mut server, port) = site.start(CHAIN);
    assert_eq!(v5_connack(v5_opts("c", port, Some("alice"), Some("pw1"))).await, V5Code::BadUserNamePassword);
    assert_eq!(v5_connack(v5_opts("c", port, Some("alice"), Some("pw2"))).await, V5Code::Success);
    assert_eq!(v5_connack(v5_opts("c", port, Some("bob"), Some("pw"))).await, V5Code::Success, "CRLF stripped");
    server.stop();
    ok(site.axle(&["user", "del", "alice"], ""));
    assert!(fails(site.axle(&["user", "del", "alice"], "")).contains("no user"));
    assert_eq!(ok(site.axle(&["user", "list"], "")), "bob\n");
    let (_server, port) = site.start(CHAIN);
    assert_eq!(v5_connack(v5_opts("c", port, Some("alice"), Some("pw2"))).await, V5Code::BadUserNamePassword);
}

#[test]
fn a_password_is_never_taken_from_the_command_line_or_a_non_terminal_without_the_flag() {
    let site = Site::new();
    let err = fails(site.axle(&["user", "add", "alice"], "pw\n"));
    assert!(err.contains("--password-stdin"), "{err}");
    let err = fails(site.axle(&["user", "add", "alice", "--password", "pw"], ""));
    assert!(err.contains("--password"), "{err}");
    let err = fails(site.axle(&["user", "add", "alice", "--password-stdin"], "\n"));
    assert!(err.contains("must not be empty"), "{err}");
}

/// A hand-built MQTT 5 CONNECT with a username and password.
fn connect_v5_with_password(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut b = vec![0, 4];
    b.extend_from_slice(b"MQTT");
    b.extend_from_slice(&[5, 0xC2, 0, 30, 0]); // level 5; username, password, clean start; keepalive 30; no properties
    for s in [client_id, user, password] {
        b.extend_from_slice(&(s.len() as u16).to_be_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    common::raw::packet(0x10, &b)
}

#[test]
fn a_refused_connack_carries_the_code_and_nothing_else() {
    let site = Site::new();
    ok(site.axle(&["user", "add", "alice", "--password-stdin"], "wonderland\n"));
    let (_server, port) = site.start(CHAIN);
    for (user, pw) in [("alice", "wrong"), ("nobody", "wonderland")] {
        let mut raw = common::raw::Raw::connect(port);
        raw.send(&connect_v5_with_password("car1", user, pw));
        let connack = raw.read_packet(common::WAIT).expect("CONNACK");
        assert_eq!(connack.kind(), 2);
        assert_eq!(connack.body, vec![0x00, 0x86, 0x00], "0x86 with an empty property block ({user})");
        assert!(raw.read_packet(common::WAIT).is_none(), "then the connection closes");
    }
    let mut raw = common::raw::Raw::connect(port);
    raw.send(&connect_v5_with_password("car1", "alice", "wonderland"));
    let connack = raw.read_packet(common::WAIT).expect("CONNACK");
    assert_eq!(&connack.body[..2], &[0x00, 0x00], "the right password is accepted");
}
