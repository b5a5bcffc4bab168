//! Authentication, authorization and protection at the door (`docs/auth.md`).
//!
//! At CONNECT, [`admit`] runs, in order: the ban list (client id, username, address), flapping
//! detection, the authentication [`chain`](chain::Chain) (`users`, `jwt`, `x509` in
//! configuration order, each accepting, rejecting or ignoring), and the anonymous rule
//! (clients without credentials only from loopback unless `mqtt.allow_anonymous`). The client
//! learns only the CONNACK reason code (0x86, 0x87 or 0x8A; 4 or 5 under MQTT 3.1.1); the
//! broker log says why.
//!
//! Once connected, [`Auth::permits`] decides publishes and subscriptions: the rules of the
//! client's JWT `acl` claim first, then the ACL file, then `auth.acl_default`. A
//! [`SessionGuard`] per connection applies the inbound PUBLISH rate limits.
//!
//! [`Users`](users::Users) and [`Bans`](bans::Bans) are plain library APIs on the metadata
//! store, shared by the CLI (which opens the store with [`open_offline`] while the broker is
//! stopped) and, at run time, by whoever holds the hub (`hub.auth.bans()`).

pub mod bans;
pub mod chain;
pub mod flapping;
pub mod jwt;
pub mod rate_limit;
pub mod users;
pub mod x509;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axle_engine::{MetaError, MetaStore};
use parking_lot::Mutex;

use crate::acl::{Acl, Action};
use crate::codec::{Connect, ReasonCode};
use crate::config::{AclDefault, AuthenticatorKind, Config, FlappingSection, RateLimitAction, RateLimitSection};
use crate::connection::PeerInfo;
use bans::{Ban, BanTarget, Bans, BansError};
use chain::{Authenticator, Chain, Credentials, Identity, Outcome, Rejection};
use flapping::Flapping;
use rate_limit::Limiter;
use users::Users;

/// Authentication set-up that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Jwt(#[from] jwt::JwtError),
    #[error("loading the ban list: {0}")]
    Bans(#[from] BansError),
}

/// The broker's authentication and protection state, shared by all connections.
pub struct Auth {
    chain: Chain,
    users: Users,
    bans: Bans,
    flapping: Option<(Mutex<Flapping>, FlappingSection)>,
    rate_limit: RateLimitSection,
    /// Verdict when no ACL rule applies.
    acl_default: bool,
    allow_anonymous: bool,
    /// Bounds the chains running at once: each argon2 check holds 19 MiB and a CPU, and a
    /// reconnect storm must queue, not exhaust memory or the blocking pool.
    running: tokio::sync::Semaphore,
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    axle_engine::log::now_ms()
}

