//! `[auth]`: the authenticator chain, built-in users, JWT, X.509 identities, and the
//! `[auth.protection]` limits (flapping detection, inbound rate limits). See `docs/auth.md`.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// One authenticator of the `[auth] chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthenticatorKind {
    /// Built-in users: username and argon2 password hash in the metadata store.
    Users,
    /// A JSON Web Token in the CONNECT password (`[auth.jwt]`).
    Jwt,
    /// The verified client certificate's CN or SAN (`[auth.x509]`).
    X509,
}

/// The verdict of an ACL check that no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDefault {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Authenticators tried in this order; the first that accepts or rejects decides, one
    /// that ignores passes the client on. Empty (the default): no credentials are checked.
    /// With a non-empty chain, credentials that no authenticator accepts are refused.
    /// Clients without credentials follow `mqtt.allow_anonymous` either way.
    pub chain: Vec<AuthenticatorKind>,
    /// What an ACL check decides when no rule (JWT claim or `acl_file`) applies. Unset: `deny`
    /// when `acl_file` is set, `allow` when it is not (every client may do anything).
    pub acl_default: Option<AclDefault>,
    /// Settings of the `jwt` authenticator; required when the chain names it.
    pub jwt: Option<JwtSection>,
    /// Settings of the `x509` authenticator.
    pub x509: X509Section,
}

/// A JWT signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// `HS256` (shared secret), `RS256` or `ES256` (public key or JWKS). Tokens signed with any
    /// other algorithm are refused.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret, as text (or base64 with `secret_base64 = true`).
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_base64: bool,
    /// RS256/ES256: PEM file with the public key (`BEGIN PUBLIC KEY`).
    pub public_key_file: Option<PathBuf>,
    /// RS256/ES256: a JWKS file (`{"keys": [...]}`); the token's `kid` picks the key.
    pub jwks_file: Option<PathBuf>,
    /// Claim holding the username; when present it becomes the client's username and must
    /// equal the CONNECT username if the client sent one. Default `username`.
    #[serde(default = "claim_username")]
    pub username_claim: String,
    /// Claim holding the client id; when present it must equal the CONNECT client id.
    /// Default `clientid`.
    #[serde(default = "claim_client_id")]
    pub client_id_claim: String,
    /// Claim holding ACL rules checked before `acl_file` (`docs/acl.md`). Default `acl`.
    #[serde(default = "claim_acl")]
    pub acl_claim: String,
    /// Refuse tokens without an `exp` claim. Default true.
    #[serde(default = "super::yes")]
    pub require_exp: bool,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 60.
    #[serde(default = "sixty")]
    pub leeway_secs: u64,
    /// When set, the `aud` claim must contain it.
    pub audience: Option<String>,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
}

/// Which certificate field names an X.509 identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertField {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first subject alternative name (DNS, e-mail or URI).
    San,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct X509Section {
    /// The certificate field that becomes the username: `cn` (default) or `san`.
    pub username_from: CertField,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectionSection {
    pub flapping: FlappingSection,
    pub rate_limit: RateLimitSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlappingSection {
    /// Off by default (as in EMQX): reconnect storms after an outage would ban whole fleets.
    pub enabled: bool,
    /// CONNECTs of one client id within `window_secs` that trigger a ban. Default 15.
    pub max_connects: u32,
    /// The window, in seconds. Default 60.
    pub window_secs: u64,
    /// How long the client id is banned, in seconds. Default 300.
    pub ban_secs: u64,
}

/// What happens to a client that publishes faster than its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// Stop reading the client's socket until its budget is back (TCP pushes back).
    #[default]
    Throttle,
    /// DISCONNECT 0x96 Message rate too high (MQTT 5; 3.1.1 clients are just closed).
    Disconnect,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    /// Inbound PUBLISH packets per second per connection; 0 (default) = unlimited.
    pub messages_per_sec: u32,
    /// Packets a client may send at once above the rate; 0 = `messages_per_sec`.
    pub messages_burst: u32,
    /// Inbound PUBLISH bytes (whole packets) per second per connection; 0 = unlimited.
    pub bytes_per_sec: u64,
    /// Bytes a client may send at once above the rate; 0 = `bytes_per_sec`.
    pub bytes_burst: u64,
    /// `throttle` (default) or `disconnect`.
    pub on_exceed: RateLimitAction,
}

fn claim_username() -> String {
    "username".into()
}
fn claim_client_id() -> String {
    "clientid".into()
}
fn claim_acl() -> String {
    "acl".into()
}
fn sixty() -> u64 {
    60
}

impl Default for FlappingSection {
    fn default() -> Self {
        FlappingSection { enabled: false, max_connects: 15, window_secs: 60, ban_secs: 300 }
    }
}

impl AuthSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::invalid("auth.chain", m));
        for (i, a) in self.chain.iter().enumerate() {
            if self.chain[..i].contains(a) {
                return bad(format!("names {a:?} twice"));
            }
        }
        match (&self.jwt, self.chain.contains(&AuthenticatorKind::Jwt)) {
            (None, true) => return bad("names jwt but there is no [auth.jwt] section".into()),
            (Some(j), _) => j.validate()?,
            (None, false) => {}
        }
        Ok(())
    }
}

impl JwtSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::invalid("auth.jwt", m));
        match self.algorithm {
            JwtAlgorithm::HS256 => {
                if self.secret.is_none() {
                    return bad("HS256 needs `secret`");
                }
                if self.public_key_file.is_some() || self.jwks_file.is_some() {
                    return bad("HS256 uses `secret` only, not `public_key_file` or `jwks_file`");
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if self.secret.is_some() {
                    return bad(
                        "RS256 and ES256 verify with a public key: set `public_key_file` or `jwks_file`, not `secret`",
                    );
                }
                if self.public_key_file.is_some() == self.jwks_file.is_some() {
                    return bad("RS256 and ES256 need exactly one of `public_key_file` and `jwks_file`");
                }
            }
        }
        Ok(())
    }
}

impl ProtectionSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.flapping;
        if f.enabled && (f.max_connects == 0 || f.window_secs == 0 || f.ban_secs == 0) {
            return Err(ConfigError::invalid(
                "protection.flapping",
                "max_connects, window_secs and ban_secs must be at least 1 when enabled",
            ));
        }
        Ok(())
    }
}
