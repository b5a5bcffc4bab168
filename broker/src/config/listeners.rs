//! `[[listeners.mqtt]]`: the MQTT listeners beside `[listeners] tcp`, with their TLS settings.
//! Certificate files are read when a listener starts (`broker/src/listener/`), so a bad file
//! stops the broker with an error naming it; here only the combinations are checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The transport of one `[[listeners.mqtt]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over TCP; default bind 0.0.0.0:1883.
    Tcp,
    /// MQTT over TLS (rustls); default bind 0.0.0.0:8883.
    Tls,
    /// MQTT over WebSocket; default bind 0.0.0.0:8083.
    Ws,
    /// MQTT over WebSocket over TLS; default bind 0.0.0.0:8084.
    Wss,
    /// MQTT over QUIC (UDP, ALPN `mqtt`); default bind 0.0.0.0:14567.
    Quic,
}

impl ListenerKind {
    /// The conventional port of this transport.
    pub fn default_port(self) -> u16 {
        match self {
            ListenerKind::Tcp => 1883,
            ListenerKind::Tls => 8883,
            ListenerKind::Ws => 8083,
            ListenerKind::Wss => 8084,
            ListenerKind::Quic => 14567,
        }
    }
}

/// One MQTT listener (`[[listeners.mqtt]]`). See docs/architecture.md, "Listeners".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttListenerSection {
    /// Unique name, shown in logs and in `PeerInfo::listener`.
    pub name: String,
    pub kind: ListenerKind,
    /// Address to bind; default `0.0.0.0:<the kind's port>` (1883, 8883, 8083, 8084, 14567).
    pub bind: Option<SocketAddr>,
    /// Connections this listener holds at once; further ones are closed at accept. Default 1048576.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Milliseconds from accept until CONNECT has been read, covering the PROXY header, the TLS,
    /// WebSocket or QUIC handshake and CONNECT itself. Default 10000.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Expect a PROXY protocol v1 or v2 header first (`tcp` and `ws` only); connections without
    /// a valid one are closed. Default false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// WebSocket path (`ws`, `wss`). Default `/mqtt`.
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// The username a client certificate implies (`tls`, `wss`, `quic`, or the CN a PROXY v2
    /// header forwards): `cn`, `san` (the first SAN) or `none`. It replaces the CONNECT
    /// username. Default `none`.
    #[serde(default)]
    pub peer_cert_as_username: PeerCertAsUsername,
    /// Certificates and TLS settings; required for `tls`, `wss` and `quic`.
    pub tls: Option<TlsSection>,
}

/// Which certificate field becomes the MQTT username.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerCertAsUsername {
    Cn,
    San,
    #[default]
    None,
}

/// `[listeners.mqtt.tls]`: the server certificate and how clients are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the server certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of CAs that client certificates must chain to; required by `verify_peer`.
    pub ca: Option<PathBuf>,
    /// PEM file of CRLs (one or more); a client certificate they list is refused. Only the
    /// client's own certificate is checked; a CA without a CRL here is not an error.
    pub crl: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against `ca` (mutual TLS). Default false.
    #[serde(default)]
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that send no certificate. Default true.
    #[serde(default = "super::yes")]
    pub fail_if_no_peer_cert: bool,
    /// TLS versions offered: any of `"1.2"`, `"1.3"` (QUIC always uses 1.3). Default both.
    #[serde(default = "default_tls_versions")]
    pub versions: Vec<String>,
    /// Cipher suites by IANA name as rustls spells them (e.g. `TLS13_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`); empty = rustls' defaults. Default empty.
    #[serde(default)]
    pub ciphers: Vec<String>,
}

fn default_max_connections() -> usize {
    1 << 20
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_ws_path() -> String {
    "/mqtt".into()
}
fn default_tls_versions() -> Vec<String> {
    vec!["1.2".into(), "1.3".into()]
}

impl MqttListenerSection {
    /// The address to bind: `bind`, or all interfaces on the kind's conventional port.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.kind.default_port())))
    }

    /// Checks the combinations a listener needs (`i`: its index in `listeners.mqtt`); the
    /// certificate files are read when it starts.
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let bad = |field: &str, m: String| {
            Err(ConfigError::invalid(format!("listeners.mqtt[{i}].{field}"), format!("(listener {}) {m}", self.name)))
        };
        let tls_kind = matches!(self.kind, ListenerKind::Tls | ListenerKind::Wss | ListenerKind::Quic);
        if tls_kind && self.tls.is_none() {
            return bad("tls", format!("kind {:?} needs a [listeners.mqtt.tls] section with cert and key", self.kind));
        }
        if !tls_kind && self.tls.is_some() {
            return bad("tls", "a tls section is only for kinds tls, wss and quic".into());
        }
        if self.proxy_protocol && !matches!(self.kind, ListenerKind::Tcp | ListenerKind::Ws) {
            return bad("proxy_protocol", "is only supported on tcp and ws listeners".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if self.handshake_timeout_ms == 0 {
            return bad("handshake_timeout_ms", "must be at least 1".into());
        }
        if matches!(self.kind, ListenerKind::Ws | ListenerKind::Wss) && !self.path.starts_with('/') {
            return bad("path", format!("{:?} must start with /", self.path));
        }
        if let Some(t) = &self.tls {
            if t.verify_peer && t.ca.is_none() {
                return bad(
                    "tls.ca",
                    "is needed by tls.verify_peer (the CA bundle client certificates chain to)".into(),
                );
            }
            if t.crl.is_some() && !t.verify_peer {
                return bad("tls.crl", "only applies with tls.verify_peer = true".into());
            }
            for v in &t.versions {
                if v != "1.2" && v != "1.3" {
                    return bad("tls.versions", format!("{v:?} is not supported; use \"1.2\" and/or \"1.3\""));
                }
            }
            if t.versions.is_empty() {
                return bad("tls.versions", "must name at least one version".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn listeners_parse_with_defaults() {
        let cfg: Config = toml::from_str(
            r#"
            [[listeners.mqtt]]
            name = "tls"
            kind = "tls"
            peer_cert_as_username = "cn"
            [listeners.mqtt.tls]
            cert = "server.pem"
            key = "server.key"
            ca = "ca.pem"
            verify_peer = true
            [[listeners.mqtt]]
            name = "lb"
            kind = "tcp"
            bind = "127.0.0.1:1884"
            proxy_protocol = true
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let tls = &cfg.listeners.mqtt[0];
        assert_eq!(tls.bind_addr().port(), 8883);
        assert_eq!(tls.handshake_timeout_ms, 10_000);
        assert!(tls.tls.as_ref().unwrap().fail_if_no_peer_cert);
        assert_eq!(tls.peer_cert_as_username, PeerCertAsUsername::Cn);
        assert!(cfg.listeners.mqtt[1].proxy_protocol);
    }

    #[test]
    fn tls_listener_without_certificates_is_refused() {
        let cfg: Config = toml::from_str("[[listeners.mqtt]]\nname = \"s\"\nkind = \"quic\"\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("listener s") && err.contains("cert and key"), "{err}");
    }

    #[test]
    fn proxy_protocol_on_a_tls_listener_is_refused() {
        let cfg: Config = toml::from_str(
            "[[listeners.mqtt]]\nname = \"s\"\nkind = \"tls\"\nproxy_protocol = true\n[listeners.mqtt.tls]\ncert = \"a\"\nkey = \"b\"\n",
        )
        .unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("proxy_protocol"));
    }
}
