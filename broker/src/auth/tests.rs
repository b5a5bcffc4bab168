//! The whole door: chain order, the anonymous rule, bans and flapping at login, JWT claims,
//! and the ACL matrix with claim rules before file rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::connection::{CertIdentity, Transport};

struct Door {
    _dir: tempfile::TempDir,
    auth: Auth,
}

fn door(toml: &str) -> Door {
    let cfg: Config = toml::from_str(toml).unwrap();
    cfg.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MetaStore::open(dir.path()).unwrap());
    let auth = Auth::new(&cfg, meta).unwrap();
    Door { _dir: dir, auth }
}

fn peer(addr: &str) -> PeerInfo {
    PeerInfo::tcp(addr.parse().unwrap(), "tcp".into())
}

fn login(
    d: &Door,
    p: &PeerInfo,
    client_id: &str,
    user: Option<&str>,
    pw: Option<&[u8]>,
) -> Result<Identity, Rejection> {
    let creds = Credentials { client_id, username: user, password: pw, peer: p };
    d.auth.login(&creds, now_ms(), Instant::now())
}

fn reason(r: Result<Identity, Rejection>) -> ReasonCode {
    match r {
        Ok(id) => panic!("accepted: {id:?}"),
        Err(r) => r.reason,
    }
}

const REMOTE: &str = "203.0.113.9:40000";
const LOCAL: &str = "127.0.0.1:40000";

#[test]
fn without_a_chain_anonymous_clients_are_loopback_only_by_default() {
    let d = door("");
    let id = login(&d, &peer(LOCAL), "c", None, None).unwrap();
    assert_eq!(id.by, "none");
    // Compatibility: with no chain a username is taken as given, from loopback.
    assert_eq!(login(&d, &peer(LOCAL), "c", Some("fleet"), None).unwrap().username.as_deref(), Some("fleet"));
    assert_eq!(reason(login(&d, &peer(REMOTE), "c", None, None)), ReasonCode::NotAuthorized);
    assert_eq!(reason(login(&d, &peer("[2001:db8::1]:1"), "c", None, None)), ReasonCode::NotAuthorized);
    assert!(login(&d, &peer("[::1]:1"), "c", None, None).is_ok());
    assert!(login(&d, &peer("[::ffff:127.0.0.1]:1"), "c", None, None).is_ok(), "v4 loopback on a v6 socket");
    assert_eq!(reason(login(&d, &peer("[::ffff:192.0.2.1]:1"), "c", None, None)), ReasonCode::NotAuthorized);
    let open = door("[mqtt]\nallow_anonymous = true\n");
    assert!(login(&open, &peer(REMOTE), "c", None, None).is_ok());
}

#[test]
fn with_a_chain_unverified_credentials_are_refused_and_anonymous_still_follows_the_rule() {
    let d = door("[auth]\nchain = [\"users\"]\n");
    d.auth.users().add("alice", b"pw").unwrap();
    let ok = login(&d, &peer(REMOTE), "c", Some("alice"), Some(b"pw")).unwrap();
    assert_eq!((ok.username.as_deref(), ok.by), (Some("alice"), "users"));
    assert_eq!(reason(login(&d, &peer(REMOTE), "c", Some("alice"), Some(b"no"))), ReasonCode::BadUserNameOrPassword);
    // Unknown user: the users authenticator ignores it, nobody accepts: the same 0x86.
    assert_eq!(reason(login(&d, &peer(LOCAL), "c", Some("mallory"), Some(b"pw"))), ReasonCode::BadUserNameOrPassword);
    assert_eq!(login(&d, &peer(LOCAL), "c", None, None).unwrap().by, "anonymous");
    assert_eq!(reason(login(&d, &peer(REMOTE), "c", None, None)), ReasonCode::NotAuthorized);
}

const SECRET: &str = "a-shared-secret-of-some-length";

