//! Built-in users: a username and an argon2id password hash (a PHC string such as
//! `$argon2id$v=19$m=19456,t=2,p=1$…`) per user, in the metadata store's `users` column
//! family (key: the username's UTF-8 bytes, value: the PHC string).
//!
//! [`Users`] is the library API the CLI (`axle user …`) and the REST admin API share. Logins
//! read the store on every CONNECT, so a change made through either is in force at once; no
//! copy is cached in memory.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axle_engine::{MetaError, MetaStore};

use super::chain::{Authenticator, Credentials, Identity, Rejection, Verdict};

const FAMILY: &str = "users";

/// A user-management failure.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(transparent)]
    Store(#[from] MetaError),
    #[error("a username must not be empty")]
    EmptyName,
    #[error("a password must not be empty")]
    EmptyPassword,
    #[error("could not hash the password: {0}")]
    Hash(String),
    #[error("the stored hash of user {0:?} is not a valid PHC string; set a new password with `axle user add`")]
    BadStoredHash(String),
}

/// The result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No such user.
    Unknown,
    Valid,
    Invalid,
}

/// Built-in users on an open metadata store.
#[derive(Clone)]
pub struct Users {
    meta: Arc<MetaStore>,
}

/// A hash of a random password, verified when the user does not exist so that an unknown
/// name costs the same time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let pw: [u8; 16] = rand::random();
        hash_password(&pw).unwrap_or_default()
    })
}

fn hash_password(password: &[u8]) -> Result<String, UsersError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| UsersError::Hash(e.to_string()))?;
    let hash = Argon2::default().hash_password(password, &salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

impl Users {
    pub fn new(meta: Arc<MetaStore>) -> Users {
        Users { meta }
    }

    /// Creates `name` or replaces its password; returns true if the user existed. Durable
    /// when it returns.
    pub fn add(&self, name: &str, password: &[u8]) -> Result<bool, UsersError> {
        if name.is_empty() {
            return Err(UsersError::EmptyName);
        }
        if password.is_empty() {
            return Err(UsersError::EmptyPassword);
        }
        let phc = hash_password(password)?;
        let existed = self.meta.get(FAMILY, name.as_bytes())?.is_some();
        self.meta.put(FAMILY, name.as_bytes(), phc.as_bytes(), true)?;
        Ok(existed)
    }

    /// Removes `name`; returns false if there was no such user.
    pub fn remove(&self, name: &str) -> Result<bool, UsersError> {
        let existed = self.meta.get(FAMILY, name.as_bytes())?.is_some();
        if existed {
            self.meta.delete(FAMILY, name.as_bytes(), true)?;
        }
        Ok(existed)
    }

    /// Every username, in byte order.
    pub fn list(&self) -> Result<Vec<String>, UsersError> {
        Ok(self
            .meta
            .scan_prefix(FAMILY, b"")?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }

    /// Checks `password` against the stored hash of `name` (argon2, hence tens of
    /// milliseconds of CPU: call it off the async threads).
    pub fn check(&self, name: &str, password: &[u8]) -> Result<Check, UsersError> {
        let Some(stored) = self.meta.get(FAMILY, name.as_bytes())? else {
            if let Ok(h) = PasswordHash::new(decoy_hash()) {
                let _ = Argon2::default().verify_password(password, &h);
            }
            return Ok(Check::Unknown);
        };
        let text = String::from_utf8(stored).map_err(|_| UsersError::BadStoredHash(name.to_string()))?;
        let hash = PasswordHash::new(&text).map_err(|_| UsersError::BadStoredHash(name.to_string()))?;
        // The hash names its own algorithm and parameters; verify with those.
        Ok(match Argon2::default().verify_password(password, &hash) {
            Ok(()) => Check::Valid,
            Err(_) => Check::Invalid,
        })
    }
}

/// The `users` authenticator: a known username with the right password is accepted, with a
/// wrong or missing password rejected (0x86); an unknown username is ignored so that a later
/// authenticator may know it.
pub struct UsersAuthenticator {
    pub users: Users,
}

impl Authenticator for UsersAuthenticator {
    fn name(&self) -> &'static str {
        "users"
    }

    fn check(&self, c: &Credentials<'_>) -> Verdict {
        let Some(name) = c.username else { return Verdict::Ignore };
        match self.users.check(name, c.password.unwrap_or_default()) {
            Ok(Check::Valid) => Verdict::Accept(Identity { username: Some(name.to_string()), ..Default::default() }),
            Ok(Check::Invalid) => {
                Verdict::Reject(Rejection::bad_credentials(format!("wrong password for user {name:?}")))
            }
            Ok(Check::Unknown) => Verdict::Ignore,
            Err(e) => Verdict::Reject(Rejection::bad_credentials(format!("user {name:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::PeerInfo;

    fn store() -> (tempfile::TempDir, Users) {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetaStore::open(dir.path()).unwrap());
        (dir, Users::new(meta))
    }

    #[test]
    fn passwords_are_stored_as_argon2_phc_strings_and_checked() {
        let (_d, users) = store();
        assert!(!users.add("alice", b"wonderland").unwrap());
        let stored = users.meta.get(FAMILY, b"alice").unwrap().unwrap();
        let stored = String::from_utf8(stored).unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("wonderland"));
        assert_eq!(users.check("alice", b"wonderland").unwrap(), Check::Valid);
        assert_eq!(users.check("alice", b"wonderlanD").unwrap(), Check::Invalid);
        assert_eq!(users.check("bob", b"wonderland").unwrap(), Check::Unknown);
        assert!(users.add("alice", b"new").unwrap(), "replacing reports the user existed");
        assert_eq!(users.check("alice", b"wonderland").unwrap(), Check::Invalid);
        assert_eq!(users.list().unwrap(), vec!["alice".to_string()]);
        assert!(users.remove("alice").unwrap());
        assert!(!users.remove("alice").unwrap());
        assert_eq!(users.check("alice", b"new").unwrap(), Check::Unknown);
        assert!(matches!(users.add("", b"x"), Err(UsersError::EmptyName)));
        assert!(matches!(users.add("x", b""), Err(UsersError::EmptyPassword)));
    }

    #[test]
    fn the_users_authenticator_accepts_rejects_or_ignores() {
        let (_d, users) = store();
        users.add("alice", b"pw").unwrap();
        let a = UsersAuthenticator { users };
        let peer = PeerInfo::tcp("10.0.0.1:1".parse().unwrap(), "tcp".into());
        let creds = |u: Option<&'static str>, p: Option<&'static [u8]>| Credentials {
            client_id: "c",
            username: u,
            password: p,
            peer: &peer,
        };
        match a.check(&creds(Some("alice"), Some(b"pw"))) {
            Verdict::Accept(id) => assert_eq!(id.username.as_deref(), Some("alice")),
            other => panic!("{other:?}"),
        }
        for (u, p) in [(Some("alice"), Some(&b"bad"[..])), (Some("alice"), None)] {
            match a.check(&creds(u, p)) {
                Verdict::Reject(r) => assert_eq!(r.reason, crate::codec::ReasonCode::BadUserNameOrPassword),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(a.check(&creds(Some("mallory"), Some(b"pw"))), Verdict::Ignore));
        assert!(matches!(a.check(&creds(None, None)), Verdict::Ignore));
    }

    #[test]
    fn a_corrupt_stored_hash_is_a_rejection_not_a_panic() {
        let (_d, users) = store();
        users.meta.put(FAMILY, b"eve", b"not-a-phc-string", true).unwrap();
        assert!(matches!(users.check("eve", b"x"), Err(UsersError::BadStoredHash(_))));
    }
}