impl Auth {
    /// Builds the chain named in `cfg.auth.chain` (loading JWT keys) and loads the ban list.
    pub fn new(cfg: &Config, meta: Arc<MetaStore>) -> Result<Auth, AuthError> {
        let users = Users::new(meta.clone());
        let mut members: Vec<Box<dyn Authenticator>> = Vec::new();
        for kind in &cfg.auth.chain {
            match kind {
                AuthenticatorKind::Users => members.push(Box::new(users::UsersAuthenticator { users: users.clone() })),
                AuthenticatorKind::Jwt => {
                    let section = cfg.auth.jwt.as_ref().ok_or(jwt::JwtError::NoKey)?;
                    members.push(Box::new(jwt::JwtAuthenticator::new(section)?));
                }
                AuthenticatorKind::X509 => {
                    members.push(Box::new(x509::X509Authenticator { username_from: cfg.auth.x509.username_from }))
                }
            }
        }
        let flapping = cfg.protection.flapping.enabled.then(|| {
            let f = &cfg.protection.flapping;
            (Mutex::new(Flapping::new(f.max_connects, Duration::from_secs(f.window_secs))), f.clone())
        });
        Ok(Auth {
            chain: Chain::new(members),
            users,
            bans: Bans::open(meta)?,
            flapping,
            rate_limit: cfg.protection.rate_limit.clone(),
            acl_default: match cfg.auth.acl_default {
                Some(d) => d == AclDefault::Allow,
                None => cfg.acl_file.is_none(),
            },
            allow_anonymous: cfg.mqtt.allow_anonymous,
            running: tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2),
            ),
        })
    }

    /// Built-in users (`axle user`, REST).
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The ban list (`axle ban`, REST); changes apply to the next CONNECT.
    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    /// Authenticator names in chain order.
    pub fn chain_names(&self) -> Vec<&'static str> {
        self.chain.names()
    }

    /// Decides a CONNECT (see the module docs). Blocking: it may hash a password.
    pub fn login(&self, c: &Credentials<'_>, now_ms: i64, now: Instant) -> Result<Identity, Rejection> {
        // A v4 client on a dual-stack listener appears as ::ffff:a.b.c.d.
        let ip = c.peer.addr.ip().to_canonical();
        if let Some(b) = self.bans.find(c.client_id, c.username, ip, now_ms) {
            return Err(Rejection::banned(format!("banned ({}): {}", b.target, b.reason.unwrap_or_default())));
        }
        if let Some((detector, f)) = &self.flapping {
            if !c.client_id.is_empty() && detector.lock().record(c.client_id, now) {
                let reason = format!("flapping: {} connects within {} s", f.max_connects, f.window_secs);
                let ban = Ban {
                    target: BanTarget::ClientId(c.client_id.to_string()),
                    until_ms: Some(now_ms.saturating_add((f.ban_secs as i64).saturating_mul(1000))),
                    reason: Some(reason.clone()),
                    created_ms: now_ms,
                };
                if let Err(e) = self.bans.add(ban) {
                    tracing::error!(client_id = %c.client_id, error = %e, "could not store the flapping ban");
                }
                return Err(Rejection::banned(format!("{reason}; banned for {} s", f.ban_secs)));
            }
        }
        match self.chain.run(c) {
            Outcome::Accepted(id) => {
                if id.username.as_deref() != c.username {
                    if let Some(b) = id.username.as_deref().and_then(|u| self.bans.find("", Some(u), ip, now_ms)) {
                        return Err(Rejection::banned(format!(
                            "banned ({}): {}",
                            b.target,
                            b.reason.unwrap_or_default()
                        )));
                    }
                }
                Ok(id)
            }
            Outcome::Rejected(by, mut r) => {
                r.log = format!("{by}: {}", r.log);
                Err(r)
            }
            Outcome::Undecided if c.is_anonymous() || self.chain.is_empty() => {
                if ip.is_loopback() || self.allow_anonymous {
                    let by = if self.chain.is_empty() { "none" } else { "anonymous" };
                    Ok(Identity { username: c.username.map(str::to_string), acl: None, by })
                } else {
                    Err(Rejection::not_authorized(
                        "anonymous client refused (not from loopback, and mqtt.allow_anonymous is false)",
                    ))
                }
            }
            Outcome::Undecided => Err(Rejection::bad_credentials("no authenticator accepted the credentials")),
        }
    }

    /// Whether the client may publish to / subscribe to `target`: its claim rules first, then
    /// the ACL file, then `auth.acl_default`.
    pub fn permits(
        &self,
        file: Option<&Acl>,
        claims: Option<&Acl>,
        client_id: &str,
        username: Option<&str>,
        action: Action,
        target: &str,
    ) -> bool {
        claims
            .and_then(|a| a.decide(client_id, username, action, target))
            .or_else(|| file.and_then(|a| a.decide(client_id, username, action, target)))
            .unwrap_or(self.acl_default)
    }

    /// The per-connection state for a client just admitted.
    pub fn guard(&self, identity: &Identity) -> SessionGuard {
        SessionGuard {
            claims: identity.acl.clone(),
            limiter: Limiter::new(&self.rate_limit, Instant::now()),
            on_exceed: self.rate_limit.on_exceed,
            throttled_until: None,
            throttles: 0,
        }
    }
}