fn hs256(claims: serde_json::Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn in_an_hour() -> i64 {
    now_ms() / 1000 + 3600
}

fn jwt_door(extra: &str) -> Door {
    door(&format!(
        "[auth]\nchain = [\"users\", \"jwt\"]\n[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n{extra}"
    ))
}

#[test]
fn jwt_good_expired_and_wrongly_signed_tokens() {
    let d = jwt_door("");
    let p = peer(REMOTE);
    let good = hs256(json!({"exp": in_an_hour(), "username": "car1"}));
    let id = login(&d, &p, "car1", None, Some(good.as_bytes())).unwrap();
    assert_eq!((id.username.as_deref(), id.by), (Some("car1"), "jwt"));
    let expired = hs256(json!({"exp": now_ms() / 1000 - 3600, "username": "car1"}));
    assert_eq!(reason(login(&d, &p, "car1", None, Some(expired.as_bytes()))), ReasonCode::BadUserNameOrPassword);
    let forged = encode(
        &Header::default(),
        &json!({"exp": in_an_hour(), "username": "car1"}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    assert_eq!(reason(login(&d, &p, "car1", None, Some(forged.as_bytes()))), ReasonCode::BadUserNameOrPassword);
    let no_exp = hs256(json!({"username": "car1"}));
    assert_eq!(reason(login(&d, &p, "car1", None, Some(no_exp.as_bytes()))), ReasonCode::BadUserNameOrPassword);
    let hs384 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS384),
        &json!({"exp": in_an_hour()}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(reason(login(&d, &p, "car1", None, Some(hs384.as_bytes()))), ReasonCode::BadUserNameOrPassword);
}

#[test]
fn jwt_username_and_client_id_claims_must_match_the_connect() {
    let d = jwt_door("");
    let p = peer(REMOTE);
    let t = hs256(json!({"exp": in_an_hour(), "username": "car1", "clientid": "car1-tbox"}));
    assert!(login(&d, &p, "car1-tbox", Some("car1"), Some(t.as_bytes())).is_ok());
    assert_eq!(reason(login(&d, &p, "car1-tbox", Some("car2"), Some(t.as_bytes()))), ReasonCode::BadUserNameOrPassword);
    assert_eq!(reason(login(&d, &p, "car2-tbox", Some("car1"), Some(t.as_bytes()))), ReasonCode::NotAuthorized);
    // Without claims the CONNECT username stands.
    let bare = hs256(json!({"exp": in_an_hour()}));
    let id = login(&d, &p, "x", Some("svc"), Some(bare.as_bytes())).unwrap();
    assert_eq!(id.username.as_deref(), Some("svc"));
}

#[test]
fn the_chain_order_decides_between_users_and_jwt() {
    // users first: a known user's password is checked by `users`; a token passes through it
    // (unknown user or no user) to `jwt`.
    let d = jwt_door("");
    d.auth.users().add("ops", b"pw").unwrap();
    let p = peer(REMOTE);
    assert_eq!(login(&d, &p, "c", Some("ops"), Some(b"pw")).unwrap().by, "users");
    let t = hs256(json!({"exp": in_an_hour()}));
    assert_eq!(login(&d, &p, "c", Some("svc"), Some(t.as_bytes())).unwrap().by, "jwt");
    // A known user presenting a token: `users` decides first and rejects it.
    assert_eq!(reason(login(&d, &p, "c", Some("ops"), Some(t.as_bytes()))), ReasonCode::BadUserNameOrPassword);
    // jwt first: the same token is accepted by jwt before users sees it.
    let jwt_first = door(&format!(
        "[auth]\nchain = [\"jwt\", \"users\"]\n[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
    ));
    jwt_first.auth.users().add("ops", b"pw").unwrap();
    assert_eq!(login(&jwt_first, &p, "c", Some("ops"), Some(t.as_bytes())).unwrap().by, "jwt");
    // A password that is not a JWT is ignored by jwt and checked by users.
    assert_eq!(login(&jwt_first, &p, "c", Some("ops"), Some(b"pw")).unwrap().by, "users");
}

#[test]
fn x509_identity_comes_from_the_peer_certificate() {
    let d = door("[auth]\nchain = [\"x509\", \"users\"]\n");
    let cert = CertIdentity { common_name: Some("VIN42".into()), subject_alt_names: vec!["vin42.example".into()] };
    let tls = PeerInfo {
        addr: REMOTE.parse().unwrap(),
        listener: "tls".into(),
        transport: Transport::Tls,
        cert: Some(cert),
        cert_username: None,
    };
    let id = login(&d, &tls, "car42", None, None).unwrap();
    assert_eq!((id.username.as_deref(), id.by), (Some("VIN42"), "x509"));
    // No certificate: x509 ignores, users does not know the name, refused.
    assert_eq!(reason(login(&d, &peer(REMOTE), "car42", Some("VIN42"), Some(b"x"))), ReasonCode::BadUserNameOrPassword);
    let san = door("[auth]\nchain = [\"x509\"]\n[auth.x509]\nusername_from = \"san\"\n");
    assert_eq!(login(&san, &tls, "car42", None, None).unwrap().username.as_deref(), Some("vin42.example"));
}

#[test]
fn banned_clients_get_0x8a_by_client_id_username_authenticated_name_or_address() {
    let d = door("[auth]\nchain = [\"x509\"]\n[mqtt]\nallow_anonymous = true\n");
    let add = |t: BanTarget, until_ms: Option<i64>| {
        d.auth.bans().add(Ban { target: t, until_ms, reason: Some("test".into()), created_ms: 0 }).unwrap()
    };
    add(BanTarget::ClientId("car1".into()), None);
    add(BanTarget::Username("VIN13".into()), None);
    add(BanTarget::ip("198.51.100.0/24").unwrap(), None);
    add(BanTarget::ClientId("old".into()), Some(now_ms() - 1));
    assert_eq!(reason(login(&d, &peer(REMOTE), "car1", None, None)), ReasonCode::Banned);
    assert_eq!(reason(login(&d, &peer("198.51.100.77:1"), "car2", None, None)), ReasonCode::Banned);
    assert!(login(&d, &peer(REMOTE), "old", None, None).is_ok(), "an expired ban no longer applies");
    // The certificate names VIN13: banned although the CONNECT carried no username.
    let cert = CertIdentity { common_name: Some("VIN13".into()), subject_alt_names: vec![] };
    let tls = PeerInfo {
        addr: REMOTE.parse().unwrap(),
        listener: "tls".into(),
        transport: Transport::Tls,
        cert: Some(cert),
        cert_username: None,
    };
    assert_eq!(reason(login(&d, &tls, "car13", None, None)), ReasonCode::Banned);
}

#[test]
fn flapping_bans_the_client_id_for_ban_secs_and_persists_the_ban() {
    let d = door("[protection.flapping]\nenabled = true\nmax_connects = 3\nwindow_secs = 60\nban_secs = 120\n");
    let p = peer(LOCAL);
    let t0 = Instant::now();
    let at = |i: u64, id: &str| {
        let creds = Credentials { client_id: id, username: None, password: None, peer: &p };
        d.auth.login(&creds, 1_000_000, t0 + Duration::from_secs(i))
    };
    assert!(at(0, "car1").is_ok());
    assert!(at(1, "car1").is_ok());
    assert_eq!(reason(at(2, "car1")), ReasonCode::Banned);
    assert_eq!(reason(at(3, "car1")), ReasonCode::Banned, "the ban holds");
    assert!(at(3, "car2").is_ok());
    let bans = d.auth.bans().list(1_000_000).unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].target, BanTarget::ClientId("car1".into()));
    assert_eq!(bans[0].until_ms, Some(1_000_000 + 120_000));
    assert!(bans[0].reason.as_deref().unwrap_or_default().contains("flapping"));
}

/// ES256 with a JWKS file, keys made with ring.
#[test]
fn jwt_es256_with_a_jwks_file_picks_the_key_by_kid() {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut jwks = Vec::new();
    let mut signers = Vec::new();
    for kid in ["k1", "k2"] {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        jwks.push(json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65])}));
        signers.push(EncodingKey::from_ec_der(pkcs8.as_ref()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": jwks}).to_string()).unwrap();
    let d = door(&format!(
        "[auth]\nchain = [\"jwt\"]\n[auth.jwt]\nalgorithm = \"ES256\"\njwks_file = \"{}\"\n",
        path.display()
    ));
    let token = |kid: &str, key: &EncodingKey| {
        let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(kid.into());
        encode(&h, &json!({"exp": in_an_hour(), "username": "car1"}), key).unwrap()
    };
    let p = peer(REMOTE);
    assert!(login(&d, &p, "c", None, Some(token("k1", &signers[0]).as_bytes())).is_ok());
    assert!(login(&d, &p, "c", None, Some(token("k2", &signers[1]).as_bytes())).is_ok());
    assert_eq!(
        reason(login(&d, &p, "c", None, Some(token("k1", &signers[1]).as_bytes()))),
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        reason(login(&d, &p, "c", None, Some(token("k9", &signers[0]).as_bytes()))),
        ReasonCode::BadUserNameOrPassword
    );
    // An HS256 token against an ES256 configuration is refused.
    assert_eq!(
        reason(login(&d, &p, "c", None, Some(hs256(json!({"exp": in_an_hour()})).as_bytes()))),
        ReasonCode::BadUserNameOrPassword
    );
}

#[test]
fn unreadable_key_files_stop_the_start_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("key.pem");
    std::fs::write(&junk, "not a key").unwrap();
    for (alg, field, path) in [
        ("RS256", "public_key_file", junk.display().to_string()),
        ("ES256", "jwks_file", junk.display().to_string()),
        ("RS256", "public_key_file", "/nonexistent/key.pem".to_string()),
    ] {
        let cfg: Config = toml::from_str(&format!(
            "[auth]\nchain = [\"jwt\"]\n[auth.jwt]\nalgorithm = \"{alg}\"\n{field} = \"{path}\"\n"
        ))
        .unwrap();
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta")).unwrap());
        let e = Auth::new(&cfg, meta).err().expect("refused").to_string();
        assert!(e.contains(&path), "{e}");
    }
}

