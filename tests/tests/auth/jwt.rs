//! JWT logins: HS256, RS256 and ES256 tokens in the CONNECT password; good, expired and
//! wrongly signed tokens; the client-id claim and ACL claims enforced over the wire.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::ConnectReturnCode as V3Code;
use serde_json::{json, Value};

use super::*;
use common::mqtt::V5;

const SECRET: &str = "fleet-signing-secret-0123456789";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

fn token(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).expect("token encodes")
}

fn hs256(claims: Value) -> String {
    token(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

fn hs_config(extra: &str) -> String {
    format!("[auth]\nchain = [\"jwt\"]\n{extra}\n[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n")
}

#[tokio::test]
async fn hs256_tokens_good_expired_and_wrongly_signed_over_v5_and_v311() {
    let site = Site::new();
    let (server, port) = site.start(&hs_config(""));
    let good = hs256(json!({"exp": now() + 3600, "username": "car1"}));
    let expired = hs256(json!({"exp": now() - 3600, "username": "car1"}));
    let forged = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not the fleet secret"),
        json!({"exp": now() + 3600, "username": "car1"}),
    );
    for (t, want5, want3) in [
        (&good, V5Code::Success, V3Code::Success),
        (&expired, V5Code::BadUserNamePassword, V3Code::BadUserNamePassword),
        (&forged, V5Code::BadUserNamePassword, V3Code::BadUserNamePassword),
    ] {
        assert_eq!(v5_connack(v5_opts("car1", port, Some("car1"), Some(t))).await, want5);
        assert_eq!(v311_connack(v311_opts("car1", port, Some("car1"), Some(t))).await, want3);
    }
    // A token for another username than the CONNECT's is refused.
    assert_eq!(v5_connack(v5_opts("car1", port, Some("car2"), Some(&good))).await, V5Code::BadUserNamePassword);
    let log = server.output();
    assert!(log.contains("ExpiredSignature") && log.contains("InvalidSignature"), "{log}");
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (scripts/setup --tests installs it): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_a_pem_public_key() {
    for (alg, name, genkey) in [
        (Algorithm::RS256, "RS256", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        (Algorithm::ES256, "ES256", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    ] {
        let site = Site::new();
        let (private, public) = (site.path("key.pem"), site.path("pub.pem"));
        let (private_s, public_s) = (private.to_str().expect("utf-8"), public.to_str().expect("utf-8"));
        let mut args = vec!["genpkey"];
        args.extend_from_slice(&genkey);
        args.extend_from_slice(&["-out", private_s]);
        openssl(&args);
        openssl(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
        let pem = std::fs::read(&private).expect("private key");
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("signing key");
        let cfg = format!(
            "[auth]\nchain = [\"jwt\"]\n[auth.jwt]\nalgorithm = \"{name}\"\npublic_key_file = \"{public_s}\"\n"
        );
        let (_server, port) = site.start(&cfg);
        let good = token(alg, &key, json!({"exp": now() + 600}));
        let expired = token(alg, &key, json!({"exp": now() - 600}));
        let hs = hs256(json!({"exp": now() + 600}));
        assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some(&good))).await, V5Code::Success, "{name}");
        assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some(&expired))).await, V5Code::BadUserNamePassword);
        assert_eq!(v5_connack(v5_opts("c", port, Some("svc"), Some(&hs))).await, V5Code::BadUserNamePassword);
        // Tampered payload, original signature.
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let other = token(alg, &key, json!({"exp": now() + 600, "username": "admin"}));
        parts[1] = other.split('.').nth(1).expect("payload").to_string();
        let tampered = parts.join(".");
        assert_eq!(v5_connack(v5_opts("c", port, Some("admin"), Some(&tampered))).await, V5Code::BadUserNamePassword);
    }
}

#[tokio::test]
async fn token_claims_bind_the_client_id_and_their_acl_rules_apply_over_the_wire() {
    let site = Site::new();
    let (server, port) = site.start(&hs_config("acl_default = \"deny\""));
    let car = hs256(json!({"exp": now() + 3600, "username": "car1", "clientid": "car1",
        "acl": [{"permission": "allow", "action": "publish", "topic": "v/%c/telemetry"},
                {"permission": "allow", "action": "subscribe", "topic": "v/%c/cmd"}]}));
    let watcher = hs256(json!({"exp": now() + 3600, "username": "ops",
        "acl": [{"permission": "allow", "action": "subscribe", "topic": "v/#"}]}));
    assert_eq!(v5_connack(v5_opts("car2", port, Some("car1"), Some(&car))).await, V5Code::NotAuthorized);
    assert_eq!(v311_connack(v311_opts("car2", port, Some("car1"), Some(&car))).await, V3Code::NotAuthorized);

    let mut w = V5::connect(v5_opts("ops-1", port, Some("ops"), Some(&watcher))).await;
    w.subscribe("v/#", QoS::AtLeastOnce).await;
    let car_opts = || v5_opts("car1", port, Some("car1"), Some(&car));
    assert_eq!(v5_suback(car_opts(), "v/car2/cmd").await, SubscribeReasonCode::NotAuthorized);
    assert_eq!(v5_suback(car_opts(), "v/car1/cmd").await, SubscribeReasonCode::Success(QoS::AtLeastOnce));
    assert_eq!(v5_puback(car_opts(), "v/car2/telemetry", "spoof").await, PubAckReason::NotAuthorized);
    assert_eq!(v5_puback(car_opts(), "v/car1/telemetry", "speed=50").await, PubAckReason::Success);
    let got = w.publishes(1).await;
    assert_eq!(common::mqtt::topic(&got[0]), "v/car1/telemetry");
    assert!(w.publishes_within(std::time::Duration::from_millis(300)).await.is_empty(), "the spoof was dropped");
    assert!(server.output().contains("the token is for client id"), "{}", server.output());
}
