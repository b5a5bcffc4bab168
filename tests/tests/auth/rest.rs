//! Bans and users through the REST admin API while the broker runs (curl as the client).

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;

use super::*;
use common::mqtt::{Closed, V5};

/// `curl` with the admin token; returns (HTTP status, body).
fn api(server: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let port = server.wait_http_port(WAIT).expect("HTTP port");
    let token = server.admin_token().expect("admin token");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method]).args([
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
    ]);
    if let Some(b) = body {
        cmd.args(["-d", b]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/api/v1{path}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl (scripts/setup --tests installs it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("HTTP status"), body.to_string())
}

#[tokio::test]
async fn a_ban_through_the_api_disconnects_the_client_and_refuses_it_until_lifted() {
    let site = Site::new();
    let (server, port) = site.start("");
    let mut car = V5::connect(v5_opts("car9", port, Some("driver9"), None)).await;
    let mut other = V5::connect(v5_opts("car10", port, None, None)).await;
    let (code, body) = api(&server, "POST", "/bans", Some(r#"{"username": "driver9", "reason": "abuse"}"#));
    assert_eq!(code, 201, "{body}");
    assert!(body.contains(r#""kicked":["car9"]"#), "{body}");
    match car.closed().await {
        Closed::ServerDisconnect(c) => assert_eq!(c, 0x98, "Administrative action"),
        other => panic!("{other:?}"),
    }
    assert!(other.next_within(std::time::Duration::from_millis(200)).await.is_none(), "car10 stays");
    assert_eq!(v5_connack(v5_opts("car9", port, Some("driver9"), None)).await, V5Code::Banned);
    let (code, body) = api(&server, "GET", "/bans", None);
    assert_eq!(code, 200);
    assert!(body.contains(r#""kind":"username","value":"driver9""#) && body.contains("abuse"), "{body}");
    let (code, body) = api(&server, "POST", "/bans", Some(r#"{"ip": "127.0.0.0/33"}"#));
    assert_eq!(code, 400, "{body}");
    let (code, body) = api(&server, "POST", "/bans", Some(r#"{"ip": "10.0.0.0/8", "username": "x"}"#));
    assert_eq!(code, 400, "{body}");
    assert_eq!(api(&server, "DELETE", "/bans?username=driver9", None).0, 204);
    assert_eq!(api(&server, "DELETE", "/bans?username=driver9", None).0, 404);
    assert_eq!(v5_connack(v5_opts("car9", port, Some("driver9"), None)).await, V5Code::Success);
}

#[tokio::test]
async fn users_set_through_the_api_log_in_at_once() {
    let site = Site::new();
    let (server, port) = site.start("[auth]\nchain = [\"users\"]\n");
    assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some("pw1"))).await, V5Code::BadUserNamePassword);
    assert_eq!(api(&server, "PUT", "/users/svc", Some(r#"{"password": "pw1"}"#)).0, 201);
    assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some("pw1"))).await, V5Code::Success);
    assert_eq!(api(&server, "PUT", "/users/svc", Some(r#"{"password": "pw2"}"#)).0, 204);
    assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some("pw1"))).await, V5Code::BadUserNamePassword);
    assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some("pw2"))).await, V5Code::Success);
    let (code, body) = api(&server, "GET", "/users", None);
    assert_eq!((code, body.as_str()), (200, r#"["svc"]"#));
    assert!(!body.contains("pw2") && !body.contains("argon2"));
    assert_eq!(api(&server, "PUT", "/users/svc", Some(r#"{"password": ""}"#)).0, 400);
    assert_eq!(api(&server, "DELETE", "/users/svc", None).0, 204);
    assert_eq!(api(&server, "DELETE", "/users/svc", None).0, 404);
    assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some("pw2"))).await, V5Code::BadUserNamePassword);
}