// ---- Authorization: claim rules, then the file, then the default. ----

const FILE: &str = "
    allow all         pubsub    v/%c/#
    deny  all         subscribe v/+/secret
    allow user:fleet  subscribe v/+/telemetry
    allow all         publish   u/%u/out
";

fn acl() -> Acl {
    Acl::parse(FILE).unwrap()
}

fn claims(rules: serde_json::Value) -> Acl {
    jwt::parse_acl_claim(&rules).unwrap()
}

#[test]
fn acl_matrix_file_rules_placeholders_and_first_match() {
    let d = door("acl_file = \"/unused\"\n"); // default deny with a file
    let file = acl();
    let p = |cid: &str, user: Option<&str>, a: Action, t: &str| d.auth.permits(Some(&file), None, cid, user, a, t);
    use Action::{Publish as Pub, Subscribe as Sub};
    // %c: own subtree for both actions.
    assert!(p("car1", None, Pub, "v/car1/telemetry"));
    assert!(p("car1", None, Sub, "v/car1/cmd"));
    assert!(!p("car1", None, Pub, "v/car2/telemetry"));
    assert!(!p("car1", None, Sub, "v/car2/cmd"));
    // First match wins: v/car1/secret is allowed by the earlier pubsub rule.
    assert!(p("car1", None, Sub, "v/car1/secret"));
    assert!(!p("fleet-1", Some("fleet"), Sub, "v/+/secret"), "deny before the fleet rule");
    assert!(p("fleet-1", Some("fleet"), Sub, "v/+/telemetry"));
    assert!(!p("fleet-1", Some("fleet"), Pub, "v/car9/telemetry"), "subscribe-only rule does not allow publish");
    // %u needs a username.
    assert!(p("x", Some("bob"), Pub, "u/bob/out"));
    assert!(!p("x", Some("bob"), Pub, "u/alice/out"));
    assert!(!p("x", None, Pub, "u//out"));
    assert!(!p("x", Some("bob"), Sub, "u/bob/out"), "publish-only rule");
    // Nothing applies: the default (deny, because a file is configured).
    assert!(!p("car1", None, Pub, "elsewhere"));
}

