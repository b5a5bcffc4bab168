//! What the transport knows about the other end of a connection, before any MQTT is read.
//!
//! Listeners (TCP, TLS, WebSocket, QUIC, with or without a PROXY header) fill a [`PeerInfo`]
//! and hand it to `connection::serve`; authentication and logging read it from there. The
//! session layer never looks at the transport itself.

use std::net::SocketAddr;
use std::sync::Arc;

/// The transport a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
    Quic,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Quic => "quic",
        }
    }
}

/// An identity vouched for by a certificate: a verified TLS client certificate, or the
/// client-certificate CN a trusted load balancer forwarded in a PROXY v2 TLV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// DNS, e-mail and URI subject alternative names, in certificate order.
    pub subject_alt_names: Vec<String>,
}

/// The other end of one connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address: the socket's peer, or the source a PROXY header named.
    pub addr: SocketAddr,
    /// The name of the listener that accepted it (`[[listeners]]` name in config).
    pub listener: Arc<str>,
    pub transport: Transport,
    /// Set when the client presented a verified certificate (directly or via PROXY v2).
    pub cert: Option<CertIdentity>,
    /// The username the listener's `peer_cert_as_username` takes from `cert`; when set it
    /// replaces the CONNECT username (as EMQX does).
    pub cert_username: Option<String>,
}

impl PeerInfo {
    /// A plain TCP connection accepted by `listener`.
    pub fn tcp(addr: SocketAddr, listener: Arc<str>) -> PeerInfo {
        PeerInfo { addr, listener, transport: Transport::Tcp, cert: None, cert_username: None }
    }
}

impl std::fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// `peer_cert_as_username`: the certificate's username, when the listener set one, replaces
/// the CONNECT username before authentication sees it.
pub(crate) fn apply_cert_username(mut c: crate::codec::Connect, peer: &PeerInfo) -> crate::codec::Connect {
    if let Some(u) = &peer.cert_username {
        if c.username.as_deref() != Some(u) {
            tracing::debug!(%peer, username = %u, "username taken from the client certificate");
        }
        c.username = Some(u.clone());
    }
    c
}
