//! The `jwt` authenticator: a JSON Web Token in the CONNECT password (the EMQX convention),
//! signed with HS256 (shared secret), RS256 or ES256 (public key or JWKS file).
//!
//! - A password that is not shaped like a JWT (three base64url parts) is ignored, so that a
//!   later authenticator (or an earlier `users` entry) can handle it.
//! - A JWT-shaped password whose signature, algorithm, expiry, `nbf`, `aud` or `iss` does not
//!   verify is rejected with 0x86 Bad user name or password.
//! - The username claim, when present, becomes the client's username; a different CONNECT
//!   username is rejected (0x86). The client-id claim, when present, must equal the CONNECT
//!   client id (0x87 Not authorized otherwise).
//! - The ACL claim holds rules checked before the ACL file: a list of
//!   `{"permission": "allow"|"deny", "action": "publish"|"subscribe"|"all", "topic": "<filter>"}`
//!   (EMQX's form; `%c` and `%u` work). A malformed claim rejects the login.

use std::collections::HashMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::chain::{Authenticator, Credentials, Identity, Rejection, Verdict};
use crate::acl::{Acl, Action};
use crate::config::{JwtAlgorithm, JwtSection};

/// A JWT configuration that cannot be used; the broker refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("auth.jwt: cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("auth.jwt: {path} is not a usable {what}: {message}")]
    Key { path: String, what: &'static str, message: String },
    #[error("auth.jwt: `secret` is not valid base64: {0}")]
    Secret(String),
    #[error("auth.jwt: HS256 needs `secret`; RS256 and ES256 need `public_key_file` or `jwks_file`")]
    NoKey,
}

enum Keys {
    /// One key for every token.
    Single(DecodingKey),
    /// JWKS keys by `kid`; a token without `kid` is accepted only when there is one key.
    Set(HashMap<String, DecodingKey>, Option<DecodingKey>),
}

pub struct JwtAuthenticator {
    keys: Keys,
    validation: Validation,
    username_claim: String,
    client_id_claim: String,
    acl_claim: String,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|source| JwtError::Read { path: path.display().to_string(), source })
}

impl JwtAuthenticator {
    /// Loads the key material named in the section.
    pub fn new(cfg: &JwtSection) -> Result<JwtAuthenticator, JwtError> {
        let alg = match cfg.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let keys = match (cfg.algorithm, &cfg.secret, &cfg.public_key_file, &cfg.jwks_file) {
            (JwtAlgorithm::HS256, Some(s), _, _) if cfg.secret_base64 => {
                Keys::Single(DecodingKey::from_base64_secret(s).map_err(|e| JwtError::Secret(e.to_string()))?)
            }
            (JwtAlgorithm::HS256, Some(s), _, _) => Keys::Single(DecodingKey::from_secret(s.as_bytes())),
            (JwtAlgorithm::RS256 | JwtAlgorithm::ES256, _, Some(p), _) => {
                let pem = read(p)?;
                let key = if alg == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                let key = key.map_err(|e| JwtError::Key {
                    path: p.display().to_string(),
                    what: "PEM public key",
                    message: e.to_string(),
                })?;
                Keys::Single(key)
            }
            (JwtAlgorithm::RS256 | JwtAlgorithm::ES256, _, None, Some(p)) => {
                let bad = |message: String| JwtError::Key { path: p.display().to_string(), what: "JWKS file", message };
                let set: JwkSet = serde_json::from_slice(&read(p)?).map_err(|e| bad(e.to_string()))?;
                let mut by_kid = HashMap::new();
                let mut only = None;
                for jwk in &set.keys {
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
                    if let Some(kid) = &jwk.common.key_id {
                        by_kid.insert(kid.clone(), key.clone());
                    }
                    only = Some(key);
                }
                if set.keys.is_empty() {
                    return Err(bad("it holds no key".into()));
                }
                let only = if set.keys.len() == 1 { only } else { None };
                Keys::Set(by_kid, only)
            }
            _ => return Err(JwtError::NoKey),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        if cfg.require_exp {
            validation.set_required_spec_claims(&["exp"]);
        }
        match &cfg.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &cfg.issuer {
            validation.set_issuer(&[i]);
        }
        Ok(JwtAuthenticator {
            keys,
            validation,
            username_claim: cfg.username_claim.clone(),
            client_id_claim: cfg.client_id_claim.clone(),
            acl_claim: cfg.acl_claim.clone(),
        })
    }

    fn key_for(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        match &self.keys {
            Keys::Single(k) => Some(k),
            Keys::Set(by_kid, only) => match kid {
                Some(kid) => by_kid.get(kid),
                None => only.as_ref(),
            },
        }
    }
}

/// True if `s` looks like a compact JWS: three non-empty base64url parts.
fn jwt_shaped(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

/// Parses an ACL claim (see the module docs) into rules for every client.
pub fn parse_acl_claim(v: &Value) -> Result<Acl, String> {
    let Value::Array(items) = v else { return Err("the ACL claim must be a list of rules".into()) };
    let mut acl = Acl::default();
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| item.get(name).and_then(Value::as_str);
        let allow = match field("permission") {
            Some("allow") => true,
            Some("deny") => false,
            other => return Err(format!("rule {i}: permission must be `allow` or `deny`, not {other:?}")),
        };
        let action = match field("action") {
            Some("publish") => Some(Action::Publish),
            Some("subscribe") => Some(Action::Subscribe),
            Some("all") | Some("pubsub") => None,
            other => return Err(format!("rule {i}: action must be `publish`, `subscribe` or `all`, not {other:?}")),
        };
        let Some(topic) = field("topic") else { return Err(format!("rule {i}: `topic` is missing")) };
        acl.push_rule(allow, action, topic).map_err(|e| format!("rule {i}: {e}"))?;
    }
    Ok(acl)
}

impl Authenticator for JwtAuthenticator {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn check(&self, c: &Credentials<'_>) -> Verdict {
        let Some(token) = c.password.and_then(|p| std::str::from_utf8(p).ok()) else { return Verdict::Ignore };
        if !jwt_shaped(token) {
            return Verdict::Ignore;
        }
        let reject = |why: String| Verdict::Reject(Rejection::bad_credentials(why));
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => return reject(format!("unreadable JWT header: {e}")),
        };
        let Some(key) = self.key_for(header.kid.as_deref()) else {
            return reject(format!("no key for the JWT's kid {:?}", header.kid));
        };
        let claims = match jsonwebtoken::decode::<Value>(token, key, &self.validation) {
            Ok(d) => d.claims,
            Err(e) => return reject(format!("JWT refused: {e}")),
        };
        let claim_str = |name: &str| claims.get(name).and_then(Value::as_str);
        let username = match (claim_str(&self.username_claim), c.username) {
            (Some(claimed), Some(sent)) if claimed != sent => {
                return reject(format!("CONNECT username {sent:?} differs from the token's {claimed:?}"));
            }
            (Some(claimed), _) => Some(claimed.to_string()),
            (None, sent) => sent.map(str::to_string),
        };
        if let Some(claimed) = claim_str(&self.client_id_claim) {
            if claimed != c.client_id {
                return Verdict::Reject(Rejection::not_authorized(format!(
                    "the token is for client id {claimed:?}, not {:?}",
                    c.client_id
                )));
            }
        }
        let acl = match claims.get(&self.acl_claim) {
            None => None,
            Some(v) => match parse_acl_claim(v) {
                Ok(a) => Some(a),
                Err(e) => return reject(format!("the token's ACL claim is malformed: {e}")),
            },
        };
        Verdict::Accept(Identity { username, acl, ..Default::default() })
    }
}