/// Runs [`Auth::login`] for a CONNECT, off the async threads when the chain has work to do,
/// and logs the outcome. Errors are the CONNACK reason code.
pub async fn admit(auth: &Arc<Auth>, c: &Connect, peer: &PeerInfo) -> Result<Identity, ReasonCode> {
    let result = if auth.chain.is_empty() {
        let creds = Credentials {
            client_id: &c.client_id,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            peer,
        };
        auth.login(&creds, now_ms(), Instant::now())
    } else {
        // Never fails: the semaphore is never closed.
        let _permit = auth.running.acquire().await;
        let (auth, peer2) = (auth.clone(), peer.clone());
        let (client_id, username, password) = (c.client_id.clone(), c.username.clone(), c.password.clone());
        let job = tokio::task::spawn_blocking(move || {
            let creds = Credentials {
                client_id: &client_id,
                username: username.as_deref(),
                password: password.as_deref(),
                peer: &peer2,
            };
            auth.login(&creds, now_ms(), Instant::now())
        });
        match job.await {
            Ok(r) => r,
            Err(e) => {
                Err(Rejection { reason: ReasonCode::UnspecifiedError, log: format!("authentication task failed: {e}") })
            }
        }
    };
    match result {
        Ok(id) => {
            tracing::debug!(%peer, client_id = %c.client_id, username = ?id.username, by = id.by, "authenticated");
            Ok(id)
        }
        Err(r) => {
            tracing::info!(%peer, client_id = %c.client_id, username = ?c.username, reason = ?r.reason, why = %r.log, "login refused");
            Err(r.reason)
        }
    }
}

/// What a pending inbound PUBLISH may do under the rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Pass,
    /// Handle it, then read nothing more from the client until this instant.
    Pause(Instant),
    /// Refuse it and end the connection (0x96).
    Disconnect,
}

/// One connection's authorization and rate-limit state.
#[derive(Debug)]
pub struct SessionGuard {
    /// ACL rules from the client's credentials (JWT claim), checked before the file.
    pub claims: Option<Acl>,
    limiter: Limiter,
    on_exceed: RateLimitAction,
    /// While set, the connection does not read from its socket.
    pub throttled_until: Option<Instant>,
    /// Times this connection was throttled.
    pub throttles: u64,
}

impl SessionGuard {
    /// No rate limit applies: [`Self::on_publish`] always passes (callers can skip the clock).
    pub fn is_unlimited(&self) -> bool {
        self.limiter.is_unlimited()
    }

    /// Charges an inbound PUBLISH of `bytes` bytes (whole packet) at `now`.
    pub fn on_publish(&mut self, bytes: usize, now: Instant) -> RateDecision {
        if self.limiter.is_unlimited() {
            return RateDecision::Pass;
        }
        match (self.limiter.charge(bytes, now), self.on_exceed) {
            (None, _) => RateDecision::Pass,
            (Some(_), RateLimitAction::Disconnect) => RateDecision::Disconnect,
            (Some(d), RateLimitAction::Throttle) => {
                self.throttles += 1;
                let until = now + d;
                self.throttled_until = Some(until);
                RateDecision::Pause(until)
            }
        }
    }
}

/// Opening the metadata store from the CLI failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(
        "the data directory {0} is in use, probably by a running `axle serve`; stop the broker first \
         (while it runs, use the REST admin API)"
    )]
    InUse(String),
    #[error("cannot create the data directory {dir}: {source}")]
    Create { dir: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] MetaError),
}

/// Opens the metadata store under `data_dir` (creating it if needed) for the CLI. RocksDB
/// allows one opener, so this fails with [`OfflineError::InUse`] while the broker runs.
pub fn open_offline(data_dir: &Path) -> Result<Arc<MetaStore>, OfflineError> {
    let dir = data_dir.join("meta");
    std::fs::create_dir_all(&dir)
        .map_err(|source| OfflineError::Create { dir: data_dir.display().to_string(), source })?;
    match MetaStore::open(&dir) {
        Ok(m) => Ok(Arc::new(m)),
        Err(e) if e.to_string().to_ascii_lowercase().contains("lock") => {
            Err(OfflineError::InUse(data_dir.display().to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
