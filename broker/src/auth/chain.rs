//! The authentication chain: an ordered list of authenticators, each of which accepts a
//! client (with an identity), rejects it, or ignores it and lets the next one decide.
//!
//! The chain is synchronous and does no I/O of its own beyond what an authenticator needs
//! (a metadata-store read for built-in users); the connection runs it on a blocking thread
//! because password hashing and signature checks are CPU work.

use crate::acl::Acl;
use crate::codec::ReasonCode;
use crate::connection::PeerInfo;

/// What a client presented at CONNECT, and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: &'a PeerInfo,
}

impl Credentials<'_> {
    /// True when the client sent neither a username nor a password.
    pub fn is_anonymous(&self) -> bool {
        self.username.is_none() && self.password.is_none()
    }
}

/// Who an accepted client is.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The username ACL rules and `%u` see: the CONNECT username, or the one an authenticator
    /// vouched for (a JWT claim, a certificate CN/SAN).
    pub username: Option<String>,
    /// ACL rules carried by the credentials (a JWT `acl` claim), checked before the file.
    pub acl: Option<Acl>,
    /// The authenticator that accepted the client, or `anonymous` / `none` (no chain).
    pub by: &'static str,
}

/// Why an authenticator refused a client. `reason` goes to the client, `log` only to the
/// broker log: the client never learns which check failed.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// 0x86 Bad user name or password, 0x87 Not authorized or 0x8A Banned.
    pub reason: ReasonCode,
    pub log: String,
}

impl Rejection {
    pub fn bad_credentials(log: impl Into<String>) -> Rejection {
        Rejection { reason: ReasonCode::BadUserNameOrPassword, log: log.into() }
    }

    pub fn not_authorized(log: impl Into<String>) -> Rejection {
        Rejection { reason: ReasonCode::NotAuthorized, log: log.into() }
    }

    pub fn banned(log: impl Into<String>) -> Rejection {
        Rejection { reason: ReasonCode::Banned, log: log.into() }
    }
}

/// One authenticator's answer.
#[derive(Debug)]
pub enum Verdict {
    Accept(Identity),
    Reject(Rejection),
    /// Not mine to decide (no such user, no token, no certificate): ask the next one.
    Ignore,
}

/// A member of the chain.
pub trait Authenticator: Send + Sync {
    /// The name used in `[auth] chain` and in logs.
    fn name(&self) -> &'static str;
    fn check(&self, creds: &Credentials<'_>) -> Verdict;
}

/// The outcome of running the whole chain.
#[derive(Debug)]
pub enum Outcome {
    Accepted(Identity),
    Rejected(&'static str, Rejection),
    /// Every authenticator ignored the client (or there is none).
    Undecided,
}

/// Authenticators in configuration order.
#[derive(Default)]
pub struct Chain {
    members: Vec<Box<dyn Authenticator>>,
}

impl Chain {
    pub fn new(members: Vec<Box<dyn Authenticator>>) -> Chain {
        Chain { members }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Names in order, for the start-up log.
    pub fn names(&self) -> Vec<&'static str> {
        self.members.iter().map(|m| m.name()).collect()
    }

    /// Asks each authenticator in order; the first that accepts or rejects decides.
    pub fn run(&self, creds: &Credentials<'_>) -> Outcome {
        for m in &self.members {
            match m.check(creds) {
                Verdict::Accept(mut id) => {
                    id.by = m.name();
                    return Outcome::Accepted(id);
                }
                Verdict::Reject(r) => return Outcome::Rejected(m.name(), r),
                Verdict::Ignore => {}
            }
        }
        Outcome::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An authenticator with a fixed answer per username, to test the order alone.
    struct Fixed {
        name: &'static str,
        accepts: &'static str,
        rejects: &'static str,
    }

    impl Authenticator for Fixed {
        fn name(&self) -> &'static str {
            self.name
        }
        fn check(&self, c: &Credentials<'_>) -> Verdict {
            match c.username {
                Some(u) if u == self.accepts => {
                    Verdict::Accept(Identity { username: Some(u.into()), ..Default::default() })
                }
                Some(u) if u == self.rejects => Verdict::Reject(Rejection::bad_credentials("no")),
                _ => Verdict::Ignore,
            }
        }
    }

    fn peer() -> PeerInfo {
        PeerInfo::tcp("10.0.0.1:5000".parse().unwrap(), "tcp".into())
    }

    #[test]
    fn the_first_authenticator_that_decides_wins_and_ignore_passes_on() {
        let chain = Chain::new(vec![
            Box::new(Fixed { name: "a", accepts: "alice", rejects: "bob" }),
            Box::new(Fixed { name: "b", accepts: "bob", rejects: "carol" }),
        ]);
        let p = peer();
        let creds = |u: &'static str| Credentials { client_id: "c", username: Some(u), password: None, peer: &p };
        assert!(matches!(chain.run(&creds("alice")), Outcome::Accepted(Identity { by: "a", .. })));
        // `a` rejects bob before `b` could accept him.
        assert!(matches!(chain.run(&creds("bob")), Outcome::Rejected("a", _)));
        // `a` ignores carol, `b` rejects her.
        assert!(matches!(chain.run(&creds("carol")), Outcome::Rejected("b", _)));
        assert!(matches!(chain.run(&creds("dave")), Outcome::Undecided));
        assert!(matches!(Chain::default().run(&creds("alice")), Outcome::Undecided));
    }
}