#[test]
fn acl_default_is_allow_without_a_file_and_configurable() {
    let open = door("");
    assert!(open.auth.permits(None, None, "c", None, Action::Publish, "any/topic"));
    let closed = door("[auth]\nacl_default = \"deny\"\n");
    assert!(!closed.auth.permits(None, None, "c", None, Action::Publish, "any/topic"));
    let file = acl();
    let lenient = door("acl_file = \"/unused\"\n[auth]\nacl_default = \"allow\"\n");
    assert!(lenient.auth.permits(Some(&file), None, "c", None, Action::Publish, "elsewhere"));
    assert!(
        !lenient.auth.permits(Some(&file), None, "c", None, Action::Subscribe, "v/car1/secret"),
        "deny rules still apply"
    );
}

#[test]
fn claim_rules_are_checked_before_file_rules() {
    let d = door("acl_file = \"/unused\"\n");
    let file = acl();
    let c = claims(json!([
        {"permission": "deny", "action": "publish", "topic": "v/%c/telemetry"},
        {"permission": "allow", "action": "subscribe", "topic": "ota/+/notice"},
        {"permission": "allow", "action": "all", "topic": "fleet/%u/#"},
    ]));
    let p = |a: Action, t: &str| d.auth.permits(Some(&file), Some(&c), "car1", Some("acme"), a, t);
    assert!(!p(Action::Publish, "v/car1/telemetry"), "the claim's deny beats the file's allow");
    assert!(p(Action::Publish, "v/car1/event"), "no claim rule applies: the file allows");
    assert!(p(Action::Subscribe, "ota/model3/notice"), "the claim allows what the file does not");
    assert!(!p(Action::Publish, "ota/model3/notice"), "subscribe-only claim rule");
    assert!(p(Action::Publish, "fleet/acme/x") && p(Action::Subscribe, "fleet/acme/#"));
    assert!(!p(Action::Publish, "nowhere"), "neither: the default");
}

#[test]
fn malformed_acl_claims_are_refused() {
    for bad in [
        json!({"pub": ["a"]}),
        json!([{"permission": "maybe", "action": "all", "topic": "a"}]),
        json!([{"permission": "allow", "action": "read", "topic": "a"}]),
        json!([{"permission": "allow", "action": "all"}]),
        json!([{"permission": "allow", "action": "all", "topic": "a/#/b"}]),
    ] {
        assert!(jwt::parse_acl_claim(&bad).is_err(), "{bad}");
    }
    let d = jwt_door("");
    let t = hs256(json!({"exp": in_an_hour(), "acl": [{"permission": "allow"}]}));
    assert_eq!(reason(login(&d, &peer(LOCAL), "c", None, Some(t.as_bytes()))), ReasonCode::BadUserNameOrPassword);
    let good = hs256(json!({"exp": in_an_hour(), "acl": [{"permission": "allow", "action": "all", "topic": "a/#"}]}));
    let id = login(&d, &peer(LOCAL), "c", None, Some(good.as_bytes())).unwrap();
    assert_eq!(id.acl.map(|a| a.len()), Some(1));
}
